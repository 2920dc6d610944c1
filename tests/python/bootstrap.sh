#!/usr/bin/env bash
# bootstrap.sh VENV_DIR
#
# Idempotently create a Python virtualenv at VENV_DIR holding the packages in
# requirements.txt (stock Celery 5.7.0 with the redis extra, Flower 2.2.0) for the interop
# tests. Prints nothing and exits 0 on success; on failure prints one line to
# stderr and exits non-zero. Safe to run concurrently (flock on VENV_DIR.lock).
# Set CELERIAC_PYTHON to choose the interpreter used to create the venv
# (default: python3).
set -u

die() {
    echo "bootstrap.sh: $*" >&2
    exit 1
}

[ $# -eq 1 ] && [ -n "$1" ] || die "usage: bootstrap.sh VENV_DIR"

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)" || die "cannot resolve script directory"
REQS="$SCRIPT_DIR/requirements.txt"
[ -f "$REQS" ] || die "missing $REQS"

VENV="$1"
case "$VENV" in
    /*) ;;
    *) VENV="$(pwd -P)/$VENV" ;;
esac
VENV="${VENV%/}"
PY="${CELERIAC_PYTHON:-python3}"

command -v flock >/dev/null 2>&1 || die "flock not found (util-linux) - cannot lock $VENV.lock"
command -v "$PY" >/dev/null 2>&1 || die "$PY not found - install Python 3.9+ with the venv module"

mkdir -p "$(dirname "$VENV")" 2>/dev/null || die "cannot create parent directory of $VENV"

# A hash of requirements.txt recorded after a successful install: a changed
# requirements file forces a reinstall even if celery is importable.
REQ_HASH="$(cksum < "$REQS" | tr -d ' \t')"
STAMP="$VENV/.celeriac-requirements"

ready() {
    [ -x "$VENV/bin/python" ] || return 1
    [ -f "$STAMP" ] && [ "$(cat "$STAMP" 2>/dev/null)" = "$REQ_HASH" ] || return 1
    "$VENV/bin/python" - <<'PYEOF' >/dev/null 2>&1
import sys
import celery, kombu, redis  # noqa: F401  (redis = the [redis] extra)
import flower  # noqa: F401  (Flower, for the events/remote-control tests)
sys.exit(0 if celery.__version__ == "5.7.0" and flower.__version__ == "2.2.0" else 1)
PYEOF
}

# Fast path without taking the lock.
ready && exit 0

exec 9>"$VENV.lock" || die "cannot open lock file $VENV.lock"
flock -w 900 9 || die "timed out waiting for lock $VENV.lock"

# Another process may have finished the job while we waited.
ready && exit 0

LOG="$VENV.bootstrap.log"
: > "$LOG" 2>/dev/null || LOG=/dev/null

# Not ready (no interpreter, celery missing/wrong/damaged, or requirements.txt
# changed): start again from an empty venv, which also repairs half-installed
# or hand-modified environments that pip would consider up to date.
"$PY" -m venv --clear "$VENV" >>"$LOG" 2>&1 \
    || die "'$PY -m venv --clear $VENV' failed (is the python3 venv module installed?); see $LOG"

"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
    -r "$REQS" >>"$LOG" 2>&1 \
    || die "pip install -r $REQS into $VENV failed (network/PyPI?); see $LOG"

rm -f "$STAMP"
printf '%s\n' "$REQ_HASH" > "$STAMP" || die "cannot write $STAMP"
ready || die "celery 5.7.0 / flower 2.2.0 still not importable from $VENV/bin/python after install; see $LOG"
exit 0
