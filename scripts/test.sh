#!/usr/bin/env bash
# Runs every test against real services: starts PostgreSQL and Apache Kafka (installing and fetching
# what is missing), then the whole workspace's tests. `--no-fail-fast`: a red run shows every test
# binary that is red, not only the first. Extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build-deps.sh
services=$(scripts/services.sh) # fails the script if a service cannot start
eval "$services"
cargo test --workspace --no-fail-fast "$@"
