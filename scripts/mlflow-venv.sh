#!/usr/bin/env bash
# Creates (once) a virtual environment holding the MLflow tracking server the tests start,
# and prints its path. The server's dependencies (Flask, SQLAlchemy, pandas, ...) are kept
# out of the project's lock: squeeze talks to MLflow over its REST API only. The venv is
# keyed by the pin's hash, so a changed pin builds a new one and
# every later call is a no-op (building it takes about 4 minutes, once). Override with
# SQUEEZE_MLFLOW_VENV.
set -euo pipefail
MLFLOW_PIN="mlflow==3.17.2"
key="$(echo "$MLFLOW_PIN" | sha256sum | cut -c1-12)"
venv="${SQUEEZE_MLFLOW_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/squeeze/mlflow-venv-$key}"
mkdir -p "$(dirname "$venv")"
# Concurrent callers (parallel test sessions) wait for one builder.
exec 9>"$venv.lock"
flock 9
if [ ! -x "$venv/bin/mlflow" ] || [ ! -f "$venv/.complete" ]; then
    echo "mlflow-venv: creating $venv ($MLFLOW_PIN)" >&2
    rm -rf "$venv"
    python3.11 -m venv "$venv" 2>/dev/null || python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip 2>&1 | { grep -v 'is ignored' || true; } >&2
    "$venv/bin/python" -m pip install -q "$MLFLOW_PIN" 2>&1 | { grep -v 'is ignored' || true; } >&2
    touch "$venv/.complete"
fi
echo "$venv"
