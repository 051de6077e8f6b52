# shellcheck shell=bash
# Sourced by the pg-* helpers of the example DR plan: the connection target, psql, errors.
# Target: --host/--port, else $PGHOST/$PGPORT; user $PGUSER (default postgres), password
# $PGPASSWORD, database $PGDATABASE (default postgres).
set -euo pipefail

prog=${0##*/}
die() {
  printf '%s: %s\n' "$prog" "$*" >&2
  exit 1
}

export PGUSER=${PGUSER:-postgres} PGDATABASE=${PGDATABASE:-postgres}
export PGCONNECT_TIMEOUT=${PGCONNECT_TIMEOUT:-5}

# target_opt OPTION [VALUE]: takes --host/--port; returns 1 for any other option.
target_opt() {
  case $1 in
    --host | --port)
      (($# >= 2)) || die "$1 needs a value"
      if [[ $1 == --host ]]; then export PGHOST=$2; else export PGPORT=$2; fi
      ;;
    *) return 1 ;;
  esac
}

target() {
  printf '%s:%s' "${PGHOST:-}" "${PGPORT:-5432}"
}

psql_bin() {
  if command -v psql >/dev/null 2>&1; then
    command -v psql
    return
  fi
  local bins=(/usr/lib/postgresql/*/bin/psql)
  [[ -x ${bins[-1]} ]] || die "psql not found: install postgresql-client"
  printf '%s\n' "$(printf '%s\n' "${bins[@]}" | sort -V | tail -n 1)"
}

# q SQL...: runs each SQL in its own transaction, prints the rows (columns split by |);
# on failure exits 1 naming the database and quoting psql. Assign its output
# (`x=$(q ...)`, and `|| exit 1` inside a function a condition calls): elsewhere its
# failure would not stop the script.
q() {
  local args=() sql out err
  [[ -n ${PGHOST:-} ]] || die "no database given: pass --host HOST --port PORT or set PGHOST and PGPORT"
  for sql in "$@"; do args+=(-c "$sql"); done
  err=$(mktemp)
  if ! out=$("$PSQL" -X -A -t -q -v ON_ERROR_STOP=1 "${args[@]}" 2>"$err"); then
    local msg
    msg=$(tr '\n' ' ' <"$err")
    rm -f "$err"
    die "$(target): ${msg:-psql failed}"
  fi
  rm -f "$err"
  printf '%s\n' "$out"
}

# wait_for SECONDS CHECK...: polls the command CHECK every 0.2 s until it succeeds.
wait_for() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

PSQL=$(psql_bin)
