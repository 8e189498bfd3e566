#!/usr/bin/env bash
# Lint, format and type checks (config in pyproject.toml): ruff check, ruff format --check, mypy.
# Sets up .venv like the other scripts (ruff and mypy come with the test extra). Extra
# arguments go to ruff check (e.g. scripts/lint.sh --fix).
source "$(dirname "$0")/_venv.sh"
status=0
echo "ruff check ..." >&2
.venv/bin/ruff check "$@" . || status=1
echo "ruff format --check ..." >&2
.venv/bin/ruff format --check . || status=1
echo "mypy ..." >&2
.venv/bin/mypy || status=1
exit $status
