#!/usr/bin/env bash
# Creates (once) the virtual environment the project runs in and prints its path.
# The venv lives outside the work tree, keyed by the lock file's hash, so fresh clones
# (CI) reuse it and a changed lock file builds a new one. Override with SQUEEZE_VENV.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
lock="$root/requirements.lock"
key="$(cat "$lock" | sha256sum | cut -c1-12)"
venv="${SQUEEZE_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/squeeze/venv-$key}"
mkdir -p "$(dirname "$venv")"
# Concurrent callers (parallel make targets, CI beside a developer) wait for one builder.
exec 9>"$venv.lock"
flock 9
if [ ! -x "$venv/bin/python" ] || [ ! -f "$venv/.complete" ]; then
    echo "bootstrap: creating $venv" >&2
    rm -rf "$venv"
    python3.11 -m venv "$venv" 2>/dev/null || python3 -m venv "$venv"
    # pip's notes about this machine's optional local indexes are noise: keep real errors.
    "$venv/bin/python" -m pip install -q --upgrade pip 2>&1 | { grep -v 'is ignored' || true; } >&2
    "$venv/bin/python" -m pip install -q -r "$lock" 2>&1 | { grep -v 'is ignored' || true; } >&2
    touch "$venv/.complete"
fi
echo "$venv"
