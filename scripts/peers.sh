#!/usr/bin/env bash
# The peers the benchmarks compare the relay with, on the same PostgreSQL and the same Kafka: for
# now Debezium's outbox event router (the PostgreSQL connector with the EventRouter SMT) in a Kafka
# Connect standalone worker, from Maven Central artifacts (scripts/peers/pom.xml). An instance is a
# directory holding worker.properties, connector.properties, debezium.env (its settings, for
# stop), offsets.dat (Connect's offsets), debezium.log and debezium.pid.
#
#   scripts/peers.sh fetch
#       Fetches the Connect worker's and Debezium's jars with Maven into a cache folder, once, and
#       compiles the smoke check's consumer; prints the cache folder. Later calls reuse the cache.
#   scripts/peers.sh schema [--print]
#       Creates the database and Debezium's outbox table in it if they are missing (or only prints
#       the table's SQL): id uuid primary key, aggregatetype, aggregateid, type (varchar not null),
#       payload bytea. The payload's bytes are a record's value as they are; aggregateid (as UTF-8)
#       is its key; the topic is DEBEZIUM_TOPIC_PREFIX followed by aggregatetype.
#   scripts/peers.sh start DIR [DEBEZIUM_X=VALUE...]
#       Starts Debezium in the background for the outbox table, from now on: drops an inactive slot
#       of that name left by an earlier run, and that publication, creates the database and the
#       table if missing, forgets DIR's old offsets, starts the worker (log appended to
#       DIR/debezium.log, pid in DIR/debezium.pid) and waits until the connector and its task are
#       RUNNING (Connect's REST API on 127.0.0.1:DEBEZIUM_PORT) and the slot is streaming. Does
#       nothing if DIR's instance already runs. Fails with the log's path otherwise, leaving
#       nothing running and no slot behind.
#   scripts/peers.sh run DIR        Runs DIR's worker in the foreground (the process becomes the JVM).
#   scripts/peers.sh stop [--kill] DIR
#       SIGTERM to DIR's worker, then SIGKILL after DEBEZIUM_STOP_SECONDS (30); with --kill, SIGKILL
#       at once. Only the pid in DIR/debezium.pid, and only if it is that worker's JVM. Then drops
#       its replication slot and its publication (and fails if the slot cannot be dropped). Does
#       nothing for a DIR that start never set up; safe to repeat.
#   scripts/peers.sh status DIR     Prints Connect's status of DIR's connector (JSON); fails unless
#                                   the connector and its task are RUNNING.
#   scripts/peers.sh smoke [N]
#       With the services running (eval "$(scripts/services.sh)"), twice: N (1000) rows in 10
#       transactions over 5 aggregate ids, read back from the routed topic and checked (count,
#       keys, per-key order, the key in the value), with the time from the last commit to the last
#       record read; then 20 single-row transactions 50 ms apart, with each one's commit-to-read
#       latency. Between the two: stop (no slot, no publication left), a start killed with SIGKILL
#       (its slot stays), and a start that must drop that stale slot. Uses its own database
#       (outbox_debezium_smoke, dropped at the end), slot, publication and port (18093); leaves
#       nothing running, and no topic. Its files stay in a /tmp/peers-smoke.* folder (it says which).
#
# Records: topic = DEBEZIUM_TOPIC_PREFIX + aggregatetype, key = aggregateid's UTF-8 bytes
# (StringConverter), value = payload's bytes unchanged (bytea through Debezium's
# BinaryDataConverter), one header `id` = the row's id; the timestamp is Debezium's (when it read
# the change). Every start streams from the moment its slot is created: rows committed while no
# instance runs are not published (the benchmarks start Debezium before they write).
#
# Environment: DATABASE_URL and KAFKA_BROKERS (as scripts/services.sh prints them); the settings,
# each also accepted as an argument DEBEZIUM_X=VALUE after start's DIR:
#   DEBEZIUM_DATABASE (outbox_debezium), DEBEZIUM_TABLE (public.debezium_outbox),
#   DEBEZIUM_SLOT (debezium_outbox), DEBEZIUM_PUBLICATION (debezium_outbox),
#   DEBEZIUM_TOPIC_PREFIX (empty: the topic is the aggregate type), DEBEZIUM_PORT (18083, the REST
#   API), DEBEZIUM_POLL_MS (10: Debezium's poll.interval.ms, how long its reader sleeps when the
#   slot has nothing new; 500 by default), DEBEZIUM_LINGER_MS (1, the producer's linger.ms, as the
#   relay's), DEBEZIUM_HEAP (512m), DEBEZIUM_START_SECONDS (120);
# OUTBOX_CACHE_DIR (default ~/.cache/outbox), JAVA_HOME (else `java` on PATH; Java 17 or newer).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache_root=${OUTBOX_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/outbox}
pom=$here/peers/pom.xml
debezium_version=$(sed -n 's:.*<debezium.version>\(.*\)</debezium.version>.*:\1:p' "$pom")
connect_version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$pom")
# The cache is keyed by what it is made from: a change to the pom or the consumer fetches anew.
cache_key=$(cat "$pom" "$here/peers/Consume.java" | sha256sum | cut -c1-12)
cache=$cache_root/debezium-$debezium_version-$cache_key
java=${JAVA_HOME:+$JAVA_HOME/bin/}java
javac=${JAVA_HOME:+$JAVA_HOME/bin/}javac
log4j_config=$here/peers/log4j2.properties
connector_name=debezium-outbox

