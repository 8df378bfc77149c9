#!/usr/bin/env bash
# Jaeger (v2: the OpenTelemetry-collector based `cmd/jaeger`) for the tests that send spans and
# read them back, with no Docker: built once from the Go module proxy and cached under
# ~/.cache/fnmill-jaeger, run with in-memory storage.
#
#   scripts/jaeger.sh start   build (once), start on free ports, wait until it answers
#   scripts/jaeger.sh env     print the `export FNMILL_TEST_JAEGER_*=...` lines for the running one
#   scripts/jaeger.sh stop    stop the Jaeger this script started (its traces are gone with it)
#   scripts/jaeger.sh build   only build (once) and print the binary's path
#   scripts/jaeger.sh check   send a span over OTLP/HTTP (JSON) and one over OTLP/gRPC
#                             (protobuf), and read both back from the query API
#
# It listens on 127.0.0.1 only, on the usual ports when they are free (OTLP gRPC 4317, OTLP HTTP
# 4318, query HTTP 16686, query gRPC 16685) and on free ones otherwise, so several checkouts can
# each run their own:
# - FNMILL_TEST_JAEGER_OTLP_GRPC_ENDPOINT, e.g. http://127.0.0.1:4317 (OTLP over gRPC);
# - FNMILL_TEST_JAEGER_OTLP_HTTP_ENDPOINT, e.g. http://127.0.0.1:4318 (OTLP over HTTP: POST
#   protobuf or JSON to <endpoint>/v1/traces);
# - FNMILL_TEST_JAEGER_QUERY_URL, e.g. http://127.0.0.1:16686 (the query API:
#   /api/services, /api/traces?service=NAME, /api/traces/TRACE_ID; its UI assets are not
#   built in, the API is all there is).
#
# If FNMILL_TEST_JAEGER_QUERY_URL is already set, that Jaeger is used and nothing is started (set
# the OTLP endpoints too for the tests that export to it).
set -euo pipefail
# shellcheck source=scripts/lib/process.sh
. "$(dirname "$0")/lib/process.sh"

JAEGER_VERSION=${FNMILL_JAEGER_VERSION:-1.76.0}
CACHE=${FNMILL_JAEGER_CACHE:-$HOME/.cache/fnmill-jaeger}
BIN=$CACHE/$JAEGER_VERSION/jaeger
RUN=${FNMILL_JAEGER_RUN:-$(cd "$(dirname "$0")/.." && pwd)/target/jaeger}

# shellcheck source=scripts/apt.sh
. "$(dirname "$0")/apt.sh"

# The Go toolchain must be new enough for the module's go.mod: GOTOOLCHAIN may not fetch one.
go_at_least() {
  local found
  found=$(go env GOVERSION 2>/dev/null | sed 's/^go//') || true
  if [ -z "$found" ] || [ "$(printf '%s\n%s\n' "$1" "$found" | sort -V | head -1)" != "$1" ]; then
    echo "jaeger: needs Go >= $1 as \`go\` (found: ${found:-none})" >&2
    return 1
  fi
}

build() {
  command -v curl >/dev/null || apt_install curl
  if [ -x "$BIN" ]; then return 0; fi
  go_at_least 1.24.6 || return 1
  mkdir -p "$CACHE/$JAEGER_VERSION"
  # Several checkouts may start at once: one builds, the others wait for its binary.
  exec 9>"$CACHE/$JAEGER_VERSION/.lock"
  flock 9
  if [ -x "$BIN" ]; then return 0; fi
  local work
  work=$(mktemp -d "$CACHE/$JAEGER_VERSION/build.XXXXXX")
  # `go install pkg@version` refuses a module with replace directives, which Jaeger's has; a
  # scratch module that requires it as a tool resolves the same versions and builds it.
  echo "jaeger: building Jaeger v$JAEGER_VERSION from the Go module proxy (once; 7 to 10 minutes on 2 cores)" >&2
  if ! (
    cd "$work"
    go mod init fnmill-jaeger-build >/dev/null 2>&1
    # Its output lists hundreds of modules: shown only when it fails.
    go get -tool "github.com/jaegertracing/jaeger/cmd/jaeger@v$JAEGER_VERSION" > get.log 2>&1 \
      || { tail -20 get.log >&2; exit 1; }
    go build -trimpath -ldflags="-s -w" -o "$BIN.tmp" github.com/jaegertracing/jaeger/cmd/jaeger >&2
  ); then
    rm -rf "$work" "$BIN.tmp"
    echo "jaeger: building Jaeger v$JAEGER_VERSION failed" >&2
    return 1
  fi
  mv "$BIN.tmp" "$BIN"
  rm -rf "$work"
  echo "jaeger: built $BIN" >&2
}

