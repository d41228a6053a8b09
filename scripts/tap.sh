#!/usr/bin/env bash
# Runs the test suite in two phases and refuses a run that executed no test (tap exits 0 when it
# finds no files). Phase 1: unit, lab and control plane tests, in parallel. Phase 2: load tests
# (test/load, and test/control/load: serve in a lab under client load), one
# at a time: they measure replication under load, and two at once on a 2-core machine would
# starve each other. Ends with the plain "N passed, N failed" line.
set -uo pipefail
cd "$(dirname "$0")/.."
total=0
pass=0
fail=0
status=0
phase() {
  local log
  log=$(mktemp)
  npx tap "$@" 2>&1 | tee "$log"
  local s=${PIPESTATUS[0]}
  [ "$s" -ne 0 ] && status=$s
  local summary
  summary=$(grep -E '^# \{ total: [0-9]+' "$log" | tail -1)
  rm -f "$log"
  total=$((total + $(sed -nE 's/.*total: ([0-9]+).*/\1/p' <<<"$summary" | grep . || echo 0)))
  pass=$((pass + $(sed -nE 's/.*pass: ([0-9]+).*/\1/p' <<<"$summary" | grep . || echo 0)))
  fail=$((fail + $(sed -nE 's/.*fail: ([0-9]+).*/\1/p' <<<"$summary" | grep . || echo 0)))
}
if [ $# -gt 0 ]; then
  phase "$@"
else
  phase dist/test/unit dist/test/sim dist/test/lab dist/test/*.test.js dist/test/control/*.test.js
  phase --jobs=1 dist/test/load dist/test/control/load
fi
# A test killed by tap's timeout cannot run its teardown: remove what such a test left.
bash scripts/clean-test-labs.sh
# ...and the control plane tests' embedded redis-servers (sockets under /tmp/trc-*), orphaned.
for pid in $(pgrep -f '^redis-server unixsocket:/tmp/trc-' || true); do
  [ "$(ps -o ppid= -p "$pid" | tr -d ' ')" = 1 ] && kill "$pid"
done
if [ "$total" -eq 0 ]; then
  echo "tests: no test ran" >&2
  exit 1
fi
echo "$pass passed, $fail failed"
exit "$status"
