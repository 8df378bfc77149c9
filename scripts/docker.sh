#!/usr/bin/env bash
# A Docker engine and Compose for the stack test (tests/stack.rs), idempotently:
#
#   scripts/docker.sh start    install docker.io and debootstrap (Debian's packages) if missing,
#                              start dockerd unless an engine already answers, install Docker
#                              Compose v2 as the `docker compose` plugin, and make the base image
#                              the Dockerfile's runtime stage uses (`debian:bookworm-slim`) unless
#                              the engine already has it
#   scripts/docker.sh env      print the `export FNMILL_TEST_DOCKER=...` line: the docker client
#                              whose `build` uses BuildKit with this engine
#
# Compose v2 (what `docker compose` is on a current Docker) is not among Debian bookworm's
# packages (its docker-compose is v1, which refuses the test's host networking next to the
# stack's published ports), so it is built once from the Go module proxy and cached.
#
# No image registry is reachable from the machines this project is tested on, so the base image
# is made here: a Debian root file system from `debootstrap --variant=minbase bookworm` (cached
# as a tarball under ~/.cache/fnmill-docker), brought in with `docker import` and tagged with the
# name the Dockerfile's FROM line uses. On a machine that reaches Docker Hub none of this matters:
# the same Dockerfile and compose file pull the real images.
#
# On failure `start` prints one line saying why on stderr and exits non-zero; the stack test
# then reports that line and runs nothing that needs the engine.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/apt.sh
. scripts/apt.sh

CACHE=${FNMILL_DOCKER_CACHE:-$HOME/.cache/fnmill-docker}
LOG=${FNMILL_DOCKERD_LOG:-/var/log/fnmill-dockerd.log}
BASE_IMAGE=debian:bookworm-slim
ROOTFS=$CACHE/bookworm-minbase.tar
COMPOSE_VERSION=${FNMILL_COMPOSE_VERSION:-v2.40.3}
COMPOSE_BIN=$CACHE/compose-$COMPOSE_VERSION/docker-compose
PLUGINS=${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins

fail() {
  echo "docker: $*" >&2
  exit 1
}

engine_answers() {
  docker version --format '{{.Server.Version}}' >/dev/null 2>&1
}

install() {
  if command -v dockerd >/dev/null && command -v debootstrap >/dev/null; then
    return 0
  fi
  apt_install docker.io debootstrap || fail "installing docker.io and debootstrap failed"
}

compose() {
  if [ ! -x "$COMPOSE_BIN" ]; then
    # Go is on this project's machines, not always on a non-login shell's PATH.
    if ! command -v go >/dev/null && [ -x /usr/local/go/bin/go ]; then
      PATH=$PATH:/usr/local/go/bin
    fi
    command -v go >/dev/null || fail "no go on PATH to build Docker Compose $COMPOSE_VERSION"
    echo "docker: building Docker Compose $COMPOSE_VERSION from the Go module proxy (once, a few minutes)" >&2
    local dir
    dir=$(mktemp -d)
    # `go install` refuses the module (its go.mod has exclude directives): build it from a
    # scratch module instead.
    (
      cd "$dir" && go mod init scratch >/dev/null 2>&1 \
        && go get "github.com/docker/compose/v2/cmd@$COMPOSE_VERSION" \
        && go build -trimpath -ldflags="-s -w" -o "$dir/docker-compose" github.com/docker/compose/v2/cmd
    ) >"$dir/build.log" 2>&1 || fail "building Docker Compose failed: $(tail -1 "$dir/build.log")"
    mkdir -p "$(dirname "$COMPOSE_BIN")"
    mv "$dir/docker-compose" "$COMPOSE_BIN"
    rm -rf "$dir"
  fi
  if ! cmp -s "$COMPOSE_BIN" "$PLUGINS/docker-compose"; then
    mkdir -p "$PLUGINS"
    cp "$COMPOSE_BIN" "$PLUGINS/docker-compose"
  fi
  docker compose version >/dev/null 2>&1 || fail "docker compose does not run: $(docker compose version 2>&1 | tail -1)"
}

start_engine() {
  if engine_answers; then return 0; fi
  command -v dockerd >/dev/null || fail "no dockerd on PATH"
  # No init system to start it: run it detached, logging to $LOG. A second dockerd is never
  # started while the first one's pid file points at a live process.
  if ! { [ -f /var/run/docker.pid ] && kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; }; then
    mkdir -p "$(dirname "$LOG")"
    setsid dockerd >>"$LOG" 2>&1 < /dev/null &
  fi
  local deadline=$(( $(date +%s) + 60 ))
  until engine_answers; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      fail "dockerd did not answer within 60 s: $(grep -iE 'error|fatal|failed' "$LOG" 2>/dev/null | tail -1)"
    fi
    sleep 0.5
  done
  echo "docker: engine $(docker version --format '{{.Server.Version}}') is up" >&2
}

base_image() {
  if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then return 0; fi
  if [ ! -f "$ROOTFS" ]; then
    echo "docker: making $BASE_IMAGE with debootstrap --variant=minbase bookworm (once, ~30 s)" >&2
    local dir
    dir=$(mktemp -d)
    # The mirror this machine's apt uses, so the image's apt reaches the same one.
    local mirror
    mirror=$(grep -hoE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list.d/*.sources \
      /etc/apt/sources.list 2>/dev/null | awk '{print $2}' | head -1 || true)
    debootstrap --variant=minbase bookworm "$dir/rootfs" "${mirror:-http://deb.debian.org/debian}" \
      >"$dir/debootstrap.log" 2>&1 \
      || fail "debootstrap failed: $(tail -1 "$dir/debootstrap.log")"
    # Like the official slim image: no package lists or caches kept in the image.
    rm -rf "$dir/rootfs"/var/lib/apt/lists/* "$dir/rootfs"/var/cache/apt/*.bin
    mkdir -p "$CACHE"
    tar -C "$dir/rootfs" -cf "$ROOTFS.tmp" . && mv "$ROOTFS.tmp" "$ROOTFS"
    rm -rf "$dir"
  fi
  docker import --change 'CMD ["bash"]' "$ROOTFS" "$BASE_IMAGE" >/dev/null \
    || fail "docker import of $ROOTFS failed"
  echo "docker: imported $BASE_IMAGE from $ROOTFS" >&2
}

case "${1:-}" in
  start)
    install
    start_engine
    compose
    base_image
    ;;
  env)
    # Debian's client (the engine's own version) builds with BuildKit by DOCKER_BUILDKIT=1; a
    # newer client on PATH would want the buildx plugin for that.
    if [ -x /usr/bin/docker ]; then
      echo "export FNMILL_TEST_DOCKER=/usr/bin/docker"
    else
      echo "export FNMILL_TEST_DOCKER=docker"
    fi
    ;;
  *)
    echo "usage: scripts/docker.sh start|env" >&2
    exit 2
    ;;
esac
