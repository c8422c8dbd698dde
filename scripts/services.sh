#!/usr/bin/env bash
# Starts what the demo and the tests need, installing what is missing:
#   * PostgreSQL on 127.0.0.1:5432 (Debian's package, installed if missing), with wal_level=logical,
#   * PgBouncer in transaction pooling mode on 127.0.0.1:6432 (Debian's package), in front of it: the
#     tests show that the relay refuses a pooler that breaks its session locks,
#   * Apache Kafka (KRaft, one combined broker+controller; scripts/kafka.sh) on 127.0.0.1:9092, its
#     jars fetched from Maven Central once and cached, its data under .services/kafka/,
#   * the same services with security on, for the tests that use it: a certificate authority made
#     here (.services/tls/), PostgreSQL with TLS whose roles in the group `outbox_tls_scram` may log
#     in only over TLS with a SCRAM password, and a SASL_SSL listener of the Kafka node on
#     127.0.0.1:9094 (SCRAM-SHA-512, ACLs checked by the StandardAuthorizer) with two principals,
#     `outbox-relay` and `outbox-consumer`, whose passwords are made when the storage is formatted.
# Waits until both answer, then prints the variables to export (and nothing else on stdout):
#   eval "$(scripts/services.sh)"
# Logs go to stderr. A second call while one runs waits for it; a call when all runs changes nothing.
#
#   scripts/services.sh stop              stops the Kafka nodes and PgBouncer this script started
#                                         (PostgreSQL stays)
#   scripts/services.sh cluster           starts a three-node KRaft cluster on 127.0.0.1:9192-9194
#                                         (replication factor 3, min.insync.replicas=2), data under
#                                         .services/cluster/; prints `export KAFKA_CLUSTER_BROKERS=...`
#   scripts/services.sh cluster stop N    stops node N (1-3) with SIGTERM (controlled shutdown)
#   scripts/services.sh cluster kill N    kills node N with SIGKILL
#   scripts/services.sh cluster start N   starts node N again and waits until all three answer
#   scripts/services.sh cluster down      stops the whole cluster (its data stays)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
state=${OUTBOX_SERVICES_DIR:-$repo/.services}
kafka=$repo/scripts/kafka.sh
mkdir -p "$state"

log() { printf 'services: %s\n' "$*" >&2; }
fail() {
  log "error: $*"
  exit 1
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# One caller at a time: a second one waits for the first instead of starting anything twice. Every
# command that may leave a server running gets `9>&-`: a server holding fd 9 would hold the lock
# for as long as it runs.
exec 9>"$state/services.lock"
flock 9

# --- Java and Maven (Kafka's runtime and its fetcher) --------------------------------------------
if [[ ${1:-} != stop ]] && { ! command -v java >/dev/null 2>&1 || ! command -v mvn >/dev/null 2>&1 || ! command -v javac >/dev/null 2>&1; }; then
  if [[ -z ${JAVA_HOME:-} ]] && command -v apt-get >/dev/null 2>&1; then
    log "installing a JDK and Maven (Debian packages) for Kafka"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -qq && apt-get install -y -qq default-jdk-headless maven; } >&2 9>&- ||
      fail "installing Debian's default-jdk-headless and maven packages with apt-get failed"
  fi
fi

# --- A certificate authority and the services' certificate (made once) ---------------------------
tls=$state/tls

