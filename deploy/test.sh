#!/usr/bin/env bash
# One command from a fresh clone to the whole test suite: installs the npm and
# Debian packages the tests use, builds, checks for import cycles, runs vitest,
# prints a summary line.
#
# Two vitest processes side by side, one per core (vitest.config.ts has the
# projects): the integration tests that assert timing windows
# (`--project integration`), and next to them the unit tests, then the
# integration tests that assert none (`--project unit --project
# integration-untimed`), their output prefixed "[side] ". Each runs one file at
# a time. Their JSON reports are merged into one ($report), the summary line
# counts both, and the exit status fails if either run failed. Arguments go to
# both runs (file filters, -t NAME, ...). VSKY_TEST_SERIAL=1: one process, the
# projects one after the other (as `npx vitest run`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash deploy/install-deps.sh
# No import cycles between our modules (madge over the TypeScript sources).
npm run --silent cycles
report="$(mktemp -t vsky-vitest-XXXXXX.json)"
# A hung run fails instead of holding CI (each test and hook has its own bound too: vitest.config.ts).
bound=(timeout --kill-after=30 "${VSKY_TEST_TIMEOUT_S:-2400}")
status=0
if [ "${VSKY_TEST_SERIAL:-0}" = 1 ]; then
  "${bound[@]}" npx vitest run --reporter=default --reporter=json --outputFile="$report" "$@" || status=$?
  node deploy/test-summary.mjs "$report" "$report" || true
  exit "$status"
fi
side_report="$(mktemp -t vsky-side-XXXXXX.json)"
integration_report="$(mktemp -t vsky-integration-XXXXXX.json)"
( "${bound[@]}" npx vitest run --project unit --project integration-untimed --passWithNoTests \
  --reporter=default --reporter=json --outputFile="$side_report" "$@" 2>&1 | sed -u 's/^/[side] /' ) &
side_pid=$!
"${bound[@]}" npx vitest run --project integration --passWithNoTests --reporter=default --reporter=json --outputFile="$integration_report" "$@" || status=$?
side_status=0
wait "$side_pid" || side_status=$?
if [ "$status" -eq 0 ]; then status=$side_status; fi
node deploy/test-summary.mjs "$report" "$side_report" "$integration_report" || status=1
rm -f "$side_report" "$integration_report"
exit "$status"