# The usual port when nothing listens on it (connections left in TIME_WAIT do not count, as for
# the server, which binds with SO_REUSEADDR), else a free one.
port_or_free() {
  if port_free "$1"; then
    echo "$1"
  else
    free_port
  fi
}

running() {
  [ -f "$RUN/pid" ] && kill -0 "$(cat "$RUN/pid")" 2>/dev/null
}

# Up once the query API lists services and both OTLP receivers accept connections.
answers() {
  curl -sf -o /dev/null "http://127.0.0.1:$(cat "$RUN/query-port")/api/services" \
    && (exec 3<>"/dev/tcp/127.0.0.1/$(cat "$RUN/grpc-port")") 2>/dev/null \
    && (exec 3<>"/dev/tcp/127.0.0.1/$(cat "$RUN/http-port")") 2>/dev/null
}

start() {
  if [ -n "${FNMILL_TEST_JAEGER_QUERY_URL:-}" ]; then
    echo "jaeger: using FNMILL_TEST_JAEGER_QUERY_URL=$FNMILL_TEST_JAEGER_QUERY_URL" >&2
    return 0
  fi
  if running; then
    echo "jaeger: already running, query API at http://127.0.0.1:$(cat "$RUN/query-port")" >&2
    return 0
  fi
  build
  rm -rf "$RUN" && mkdir -p "$RUN"
  local grpc http query query_grpc
  grpc=$(port_or_free 4317)
  http=$(port_or_free 4318)
  query=$(port_or_free 16686)
  query_grpc=$(port_or_free 16685)
  # Only what the tests use: OTLP in, memory storage, the query API. No self-tracing (it would
  # add Jaeger's own service to every query) and no telemetry endpoint (a fixed port, 8888).
  cat > "$RUN/config.yaml" <<YAML
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: info
extensions:
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 100000
  jaeger_query:
    storage:
      traces: memstore
    enable_tracing: false
    http:
      endpoint: 127.0.0.1:$query
    grpc:
      endpoint: 127.0.0.1:$query_grpc
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:$grpc
      http:
        endpoint: 127.0.0.1:$http
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
YAML
  echo "$grpc" > "$RUN/grpc-port"
  echo "$http" > "$RUN/http-port"
  echo "$query" > "$RUN/query-port"
  nohup "$BIN" --config "$RUN/config.yaml" > "$RUN/jaeger.log" 2>&1 &
  echo $! > "$RUN/pid"
  local deadline=$(( $(date +%s) + ${JAEGER_START_SECONDS:-60} ))
  until answers; do
    if ! running || [ "$(date +%s)" -ge "$deadline" ]; then
      echo "jaeger: Jaeger did not start; last lines of $RUN/jaeger.log:" >&2
      tail -30 "$RUN/jaeger.log" >&2
      stop
      return 1
    fi
    sleep 0.2
  done
  echo "jaeger: Jaeger $JAEGER_VERSION is up: OTLP gRPC 127.0.0.1:$grpc, OTLP HTTP 127.0.0.1:$http, query http://127.0.0.1:$query" >&2
}

env_() {
  if [ -n "${FNMILL_TEST_JAEGER_QUERY_URL:-}" ]; then
    echo "export FNMILL_TEST_JAEGER_QUERY_URL=$FNMILL_TEST_JAEGER_QUERY_URL"
    if [ -n "${FNMILL_TEST_JAEGER_OTLP_GRPC_ENDPOINT:-}" ]; then
      echo "export FNMILL_TEST_JAEGER_OTLP_GRPC_ENDPOINT=$FNMILL_TEST_JAEGER_OTLP_GRPC_ENDPOINT"
    fi
    if [ -n "${FNMILL_TEST_JAEGER_OTLP_HTTP_ENDPOINT:-}" ]; then
      echo "export FNMILL_TEST_JAEGER_OTLP_HTTP_ENDPOINT=$FNMILL_TEST_JAEGER_OTLP_HTTP_ENDPOINT"
    fi
  elif running; then
    echo "export FNMILL_TEST_JAEGER_OTLP_GRPC_ENDPOINT=http://127.0.0.1:$(cat "$RUN/grpc-port")"
    echo "export FNMILL_TEST_JAEGER_OTLP_HTTP_ENDPOINT=http://127.0.0.1:$(cat "$RUN/http-port")"
    echo "export FNMILL_TEST_JAEGER_QUERY_URL=http://127.0.0.1:$(cat "$RUN/query-port")"
  fi
}

