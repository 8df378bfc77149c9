#!/usr/bin/env bash
# Brings up the services the integration tests talk to, idempotently: a service that already
# answers is left alone. PostgreSQL, Redis and RabbitMQ come from Debian's packages.
#
#   scripts/services.sh [postgres] [redis] [rabbitmq]     (no argument: all of them)
#
# Point the tests at your own services instead with FNMILL_TEST_POSTGRES_URL,
# FNMILL_TEST_REDIS_URL and FNMILL_TEST_AMQP_URL (with FNMILL_TEST_AMQPS_URL and
# FNMILL_TEST_AMQPS_CA for its TLS listener); a service whose variable is set is not started.
set -euo pipefail

# shellcheck source=scripts/apt.sh
. "$(dirname "$0")/apt.sh"

# Waits until "$@" succeeds, up to $WAIT_SECONDS (default 60).
wait_for() {
  local what=$1; shift
  local deadline=$(( $(date +%s) + ${WAIT_SECONDS:-60} ))
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "services: $what did not come up" >&2
      return 1
    fi
    sleep 0.5
  done
  echo "services: $what is up"
}

postgres() {
  if [ -n "${FNMILL_TEST_POSTGRES_URL:-}" ]; then return 0; fi
  apt_install postgresql postgresql-client
  local version
  version=$(ls /etc/postgresql | sort -n | tail -1)
  if ! pg_isready -h 127.0.0.1 -p 5432 -q; then
    # Tests connect as `postgres` over TCP without a password: trust loopback only.
    local hba=/etc/postgresql/$version/main/pg_hba.conf
    if ! grep -q "fnmill-tests" "$hba"; then
      sed -i '1i host all all 127.0.0.1/32 trust # fnmill-tests\nhost all all ::1/128 trust # fnmill-tests' "$hba"
    fi
    pg_ctlcluster "$version" main start || true
  fi
  wait_for "PostgreSQL" pg_isready -h 127.0.0.1 -p 5432 -q
  if ! psql -h 127.0.0.1 -U postgres -tAc "select 1 from pg_database where datname = 'test'" | grep -q 1; then
    psql -h 127.0.0.1 -U postgres -qc "create database test"
  fi
}

redis() {
  if [ -n "${FNMILL_TEST_REDIS_URL:-}" ]; then return 0; fi
  apt_install redis-server
  if ! redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; then
    redis-server --daemonize yes --port 6379 --save '' >/dev/null
  fi
  wait_for "Redis" sh -c 'redis-cli -h 127.0.0.1 -p 6379 ping | grep -q PONG'
}

# RabbitMQ's TLS listener (amqps on 5671) for the TLS tests: a test CA and a certificate it
# signs for localhost and 127.0.0.1, made once. rustls refuses a self-signed CA certificate as
# the server's own, so the two are kept apart, as in production. The listener verifies a client
# certificate when one is presented (mutual TLS) and accepts clients without one: the CA also
# signs a client certificate, and a self-signed one stands for a client the broker must refuse.
# These are test-only credentials, readable by the tests. Prints "changed" when it (re)wrote them.
RABBIT_TLS=/etc/rabbitmq/tls
RABBIT_TLS_CONF=/etc/rabbitmq/conf.d/50-fnmill-tls.conf
rabbitmq_tls_config() {
  if [ -f "$RABBIT_TLS_CONF" ] && grep -q verify_peer "$RABBIT_TLS_CONF" \
    && [ -f "$RABBIT_TLS/ca.pem" ] && [ -f "$RABBIT_TLS/client.pem" ]; then
    return 0
  fi
  mkdir -p "$RABBIT_TLS" /etc/rabbitmq/conf.d
  (
    cd "$RABBIT_TLS"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=fnmill test CA" \
      -keyout ca.key -out ca.pem
    # sign NAME CN EXTENSIONS: NAME.pem and NAME-key.pem, signed by the test CA.
    sign() {
      openssl req -newkey rsa:2048 -nodes -subj "/CN=$2" -keyout "$1-key.pem" -out "$1.csr"
      printf '%b' "$3" > "$1.ext"
      openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
        -extfile "$1.ext" -out "$1.pem"
      rm -f "$1.csr" "$1.ext"
    }
    sign cert localhost \
      'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n'
    mv cert-key.pem key.pem
    sign client fnmill-test-client 'basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n'
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=fnmill rogue client" \
      -keyout rogue-key.pem -out rogue.pem
    rm -f ca.key ca.srl
  ) >/dev/null 2>&1
  chown -R rabbitmq:rabbitmq "$RABBIT_TLS"
  chmod 600 "$RABBIT_TLS/key.pem"
  chmod 644 "$RABBIT_TLS"/ca.pem "$RABBIT_TLS"/cert.pem "$RABBIT_TLS"/client*.pem "$RABBIT_TLS"/rogue*.pem
  cat > "$RABBIT_TLS_CONF" <<CONF
listeners.ssl.default = 5671
ssl_options.cacertfile = $RABBIT_TLS/ca.pem
ssl_options.certfile = $RABBIT_TLS/cert.pem
ssl_options.keyfile = $RABBIT_TLS/key.pem
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = false
CONF
  echo changed
}

rabbitmq() {
  if [ -n "${FNMILL_TEST_AMQP_URL:-}" ]; then return 0; fi
  apt_install rabbitmq-server
  local tls
  tls=$(rabbitmq_tls_config)
  if rabbitmq-diagnostics -q ping >/dev/null 2>&1; then
    if [ "$tls" = changed ] \
      || ! rabbitmq-diagnostics -q listeners 2>/dev/null | grep -q 5671; then
      # Running without the TLS listener or its new certificates: restart once to load them.
      echo "services: restarting RabbitMQ to open its TLS listener" >&2
      rabbitmqctl -q stop >/dev/null 2>&1 || true
    fi
  fi
  if ! rabbitmq-diagnostics -q ping >/dev/null 2>&1; then
    rabbitmq-server -detached >/dev/null 2>&1 || true
  fi
  WAIT_SECONDS=120 wait_for "RabbitMQ" rabbitmq-diagnostics -q check_port_connectivity
  # A user with a password of its own, so a test can look for that password in fnmill's log
  # (FNMILL_TEST_AMQP_SECRET_URL points the test at another).
  if ! rabbitmqctl -q list_users 2>/dev/null | grep -q '^fnmill-secret'; then
    rabbitmqctl -q add_user fnmill-secret 'fnmill-secret-pw-4Zq81x' >/dev/null
    rabbitmqctl -q set_permissions -p / fnmill-secret '.*' '.*' '.*' >/dev/null
  fi
}

if [ $# -eq 0 ]; then set -- postgres redis rabbitmq; fi
for service in "$@"; do
  "$service"
done