log() { printf 'peers: %s\n' "$*" >&2; }
fail() {
  log "error: $*"
  exit 1
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

check_java() {
  local version major
  command -v "$java" >/dev/null 2>&1 || fail "no Java found ($java); Kafka Connect $connect_version needs Java 17 or newer (set JAVA_HOME)"
  version=$("$java" -version 2>&1 | sed -n 's/.*version "\([^"]*\)".*/\1/p' | head -1)
  major=${version%%.*}
  [[ $major =~ ^[0-9]+$ ]] || fail "cannot read the version of $java (got '$version')"
  ((major >= 17)) || fail "$java is Java $version; Kafka Connect $connect_version needs Java 17 or newer (set JAVA_HOME)"
}

# --- fetch ----------------------------------------------------------------------------------------
maven() { # PROFILE OUTPUT_DIR LOG [ARG...]: copies the profile's runtime dependencies into OUTPUT_DIR
  local profile=$1 output=$2 maven_log=$3
  shift 3
  # Short network timeouts: an unreachable repository fails within a minute, not after retries.
  timeout 600 mvn -B -q -f "$pom" -P "$profile" \
    -Dmaven.wagon.http.retryHandler.count=1 \
    -Dmaven.wagon.httpconnectionManager.ttlSeconds=30 \
    -Daether.connector.connectTimeout=15000 -Daether.connector.requestTimeout=30000 \
    dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$output" "$@" >>"$maven_log" 2>&1
}

fetch() {
  [[ -f $cache/complete ]] && return 0
  mkdir -p "$cache_root"
  exec 8>"$cache_root/fetch.lock"
  flock 8 # concurrent callers wait for one fetch (and never share Maven's local repository)
  [[ -f $cache/complete ]] && return 0
  check_java
  command -v mvn >/dev/null 2>&1 || fail "Maven (mvn) is not installed; it fetches io.debezium:debezium-connector-postgres:$debezium_version"
  command -v "$javac" >/dev/null 2>&1 || fail "no Java compiler ($javac) to build the smoke check's consumer; install a JDK 17 or newer"
  local tmp=$cache.tmp archive
  rm -rf "$tmp"
  archive=debezium-connector-postgres-$debezium_version-plugin.tar.gz
  mkdir -p "$tmp/connect" "$tmp/archive" "$tmp/plugins" "$tmp/classes"
  log "fetching org.apache.kafka:connect-runtime:$connect_version and its runtime dependencies with Maven (once)"
  if ! maven connect "$tmp/connect" "$tmp/maven.log"; then
    tail -15 "$tmp/maven.log" >&2
    fail "Maven could not fetch org.apache.kafka:connect-runtime:$connect_version (and connect-json, log4j) from its repository (Maven Central); full log: $tmp/maven.log"
  fi
  ls "$tmp/connect/connect-runtime-$connect_version.jar" >/dev/null 2>&1 ||
    fail "Maven finished but connect-runtime-$connect_version.jar is not in $tmp/connect (log: $tmp/maven.log)"
  log "fetching Debezium's plugin archive io.debezium:debezium-connector-postgres:$debezium_version:tar.gz:plugin with Maven (once)"
  if ! maven debezium "$tmp/archive" "$tmp/maven.log" -DexcludeTransitive=true; then
    tail -15 "$tmp/maven.log" >&2
    fail "Maven could not fetch io.debezium:debezium-connector-postgres:$debezium_version:tar.gz:plugin from its repository (Maven Central); full log: $tmp/maven.log"
  fi
  [[ -f $tmp/archive/$archive ]] || fail "Maven finished but $archive is not in $tmp/archive (log: $tmp/maven.log)"
  tar -xzf "$tmp/archive/$archive" -C "$tmp/plugins" || fail "cannot unpack $tmp/archive/$archive"
  rm -rf "$tmp/archive"
  ls "$tmp/plugins/debezium-connector-postgres/debezium-connector-postgres-$debezium_version.jar" \
    "$tmp/plugins/debezium-connector-postgres/debezium-connect-plugins-$debezium_version.jar" >/dev/null 2>&1 ||
    fail "Debezium's connector or its plugins jar is not in $archive"
  "$javac" -nowarn -cp "$tmp/connect/*" -d "$tmp/classes" "$here/peers/Consume.java" >&2 ||
    fail "compiling the smoke check's consumer (scripts/peers/Consume.java) failed"
  rm -rf "$cache"
  mv "$tmp" "$cache"
  touch "$cache/complete"
  log "Debezium $debezium_version on Kafka Connect $connect_version cached in $cache"
}

# --- settings -------------------------------------------------------------------------------------
# DATABASE_URL's parts: postgres://[USER[:PASSWORD]@]HOST[:PORT][/DATABASE][?...]
parse_database_url() {
  [[ -n ${DATABASE_URL:-} ]] || fail "DATABASE_URL is not set (eval \"\$(scripts/services.sh)\")"
  local re='^postgres(ql)?://(([^:@/]*)(:([^@/]*))?@)?([^:/?]+)(:([0-9]+))?(/([^?]*))?(\?.*)?$'
  [[ $DATABASE_URL =~ $re ]] || fail "DATABASE_URL is not a postgres://user@host:port/database URL: $DATABASE_URL"
  db_user=${BASH_REMATCH[3]:-postgres}
  db_password=${BASH_REMATCH[5]:-}
  db_host=${BASH_REMATCH[6]}
  db_port=${BASH_REMATCH[8]:-5432}
  db_admin=${BASH_REMATCH[10]:-postgres}
  db_query=${BASH_REMATCH[11]:-}
}

db_url() { # DATABASE: DATABASE_URL with another database
  echo "postgres://$db_user${db_password:+:$db_password}@$db_host:$db_port/$1$db_query"
}

identifier() { # NAME VALUE: a lower-case SQL identifier, used unquoted
  [[ $2 =~ ^[a-z_][a-z0-9_]*$ ]] || fail "$1 must be a lower-case SQL identifier ([a-z_][a-z0-9_]*), got '$2'"
}

settings() {
  parse_database_url
  database=${DEBEZIUM_DATABASE:-outbox_debezium}
  table=${DEBEZIUM_TABLE:-public.debezium_outbox}
  [[ $table == *.* ]] || table=public.$table
  slot=${DEBEZIUM_SLOT:-debezium_outbox}
  publication=${DEBEZIUM_PUBLICATION:-debezium_outbox}
  topic_prefix=${DEBEZIUM_TOPIC_PREFIX:-}
  rest_port=${DEBEZIUM_PORT:-18083}
  poll_ms=${DEBEZIUM_POLL_MS:-10}
  linger_ms=${DEBEZIUM_LINGER_MS:-1}
  heap=${DEBEZIUM_HEAP:-512m}
  identifier DEBEZIUM_DATABASE "$database"
  identifier "DEBEZIUM_TABLE's schema" "${table%%.*}"
  identifier "DEBEZIUM_TABLE's table" "${table#*.}"
  identifier DEBEZIUM_SLOT "$slot"
  identifier DEBEZIUM_PUBLICATION "$publication"
  [[ $topic_prefix =~ ^[A-Za-z0-9._-]*$ ]] || fail "DEBEZIUM_TOPIC_PREFIX may hold only letters, digits, '.', '_' and '-', got '$topic_prefix'"
  [[ $heap =~ ^[0-9]+[kKmMgG]?$ ]] || fail "DEBEZIUM_HEAP must be a JVM heap size such as 512m, got '$heap'"
  local name
  for name in rest_port poll_ms linger_ms; do
    [[ ${!name} =~ ^[0-9]+$ ]] || fail "the setting $name must be a number, got '${!name}'"
  done
}

setting_args() { # KEY=VALUE...: settings given as arguments
  local arg
  for arg in "$@"; do
    [[ $arg =~ ^DEBEZIUM_(DATABASE|TABLE|SLOT|PUBLICATION|TOPIC_PREFIX|PORT|POLL_MS|LINGER_MS|HEAP|START_SECONDS)= ]] ||
      fail "unknown argument '$arg' (settings are DEBEZIUM_X=VALUE; see the top of $0)"
    export "${arg?}"
  done
}

sql() { # DATABASE SQL: runs SQL, prints the rows unaligned (no notices)
  PGOPTIONS="-c client_min_messages=warning" psql "$(db_url "$1")" -XAtq -v ON_ERROR_STOP=1 -c "$2"
}

# --- schema ---------------------------------------------------------------------------------------
# Debezium's outbox table as its outbox event router's documentation describes it, with payload
# bytea (the documentation's example has jsonb): with the BinaryDataConverter that start
# configures, a record's value is the column's bytes, whatever they are (JSON or not), as with the
# relay's own bytea payload. A jsonb column would reach Kafka as JSON text (re-serialised by
# PostgreSQL, keys reordered), a string schema that BinaryDataConverter refuses.
table_sql() {
  cat <<SQL
CREATE TABLE IF NOT EXISTS $table (
    id            uuid         PRIMARY KEY,
    aggregatetype varchar(255) NOT NULL,
    aggregateid   varchar(255) NOT NULL,
    type          varchar(255) NOT NULL,
    payload       bytea
);
SQL
}

create_schema() {
  command -v psql >/dev/null 2>&1 || fail "psql is not installed (Debian's postgresql-client package)"
  local exists
  exists=$(sql "$db_admin" "SELECT 1 FROM pg_database WHERE datname = '$database'") ||
    fail "cannot connect to PostgreSQL as DATABASE_URL says ($DATABASE_URL)"
  if [[ -z $exists ]]; then
    # A concurrent caller may create it first: only a database that is still missing is an error.
    sql "$db_admin" "CREATE DATABASE $database" 2>/dev/null ||
      [[ -n $(sql "$db_admin" "SELECT 1 FROM pg_database WHERE datname = '$database'") ]] ||
      fail "cannot create the database $database"
  fi
  sql "$database" "CREATE SCHEMA IF NOT EXISTS ${table%%.*}; $(table_sql)" >/dev/null 2>&1 ||
    sql "$database" "$(table_sql)" >/dev/null || fail "cannot create the table $table in the database $database"
}

schema() {
  local print=0
  if [[ ${1:-} == --print ]]; then
    print=1
    shift
  fi
  setting_args "$@"
  if ((print)); then
    table=${DEBEZIUM_TABLE:-public.debezium_outbox}
    [[ $table == *.* ]] || table=public.$table
    table_sql
    return 0
  fi
  settings
  create_schema
  log "the table $table is in the database $database"
}

# --- the slot and the publication -----------------------------------------------------------------
# A logical slot is the server's, not the database's: a name is one slot in the whole cluster.
slot_state() { # prints nothing (no slot), `inactive`, or the pid of the walsender using it
  sql "$db_admin" "SELECT CASE WHEN active THEN active_pid::text ELSE 'inactive' END FROM pg_replication_slots WHERE slot_name = '$slot'"
}

drop_slot() { # [SECONDS]: drops the slot, waiting up to SECONDS for its walsender to go
  local seconds=${1:-10} state deadline
  deadline=$((SECONDS + seconds))
  while :; do
    state=$(slot_state) || fail "cannot query pg_replication_slots (DATABASE_URL: $DATABASE_URL)"
    [[ -z $state ]] && return 0
    if [[ $state == inactive ]]; then
      # Another call may drop it between the query and the drop: the loop looks again.
      sql "$db_admin" "SELECT pg_drop_replication_slot('$slot')" >/dev/null 2>&1 || true
      continue
    fi
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

drop_publication() {
  [[ -n $(sql "$db_admin" "SELECT 1 FROM pg_database WHERE datname = '$database'") ]] || return 0
  sql "$database" "DROP PUBLICATION IF EXISTS $publication" >/dev/null
}

# --- one instance ---------------------------------------------------------------------------------
instance_pid() { # DIR: the pid of the instance's JVM, if it runs
  local dir pid
  dir=$(cd "$1" 2>/dev/null && pwd) || return 1
  [[ -f $dir/debezium.pid ]] || return 1
  pid=$(cat "$dir/debezium.pid")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  # Only ours: the JVM, whose command line names this instance's worker.properties (by its
  # absolute path), or this script an instant before it becomes that JVM.
  { tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null |
    grep -qE -- "ConnectStandalone $dir/worker\.properties|peers\.sh run $dir( |\$)" || return 1
  echo "$pid"
}

write_config() { # DIR
  local dir=$1
  # The settings, for stop (and for a reader: they are what this instance runs with).
  {
    echo "# Written by scripts/peers.sh start."
    local name
    for name in DATABASE_URL KAFKA_BROKERS; do printf '%s=%q\n' "$name" "${!name}"; done
    printf 'DEBEZIUM_%s=%q\n' DATABASE "$database" TABLE "$table" SLOT "$slot" PUBLICATION "$publication" \
      TOPIC_PREFIX "$topic_prefix" PORT "$rest_port" POLL_MS "$poll_ms" LINGER_MS "$linger_ms" HEAP "$heap"
  } >"$dir/debezium.env"
  cat >"$dir/worker.properties" <<PROPERTIES
# Written by scripts/peers.sh start: a Kafka Connect $connect_version standalone worker.
bootstrap.servers=$KAFKA_BROKERS
listeners=http://127.0.0.1:$rest_port
rest.advertised.host.name=127.0.0.1
rest.advertised.port=$rest_port
plugin.path=$cache/plugins
# Plugins from their ServiceLoader manifests (Debezium's and Kafka's jars have them): no scan.
plugin.discovery=service_load
offset.storage.file.filename=$dir/offsets.dat
# Connect commits offsets, and Debezium then confirms the LSN to the slot, each second: the slot
# keeps little WAL.
offset.flush.interval.ms=1000
task.shutdown.graceful.timeout.ms=10000
# The worker's defaults; the connector sets its own.
key.converter=org.apache.kafka.connect.json.JsonConverter
value.converter=org.apache.kafka.connect.json.JsonConverter
# Its producer, as the relay's: every record acknowledged by all in-sync replicas, idempotent,
# linger.ms as the relay's. (Connect's own source defaults: max.in.flight 1, no delivery timeout.)
producer.acks=all
producer.enable.idempotence=true
producer.linger.ms=$linger_ms
PROPERTIES
  cat >"$dir/connector.properties" <<PROPERTIES
# Written by scripts/peers.sh start: Debezium $debezium_version's PostgreSQL connector with its
# outbox event router, as Debezium's outbox documentation configures it.
name=$connector_name
connector.class=io.debezium.connector.postgresql.PostgresConnector
tasks.max=1
database.hostname=$db_host
database.port=$db_port
database.user=$db_user
database.password=$db_password
database.dbname=$database
# Names the topics of records the router does not route (none: no heartbeats, no schema changes).
topic.prefix=debezium_$slot
plugin.name=pgoutput
slot.name=$slot
publication.name=$publication
# Debezium creates the publication for the captured table only; stop drops it and the slot.
publication.autocreate.mode=filtered
slot.drop.on.stop=false
table.include.list=$table
# No snapshot: the outbox table's existing rows are not events; streaming starts at the slot,
# which start creates anew.
snapshot.mode=no_data
# How long the WAL reader sleeps when the slot has nothing new (500 ms by default).
poll.interval.ms=$poll_ms
tombstones.on.delete=false
# Without Debezium's four __debezium.context.* headers (connector, task, run id: tracking, not the
# outbox pattern's); the router's own header id (the event id) stays.
extended.headers.enabled=false
# Key: the aggregate id (a string) as its UTF-8 bytes. Value: the payload column's bytes as they
# are (bytea); records that carry no bytes, were there any, would be schemaless JSON.
key.converter=org.apache.kafka.connect.storage.StringConverter
value.converter=io.debezium.converters.BinaryDataConverter
value.converter.delegate.converter.type=org.apache.kafka.connect.json.JsonConverter
value.converter.delegate.converter.type.schemas.enable=false
transforms=outbox
transforms.outbox.type=io.debezium.transforms.outbox.EventRouter
transforms.outbox.route.by.field=aggregatetype
transforms.outbox.route.topic.replacement=$topic_prefix\${routedByValue}
transforms.outbox.table.field.event.id=id
transforms.outbox.table.field.event.key=aggregateid
transforms.outbox.table.field.event.payload=payload
transforms.outbox.table.expand.json.payload=false
# Outbox rows are inserted only: an update is an error in the log; deletes are dropped.
transforms.outbox.table.op.invalid.behavior=error
PROPERTIES
}

run() {
  local dir
  dir=$(cd "$1" && pwd)
  [[ -f $dir/worker.properties && -f $dir/debezium.env ]] || fail "$dir is not a Debezium instance (use peers.sh start)"
  fetch
  check_java
  local heap
  heap=$(sed -n 's/^DEBEZIUM_HEAP=//p' "$dir/debezium.env")
  exec "$java" -Xms"${heap:-512m}" -Xmx"${heap:-512m}" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExitOnOutOfMemoryError \
    -Djava.awt.headless=true -Dlog4j2.configurationFile="$log4j_config" \
    -cp "$cache/connect/*" org.apache.kafka.connect.cli.ConnectStandalone \
    "$dir/worker.properties" "$dir/connector.properties"
}

connector_status() { curl -s -m 2 "http://127.0.0.1:$rest_port/connectors/$connector_name/status" 2>/dev/null; }

start() {
  (($# >= 1)) || fail "usage: peers.sh start DIR [DEBEZIUM_X=VALUE...]"
  local dir=$1
  shift
  setting_args "$@"
  [[ -n ${KAFKA_BROKERS:-} ]] || fail "KAFKA_BROKERS is not set (eval \"\$(scripts/services.sh)\")"
  settings
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  if instance_pid "$dir" >/dev/null; then
    log "Debezium in $dir already runs"
    return 0
  fi
  command -v curl >/dev/null 2>&1 || fail "curl is not installed; it asks Connect's REST API whether the connector runs"
  port_open "$rest_port" && fail "port $rest_port on 127.0.0.1 is taken by another process (not the Debezium in $dir); choose another DEBEZIUM_PORT"
  fetch
  check_java
  create_schema
  # An earlier run's slot of this name (one that was killed, or never stopped): dropped, since
  # this run starts from now. One in use is another client's: not ours to take.
  local state
  state=$(slot_state)
  [[ $state == inactive ]] && log "dropping the replication slot $slot that an earlier run left behind"
  drop_slot 10 || {
    state=$(slot_state)
    fail "the replication slot $slot is in use by the walsender with pid $state (another Debezium or client); stop it or choose another DEBEZIUM_SLOT"
  }
  drop_publication
  rm -f "$dir/offsets.dat"
  write_config "$dir"
  local started=$SECONDS seconds=${DEBEZIUM_START_SECONDS:-120} status=""
  log "starting Debezium $debezium_version (Kafka Connect $connect_version, $("$java" -version 2>&1 | head -1)) for $database.$table, slot $slot, REST on 127.0.0.1:$rest_port (log: $dir/debezium.log)"
  # The worker must not inherit the callers' lock files (fd 8 here, fd 9 in services.sh), or it
  # would hold their locks for as long as it runs.
  nohup "$here/peers.sh" run "$dir" >>"$dir/debezium.log" 2>&1 </dev/null 8>&- 9>&- &
  echo $! >"$dir/debezium.pid"
  disown $! # not the caller's job: no word from its shell when it ends
  while :; do
    if ! instance_pid "$dir" >/dev/null; then
      tail -30 "$dir/debezium.log" >&2 || true
      drop_slot 10 || true
      fail "Debezium in $dir exited while starting (log: $dir/debezium.log)"
    fi
    status=$(connector_status) || status=""
    if [[ $status == *'"state":"FAILED"'* ]]; then
      log "Connect says: $(printf '%s' "$status" | head -c 2000)"
      abort_start "$dir" "the Debezium connector failed to start (log: $dir/debezium.log)"
    fi
    # The connector and its one task RUNNING (the task has connected and created the slot), and
    # the slot streaming to it: rows committed from now on reach Kafka.
    if [[ $(grep -o '"state":"RUNNING"' <<<"$status" | wc -l) == 2 ]] && [[ $(slot_state) =~ ^[0-9]+$ ]]; then
      log "Debezium runs in $dir after $((SECONDS - started)) s (pid $(cat "$dir/debezium.pid"), slot $slot streaming)"
      return 0
    fi
    if ((SECONDS - started >= seconds)); then
      log "Connect says: ${status:-no answer on 127.0.0.1:$rest_port}"
      abort_start "$dir" "Debezium in $dir is not running after ${seconds}s (log: $dir/debezium.log)"
    fi
    sleep 0.5
  done
}

abort_start() { # DIR MESSAGE: a start that failed leaves nothing running and no slot
  tail -30 "$1/debezium.log" >&2 || true
  stop_instance --kill "$1" || true
  fail "$2"
}

stop_instance() {
  local signal=TERM dir pid i
  if [[ ${1:-} == --kill ]]; then
    signal=KILL
    shift
  fi
  (($# == 1)) || fail "usage: peers.sh stop [--kill] DIR"
  [[ -d $1 ]] || return 0
  dir=$(cd "$1" && pwd)
  [[ -f $dir/debezium.env ]] || return 0 # never started: nothing to stop or drop
  if pid=$(instance_pid "$dir"); then
    kill -"$signal" "$pid" 2>/dev/null || true
    local limit=$((${DEBEZIUM_STOP_SECONDS:-30} * 10))
    for ((i = 0; i < limit; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      log "Debezium in $dir did not stop within ${DEBEZIUM_STOP_SECONDS:-30} s of SIG$signal; killing it"
      kill -KILL "$pid" 2>/dev/null || true
      while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    fi
  fi
  rm -f "$dir/debezium.pid"
  # Its own settings, as start wrote them (in a subshell: they do not leak into the caller's).
  (
    # shellcheck disable=SC1091
    source "$dir/debezium.env"
    export DATABASE_URL KAFKA_BROKERS
    settings
    # Its walsender goes once the JVM's connection closes; one still there after 10 s serves no one
    # (the JVM is gone): ended, then the slot dropped.
    if ! drop_slot 10; then
      local state
      state=$(slot_state)
      log "the walsender $state still holds the slot $slot after Debezium exited; ending it"
      sql "$db_admin" "SELECT pg_terminate_backend($state)" >/dev/null || true
      drop_slot 10 || fail "cannot drop the replication slot $slot (held by pid $(slot_state)); drop it by hand: SELECT pg_drop_replication_slot('$slot')"
    fi
    drop_publication || fail "cannot drop the publication $publication in the database $database"
    log "Debezium in $dir stopped; slot $slot and publication $publication dropped"
  )
}

status() { # DIR: Connect's status of DIR's connector; fails unless it and its task are RUNNING
  (($# == 1)) || fail "usage: peers.sh status DIR"
  local dir answer
  dir=$(cd "$1" 2>/dev/null && pwd) || fail "no directory $1"
  instance_pid "$dir" >/dev/null || fail "Debezium in $dir does not run (log: $dir/debezium.log)"
  rest_port=$(sed -n 's/^DEBEZIUM_PORT=//p' "$dir/debezium.env")
  answer=$(connector_status) || fail "Connect does not answer on 127.0.0.1:$rest_port (log: $dir/debezium.log)"
  echo "$answer"
  [[ $(grep -o '"state":"RUNNING"' <<<"$answer" | wc -l) == 2 ]] || fail "Debezium in $dir is not RUNNING (log: $dir/debezium.log)"
}

# --- the smoke check ------------------------------------------------------------------------------
now_ms() { date +%s%3N; }

consume() { # DIR NAME TOPIC COUNT: starts a consumer of TOPIC in the background, waits until it is ready
  local dir=$1 name=$2 topic=$3 count=$4 i
  rm -f "$dir/$name.ready"
  # It creates the topic (3 partitions) if missing, waits at its beginning, and deletes the topic
  # once it has read it: the shared broker keeps none of the smoke check's topics.
  "$java" -XX:TieredStopAtLevel=1 -Xshare:auto -Dlog4j2.configurationFile="$log4j_config" -Dpeers.log.level=warn \
    -cp "$cache/classes:$cache/connect/*" Consume "$KAFKA_BROKERS" "$topic" 3 "$count" 120 "$dir/$name.ready" --delete \
    >"$dir/$name.tsv" 2>"$dir/$name.consumer.log" 8>&- 9>&- &
  consumer=$!
  for ((i = 0; i < 600; i++)); do
    [[ -f $dir/$name.ready ]] && return 0
    kill -0 "$consumer" 2>/dev/null || fail "the consumer exited before it was ready (log: $dir/$name.consumer.log)"
    sleep 0.1
  done
  fail "the consumer is not ready after 60 s (log: $dir/$name.consumer.log)"
}

consumed() { # DIR NAME COUNT TOPIC: waits for the consumer that consume started
  if ! wait "$consumer"; then
    cat "$1/$2.consumer.log" >&2
    fail "$2: the consumer read $(wc -l <"$1/$2.tsv") of $3 records of topic $4 (Debezium's log: $1/debezium.log)"
  fi
}

smoke_round() { # DIR ROUND N: N rows on a fresh topic, read back and checked
  local dir=$1 round=$2 n=$3 keys=5 transactions=10 aggregate out t0 commit_ms last_ms first_ms consumer i
  aggregate=smoke_$(date +%s)_$round
  out=$dir/round-$round.tsv
  consume "$dir" "round-$round" "$topic_prefix$aggregate" "$n"
  # n rows in `transactions` transactions; row i has key agg-(i mod keys) and payload `KEY:i`.
  local per=$((n / transactions)) script="" from to
  for ((i = 0; i < transactions; i++)); do
    from=$((i * per))
    to=$((i == transactions - 1 ? n - 1 : from + per - 1))
    script+="BEGIN; INSERT INTO $table (id, aggregatetype, aggregateid, type, payload)
      SELECT gen_random_uuid(), '$aggregate', 'agg-' || (g % $keys), 'SmokeEvent', convert_to('agg-' || (g % $keys) || ':' || g, 'UTF8')
      FROM generate_series($from, $to) AS g ORDER BY g; COMMIT;
"
  done
  t0=$(now_ms)
  # The server's clock after the last commit (the same clock as this machine's).
  commit_ms=$(psql "$(db_url "$database")" -XAtq -v ON_ERROR_STOP=1 \
    <<<"$script SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint;") ||
    fail "inserting into $table failed"
  commit_ms=${commit_ms##*$'\n'}
  consumed "$dir" "round-$round" "$n" "$topic_prefix$aggregate"
  # Count, keys, per-key order: each key's payloads in increasing row order, the key in the value.
  local verdict
  verdict=$(awk -F'\t' -v n="$n" -v keys="$keys" '
    { count++; split($5, v, ":")
      if (v[1] != $4) { bad = bad sprintf("record %s/%s: key %s, value %s; ", $2, $3, $4, $5) }
      if (($4 in last) && v[2] + 0 <= last[$4]) { bad = bad sprintf("key %s: %s after %s; ", $4, v[2], last[$4]) }
      last[$4] = v[2] + 0; seen[v[2]]++; per[$4]++
      if (first == "" || $1 < first) first = $1; if ($1 > lastms) lastms = $1 }
    END {
      for (i = 0; i < n; i++) if (seen[i] != 1) { bad = bad sprintf("row %d read %d times; ", i, seen[i]); if (++shown > 5) break }
      k = 0; for (key in per) k++
      if (count != n) bad = bad sprintf("%d records, not %d; ", count, n)
      if (k != keys) bad = bad sprintf("%d keys, not %d; ", k, keys)
      print (bad == "" ? "ok" : bad) "\t" first "\t" lastms }' "$out")
  [[ ${verdict%%$'\t'*} == ok ]] || fail "round $round: ${verdict%%$'\t'*}(records in $out)"
  first_ms=$(cut -f2 <<<"$verdict")
  last_ms=$(cut -f3 <<<"$verdict")
  log "round $round: $n records on topic $topic_prefix$aggregate, $keys keys, each key in order;" \
    "inserted in $((commit_ms - t0)) ms; first record read $((first_ms - t0)) ms after the first BEGIN;" \
    "last commit to last record read: $((last_ms - commit_ms)) ms"
}

smoke_probe() { # DIR ROUND P: P single-row transactions 50 ms apart; commit-to-read latency of each
  local dir=$1 round=$2 p=$3 aggregate script="" j consumer
  aggregate=probe_$(date +%s)_$round
  consume "$dir" "probe-$round" "$topic_prefix$aggregate" "$p"
  for ((j = 0; j < p; j++)); do
    script+="INSERT INTO $table (id, aggregatetype, aggregateid, type, payload)
      VALUES (gen_random_uuid(), '$aggregate', 'probe', 'Probe', convert_to('probe:$j', 'UTF8'));
      SELECT $j, (extract(epoch FROM clock_timestamp()) * 1000)::bigint; SELECT pg_sleep(0.05);
"
  done
  # From standard input, psql sends one statement at a time: each INSERT commits on its own.
  psql "$(db_url "$database")" -XAtq -F$'\t' -v ON_ERROR_STOP=1 <<<"$script" | grep . >"$dir/probe-$round.commits" ||
    fail "inserting into $table failed"
  consumed "$dir" "probe-$round" "$p" "$topic_prefix$aggregate"
  local stats
  stats=$(awk -F'\t' 'NR == FNR { commit[$1] = $2; next }
    { split($5, v, ":"); print $1 - commit[v[2]] }' "$dir/probe-$round.commits" "$dir/probe-$round.tsv" |
    sort -n | awk '{ l[NR] = $1 } END { printf "min %d, median %d, max %d", l[1], l[int((NR + 1) / 2)], l[NR] }')
  log "round $round: $p single-row transactions 50 ms apart, commit to record read: $stats ms"
}

smoke() {
  local n=${1:-1000}
  [[ $n =~ ^[0-9]+$ ]] || fail "usage: peers.sh smoke [N] (N >= 10 rows)"
  ((n >= 10)) || fail "usage: peers.sh smoke [N] (N >= 10 rows)"
  [[ -n ${DATABASE_URL:-} && -n ${KAFKA_BROKERS:-} ]] || fail "DATABASE_URL and KAFKA_BROKERS are not set: run eval \"\$(scripts/services.sh)\" first"
  # Names of its own: a benchmark's Debezium (the defaults) may run beside it.
  export DEBEZIUM_DATABASE=outbox_debezium_smoke DEBEZIUM_SLOT=debezium_smoke DEBEZIUM_PUBLICATION=debezium_smoke \
    DEBEZIUM_PORT=${DEBEZIUM_SMOKE_PORT:-18093} DEBEZIUM_TOPIC_PREFIX=
  settings
  fetch
  local dir t
  dir=$(mktemp -d "${TMPDIR:-/tmp}/peers-smoke.XXXXXX")
  log "smoke check in $dir"
  trap 'stop_instance "'"$dir"'" || true' EXIT
  t=$SECONDS
  start "$dir"
  smoke_round "$dir" 1 "$n"
  smoke_probe "$dir" 1 20
  stop_instance "$dir"
  [[ -z $(slot_state) ]] || fail "the slot $slot is still there after stop"
  [[ -z $(sql "$database" "SELECT 1 FROM pg_publication WHERE pubname = '$publication'") ]] ||
    fail "the publication $publication is still there after stop"
  log "stop left no slot and no publication"
  # A run that was killed leaves its slot (inactive) and its offsets: the next start drops both.
  start "$dir"
  kill -KILL "$(instance_pid "$dir")"
  rm -f "$dir/debezium.pid"
  local i
  for ((i = 0; i < 100; i++)); do
    [[ $(slot_state) == inactive ]] && break
    sleep 0.1
  done
  [[ $(slot_state) == inactive ]] || fail "the slot $slot is not inactive after Debezium was killed ($(slot_state))"
  log "Debezium killed; its slot $slot stays behind (inactive)"
  start "$dir"
  smoke_round "$dir" 2 "$n"
  smoke_probe "$dir" 2 20
  stop_instance "$dir"
  trap - EXIT
  [[ -z $(slot_state) ]] || fail "the slot $slot is still there after stop"
  sql "$db_admin" "DROP DATABASE IF EXISTS $database" >/dev/null || true
  log "smoke check passed in $((SECONDS - t)) s (logs: $dir)"
}

command=${1:-}
shift || true
case $command in
fetch) fetch && echo "$cache" ;;
schema) schema "$@" ;;
start) start "$@" ;;
run) run "$@" ;;
stop) stop_instance "$@" ;;
status) status "$@" ;;
smoke) smoke "$@" ;;
*) fail "usage: peers.sh fetch | schema | start | run | stop | status | smoke (see the top of $0)" ;;
esac
