#!/usr/bin/env bash
# Creates .venv and installs crmqueue into it, with an optional extra: "dev" (the test
# tools) or "build" (PyInstaller, for scripts/build.sh). Exits non-zero, with pip's own
# error on the terminal, when the install fails or the extra does not exist.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
extras=""
if [ -n "${1:-}" ]; then
  # pip only warns about an extra the project does not have, and installs without it.
  .venv/bin/python - "$1" <<'EOF'
import sys
import tomllib

with open("pyproject.toml", "rb") as handle:
    known = tomllib.load(handle)["project"]["optional-dependencies"]
if sys.argv[1] not in known:
    sys.exit(f"scripts/setup.sh: unknown extra {sys.argv[1]!r} (extras: {', '.join(known)})")
EOF
  extras="[$1]"
fi

# pip's "WARNING: Location ... is ignored" lines are noise here. grep exits 1 when it
# prints nothing (a quiet, successful install): that is not a failure; pip's is.
without_noise() { grep -v "^WARNING: Location" || [ $? -eq 1 ]; }
status=0
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".${extras}" 2>&1 \
  | without_noise || status=$?
if [ "$status" -ne 0 ]; then
  echo "scripts/setup.sh: pip install -e .${extras} failed (exit $status; its error is above)" >&2
  exit "$status"
fi
