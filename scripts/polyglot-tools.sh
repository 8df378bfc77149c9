#!/usr/bin/env bash
# Installs the toolchains `fnmill build` uses for JavaScript/TypeScript and Python functions,
# pinned, into one cache directory (default ~/.cache/fnmill-tools, or $FNMILL_TOOLS_DIR), and
# links their commands into its bin/. Idempotent: a second run with the same versions installs
# nothing. Node.js and Python 3 come from the machine (Debian's packages if missing).
#
#   scripts/polyglot-tools.sh            install (if needed) and print where
#   eval "$(scripts/polyglot-tools.sh env)"   put the tools on PATH (what scripts/test.sh does)
#
# JavaScript/TypeScript (npm): @bytecodealliance/componentize-js (SpiderMonkey in a component,
# pre-initialised with Wizer), @bytecodealliance/jco (WIT → TypeScript types), rolldown (bundles
# a function and its imports into one module), typescript and @types/node (type-check
# TypeScript functions and their tests).
# Python (PyPI, in a virtualenv): componentize-py (CPython in a component, pre-initialised).
set -euo pipefail
cd "$(dirname "$0")/.."

COMPONENTIZE_JS=0.23.0
JCO=1.35.0
ROLLDOWN=1.3.3
TYPESCRIPT=7.0.2
TYPES_NODE=20.19.43
COMPONENTIZE_PY=0.25.1
PYTEST=9.2.0

TOOLS=${FNMILL_TOOLS_DIR:-$HOME/.cache/fnmill-tools}
BIN=$TOOLS/bin

if [ "${1:-}" = env ]; then
  echo "export PATH=\"$BIN:\$PATH\""
  exit 0
fi

# shellcheck source=scripts/apt.sh
. scripts/apt.sh

# Node.js ≥ 20 (rolldown needs 20.19); Debian's nodejs package where there is none.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "==> installing Node.js and npm (Debian packages)"
  apt_install nodejs npm
fi
node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ]; then
  echo "error: Node.js $(node --version) is too old; fnmill's JavaScript tools need Node.js 20 or newer" >&2
  exit 1
fi
if ! command -v python3 >/dev/null; then
  echo "==> installing Python 3 (Debian packages)"
  apt_install python3 python3-venv
fi
if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
  apt_install python3-venv
fi

# The Python template's unit tests run with pytest (on this machine kind's images already).
if ! python3 -m pytest --version >/dev/null 2>&1; then
  echo "==> installing pytest (pip)"
  python3 -m pip install --quiet --disable-pip-version-check "pytest==$PYTEST"
fi

mkdir -p "$TOOLS" "$BIN"

js_stamp="$TOOLS/js/.installed-cjs$COMPONENTIZE_JS-jco$JCO-rolldown$ROLLDOWN-ts$TYPESCRIPT-node$TYPES_NODE"
if [ ! -f "$js_stamp" ]; then
  echo "==> installing componentize-js $COMPONENTIZE_JS, jco $JCO, rolldown $ROLLDOWN, typescript $TYPESCRIPT, @types/node $TYPES_NODE (npm)"
  rm -rf "$TOOLS/js"
  mkdir -p "$TOOLS/js"
  # A package.json of its own, so npm installs here and not into an enclosing project.
  echo '{"private": true}' > "$TOOLS/js/package.json"
  npm install --prefix "$TOOLS/js" --no-audit --no-fund --loglevel=error \
    "@bytecodealliance/componentize-js@$COMPONENTIZE_JS" \
    "@bytecodealliance/jco@$JCO" \
    "rolldown@$ROLLDOWN" \
    "typescript@$TYPESCRIPT" \
    "@types/node@$TYPES_NODE" >/dev/null
  touch "$js_stamp"
fi
for cmd in componentize-js jco rolldown tsc; do
  ln -sfn "$TOOLS/js/node_modules/.bin/$cmd" "$BIN/$cmd"
done

py_stamp="$TOOLS/py/.installed-componentize-py$COMPONENTIZE_PY"
if [ ! -f "$py_stamp" ]; then
  echo "==> installing componentize-py $COMPONENTIZE_PY (pip, in a virtualenv)"
  rm -rf "$TOOLS/py"
  python3 -m venv "$TOOLS/py"
  "$TOOLS/py/bin/pip" install --quiet --disable-pip-version-check \
    "componentize-py==$COMPONENTIZE_PY"
  touch "$py_stamp"
fi
# Only the tool itself: the virtualenv's python3 stays off PATH.
ln -sfn "$TOOLS/py/bin/componentize-py" "$BIN/componentize-py"

echo "polyglot tools in $BIN: componentize-js $COMPONENTIZE_JS, jco $JCO, rolldown $ROLLDOWN, tsc $TYPESCRIPT, componentize-py $COMPONENTIZE_PY"
