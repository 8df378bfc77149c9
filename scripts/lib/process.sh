# shellcheck shell=bash
# Shared by the service scripts (kafka.sh, nats.sh, jaeger.sh): ports and the processes they start.
# Sourced, not run.

# A port nothing listens on now.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Whether nothing listens on port $1 (connections left in TIME_WAIT do not count, as for the
# servers, which bind with SO_REUSEADDR).
port_free() {
  python3 -c 'import socket,sys; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1); s.bind(("127.0.0.1",int(sys.argv[1])))' "$1" 2>/dev/null
}

# Stops the process whose pid is in file $1: SIGTERM, up to $2 seconds (default 10) to exit,
# then SIGKILL. Removes the file.
stop_pidfile() {
  local file=$1 seconds=${2:-10} pid
  [ -f "$file" ] || return 0
  pid=$(cat "$file")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 $((seconds * 10))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$file"
}
