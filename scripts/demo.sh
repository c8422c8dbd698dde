#!/usr/bin/env bash
# The whole flow on this machine: starts PostgreSQL and the Kafka broker (installing what is missing),
# then runs the order-service demo: orders and their events written in one transaction, the relay
# publishing them, and an inbox-backed consumer applying each once. `--wal`: the events travel as
# logical decoding messages (WAL mode) instead of outbox rows.
set -euo pipefail
cd "$(dirname "$0")/.."
services=$(scripts/services.sh) # fails the script if a service cannot start
eval "$services"
scripts/build-deps.sh
exec cargo run --quiet -p outbox-examples --bin orders-demo -- "$@"
