#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what the tests need (redis-server,
# the Python packages), then lint, format check, types and pytest. Extra arguments go to pytest.
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
.venv/bin/pytest "$@"
