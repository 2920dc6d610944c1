#!/usr/bin/env bash
# Makes the virtualenv the benchmark compares against: stock Celery 5.7.0 with its Redis
# extra (plain `celery redis` lacks a module the Redis transport imports) and gevent.
# Idempotent: an existing virtualenv that already has all of it is left alone.
#
#   bench/setup.sh [VENV]      VENV defaults to target/bench-venv under the repo root;
#                              a relative VENV given here is relative to the current directory.
set -euo pipefail

here="${BASH_SOURCE[0]%/*}"; [ "$here" = "${BASH_SOURCE[0]}" ] && here=.
root="$(cd "$here/.." && pwd)"
venv="${1:-$root/target/bench-venv}"
want=5.7.0

command -v python3 >/dev/null 2>&1 || { echo "bench/setup.sh: python3 is not installed (need Python 3.9 or newer)" >&2; exit 1; }

has_all() {
  "$venv/bin/python" - "$want" >/dev/null 2>&1 <<'EOF'
import sys
import celery, gevent, redis, kombu.transport.redis  # noqa: F401
sys.exit(0 if celery.__version__ == sys.argv[1] else 1)
EOF
}

if ! has_all; then
  if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv" >/dev/null || { echo "bench/setup.sh: python3 -m venv $venv failed (is the venv module installed, e.g. python3-venv?)" >&2; exit 1; }
  fi
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "celery[redis]==$want" gevent \
    || { echo "bench/setup.sh: pip install into $venv failed" >&2; exit 1; }
  has_all || { echo "bench/setup.sh: $venv still lacks celery $want, gevent or redis" >&2; exit 1; }
fi

"$venv/bin/python" -c 'import celery; print("celery", celery.__version__)'
