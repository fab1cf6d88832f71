#!/usr/bin/env bash
# Set up and run every test: the sync check, the notebook tests (nbdev_test) and pytest (end-to-end, CLI, server,
# reliability). Works on a fresh machine with Python 3.11; installs what every test needs, so that no test skips.
#
# nbdev_test runs without the `slow` flag (settings.ini `tst_flags`): the cells it marks are each stage notebook's
# `## Run` section, which the full-circle test (`mlcycle run`, tests/test_retraining.py) executes through papermill, and
# the CLI notebook's `run_lifecycle` example, which `mlcycle run --stages 01,02` executes in tests/test_foundation.py.
# tests/test_notebooks.py checks that the flag marks exactly those cells. The notebook tests and pytest then run side by
# side: pytest in two pytest-xdist workers (tests that share a fixture in one worker), nbdev_test beside them.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
T0=$(date +%s)
since() { echo "$(( $(date +%s) - $1 )) s"; }

# System packages some tests use (a real PostgreSQL server; the load generator; a headless browser). Installed when we can.
t=$(date +%s)
need=()
command -v pg_ctl >/dev/null || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || need+=(postgresql)
command -v wrk >/dev/null || need+=(wrk)
command -v chromium >/dev/null || need+=(chromium)   # the browser check of the reports (tests/test_reports_browser.py)
if [ ${#need[@]} -gt 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing system packages: ${need[*]}"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null) \
    || echo "warning: could not install ${need[*]}; the tests that need them will fail with a reason"
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[dev]"
export PATH="$PWD/.venv/bin:$PATH"
echo "== phase install: $(since $t)"

echo "== notebooks and package in sync (nbdev_export changes nothing)"
nbdev_export
if git rev-parse --git-dir >/dev/null 2>&1 && ! git diff --quiet -- mlcycle; then
  git --no-pager diff --stat -- mlcycle; echo "mlcycle/ is out of sync with nbs/: run nbdev_export and commit"; exit 1
fi

# One OpenMP thread per process: the suite runs three processes (two pytest workers and nbdev_test) on the machine's
# cores, and scikit-learn's HistGradientBoosting with two threads each spent most of its CPU spinning while its threads
# waited for each other (one 40-tree fit: 32 CPU-s with two threads, 5 with one). The models are the same with one
# thread (predictions equal); latency figures measured in tests are then one-thread figures, which no test asserts on.
export OMP_NUM_THREADS=1

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "== notebook tests (nbdev_test, in the background; output below when done) and pytest"
t_nb=$(date +%s)
( set +e; MLCYCLE_WORKSPACE="$tmp/ws" timeout 3600 nbdev_test --n_workers 0 --timing >"$tmp/nbdev_test.log" 2>&1
  echo $? >"$tmp/nbdev_test.rc"; echo $(( $(date +%s) - t_nb )) >"$tmp/nbdev_test.s" ) &
nb_pid=$!

t=$(date +%s)
set +e
MLCYCLE_TESTS_NO_SKIP=1 python -m pytest tests -n 2 --dist loadgroup --no-loadscope-reorder -ra --durations=10 --timeout 1800 "$@"
rc=$?
set -e
pytest_s=$(since $t)
wait $nb_pid || true
echo "== notebook tests output (nbdev_test)"
cat "$tmp/nbdev_test.log"
nb_rc=$(cat "$tmp/nbdev_test.rc")
echo "== phase pytest: $pytest_s (exit $rc)"
echo "== phase nbdev_test: $(cat "$tmp/nbdev_test.s") s (exit $nb_rc; ran alongside pytest)"
echo "== total: $(since $T0)"
[ $rc = 5 ] && { echo "pytest collected no tests"; exit 1; }
[ "$nb_rc" = 0 ] || { echo "notebook tests failed (exit $nb_rc)"; exit 1; }
exit $rc