make_certificates() {
  [[ -f $tls/complete ]] && return 0
  if ! command -v openssl >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 || fail "openssl is not installed; it makes the test services' certificates"
    log "installing openssl (Debian package) to make the test services' certificates"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -qq && apt-get install -y -qq openssl; } >&2 9>&- ||
      fail "installing Debian's openssl package with apt-get failed"
  fi
  rm -rf "$tls"
  mkdir -p "$tls"
  local name
  # Two authorities: the services' own, and one that signed nothing here (a wrong CA for tests).
  for name in ca other-ca; do
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=outbox test $name" \
      -keyout "$tls/$name.key" -out "$tls/$name.crt" 2>>"$tls/openssl.log" ||
      fail "openssl could not make the test CA (log: $tls/openssl.log)"
  done
  openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout "$tls/server.key" -out "$tls/server.csr" 2>>"$tls/openssl.log" &&
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >"$tls/server.ext" &&
    openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.crt" -CAkey "$tls/ca.key" -CAcreateserial -days 3650 \
      -extfile "$tls/server.ext" -out "$tls/server.crt" 2>>"$tls/openssl.log" &&
    openssl pkcs12 -export -in "$tls/server.crt" -inkey "$tls/server.key" -name kafka \
      -passout "pass:$(keystore_password)" -out "$tls/server.p12" 2>>"$tls/openssl.log" ||
    fail "openssl could not make the services' certificate (log: $tls/openssl.log)"
  chmod 600 "$tls"/*.key
  touch "$tls/complete"
  log "made a test CA and the services' certificate in $tls"
}

# The keystore's password is no secret worth keeping: the key beside it is unencrypted.
keystore_password() { echo outbox-test-keystore; }

# --- Apache Kafka ---------------------------------------------------------------------------------
single=$state/kafka
secure_port=9094
cluster=$state/cluster
cluster_ports=(9192 9193 9194)
cluster_controller_ports=(9292 9293 9294)
cluster_brokers=127.0.0.1:9192,127.0.0.1:9193,127.0.0.1:9194

# The SCRAM principals of the secured listener, and what each may do (scripts/kafka.sh acls):
# the relay writes the topics named `secure.*` (and nothing else: `forbidden.*` shows a refused
# write); the consumer reads them in groups named `secure.*` and writes dead letters to
# `secure-dead-letters.*`.
scram_users=(outbox-relay outbox-consumer)
acl_grants=(
  User:outbox-relay:TOPIC:PREFIXED:secure.:WRITE,DESCRIBE
  User:outbox-relay:CLUSTER:LITERAL:kafka-cluster:IDEMPOTENT_WRITE
  User:outbox-consumer:TOPIC:PREFIXED:secure.:READ,DESCRIBE
  User:outbox-consumer:GROUP:PREFIXED:secure.:READ
  User:outbox-consumer:TOPIC:PREFIXED:secure-dead-letters.:WRITE,DESCRIBE
)

start_single() {
  # A node formatted before the secured listener existed is test data: made anew.
  if [[ -f $single/data/meta.properties ]] && ! grep -q '^listeners=.*SASL_SSL://127.0.0.1:'"$secure_port" "$single/server.properties"; then
    log "Kafka node in $single has no SASL_SSL listener: formatting it anew (its test topics go)"
    "$kafka" stop "$single"
    rm -rf "$single"
  fi
  if [[ ! -f $single/data/meta.properties ]]; then
    rm -rf "$single"
    mkdir -p "$single"
    local user options=("--sasl-ssl=$secure_port:$tls/server.p12:$(keystore_password)")
    for user in "${scram_users[@]}"; do
      # Letters and digits only: the storage tool's credential syntax has no escapes.
      echo "$user=$(openssl rand -hex 16)" >>"$single/scram.passwords"
    done
    chmod 600 "$single/scram.passwords"
    while IFS='=' read -r user password; do
      options+=("--scram=$user:$password")
    done <"$single/scram.passwords"
    "$kafka" init "$single" 1 9092 9093 1@127.0.0.1:9093 "$("$kafka" cluster-id)" 1 "${options[@]}"
  fi
  "$kafka" start "$single"
  "$kafka" wait 127.0.0.1:9092 1 90 "$single" || {
    "$kafka" stop --kill "$single"
    fail "Kafka did not become ready on 127.0.0.1:9092 (log: $single/kafka.log)"
  }
  "$kafka" acls 127.0.0.1:9092 "${acl_grants[@]}"
  log "Kafka answers on 127.0.0.1:9092, and with SASL_SSL on 127.0.0.1:$secure_port (log: $single/kafka.log)"
}


cluster_node() { echo "$cluster/node-$1"; }

check_node_id() {
  [[ ${1:-} =~ ^[123]$ ]] || fail "a cluster node id is 1, 2 or 3 (got '${1:-}')"
}

cluster_up() {
  local id voters="" cluster_id
  for id in 1 2 3; do
    voters+="${voters:+,}$id@127.0.0.1:${cluster_controller_ports[id - 1]}"
  done
  if [[ ! -f $(cluster_node 3)/data/meta.properties ]]; then
    rm -rf "$cluster"
    cluster_id=$("$kafka" cluster-id)
    for id in 1 2 3; do
      KAFKA_HEAP=${KAFKA_HEAP:-384m} "$kafka" init "$(cluster_node $id)" "$id" \
        "${cluster_ports[id - 1]}" "${cluster_controller_ports[id - 1]}" "$voters" "$cluster_id" 3
    done
  fi
  for id in 1 2 3; do
    KAFKA_HEAP=${KAFKA_HEAP:-384m} "$kafka" start "$(cluster_node $id)"
  done
  cluster_wait "$cluster_brokers" "$cluster"/node-*
}

# Waits until every running node is registered, asking $1 (a restarted node's own address waits
# for that node to have started). On failure the nodes named after $1 are killed: never a
# half-started cluster.
cluster_wait() {
  local bootstrap=$1 id running=()
  shift
  for id in 1 2 3; do
    [[ -f $(cluster_node $id)/kafka.pid ]] && running+=("$(cluster_node $id)")
  done
  "$kafka" wait "$bootstrap" "${#running[@]}" 120 "${running[@]}" || {
    "$kafka" stop --kill "$@"
    fail "the cluster did not become ready (logs: $cluster/node-*/kafka.log)"
  }
  log "Kafka cluster: ${#running[@]} of 3 nodes answer ($cluster_brokers)"
}

