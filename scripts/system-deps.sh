#!/usr/bin/env bash
# System packages the test suite needs beyond pip: Chromium, for the report page tests in a real browser
# (Debian's `chromium` package; driven headless by Playwright's Python package, which uses it as is).
# Idempotent: does nothing when a Chromium is already on PATH. Uses sudo when not root.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
if command -v apt-get >/dev/null 2>&1; then
  $SUDO apt-get update -qq >/dev/null 2>&1 || true
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
else
  echo "scripts/system-deps.sh: no apt-get here; install Chromium yourself (or set SLIMKIT_NO_BROWSER=1 to skip the browser tests)" >&2
  exit 1
fi
