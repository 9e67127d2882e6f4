#!/bin/sh
# The command line every demo shares (demo.h), checked from outside:
#   check_cli.sh help DEMO            --help prints a usage line first and exits 0;
#   check_cli.sh csv DEMO ARGS...     --csv writes a CSV header and rows on stdout, and
#                                     nothing else (the explanations go to stderr).
set -e
mode=$1 demo=$2
shift 2
case $mode in
help)
  first=$("$demo" --help | head -n 1)
  case $first in
  "usage: "*) ;;
  *) echo "$demo --help: first line is \"$first\", not a usage line" >&2; exit 1 ;;
  esac
  ;;
csv)
  out=$("$demo" "$@" --csv 2>/dev/null)
  rows=$(printf '%s\n' "$out" | wc -l)
  bad=$(printf '%s\n' "$out" | grep -cv ',' || true)
  if [ "$rows" -lt 2 ] || [ "$bad" -ne 0 ]; then
    printf '%s --csv: expected a header and rows of CSV, got:\n%s\n' "$demo" "$out" >&2
    exit 1
  fi
  ;;
*)
  echo "usage: check_cli.sh help|csv DEMO [ARGS...]" >&2
  exit 2
  ;;
esac