case ${1:-} in
stop)
  "$kafka" stop "$single" "$cluster"/node-*
  log "Kafka stopped"
  if [[ -s $state/pgbouncer/pgbouncer.pid ]] && kill "$(cat "$state/pgbouncer/pgbouncer.pid")" 2>/dev/null; then
    log "PgBouncer stopped"
  fi
  exit 0
  ;;
cluster)
  case ${2:-up} in
  up)
    cluster_up
    echo "export KAFKA_CLUSTER_BROKERS=$cluster_brokers"
    ;;
  stop | kill)
    check_node_id "${3:-}"
    if [[ $2 == kill ]]; then
      "$kafka" stop --kill "$(cluster_node "$3")"
    else
      "$kafka" stop "$(cluster_node "$3")"
    fi
    log "cluster node $3 stopped ($2)"
    ;;
  start)
    check_node_id "${3:-}"
    [[ -f $(cluster_node "$3")/server.properties ]] || fail "the cluster was never started (scripts/services.sh cluster)"
    KAFKA_HEAP=${KAFKA_HEAP:-384m} "$kafka" start "$(cluster_node "$3")"
    cluster_wait "127.0.0.1:${cluster_ports[$3 - 1]}" "$(cluster_node "$3")"
    ;;
  down)
    "$kafka" stop "$cluster"/node-*
    log "cluster stopped"
    ;;
  *) fail "usage: services.sh cluster [up | stop N | kill N | start N | down]" ;;
  esac
  exit 0
  ;;
"") ;;
*) fail "usage: services.sh [stop | cluster ...] (see the top of $0)" ;;
esac

make_certificates

# --- PostgreSQL -----------------------------------------------------------------------------------
database_url=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}
secured_group=outbox_tls_scram

# The Debian cluster: the newest version's `main`.
debian_cluster() { ls /etc/postgresql 2>/dev/null | sort -V | tail -1; }

