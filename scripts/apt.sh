# Sourced by the scripts that install Debian packages: `apt_install PKG...` installs the ones
# that are missing, running `apt-get update` once per script run.

APT_UPDATED=""
apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  # Set-up steps may run side by side (scripts/test.sh builds Jaeger in the background): one
  # apt at a time, the others wait for it.
  (
    flock 8
    if [ -z "$APT_UPDATED" ]; then
      apt-get update -qq
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  ) 8>/tmp/fnmill-apt.lock || return 1
  APT_UPDATED=1
}
