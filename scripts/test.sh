#!/usr/bin/env bash
# Runs every test against real services: starts PostgreSQL and the Kafka broker (installing what is
# missing), then the whole workspace's tests. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
services=$(scripts/services.sh) # fails the script if a service cannot start
eval "$services"
cargo test --workspace "$@"
