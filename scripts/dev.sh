#!/usr/bin/env bash
# The README's first command: set up .venv if needed, then run the system locally on embedded
# defaults: S3 emulator, ingest, REST API and search page (see `visual-search dev --help`).
source "$(dirname "$0")/_venv.sh"
exec .venv/bin/visual-search dev "$@"
