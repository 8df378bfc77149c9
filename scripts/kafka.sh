#!/usr/bin/env bash
# A single-node Apache Kafka (KRaft) for the integration tests and the benchmark, with no
# Docker: the broker's jars come from Maven Central (org.apache.kafka:kafka_2.13 and its
# runtime dependencies), cached under ~/.cache/fnmill-kafka, and run on the machine's Java.
#
#   scripts/kafka.sh start   fetch (once), format a fresh log dir, start on free ports, wait
#   scripts/kafka.sh env     print the `export FNMILL_TEST_KAFKA_*=...` lines for the running broker
#   scripts/kafka.sh stop    stop the broker this script started and delete its log dir
#
# The broker has three client listeners:
# - PLAINTEXT (FNMILL_TEST_KAFKA_BOOTSTRAP);
# - SASL_SSL (FNMILL_TEST_KAFKA_TLS_BOOTSTRAP): TLS with a certificate made at start for
#   127.0.0.1, whose PEM is FNMILL_TEST_KAFKA_TLS_CA, and SASL PLAIN or SCRAM-SHA-512 as
#   FNMILL_TEST_KAFKA_SASL_USER with a password made at start, FNMILL_TEST_KAFKA_SASL_PASSWORD;
# - SSL with client certificates required (FNMILL_TEST_KAFKA_MTLS_BOOTSTRAP), the same server
#   certificate, trusting a client CA made at start. FNMILL_TEST_KAFKA_CLIENT_CERT is a client
#   certificate it signed, FNMILL_TEST_KAFKA_CLIENT_KEY its key, encrypted with
#   FNMILL_TEST_KAFKA_CLIENT_KEY_PASSWORD; FNMILL_TEST_KAFKA_ROGUE_CERT and _ROGUE_KEY are a
#   self-signed client certificate the listener must refuse.
#
# If FNMILL_TEST_KAFKA_BOOTSTRAP is already set, that broker is used and nothing is started
# (set the TLS and SASL variables too for the tests that need them).
set -euo pipefail
# shellcheck source=scripts/lib/process.sh
. "$(dirname "$0")/lib/process.sh"

KAFKA_VERSION=${FNMILL_KAFKA_VERSION:-4.1.2}
CACHE=${FNMILL_KAFKA_CACHE:-$HOME/.cache/fnmill-kafka}
JARS=$CACHE/$KAFKA_VERSION/libs
RUN=${FNMILL_KAFKA_RUN:-$(cd "$(dirname "$0")/.." && pwd)/target/kafka}

fetch() {
  if [ -f "$JARS/.complete" ]; then return 0; fi
  mkdir -p "$CACHE/$KAFKA_VERSION"
  # A throwaway pom whose only purpose is to let Maven resolve the broker's runtime classpath.
  cat > "$CACHE/$KAFKA_VERSION/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.fnmill</groupId>
  <artifactId>kafka-broker-classpath</artifactId>
  <version>1</version>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
    <!-- The broker logs through SLF4J; bind it to log4j2 (as the Kafka distribution does). -->
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>2.24.3</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-core</artifactId>
      <version>2.24.3</version>
    </dependency>
  </dependencies>
</project>
POM
  echo "kafka: fetching Apache Kafka $KAFKA_VERSION from Maven Central (once)" >&2
  mvn -q -B -f "$CACHE/$KAFKA_VERSION/pom.xml" dependency:copy-dependencies \
    -DincludeScope=runtime -DoutputDirectory="$JARS" >&2
  touch "$JARS/.complete"
}

answers() {
  # The broker is up once its client listener accepts a connection and it logged that it started.
  grep -q "Kafka Server started" "$RUN/broker.log" 2>/dev/null \
    || grep -q "\[KafkaRaftServer nodeId=1\] Kafka Server started" "$RUN/broker.log" 2>/dev/null
}

running() {
  [ -f "$RUN/pid" ] && kill -0 "$(cat "$RUN/pid")" 2>/dev/null
}

