#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what the tests need (redis-server,
# the Python packages), then lint, format check, types and pytest. Extra arguments go to
# pytest (one run, as given); without them the suite runs in two parts: everything but the
# timing-sensitive files on both cores (pytest-xdist, a file per worker), then those files
# (marked `serial` in tests/conftest.py) on their own. The executable those include
# (test_executable.py) is built in the background during the checks and the first part.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v redis-server >/dev/null 2>&1; then
  echo "installing redis-server (the tests start their own on a free port)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi
if [ ! -x /usr/bin/chromium ]; then
  echo "installing chromium (tests/test_dashboard_browser.py drives the dashboard in it)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
bash scripts/setup.sh dev
if [ "$#" -gt 0 ]; then
  .venv/bin/ruff check crmqueue tests bench
  .venv/bin/ruff format --check crmqueue tests bench
  .venv/bin/mypy crmqueue
  exec .venv/bin/pytest "$@"
fi

# The executable's cold build (about a minute, on one core) runs beside the checks and the
# parallel part rather than inside the serial one; test_executable.py's own scripts/build.sh
# then finds it up to date (PyInstaller's cache in build/work: seconds). Its install step
# runs first, here: a reinstall takes crmqueue out of .venv for a moment, which no running
# test may see.
bash scripts/setup.sh build
build_log=$(mktemp)
trap 'rm -f "$build_log"' EXIT
CRMQUEUE_BUILD_SKIP_SETUP=1 bash scripts/build.sh >"$build_log" 2>&1 &
build_pid=$!

status=0
.venv/bin/ruff check crmqueue tests bench || status=$?
.venv/bin/ruff format --check crmqueue tests bench || status=$?
.venv/bin/mypy crmqueue || status=$?
if [ "$status" -eq 0 ]; then
  .venv/bin/pytest -n 2 --dist loadfile -m "not serial" --durations=10 || status=$?
fi
# A failed build fails the suite here under CI=true, with its output (elsewhere
# test_executable.py tries again and is skipped, as without this head start); a failed
# step above fails it once the build has ended (nothing is left running).
ci=${CI:-}
if wait "$build_pid"; then
  tail -n 1 "$build_log"
elif [[ ${ci,,} == true ]]; then
  cat "$build_log" >&2
  echo "scripts/test.sh: scripts/build.sh failed (its output is above)" >&2
  [ "$status" -ne 0 ] || status=1
else
  cat "$build_log" >&2
  echo "scripts/test.sh: scripts/build.sh failed (its output is above); test_executable.py" \
    "builds again and is skipped if that fails too (it fails under CI=true)" >&2
fi
[ "$status" -eq 0 ] || exit "$status"
.venv/bin/pytest -m serial --durations=10
