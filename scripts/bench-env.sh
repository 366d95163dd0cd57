#!/usr/bin/env bash
# Create/refresh the benchmark virtualenv: the servers ferrocorn is compared with (gunicorn, uWSGI,
# Granian) and the apps they serve (Django, Flask). Usage: scripts/bench-env.sh [VENV_DIR]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
exec "$root/scripts/python-env.sh" "${1:-$root/.venv-bench}" "$root/requirements/bench.txt"
