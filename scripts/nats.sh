#!/usr/bin/env bash
# A NATS server for the tests of the remote IO tier, with no Docker: nats-server built once
# from the Go module proxy (`go install`, 30 s to 2 min) and cached under ~/.cache/fnmill-nats.
#
#   scripts/nats.sh start     build (once), start on a free port (or the one it had), wait
#   scripts/nats.sh env       print `export FNMILL_TEST_NATS_URL=nats://127.0.0.1:PORT`
#   scripts/nats.sh stop      stop the server this script started
#   scripts/nats.sh restart   stop, then start again on the SAME port (clients reconnect to
#                             the URL they had; fails if something else took the port meanwhile)
#   scripts/nats.sh build     only build (once) and print the binary's path
#   scripts/nats.sh check     a request through a queue-group subscriber and its reply, over
#                             the NATS protocol (two raw client connections)
#
# The server listens on 127.0.0.1 only, without JetStream or authentication (the tests use
# core request/reply with queue groups). `start` after a `stop` reuses the previous port when
# it is still free, so a test can also stop NATS, keep running, and start it again later.
#
# If FNMILL_TEST_NATS_URL is already set, that server is used and nothing is started (and
# `restart` refuses: it cannot restart a server it did not start).
set -euo pipefail
# shellcheck source=scripts/lib/process.sh
. "$(dirname "$0")/lib/process.sh"

NATS_VERSION=${FNMILL_NATS_VERSION:-2.15.2}
CACHE=${FNMILL_NATS_CACHE:-$HOME/.cache/fnmill-nats}
BIN=$CACHE/$NATS_VERSION/nats-server
RUN=${FNMILL_NATS_RUN:-$(cd "$(dirname "$0")/.." && pwd)/target/nats}

# The Go toolchain must be new enough for the module's go.mod: GOTOOLCHAIN may not fetch one.
go_at_least() {
  local found
  found=$(go env GOVERSION 2>/dev/null | sed 's/^go//') || true
  if [ -z "$found" ] || [ "$(printf '%s\n%s\n' "$1" "$found" | sort -V | head -1)" != "$1" ]; then
    echo "nats: needs Go >= $1 as \`go\` (found: ${found:-none})" >&2
    return 1
  fi
}

build() {
  if [ -x "$BIN" ]; then return 0; fi
  go_at_least 1.26.0 || return 1
  mkdir -p "$CACHE/$NATS_VERSION"
  # Several checkouts may start at once: one builds, the others wait for its binary.
  exec 9>"$CACHE/$NATS_VERSION/.lock"
  flock 9
  if [ -x "$BIN" ]; then return 0; fi
  local gobin
  gobin=$(mktemp -d "$CACHE/$NATS_VERSION/bin.XXXXXX")
  echo "nats: building nats-server v$NATS_VERSION from the Go module proxy (once; 30 s to 2 min)" >&2
  if ! GOBIN=$gobin go install -trimpath -ldflags="-s -w" "github.com/nats-io/nats-server/v2@v$NATS_VERSION" \
      > "$gobin/install.log" 2>&1; then
    tail -20 "$gobin/install.log" >&2
    rm -rf "$gobin"
    echo "nats: building nats-server v$NATS_VERSION failed" >&2
    return 1
  fi
  mv "$gobin/nats-server" "$BIN"
  rm -rf "$gobin"
}

running() {
  [ -f "$RUN/pid" ] && kill -0 "$(cat "$RUN/pid")" 2>/dev/null
}

# Up once a client connection gets the server's INFO greeting.
answers() {
  python3 - "$1" <<'PY' 2>/dev/null
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1)
sys.exit(0 if s.recv(4) == b"INFO" else 1)
PY
}

