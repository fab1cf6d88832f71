#!/usr/bin/env bash
# Set up and run every test: notebook tests (nbdev_test), the sync check, and pytest (end-to-end, CLI,
# server, reliability). Works on a fresh machine with Python 3.11; installs what the tests need.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3

# System packages some tests use (a real PostgreSQL server; the load generator). Installed when we can.
need=()
command -v pg_ctl >/dev/null || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || need+=(postgresql)
command -v wrk >/dev/null || need+=(wrk)
if [ ${#need[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing system packages: ${need[*]}"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null) \
    || echo "warning: could not install ${need[*]}; the tests that need them will be skipped with a reason"
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[dev]"
export PATH="$PWD/.venv/bin:$PATH"

echo "== notebooks and package in sync (nbdev_export changes nothing)"
nbdev_export
if git rev-parse --git-dir >/dev/null 2>&1 && ! git diff --quiet -- mlcycle; then
  git --no-pager diff --stat -- mlcycle; echo "mlcycle/ is out of sync with nbs/: run nbdev_export and commit"; exit 1
fi

echo "== notebook tests (nbdev_test, slow cells included)"
ws=$(mktemp -d)
MLCYCLE_WORKSPACE="$ws/ws" timeout 2700 nbdev_test --n_workers 0 --flags slow --timing
rm -rf "$ws"

echo "== pytest"
set +e
python -m pytest tests -ra --durations=15 --timeout 1500 "$@"
rc=$?
set -e
[ $rc = 5 ] && { echo "pytest collected no tests"; exit 1; }
exit $rc
