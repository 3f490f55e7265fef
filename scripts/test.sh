#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what the tests need (redis-server,
# the Python packages), then lint, format check, types and pytest. Extra arguments go to
# pytest (one run, as given); without them the suite runs in two parts: everything but the
# timing-sensitive files on both cores (pytest-xdist, a file per worker), then those files
# (marked `serial` in tests/conftest.py) on their own.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v redis-server >/dev/null 2>&1; then
  echo "installing redis-server (the tests start their own on a free port)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi
bash scripts/setup.sh dev
.venv/bin/ruff check crmqueue tests bench
.venv/bin/ruff format --check crmqueue tests bench
.venv/bin/mypy crmqueue
if [ "$#" -gt 0 ]; then
  exec .venv/bin/pytest "$@"
fi
.venv/bin/pytest -n 2 --dist loadfile -m "not serial" --durations=10
.venv/bin/pytest -m serial --durations=10
