#!/usr/bin/env bash
# Apache Kafka nodes (KRaft, combined broker and controller) from Maven Central artifacts, for the
# demo, the tests and the benchmarks. `scripts/services.sh` and the tests' private brokers both use
# it. A node is a directory holding server.properties, data/ (formatted once), kafka.log, kafka.pid.
#
#   scripts/kafka.sh fetch
#       Fetches the broker's jars (scripts/kafka/pom.xml) with Maven into a cache folder, once, and
#       compiles the readiness probe; prints the cache folder. Later calls reuse the cache.
#   scripts/kafka.sh init DIR ID PORT CONTROLLER_PORT VOTERS CLUSTER_ID REPLICATION [OPTION...]
#       Writes DIR/server.properties for node ID (clients on 127.0.0.1:PORT, controller on
#       CONTROLLER_PORT, quorum VOTERS as `1@127.0.0.1:9093,...`) and formats DIR/data for
#       CLUSTER_ID. REPLICATION is the default replication factor; with 3 or more,
#       min.insync.replicas is 2. Does nothing if DIR is already formatted. Options:
#         KEY=VALUE                   a line appended to server.properties
#         --sasl-ssl=PORT:KEYSTORE:PASSWORD
#                                     a second client listener on 127.0.0.1:PORT, SASL_SSL with
#                                     SCRAM-SHA-512 only, its certificate and key in the PKCS12
#                                     file KEYSTORE; the KRaft StandardAuthorizer then checks
#                                     ACLs for its principals (the plaintext listeners' principal,
#                                     ANONYMOUS, is a super user)
#         --scram=USER:PASSWORD       a SCRAM-SHA-512 credential, written when the storage is
#                                     formatted
#   scripts/kafka.sh acls BOOTSTRAP GRANT...
#       Grants ACLs through BOOTSTRAP (a plaintext listener); GRANT is
#       PRINCIPAL:RESOURCE_TYPE:PATTERN_TYPE:NAME:OPERATION[,OPERATION...] (scripts/kafka/Acls.java).
#   scripts/kafka.sh run DIR        Runs the node in the foreground (the process becomes the JVM).
#   scripts/kafka.sh start DIR      Runs it in the background, output appended to DIR/kafka.log,
#                                   pid in DIR/kafka.pid; fails if that port is taken by another
#                                   process. Does nothing if the node already runs.
#   scripts/kafka.sh stop [--kill] DIR...
#                                   SIGTERM (controlled shutdown) to every node, then waits up to
#                                   30 s for all, then SIGKILL; with --kill, SIGKILL at once. Only
#                                   the pid in DIR/kafka.pid, and only if it is that node's JVM.
#   scripts/kafka.sh wait BOOTSTRAP BROKERS SECONDS DIR...
#                                   Waits until a cluster-metadata request to BOOTSTRAP lists BROKERS
#                                   unfenced brokers and a controller; fails at once if a node of
#                                   DIR... exits, and at the deadline, with its last log lines. A
#                                   node answers only once it has started, so BOOTSTRAP = a node's
#                                   own address waits for that node.
#   scripts/kafka.sh cluster-id     Prints a fresh cluster id.
#
# Environment: KAFKA_HEAP (heap of a node, default 512m), OUTBOX_CACHE_DIR (default
# ~/.cache/outbox), JAVA_HOME (else `java` on PATH; Java 17 or newer).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache_root=${OUTBOX_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/outbox}
kafka_version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$here/kafka/pom.xml")
# The cache is keyed by what it is made from: a change to the pom or the probe fetches anew.
cache_key=$(cat "$here/kafka/pom.xml" "$here"/kafka/*.java | sha256sum | cut -c1-12)
cache=$cache_root/kafka-$kafka_version-$cache_key
java=${JAVA_HOME:+$JAVA_HOME/bin/}java
javac=${JAVA_HOME:+$JAVA_HOME/bin/}javac

log() { printf 'kafka: %s\n' "$*" >&2; }
fail() {
  log "error: $*"
  exit 1
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

check_java() {
  local version major
  command -v "$java" >/dev/null 2>&1 || fail "no Java found ($java); Kafka $kafka_version needs Java 17 or newer (set JAVA_HOME)"
  version=$("$java" -version 2>&1 | sed -n 's/.*version "\([^"]*\)".*/\1/p' | head -1)
  major=${version%%.*}
  [[ $major =~ ^[0-9]+$ ]] || fail "cannot read the version of $java (got '$version')"
  ((major >= 17)) || fail "$java is Java $version; Kafka $kafka_version needs Java 17 or newer (set JAVA_HOME)"
}

