#!/usr/bin/env bash
# Runs the tap suite and refuses a run that executed no test (tap exits 0 when it finds no files).
# Ends with the plain "N passed, N failed" line.
set -uo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
trap 'rm -f "$log"' EXIT
npx tap "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
summary=$(grep -E '^# \{ total: [0-9]+' "$log" | tail -1)
total=$(sed -E 's/.*total: ([0-9]+).*/\1/' <<<"$summary")
pass=$(sed -nE 's/.*pass: ([0-9]+).*/\1/p' <<<"$summary")
fail=$(sed -nE 's/.*fail: ([0-9]+).*/\1/p' <<<"$summary")
if [ -z "$total" ] || [ "$total" -eq 0 ]; then
  echo "tests: no test ran" >&2
  exit 1
fi
echo "${pass:-0} passed, ${fail:-0} failed"
exit "$status"
