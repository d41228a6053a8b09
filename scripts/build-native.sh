#!/usr/bin/env bash
# Builds every native helper (native/*.c) into dist/native/. A helper names the libraries it
# links against in a line "// link: -lfoo" or "* link: -lfoo" of its source; warnings are errors.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-dist/native}
mkdir -p "$out"
for src in native/*.c; do
  name=$(basename "$src" .c)
  libs=$(sed -n 's/^.*[*/] link: \(.*\)$/\1/p' "$src" | head -1)
  # shellcheck disable=SC2086 # the library list is meant to split into words
  cc -O2 -Wall -Wextra -Werror -o "$out/$name" "$src" $libs
done