stop() {
  stop_pidfile "$RUN/pid" 10
}

# One span per OTLP receiver, under a service name of its own, read back by the query API.
check() {
  eval "$(env_)"
  if [ -z "${FNMILL_TEST_JAEGER_QUERY_URL:-}" ] || [ -z "${FNMILL_TEST_JAEGER_OTLP_HTTP_ENDPOINT:-}" ] \
      || [ -z "${FNMILL_TEST_JAEGER_OTLP_GRPC_ENDPOINT:-}" ]; then
    echo "jaeger: no Jaeger to check (run \`$0 start\` or set FNMILL_TEST_JAEGER_*)" >&2
    return 1
  fi
  local dir service http_trace grpc_trace now
  dir=$(mktemp -d)
  service=fnmill-jaeger-check-$(openssl rand -hex 4)
  http_trace=$(openssl rand -hex 16)
  grpc_trace=$(openssl rand -hex 16)
  now=$(date +%s%N)
  cat > "$dir/span.json" <<JSON
{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"$service"}}]},
 "scopeSpans":[{"scope":{"name":"jaeger.sh"},"spans":[{"traceId":"$http_trace","spanId":"$(openssl rand -hex 8)",
 "name":"over-http","kind":5,"startTimeUnixNano":"$now","endTimeUnixNano":"$((now + 1000000))"}]}]}]}
JSON
  curl -sf -o /dev/null -H 'Content-Type: application/json' --data-binary "@$dir/span.json" \
    "$FNMILL_TEST_JAEGER_OTLP_HTTP_ENDPOINT/v1/traces" \
    || { echo "jaeger: the OTLP/HTTP receiver refused the span" >&2; rm -rf "$dir"; return 1; }
  # An ExportTraceServiceRequest in protobuf, framed for gRPC (no protobuf tools needed).
  python3 - "$service" "$grpc_trace" "$(openssl rand -hex 8)" "$now" > "$dir/span.grpc" <<'PY'
import struct, sys
service, trace, span, now = sys.argv[1], bytes.fromhex(sys.argv[2]), bytes.fromhex(sys.argv[3]), int(sys.argv[4])
def varint(n):
    out = b""
    while True:
        b, n = n & 0x7F, n >> 7
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            return out
def field(number, data):  # length-delimited
    return varint(number << 3 | 2) + varint(len(data)) + data
def fixed64(number, value):
    return varint(number << 3 | 1) + struct.pack("<Q", value)
attribute = field(1, b"service.name") + field(2, field(1, service.encode()))
resource = field(1, attribute)
span = (field(1, trace) + field(2, span) + field(5, b"over-grpc") + varint(6 << 3) + varint(5)
        + fixed64(7, now) + fixed64(8, now + 1_000_000))
scope_spans = field(1, field(1, b"jaeger.sh")) + field(2, span)
request = field(1, field(1, resource) + field(2, scope_spans))
sys.stdout.buffer.write(b"\0" + struct.pack(">I", len(request)) + request)
PY
  curl -s -o /dev/null -D "$dir/grpc-headers" --http2-prior-knowledge \
    -H 'content-type: application/grpc' -H 'te: trailers' --data-binary "@$dir/span.grpc" \
    "$FNMILL_TEST_JAEGER_OTLP_GRPC_ENDPOINT/opentelemetry.proto.collector.trace.v1.TraceService/Export"
  if ! grep -qi '^grpc-status: 0' "$dir/grpc-headers"; then
    echo "jaeger: the OTLP/gRPC receiver refused the span:" >&2
    cat "$dir/grpc-headers" >&2
    rm -rf "$dir"
    return 1
  fi
  local deadline=$(( $(date +%s) + 15 )) traces=""
  until grep -q "$http_trace" <<<"$traces" && grep -q "$grpc_trace" <<<"$traces"; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "jaeger: the spans were accepted but the query API does not return them: $traces" >&2
      rm -rf "$dir"
      return 1
    fi
    sleep 0.2
    traces=$(curl -sf "$FNMILL_TEST_JAEGER_QUERY_URL/api/traces?service=$service" || true)
  done
  rm -rf "$dir"
  echo "jaeger: OK: a span sent over OTLP/HTTP and one over OTLP/gRPC read back from $FNMILL_TEST_JAEGER_QUERY_URL/api/traces?service=$service" >&2
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  env) env_ ;;
  build) build && echo "$BIN" ;;
  check) check ;;
  *) echo "usage: $0 start|stop|env|build|check" >&2; exit 2 ;;
esac
