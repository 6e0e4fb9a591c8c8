#!/usr/bin/env bash
# Fail on CRLF line endings or a missing final newline in any tracked text file.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
status=0
while IFS= read -r -d '' file; do
  [ -s "$file" ] || continue
  if ! grep -Iq . "$file"; then continue; fi  # binary
  if grep -q $'\r' "$file"; then echo "CRLF line endings: $file"; status=1; fi
  if [ -n "$(tail -c 1 "$file")" ]; then echo "no final newline: $file"; status=1; fi
done < <(git ls-files -z --cached --others --exclude-standard)
[ "$status" -eq 0 ] && echo "text files: LF endings and final newlines OK"
exit "$status"
