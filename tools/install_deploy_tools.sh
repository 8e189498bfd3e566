#!/usr/bin/env bash
# Installs the deploy tools into .venv-sam/, apart from the project's .venv:
#   .venv-sam/bin/{sam,cfn-lint}      aws-sam-cli and cfn-lint
#   .venv-sam/bin/python3.12          `sam build` looks for python3.12 on PATH (runtime python3.12)
#   .venv-sam/lambda-runtime/         a python3.12 with what the Lambda runtime adds to the layers:
#                                     awslambdaric (the runtime interface client) and boto3
# The Runtime Interface Emulator binary comes inside the aws-sam-cli wheel
# (samcli/local/rapid/aws-lambda-rie-x86_64). tests/deploy finds everything here.
#
# python3.12: $SAM_PYTHON if set, else pyenv's newest 3.12.x, else python3.12 on PATH. Without one the
# tools are still installed (from the default python3) and the build tests skip with a reason.
# Idempotent: re-installs only when the pinned versions below change.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${SAM_VENV:-$ROOT/.venv-sam}"
PINS="aws-sam-cli==1.170.0 cfn-lint==1.58.0"
RUNTIME_PINS="awslambdaric==4.2.2 boto3==1.44.8"

is_py312() { [ -n "$1" ] && "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' >/dev/null 2>&1; }

find_py312() {
    local pyenv_root="${PYENV_ROOT:-$HOME/.pyenv}"
    command -v pyenv >/dev/null 2>&1 && pyenv_root="$(pyenv root)"
    local candidates=(
        "${SAM_PYTHON:-}"
        "$(ls -d "$pyenv_root"/versions/3.12.*/bin/python3.12 2>/dev/null | sort -V | tail -1 || true)"
        "$(command -v python3.12 2>/dev/null || true)"
        /usr/bin/python3.12 /usr/local/bin/python3.12
    )
    for candidate in "${candidates[@]}"; do
        if is_py312 "$candidate"; then
            # Resolve pyenv shims to the real interpreter, so the venv does not depend on PYENV_VERSION.
            "$candidate" -c 'import sys; print(sys.executable)'
            return 0
        fi
    done
    return 1
}

PY312="$(find_py312 || true)"
STAMP="$VENV/.installed-$(echo "$PINS $RUNTIME_PINS ${PY312:-nopy312}" | sha256sum | cut -c1-16)"
if [ -f "$STAMP" ]; then
    exit 0
fi

if [ -n "$PY312" ]; then
    echo "deploy tools: using $PY312 ($("$PY312" --version))" >&2
    BASE="$PY312"
else
    echo "deploy tools: no python3.12 found (set SAM_PYTHON=/path/to/python3.12);" \
         "sam build tests will be skipped" >&2
    BASE="${PYTHON:-python3}"
fi

rm -rf "$VENV"
"$BASE" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check $PINS
if [ -n "$PY312" ]; then
    "$PY312" -m venv "$VENV/lambda-runtime"
    "$VENV/lambda-runtime/bin/python" -m pip install -q --disable-pip-version-check $RUNTIME_PINS
fi
RIE="$("$VENV/bin/python" -c 'import pathlib, samcli; print(pathlib.Path(samcli.__file__).parent / "local/rapid/aws-lambda-rie-x86_64")')"
if [ -f "$RIE" ] && [ ! -x "$RIE" ]; then
    chmod +x "$RIE"
fi
touch "$STAMP"
echo "deploy tools installed in $VENV: $("$VENV/bin/sam" --version), $("$VENV/bin/cfn-lint" --version)" >&2
