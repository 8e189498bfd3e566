#!/usr/bin/env bash
# The README's first command: set up .venv if needed, then run the system locally on embedded
# defaults (an embedded Qdrant under .data/). Extra arguments go to `visual-search demo`.
source "$(dirname "$0")/_venv.sh"
exec .venv/bin/visual-search demo "$@"