# Sets up the Debian cluster as a local test server and (re)starts it: trust for connections from
# this machine only, logical decoding for WAL capture.
start_debian_cluster() {
  local version=$1 conf=/etc/postgresql/$1/main action=start
  [[ -d $conf ]] || fail "no PostgreSQL cluster under $conf"
  sed -i -E 's/^(host\s+(all|replication)\s+all\s+(127\.0\.0\.1\/32|::1\/128)\s+)\S+/\1trust/' "$conf/pg_hba.conf"
  # The secured roles first (the first matching line decides): TLS and a SCRAM password, or no
  # connection at all. Logical replication connections (WAL capture) match these `all` lines too.
  # Every line names the group, so a second run replaces them.
  local hba
  hba=$(grep -v "+$secured_group" "$conf/pg_hba.conf")
  {
    echo "hostssl   all +$secured_group 127.0.0.1/32 scram-sha-256"
    echo "hostnossl all +$secured_group 127.0.0.1/32 reject"
    echo "$hba"
  } >"$conf/pg_hba.conf"
  # The server's certificate, where the server's own user can read it.
  mkdir -p "$conf/outbox-tls"
  cp "$tls/server.crt" "$tls/server.key" "$conf/outbox-tls/"
  chmod 600 "$conf/outbox-tls/server.key"
  chown -R postgres "$conf/outbox-tls" 2>/dev/null || true
  mkdir -p "$conf/conf.d"
  # Tests of WAL capture run side by side, each with a replication slot and a walsender.
  {
    echo "# Written by scripts/services.sh"
    echo "wal_level = logical"
    echo "max_replication_slots = 64"
    echo "max_wal_senders = 64"
    echo "ssl = on"
    echo "ssl_cert_file = '$conf/outbox-tls/server.crt'"
    echo "ssl_key_file = '$conf/outbox-tls/server.key'"
    echo "password_encryption = 'scram-sha-256'"
  } >"$conf/conf.d/outbox.conf"
  # The package's installation may have started the server already (with the old settings).
  pg_ctlcluster --skip-systemctl-redirect "$version" main status >/dev/null 2>&1 && action=restart
  log "PostgreSQL $version: $action"
  pg_ctlcluster --skip-systemctl-redirect "$version" main "$action" >&2 9>&- ||
    fail "could not $action PostgreSQL $version (log: /var/log/postgresql/postgresql-$version-main.log)"
}

wait_for_postgres() {
  local i
  for ((i = 0; i < 300; i++)); do
    pg_isready -q -h 127.0.0.1 -p 5432 && return 0
    sleep 0.1
  done
  fail "PostgreSQL does not answer on 127.0.0.1:5432"
}

if ! port_open 5432; then
  if [[ -z $(debian_cluster) ]] || [[ ! -d /etc/postgresql/$(debian_cluster)/main ]]; then
    log "installing PostgreSQL (Debian package)"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -qq && apt-get install -y -qq postgresql; } >&2 9>&- ||
      fail "installing Debian's postgresql package with apt-get failed"
  fi
  start_debian_cluster "$(debian_cluster)"
fi
wait_for_postgres
server_settings() {
  psql "$database_url" -XAtqc "SELECT current_setting('wal_level') || ' ' || current_setting('max_replication_slots') || ' ' || current_setting('max_wal_senders') || ' ssl=' || current_setting('ssl') || ' ' || current_setting('ssl_cert_file')" 2>&1
}
wanted_settings="logical 64 64 ssl=on /etc/postgresql/$(debian_cluster)/main/outbox-tls/server.crt"
# A certificate made anew (its folder was deleted) is copied to the server again.
stale_certificate() { ! cmp -s "$tls/server.crt" "/etc/postgresql/$(debian_cluster)/main/outbox-tls/server.crt"; }
wal_level=$(server_settings) || wal_level="unknown (cannot connect: $wal_level)"
if [[ $wal_level != "$wanted_settings" ]] || stale_certificate; then
  # A server that another start left with other settings: ours to change only if it is the
  # machine's Debian cluster on this port.
  version=$(debian_cluster)
  if [[ -z $version ]] || ! grep -qE '^\s*port\s*=\s*5432' "/etc/postgresql/$version/main/postgresql.conf"; then
    fail "PostgreSQL on 127.0.0.1:5432 runs with (wal_level max_replication_slots max_wal_senders ssl ssl_cert_file) = ($wal_level); the tests need a server that DATABASE_URL reaches with ($wanted_settings)"
  fi
  start_debian_cluster "$version"
  wait_for_postgres
  wal_level=$(server_settings) ||
    fail "cannot connect to PostgreSQL on 127.0.0.1:5432 as DATABASE_URL says: $wal_level"
  [[ $wal_level == "$wanted_settings" ]] ||
    fail "PostgreSQL still runs with (wal_level max_replication_slots max_wal_senders ssl ssl_cert_file) = ($wal_level) after a restart"
