#!/usr/bin/env bash
# The README's second command: create/update .venv with the test extras and run every test.
# Extra arguments go to pytest (e.g. scripts/test.sh tests/unit -x).
source "$(dirname "$0")/_venv.sh"
exec .venv/bin/python -m pytest "$@"
