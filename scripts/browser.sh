#!/usr/bin/env bash
# The browser the dashboard's browser tests drive: Debian's headless Chromium and its WebDriver.
#
#   scripts/browser.sh           install chromium and chromium-driver when missing, print paths
#
# Idempotent, like scripts/test-env.sh (which scripts/test.sh runs before it). It never downloads
# a browser build of its own: only Debian's packages, through apt-get (as root or through sudo).
# tests/dashboard_browser.rs finds the two binaries on PATH, or through SKIPPER_TEST_CHROMIUM
# and SKIPPER_TEST_CHROMEDRIVER.
set -euo pipefail

PACKAGES=(chromium chromium-driver fonts-dejavu-core)

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'browser: error: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  command -v apt-get >/dev/null || die "missing packages ${missing[*]} and no apt-get to install them"
  log "installing ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v chromium >/dev/null || die "chromium is not on PATH after installing it"
command -v chromedriver >/dev/null || die "chromedriver is not on PATH after installing chromium-driver"
log "chromium: $(chromium --version 2>/dev/null | head -n 1)"
log "chromedriver: $(chromedriver --version 2>/dev/null | head -n 1)"
