#!/usr/bin/env bash
# One command from a fresh clone to the whole test suite: installs the npm and
# Debian packages the tests use, builds, checks for import cycles, runs vitest,
# prints a summary line.
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/install-deps.sh
# No import cycles between our modules (madge over the TypeScript sources).
npm run --silent cycles
report="$(mktemp -t vsky-vitest-XXXXXX.json)"
status=0
npx vitest run --reporter=default --reporter=json --outputFile="$report" "$@" || status=$?
node deploy/test-summary.mjs "$report" || true
exit "$status"