fi
# Slots left by tests that were killed would hold WAL (and slots) forever: drop those of test
# databases that nothing is connected to.
psql "$database_url" -XAtqc "SELECT count(pg_drop_replication_slot(slot_name)) FROM pg_replication_slots AS s
  WHERE NOT active AND database LIKE 'outbox%' AND NOT EXISTS (SELECT 1 FROM pg_stat_activity AS a WHERE a.datname = s.database)" >/dev/null 2>&1 || true
# The group whose members may log in only with TLS and SCRAM (pg_hba.conf above); the tests make
# their roles members of it.
psql "$database_url" -XAtqc "DO \$\$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$secured_group') THEN CREATE ROLE $secured_group NOLOGIN; END IF;
END \$\$" >/dev/null || fail "could not create the role $secured_group"
log "PostgreSQL answers on 127.0.0.1:5432 (wal_level=logical, 64 replication slots, TLS; $secured_group: TLS and SCRAM only)"

# --- PgBouncer (transaction pooling, for the tests that the relay refuses it) --------------------
pgbouncer_dir=$state/pgbouncer
pgbouncer_url=postgres://postgres@127.0.0.1:6432/postgres
if ! port_open 6432; then
  if ! command -v pgbouncer >/dev/null 2>&1 && [[ ! -x /usr/sbin/pgbouncer ]]; then
    log "installing PgBouncer (Debian package)"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -qq && apt-get install -y -qq pgbouncer; } >&2 9>&- ||
      fail "installing Debian's pgbouncer package with apt-get failed"
  fi
  mkdir -p "$pgbouncer_dir"
  cat >"$pgbouncer_dir/pgbouncer.ini" <<INI
; Written by scripts/services.sh
[databases]
* = host=127.0.0.1 port=5432
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = 6432
auth_type = trust
auth_file = $pgbouncer_dir/users.txt
pool_mode = transaction
default_pool_size = 4
max_client_conn = 200
unix_socket_dir =
logfile = $pgbouncer_dir/pgbouncer.log
pidfile = $pgbouncer_dir/pgbouncer.pid
ignore_startup_parameters = extra_float_digits,options
INI
  echo '"postgres" ""' >"$pgbouncer_dir/users.txt"
  rm -f "$pgbouncer_dir/pgbouncer.pid"
  log "PgBouncer: start"
  # PgBouncer refuses to run as root; it runs as the database's own system user then.
  if [[ $(id -u) == 0 ]]; then
    chown -R postgres "$pgbouncer_dir"
    su postgres -s /bin/sh -c "exec /usr/sbin/pgbouncer -d '$pgbouncer_dir/pgbouncer.ini'" >&2 9>&- ||
      fail "could not start PgBouncer (log: $pgbouncer_dir/pgbouncer.log)"
  else
    "$(command -v pgbouncer || echo /usr/sbin/pgbouncer)" -d "$pgbouncer_dir/pgbouncer.ini" >&2 9>&- ||
      fail "could not start PgBouncer (log: $pgbouncer_dir/pgbouncer.log)"
  fi
  for ((i = 0; i < 100; i++)); do
    port_open 6432 && break
    sleep 0.1
  done
  port_open 6432 || fail "PgBouncer does not answer on 127.0.0.1:6432 (log: $pgbouncer_dir/pgbouncer.log)"
fi
log "PgBouncer answers on 127.0.0.1:6432 (transaction pooling)"

start_single

echo "export DATABASE_URL=$database_url"
echo "export PGBOUNCER_URL=$pgbouncer_url"
echo "export KAFKA_BROKERS=127.0.0.1:9092"
echo "export OUTBOX_TLS_CA=$tls/ca.crt"
echo "export OUTBOX_TLS_OTHER_CA=$tls/other-ca.crt"
echo "export KAFKA_SECURE_BROKERS=127.0.0.1:$secure_port"
echo "export KAFKA_SCRAM_PASSWORDS=$single/scram.passwords"
