#!/usr/bin/env bash
# Makes the virtualenv celeriac-bench compares against: stock Celery 5.7 with its Redis
# extra (plain `celery redis` lacks a module the Redis transport imports) and gevent.
# Idempotent. Usage: bench/setup.sh [VENV]   (default: target/bench-venv)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-target/bench-venv}"
command -v python3 >/dev/null 2>&1 || { echo "bench/setup.sh: python3 is not installed" >&2; exit 1; }
if ! "$venv/bin/python" -c 'import celery, gevent, redis' >/dev/null 2>&1; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check 'celery[redis]==5.7.0' gevent
fi
"$venv/bin/python" -c 'import celery; print("celery", celery.__version__)'
