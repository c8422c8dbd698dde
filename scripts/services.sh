#!/usr/bin/env bash
# Starts what the demo and the tests need, installing what is missing:
#   * PostgreSQL on 127.0.0.1:5432 (the machine's server if it has one; else Debian's package),
#   * a Kafka-protocol broker (tansu, built from crates.io once and reused) on 127.0.0.1:${KAFKA_PORT:-9092},
#     keeping its data in a SQLite file under .services/ so that it survives a restart.
# Waits until both answer, then prints the variables to export (and nothing else on stdout):
#   eval "$(scripts/services.sh)"
# Logs go to stderr. `scripts/services.sh stop` stops the broker it started.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
state=${OUTBOX_SERVICES_DIR:-$repo/.services}
kafka_port=${KAFKA_PORT:-9092}
tansu_version=0.6.0
mkdir -p "$state"

log() { printf 'services: %s\n' "$*" >&2; }
fail() { log "error: $*"; exit 1; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for_port() { # port seconds [pid that must stay alive]
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    port_open "$1" && return 0
    if [[ -n ${3:-} ]] && ! kill -0 "$3" 2>/dev/null; then
      return 1
    fi
    sleep 0.1
  done
  return 1
}

stop_broker() {
  local pid i
  if [[ -f $state/tansu.pid ]]; then
    pid=$(cat "$state/tansu.pid")
    kill "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    log "broker stopped"
  fi
  rm -f "$state/tansu.pid"
}

if [[ ${1:-} == stop ]]; then
  stop_broker
  exit 0
fi

# --- PostgreSQL ---------------------------------------------------------------------------------
database_url=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
if ! port_open 5432; then
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    log "installing PostgreSQL (Debian package)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 && apt-get install -y -qq postgresql >&2
    conf=$(ls -d /etc/postgresql/*/main | head -1)
    # Local development server: trust connections from this machine only.
    sed -i -E 's/^(host\s+all\s+all\s+(127\.0\.0\.1\/32|::1\/128)\s+)\S+/\1trust/' "$conf/pg_hba.conf"
  fi
  log "starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -1)" main start >&2 ||
    fail "could not start PostgreSQL"
fi
wait_for_port 5432 30 || fail "PostgreSQL does not answer on 127.0.0.1:5432"
log "PostgreSQL answers on 127.0.0.1:5432"

# --- Kafka-protocol broker (tansu) ----------------------------------------------------------------
export PATH="$HOME/.cargo/bin:$PATH"
install_tansu() {
  command -v tansu >/dev/null 2>&1 && return 0 # another caller may have built it while we waited
  log "building the tansu broker $tansu_version from crates.io (about 20 minutes on 2 cores, once)"
  cargo install --locked tansu --version "$tansu_version" --features libsql,dynostore >&2 ||
    fail "cargo install tansu failed"
}
if ! command -v tansu >/dev/null 2>&1; then
  # One build at a time: concurrent callers wait for the first one instead of building it again.
  exec 9>"$state/install.lock"
  flock 9
  install_tansu
  exec 9>&-
fi
if ! port_open "$kafka_port"; then
  log "starting tansu on 127.0.0.1:$kafka_port (data in $state/tansu.db)"
  # tansu resolves a sqlite:// path against its working directory.
  (cd "$state" && exec nohup tansu broker \
    --listener-url "tcp://127.0.0.1:$kafka_port" \
    --advertised-listener-url "tcp://127.0.0.1:$kafka_port" \
    --storage-engine "sqlite://tansu.db" \
    >"$state/tansu.log" 2>&1 </dev/null) &
  echo $! >"$state/tansu.pid"
  wait_for_port "$kafka_port" 60 "$(cat "$state/tansu.pid")" || {
    tail -20 "$state/tansu.log" >&2
    fail "the broker did not start (log: $state/tansu.log)"
  }
  # tansu 0.6's SQLite schema lacks an index that every fetch needs (see the script).
  python3 "$repo/scripts/index-tansu-headers.py" "$state/tansu.db" >&2 ||
    fail "could not index the broker's header table"
fi
log "Kafka broker answers on 127.0.0.1:$kafka_port"

echo "export DATABASE_URL=$database_url"
echo "export KAFKA_BROKERS=127.0.0.1:$kafka_port"
