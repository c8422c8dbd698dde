#!/usr/bin/env bash
# Installs what building the workspace needs from the system, if it is missing: OpenSSL's headers
# and pkg-config (librdkafka links OpenSSL for TLS and SASL/SCRAM to the brokers), from Debian's
# packages. Does nothing when they are there. Logs to stderr.
set -euo pipefail

if pkg-config --exists openssl 2>/dev/null; then
  exit 0
fi
command -v apt-get >/dev/null 2>&1 ||
  { echo "build-deps: OpenSSL's development files (libssl-dev) and pkg-config are needed to build librdkafka with TLS; install them" >&2; exit 1; }
echo "build-deps: installing libssl-dev and pkg-config (Debian packages) for librdkafka's TLS" >&2
export DEBIAN_FRONTEND=noninteractive
{ apt-get update -qq && apt-get install -y -qq libssl-dev pkg-config; } >&2 ||
  { echo "build-deps: installing libssl-dev and pkg-config with apt-get failed" >&2; exit 1; }
