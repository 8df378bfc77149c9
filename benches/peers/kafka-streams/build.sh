#!/usr/bin/env bash
# Builds the Kafka Streams peer (this directory's Maven project, dependencies from Maven
# Central) into one runnable jar, cached under ~/.cache/fnmill-kafka-streams-peer by a hash of
# the sources, and prints the jar's path. A cache hit costs a hash; an edit rebuilds.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
CACHE=${FNMILL_PEER_CACHE:-$HOME/.cache/fnmill-kafka-streams-peer}

hash=$(cd "$here" && find pom.xml src -type f -print0 | sort -z | xargs -0 sha256sum \
  | sha256sum | cut -c1-16)
jar=$CACHE/$hash/kafka-streams-peer.jar
if [ ! -f "$jar" ]; then
  command -v mvn >/dev/null || { echo "kafka-streams peer: needs Maven (Debian's maven)" >&2; exit 1; }
  mkdir -p "$CACHE/$hash"
  # Several checkouts may build at once: one builds, the others wait for its jar.
  exec 9>"$CACHE/$hash/.lock"
  flock 9
  if [ ! -f "$jar" ]; then
    echo "kafka-streams peer: building with Maven (once per source change)" >&2
    # Built in a scratch copy, so the repository gets no target/ of Maven's.
    work=$(mktemp -d "$CACHE/$hash/build.XXXXXX")
    cp -r "$here/pom.xml" "$here/src" "$work/"
    if ! mvn -q -B -Dstyle.color=never -f "$work/pom.xml" package >&2; then
      rm -rf "$work"
      echo "kafka-streams peer: the Maven build failed" >&2
      exit 1
    fi
    mv "$work/target/kafka-streams-peer-1.jar" "$jar"
    rm -rf "$work"
  fi
fi
echo "$jar"
