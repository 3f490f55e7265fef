#!/usr/bin/env bash
# Builds the standalone executable dist/crmqueue (PyInstaller, one file; runs on Linux
# hosts of this architecture with no Python installed). Creates .venv if needed and
# installs crmqueue with the "build" extra. PyInstaller's cache in build/work is kept, so
# a re-run with unchanged sources skips the analysis. Extra arguments go to pyinstaller.
# CRMQUEUE_BUILD_SKIP_SETUP=1 skips the install (scripts/test.sh has done it already).
set -euo pipefail
cd "$(dirname "$0")/.."
[ "${CRMQUEUE_BUILD_SKIP_SETUP:-}" = 1 ] || bash scripts/setup.sh build

# The git commit `crmqueue --version` shows, written before PyInstaller runs. The file
# is rewritten only when the commit changes: a new mtime would void PyInstaller's cache.
commit=unknown
if git rev-parse --git-dir >/dev/null 2>&1; then
  commit=$(git rev-parse --short HEAD)
  git diff --quiet HEAD -- 2>/dev/null || commit="${commit}-dirty"
fi
build_module=crmqueue/_build.py
content=$(printf '"""Written by scripts/build.sh (not in git): the commit this build came from."""\n\nCOMMIT = "%s"\n' "$commit")
if [ ! -f "$build_module" ] || [ "$(cat "$build_module")" != "$content" ]; then
  printf '%s\n' "$content" > "$build_module"
fi

started=$(date +%s)
.venv/bin/pyinstaller --noconfirm --log-level WARN \
  --workpath build/work --distpath dist "$@" build/crmqueue.spec
echo "built dist/crmqueue (commit $commit, $(du -h dist/crmqueue | cut -f1)) in $(( $(date +%s) - started )) s"
