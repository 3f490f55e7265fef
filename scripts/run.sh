#!/usr/bin/env bash
# Quick start: install crmqueue into .venv and run every queue on the embedded default
# (SQLite under ./crmqueue-data). Extra arguments go to `crmqueue run`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/crmqueue run "$@"
