#!/usr/bin/env bash
# Removes labs left by test processes that no longer exist (a test killed on timeout cannot run
# its teardown). Test labs are named t-<pid in base 36>-<n>-<tag> (test/helpers.ts).
set -u
cd "$(dirname "$0")/.."
labs=$( (ls /run/tcp-replicator/labs 2>/dev/null; ip netns list | awk '{print $1}' | sed -nE 's/^tr-(.*)-(client|appliance|lan|original|replica[0-9]+)$/\1/p') | sort -u)
for name in $labs; do
  pid36=$(sed -nE 's/^t-([0-9a-z]+)-[0-9]+-.*/\1/p' <<<"$name")
  [ -n "$pid36" ] || continue
  kill -0 "$((36#$pid36))" 2>/dev/null && continue
  echo "removing stale test lab $name" >&2
  node dist/src/cli/main.js lab down --name "$name" >/dev/null
done
exit 0
