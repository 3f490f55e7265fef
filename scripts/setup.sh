#!/usr/bin/env bash
# Creates .venv and installs crmqueue into it, with an optional extra: "dev" (the test
# tools) or "build" (PyInstaller, for scripts/build.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
extras=""
[ -n "${1:-}" ] && extras="[$1]"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".${extras}" 2>&1 \
  | grep -v "^WARNING: Location" || true
