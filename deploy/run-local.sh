#!/usr/bin/env bash
# One command from a fresh clone to a running local cluster serving a demo
# volume over NBD: installs, builds, then runs `vsky cluster up` (Ctrl-C stops it).
# Extra arguments go to `vsky cluster up` (see `node dist/cli/vsky.js cluster up --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/install-deps.sh
exec node dist/cli/vsky.js cluster up "$@"