fetch() {
  [[ -f $cache/complete ]] && return 0
  mkdir -p "$cache_root"
  exec 8>"$cache_root/fetch.lock"
  flock 8 # concurrent callers wait for one fetch
  [[ -f $cache/complete ]] && return 0
  check_java
  command -v mvn >/dev/null 2>&1 || fail "Maven (mvn) is not installed; it fetches org.apache.kafka:kafka_2.13:$kafka_version"
  command -v "$javac" >/dev/null 2>&1 || fail "no Java compiler ($javac) to build the readiness probe; install a JDK 17 or newer"
  local tmp=$cache.tmp
  rm -rf "$tmp"
  mkdir -p "$tmp/libs" "$tmp/classes"
  log "fetching org.apache.kafka:kafka_2.13:$kafka_version and its runtime dependencies with Maven (once)"
  # Short network timeouts: an unreachable repository fails within a minute, not after retries.
  if ! timeout 300 mvn -B -q -f "$here/kafka/pom.xml" \
    -Dmaven.wagon.http.retryHandler.count=1 \
    -Dmaven.wagon.httpconnectionManager.ttlSeconds=30 \
    -Daether.connector.connectTimeout=15000 -Daether.connector.requestTimeout=30000 \
    dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp/libs" >"$tmp/maven.log" 2>&1; then
    tail -15 "$tmp/maven.log" >&2
    fail "Maven could not fetch org.apache.kafka:kafka_2.13:$kafka_version (and log4j) from its repository (Maven Central); full log: $tmp/maven.log"
  fi
  ls "$tmp/libs"/kafka_2.13-"$kafka_version".jar >/dev/null 2>&1 ||
    fail "Maven finished but kafka_2.13-$kafka_version.jar is not in $tmp/libs"
  "$javac" -nowarn -cp "$tmp/libs/*" -d "$tmp/classes" "$here"/kafka/*.java >&2 ||
    fail "compiling the helpers (scripts/kafka/*.java) failed"
  rm -rf "$cache"
  mv "$tmp" "$cache"
  touch "$cache/complete"
  log "Kafka $kafka_version cached in $cache"
}

# --- one node -------------------------------------------------------------------------------------
node_pid() { # DIR: the pid of the node's JVM, if it runs
  local dir pid
  dir=$(cd "$1" 2>/dev/null && pwd) || return 1
  [[ -f $dir/kafka.pid ]] || return 1
  pid=$(cat "$dir/kafka.pid")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  # Only our node: the JVM, whose command line names this node's server.properties (by its
  # absolute path), or this script an instant before it becomes that JVM.
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null |
    grep -qE -- "kafka\.Kafka $dir/server\.properties|kafka\.sh run $dir( |\$)" || return 1
  echo "$pid"
}

init() {
  (($# >= 7)) || fail "usage: kafka.sh init DIR ID PORT CONTROLLER_PORT VOTERS CLUSTER_ID REPLICATION [OPTION...]"
  local dir=$1 id=$2 port=$3 controller_port=$4 voters=$5 cluster_id=$6 replication=$7
  shift 7
  [[ -f $dir/data/meta.properties ]] && return 0
  local extra=() scram=() secure="" option
  for option in "$@"; do
    case $option in
    --sasl-ssl=*:*:*) secure=${option#--sasl-ssl=} ;;
    --scram=*:*)
      option=${option#--scram=}
      scram+=(--add-scram "SCRAM-SHA-512=[name=${option%%:*},password=${option#*:}]")
      ;;
    --*) fail "unknown option of kafka.sh init: ${option%%=*}" ;;
    *=*) extra+=("$option") ;;
    *) fail "kafka.sh init: not KEY=VALUE or an option: $option" ;;
    esac
  done
  fetch
  local min_isr=1
  ((replication >= 3)) && min_isr=2
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  {
    echo "# Written by scripts/kafka.sh init: node $id of cluster $cluster_id."
    echo "process.roles=broker,controller"
    echo "node.id=$id"
    echo "controller.quorum.voters=$voters"
    if [[ -n $secure ]]; then
      local secure_port=${secure%%:*} keystore=${secure#*:}
      local keystore_password=${keystore#*:}
      keystore=${keystore%%:*}
      echo "listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port,SASL_SSL://127.0.0.1:$secure_port"
      echo "advertised.listeners=PLAINTEXT://127.0.0.1:$port,SASL_SSL://127.0.0.1:$secure_port"
      echo "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL"
      echo "sasl.enabled.mechanisms=SCRAM-SHA-512"
      echo "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;"
      echo "listener.name.sasl_ssl.ssl.keystore.type=PKCS12"
      echo "listener.name.sasl_ssl.ssl.keystore.location=$keystore"
      echo "listener.name.sasl_ssl.ssl.keystore.password=$keystore_password"
      echo "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer"
      echo "super.users=User:ANONYMOUS"
      echo "allow.everyone.if.no.acl.found=false"
    else
      echo "listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port"
      echo "advertised.listeners=PLAINTEXT://127.0.0.1:$port"
      echo "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
    fi
    echo "controller.listener.names=CONTROLLER"
    echo "inter.broker.listener.name=PLAINTEXT"
    echo "log.dirs=$dir/data"
    echo "num.partitions=1"
    echo "default.replication.factor=$replication"
    echo "min.insync.replicas=$min_isr"
    echo "offsets.topic.replication.factor=$replication"
    echo "offsets.topic.num.partitions=10"
    echo "transaction.state.log.replication.factor=$replication"
    echo "transaction.state.log.min.isr=$min_isr"
    echo "share.coordinator.state.topic.replication.factor=$replication"
    echo "share.coordinator.state.topic.min.isr=$min_isr"
    echo "group.initial.rebalance.delay.ms=0"
    echo "auto.create.topics.enable=true"
    local line
    for line in "${extra[@]}"; do echo "$line"; done
  } >"$dir/server.properties"
  "$java" -Xmx256m -Dlog4j2.configurationFile="$here/kafka/log4j2.properties" -cp "$cache/libs/*" \
    kafka.tools.StorageTool format -t "$cluster_id" -c "$dir/server.properties" "${scram[@]}" >>"$dir/kafka.log" 2>&1 || {
    tail -20 "$dir/kafka.log" >&2
    fail "formatting the storage of node $id failed (log: $dir/kafka.log)"
  }
}

run() {
  local dir
  dir=$(cd "$1" && pwd)
  [[ -f $dir/server.properties ]] || fail "$dir is not a Kafka node (run kafka.sh init first)"
  fetch
  check_java
  local heap=${KAFKA_HEAP:-512m}
  exec "$java" -Xms"$heap" -Xmx"$heap" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExitOnOutOfMemoryError \
    -Djava.awt.headless=true -Dlog4j2.configurationFile="$here/kafka/log4j2.properties" \
    -cp "$cache/libs/*" kafka.Kafka "$dir/server.properties"
}

node_port() { sed -n 's|^listeners=PLAINTEXT://127.0.0.1:\([0-9]*\),.*|\1|p' "$1/server.properties"; }
node_controller_port() { sed -n 's|^listeners=.*CONTROLLER://127.0.0.1:\([0-9]*\).*|\1|p' "$1/server.properties"; }
node_secure_port() { sed -n 's|^listeners=.*SASL_SSL://127.0.0.1:\([0-9]*\).*|\1|p' "$1/server.properties"; }

start() {
  local dir p
  dir=$(cd "$1" && pwd)
  [[ -f $dir/server.properties ]] || fail "$dir is not a Kafka node (run kafka.sh init first)"
  node_pid "$dir" >/dev/null && return 0
  for p in $(node_port "$dir") $(node_controller_port "$dir") $(node_secure_port "$dir"); do
    port_open "$p" && fail "port $p on 127.0.0.1 is taken by another process (not the Kafka node in $dir); stop it or choose other ports"
  done
  fetch
  check_java
  # The node must not inherit the callers' lock files (fd 8 here, fd 9 in services.sh), or it would
  # hold their locks for as long as it runs.
  nohup "$here/kafka.sh" run "$dir" >>"$dir/kafka.log" 2>&1 </dev/null 8>&- 9>&- &
  echo $! >"$dir/kafka.pid"
}

stop() {
  local signal=TERM dir pid pids=() i alive
  if [[ ${1:-} == --kill ]]; then
    signal=KILL
    shift
  fi
  # Signal every node first, then wait: nodes of one cluster shut down together, none of them
  # waiting for a quorum that the others already left.
  for dir in "$@"; do
    [[ -d $dir ]] || continue
    dir=$(cd "$dir" && pwd)
    if pid=$(node_pid "$dir"); then
      kill -"$signal" "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
    rm -f "$dir/kafka.pid"
  done
  for ((i = 0; i < 300; i++)); do
    alive=0
    for pid in "${pids[@]}"; do
      kill -0 "$pid" 2>/dev/null && alive=1
    done
    ((alive)) || return 0
    sleep 0.1
  done
  log "a node did not stop within 30 s of SIG$signal; killing it"
  for pid in "${pids[@]}"; do
    kill -KILL "$pid" 2>/dev/null || true
  done
}

wait_ready() {
  (($# >= 4)) || fail "usage: kafka.sh wait BOOTSTRAP BROKERS SECONDS DIR..."
  local bootstrap=$1 brokers=$2 seconds=$3
  shift 3
  fetch
  local deadline=$((SECONDS + seconds)) dir answer
  while :; do
    for dir in "$@"; do
      node_pid "$dir" >/dev/null || {
        tail -30 "$dir/kafka.log" >&2 2>/dev/null || true
        fail "the Kafka node in $dir exited while starting (log: $dir/kafka.log)"
      }
    done
    if answer=$("$java" -XX:TieredStopAtLevel=1 -Xshare:auto -cp "$cache/classes:$cache/libs/*" \
      -Dlog4j2.configurationFile="$here/kafka/log4j2.properties" \
      Ready "$bootstrap" "$brokers" 5 2>/dev/null); then
      log "${answer##*$'\n'}"
      return 0
    fi
    if ((SECONDS >= deadline)); then
      for dir in "$@"; do
        log "last lines of $dir/kafka.log:"
        tail -20 "$dir/kafka.log" >&2 || true
      done
      fail "Kafka at $bootstrap is not ready after ${seconds}s: ${answer##*$'\n'}"
    fi
  done
}

acls() {
  (($# >= 2)) || fail "usage: kafka.sh acls BOOTSTRAP GRANT..."
  fetch
  local output
  output=$("$java" -Xmx128m -cp "$cache/classes:$cache/libs/*" -Dlog4j2.configurationFile="$here/kafka/log4j2.properties" \
    Acls "$@" 2>&1) || fail "${output##*$'\n'}"
  log "${output##*$'\n'}"
}

cluster_id() {
  fetch
  local output
  output=$("$java" -Xmx128m -cp "$cache/libs/*" -Dlog4j2.configurationFile="$here/kafka/log4j2.properties" \
    kafka.tools.StorageTool random-uuid 2>&1) || fail "making a cluster id failed: $output"
  echo "${output##*$'\n'}"
}

command=${1:-}
shift || true
case $command in
fetch) fetch && echo "$cache" ;;
init) init "$@" ;;
run) run "$@" ;;
start) start "$@" ;;
stop) stop "$@" ;;
wait) wait_ready "$@" ;;
acls) acls "$@" ;;
cluster-id) cluster_id ;;
*) fail "usage: kafka.sh fetch | init | run | start | stop | wait | acls | cluster-id (see the top of $0)" ;;
esac
