#!/usr/bin/env bash
# The README's second command: create/update .venv with the test extras and run every test.
# Extra arguments go to pytest (e.g. scripts/test.sh tests/unit -x).
source "$(dirname "$0")/_venv.sh"
# The search page test drives Debian's chromium; install it when missing and we can.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "installing Debian's chromium for the browser test ..." >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q chromium >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; } \
        || echo "could not install chromium: the browser test will be skipped" >&2
fi
exec .venv/bin/python -m pytest "$@"
