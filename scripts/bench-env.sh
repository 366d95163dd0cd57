#!/usr/bin/env bash
# Create/refresh the benchmark virtualenv: the servers ferrocorn is compared with (gunicorn, uWSGI,
# Granian) and the apps they serve (Django, Flask). Usage: scripts/bench-env.sh [VENV_DIR]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${1:-$root/.venv-bench}"
req="$root/requirements/bench.txt"
python="${PYO3_PYTHON:-python3.11}"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$req" | cut -d' ' -f1)"
if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    exit 0
fi
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
echo "$want" > "$stamp"