start() {
  if [ -n "${FNMILL_TEST_KAFKA_BOOTSTRAP:-}" ]; then
    echo "kafka: using FNMILL_TEST_KAFKA_BOOTSTRAP=$FNMILL_TEST_KAFKA_BOOTSTRAP" >&2
    return 0
  fi
  if running; then
    echo "kafka: already running at $(cat "$RUN/bootstrap")" >&2
    return 0
  fi
  fetch
  rm -rf "$RUN" && mkdir -p "$RUN/data"
  local port controller tls_port mtls_port password
  port=$(free_port)
  controller=$(free_port)
  tls_port=$(free_port)
  mtls_port=$(free_port)
  # A throwaway certificate for the SASL_SSL listener, valid for 127.0.0.1 and localhost, and a
  # fresh SASL password: nothing secret is kept in the repository.
  mkdir -p "$RUN/tls"
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=localhost" \
    -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$RUN/tls/broker.key" -out "$RUN/tls/broker.crt" >/dev/null 2>&1
  cat "$RUN/tls/broker.key" "$RUN/tls/broker.crt" > "$RUN/tls/broker.pem"
  password=$(openssl rand -hex 16)
  echo "$password" > "$RUN/sasl-password"
  client_certificates "$RUN/tls"
  cat > "$RUN/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$controller
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller,SASL_SSL://127.0.0.1:$tls_port,SSL://127.0.0.1:$mtls_port
advertised.listeners=PLAINTEXT://127.0.0.1:$port,SASL_SSL://127.0.0.1:$tls_port,SSL://127.0.0.1:$mtls_port
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL,SSL:SSL
inter.broker.listener.name=PLAINTEXT
sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-512
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_fnmill="$password";
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.ssl.keystore.type=PEM
listener.name.sasl_ssl.ssl.keystore.location=$RUN/tls/broker.pem
listener.name.ssl.ssl.keystore.type=PEM
listener.name.ssl.ssl.keystore.location=$RUN/tls/broker.pem
listener.name.ssl.ssl.truststore.type=PEM
listener.name.ssl.ssl.truststore.location=$RUN/tls/client-ca.crt
listener.name.ssl.ssl.client.auth=required
log.dirs=$RUN/data
num.partitions=4
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Tests create groups constantly: let a new group start at once instead of after 3 s.
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
PROPS
  cat > "$RUN/log4j2.properties" <<'LOG'
status = error
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = out
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
LOG
  local cp="$JARS/*"
  local cluster_id
  cluster_id=$(java -cp "$cp" -Dlog4j2.configurationFile="$RUN/log4j2.properties" \
    kafka.tools.StorageTool random-uuid 2>/dev/null | tail -1)
  # The SCRAM credential of the SASL user lives in the cluster metadata, written at format.
  local scram="SCRAM-SHA-512=[name=fnmill,password=$password]"
  java -cp "$cp" -Dlog4j2.configurationFile="$RUN/log4j2.properties" \
    kafka.tools.StorageTool format -t "$cluster_id" -c "$RUN/server.properties" --standalone \
    --add-scram "$scram" > "$RUN/format.log" 2>&1 || {
      # Older 4.x releases reject --standalone together with controller.quorum.voters.
      java -cp "$cp" -Dlog4j2.configurationFile="$RUN/log4j2.properties" \
        kafka.tools.StorageTool format -t "$cluster_id" -c "$RUN/server.properties" \
        --add-scram "$scram" > "$RUN/format.log" 2>&1 || { cat "$RUN/format.log" >&2; return 1; }
    }
  # Small heap: the machine is shared, and the test load is modest.
  nohup java -Xms256m -Xmx1g -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$RUN/log4j2.properties" \
    -cp "$cp" kafka.Kafka "$RUN/server.properties" > "$RUN/broker.log" 2>&1 &
  echo $! > "$RUN/pid"
  echo "127.0.0.1:$port" > "$RUN/bootstrap"
  echo "127.0.0.1:$tls_port" > "$RUN/tls-bootstrap"
  echo "127.0.0.1:$mtls_port" > "$RUN/mtls-bootstrap"
  local deadline=$(( $(date +%s) + ${KAFKA_START_SECONDS:-120} ))
  until answers; do
    if ! running || [ "$(date +%s)" -ge "$deadline" ]; then
      echo "kafka: the broker did not start; last lines of $RUN/broker.log:" >&2
      tail -30 "$RUN/broker.log" >&2
      stop
      return 1
    fi
    sleep 0.5
  done
  echo "kafka: Apache Kafka $KAFKA_VERSION is up at 127.0.0.1:$port" >&2
}

# Client certificates for the SSL listener, in DIR: a client CA (client-ca.crt; its key is
# deleted once it signed), client.crt with client.key encrypted by the password in
# client-key-password, and the self-signed rogue.crt / rogue.key.
client_certificates() {
  (
    cd "$1"
    openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=fnmill test client CA" \
      -keyout client-ca.key -out client-ca.crt
    openssl req -newkey rsa:2048 -nodes -subj "/CN=fnmill-test-client" \
      -keyout client-plain.key -out client.csr
    openssl x509 -req -in client.csr -CA client-ca.crt -CAkey client-ca.key -CAcreateserial \
      -days 30 -out client.crt
    openssl rand -hex 16 > client-key-password
    openssl pkcs8 -topk8 -v2 aes-256-cbc -in client-plain.key -out client.key \
      -passout "file:client-key-password"
    openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=fnmill rogue client" \
      -keyout rogue.key -out rogue.crt
    rm -f client-ca.key client-ca.srl client-plain.key client.csr
  ) >/dev/null 2>&1
}

env_() {
  if [ -n "${FNMILL_TEST_KAFKA_BOOTSTRAP:-}" ]; then
    echo "export FNMILL_TEST_KAFKA_BOOTSTRAP=$FNMILL_TEST_KAFKA_BOOTSTRAP"
  elif running; then
    echo "export FNMILL_TEST_KAFKA_BOOTSTRAP=$(cat "$RUN/bootstrap")"
    echo "export FNMILL_TEST_KAFKA_TLS_BOOTSTRAP=$(cat "$RUN/tls-bootstrap")"
    echo "export FNMILL_TEST_KAFKA_TLS_CA=$RUN/tls/broker.crt"
    echo "export FNMILL_TEST_KAFKA_SASL_USER=fnmill"
    echo "export FNMILL_TEST_KAFKA_SASL_PASSWORD=$(cat "$RUN/sasl-password")"
    echo "export FNMILL_TEST_KAFKA_MTLS_BOOTSTRAP=$(cat "$RUN/mtls-bootstrap")"
    echo "export FNMILL_TEST_KAFKA_CLIENT_CERT=$RUN/tls/client.crt"
    echo "export FNMILL_TEST_KAFKA_CLIENT_KEY=$RUN/tls/client.key"
    echo "export FNMILL_TEST_KAFKA_CLIENT_KEY_PASSWORD=$(cat "$RUN/tls/client-key-password")"
    echo "export FNMILL_TEST_KAFKA_ROGUE_CERT=$RUN/tls/rogue.crt"
    echo "export FNMILL_TEST_KAFKA_ROGUE_KEY=$RUN/tls/rogue.key"
  fi
}

stop() {
  stop_pidfile "$RUN/pid" 30
  rm -rf "$RUN/data"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  env) env_ ;;
  *) echo "usage: $0 start|stop|env" >&2; exit 2 ;;
esac
