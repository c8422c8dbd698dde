#!/usr/bin/env bash
# Runs the benchmark (outbox-bench) with everything it needs started first: PostgreSQL and the
# single Kafka node (scripts/services.sh), or the three-node KRaft cluster with --cluster.
#
#   scripts/bench.sh [--cluster] [PART] [ARGS...]
#
# PART is a part of outbox-bench (default: all, which includes peers: Debezium, fetched and started
# by scripts/peers.sh); ARGS go to outbox-bench (e.g. --quick, --out FILE). With --cluster every
# topic has 3 replicas with min.insync.replicas=2, and every producer (the relay's, the baselines',
# Debezium's) waits for acks=all, as a production cluster pays for. Results go under
# target/bench-results/ unless --out says otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

cluster=false
if [[ ${1:-} == --cluster ]]; then
  cluster=true
  shift
fi
part=all
if [[ $# -gt 0 && $1 != -* ]]; then
  part=$1
  shift
fi

services=$(scripts/services.sh) # fails the script if a service cannot start
eval "$services"
kafka_version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' scripts/kafka/pom.xml)
profile=(--broker-description "Apache Kafka $kafka_version, one KRaft node (scripts/services.sh)")
if $cluster; then
  cluster_services=$(scripts/services.sh cluster)
  eval "$cluster_services"
  profile=(
    --brokers "$KAFKA_CLUSTER_BROKERS"
    --replication-factor 3
    --broker-description "Apache Kafka $kafka_version, three KRaft nodes, replication factor 3, min.insync.replicas=2, acks=all (scripts/services.sh cluster)"
  )
fi
exec cargo run --release -p outbox-bench -- "$part" "${profile[@]}" "$@"
