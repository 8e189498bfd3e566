# Sourced by the scripts here: make sure .venv exists and holds the project (with its local
# stack and test extras), re-installing only when pyproject.toml or requirements.lock changed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "error: Python 3.11 or newer is needed (set PYTHON=/path/to/python3.11)" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    echo "creating .venv with $("$PYTHON" --version)" >&2
    "$PYTHON" -m venv .venv
fi
# EXTRAS=dev,train also installs torch for the fine-tune tests (as .ci/run does).
EXTRAS="${EXTRAS:-dev}"
# Re-install only when the project's dependencies changed since the last install.
STAMP=.venv/.installed-$( (cat pyproject.toml requirements.lock 2>/dev/null; echo "$EXTRAS") | sha256sum | cut -c1-16)
if [ ! -f "$STAMP" ]; then
    echo "installing the project into .venv ..." >&2
    .venv/bin/python -m pip install -q --disable-pip-version-check -U pip
    # One environment serves both commands: the local stack (moto's S3) and the tests.
    extras=".[$EXTRAS]"
    if [ -f requirements.lock ]; then
        .venv/bin/python -m pip install -q --disable-pip-version-check -c requirements.lock -e "$extras"
    else
        .venv/bin/python -m pip install -q --disable-pip-version-check -e "$extras"
    fi
    rm -f .venv/.installed-*
    touch "$STAMP"
fi
