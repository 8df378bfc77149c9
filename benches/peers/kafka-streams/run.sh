#!/usr/bin/env bash
# Runs the Kafka Streams peer (building it first if needed) with JVM settings for a small
# machine; arguments go to the application (see src/main/java/dev/fnmill/peer/JsonRoute.java):
#
#   benches/peers/kafka-streams/run.sh --bootstrap 127.0.0.1:9092 --application-id peer \
#     --input in --output out --dead-letter dead [--threads 2]
#
# JVM flags: a fixed 1 GiB heap (the job keeps no state; a fixed size avoids resizing), the
# parallel collector (throughput, and no concurrent GC threads competing for 2 cores), and at
# most 2 GC threads. FNMILL_PEER_JAVA_OPTS replaces them.
set -euo pipefail
jar=$("$(dirname "$0")/build.sh")
# shellcheck disable=SC2086 # the options are words
exec java ${FNMILL_PEER_JAVA_OPTS:--Xms1g -Xmx1g -XX:+UseParallelGC -XX:ParallelGCThreads=2} \
  -Dorg.slf4j.simpleLogger.defaultLogLevel=warn -jar "$jar" "$@"