# start [PORT]: on PORT if given (restart), else on the previous port if free, else a free one.
start() {
  if [ -n "${FNMILL_TEST_NATS_URL:-}" ]; then
    echo "nats: using FNMILL_TEST_NATS_URL=$FNMILL_TEST_NATS_URL" >&2
    return 0
  fi
  if running; then
    echo "nats: already running at nats://127.0.0.1:$(cat "$RUN/port")" >&2
    return 0
  fi
  build
  mkdir -p "$RUN"
  local port=${1:-}
  if [ -n "$port" ]; then
    port_free "$port" || { echo "nats: port $port is taken; cannot start on it again" >&2; return 1; }
  elif [ -f "$RUN/port" ] && port_free "$(cat "$RUN/port")"; then
    port=$(cat "$RUN/port")
  else
    port=$(free_port)
  fi
  echo "$port" > "$RUN/port"
  nohup "$BIN" --addr 127.0.0.1 --port "$port" --pid "$RUN/server.pid" \
    >> "$RUN/nats.log" 2>&1 &
  echo $! > "$RUN/pid"
  local deadline=$(( $(date +%s) + ${NATS_START_SECONDS:-30} ))
  until answers "$port"; do
    if ! running || [ "$(date +%s)" -ge "$deadline" ]; then
      echo "nats: nats-server did not start; last lines of $RUN/nats.log:" >&2
      tail -20 "$RUN/nats.log" >&2
      stop
      return 1
    fi
    sleep 0.1
  done
  echo "nats: nats-server $NATS_VERSION is up at nats://127.0.0.1:$port" >&2
}

env_() {
  if [ -n "${FNMILL_TEST_NATS_URL:-}" ]; then
    echo "export FNMILL_TEST_NATS_URL=$FNMILL_TEST_NATS_URL"
  elif running; then
    echo "export FNMILL_TEST_NATS_URL=nats://127.0.0.1:$(cat "$RUN/port")"
  fi
}

# Stops the server; its port stays recorded for the next start.
stop() {
  stop_pidfile "$RUN/pid" 5
}

restart() {
  if [ -n "${FNMILL_TEST_NATS_URL:-}" ]; then
    echo "nats: FNMILL_TEST_NATS_URL is set; cannot restart a server this script did not start" >&2
    return 1
  fi
  if ! running; then
    echo "nats: not running; nothing to restart" >&2
    return 1
  fi
  local port
  port=$(cat "$RUN/port")
  stop
  start "$port"
}

# A responder in a queue group and a requester, both speaking the text protocol over sockets:
# the request must reach the responder and its reply come back on the requester's inbox.
check() {
  eval "$(env_)"
  if [ -z "${FNMILL_TEST_NATS_URL:-}" ]; then
    echo "nats: no server to check (run \`$0 start\` or set FNMILL_TEST_NATS_URL)" >&2
    return 1
  fi
  python3 - "$FNMILL_TEST_NATS_URL" <<'PY'
import os, socket, sys, time
from urllib.parse import urlparse
url = urlparse(sys.argv[1])
def client():
    s = socket.create_connection((url.hostname, url.port or 4222), timeout=5)
    f = s.makefile("rb")
    if not f.readline().startswith(b"INFO "):
        sys.exit("nats: the server sent no INFO")
    s.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\nPING\r\n')
    if f.readline() != b"PONG\r\n":
        sys.exit("nats: the server did not answer PING")
    return s, f
def next_msg(f):
    while True:
        line = f.readline()
        if not line:
            sys.exit("nats: connection closed")
        if line.startswith(b"PING"):
            continue
        if line.startswith(b"MSG "):
            parts = line.split()
            return parts, f.read(int(parts[-1]) + 2)[:-2]
subject = "fnmill.check.%s" % os.urandom(4).hex()
responder, rf = client()
responder.sendall(("SUB %s workers 1\r\nPING\r\n" % subject).encode())
assert rf.readline() == b"PONG\r\n"
requester, qf = client()
inbox = "_INBOX.%s" % os.urandom(6).hex()
requester.sendall(("SUB %s 1\r\nPUB %s %s 4\r\nping\r\n" % (inbox, subject, inbox)).encode())
parts, body = next_msg(rf)
if body != b"ping" or len(parts) != 5:
    sys.exit("nats: the responder got %r %r" % (parts, body))
reply_to = parts[3].decode()
responder.sendall(("PUB %s 4\r\npong\r\n" % reply_to).encode())
parts, body = next_msg(qf)
if body != b"pong":
    sys.exit("nats: the requester got %r" % body)
print("nats: OK: a request through queue group 'workers' on %s and its reply" % sys.argv[1], file=sys.stderr)
PY
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  restart) restart ;;
  env) env_ ;;
  build) build && echo "$BIN" ;;
  check) check ;;
  *) echo "usage: $0 start|stop|restart|env|build|check" >&2; exit 2 ;;
esac
