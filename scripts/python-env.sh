#!/usr/bin/env bash
# Create or refresh the test virtualenv (default <repo>/.venv) with the Python ferrocorn is built
# against and the packages in requirements/test.txt. Idempotent and quick when up to date: the
# requirements' hash is recorded in the venv.
# Usage: scripts/python-env.sh [VENV_DIR [REQUIREMENTS_FILE]]  (defaults: .venv, requirements/test.txt)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${1:-$root/.venv}"
req="${2:-$root/requirements/test.txt}"
python="${PYO3_PYTHON:-python3.11}"
stamp="$venv/.requirements.sha256"
want="$( (sha256sum < "$req"; "$python" -c 'import sys; print(sys.version)') | sha256sum | cut -d' ' -f1)"
if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    exit 0
fi
# Tests run in parallel processes may all get here: one builds, the others wait and then see it.
mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9
if [ -x "$venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    exit 0
fi
echo "python-env: setting up $venv with $("$python" --version) and $req" >&2
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
echo "$want" > "$stamp"
