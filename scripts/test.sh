#!/usr/bin/env bash
# The test command (README, CI): every test, from unit tests to the real Docker engine.
#
#   scripts/test.sh
#
# 1. scripts/test-env.sh installs what the real-engine tests need (Debian's busybox-static,
#    docker-registry, apache2-utils), builds the test images and starts two local registries;
#    scripts/browser.sh installs Debian's chromium and chromium-driver for the dashboard's
#    browser test (tests/dashboard_browser.rs).
# 2. cargo test runs the unit, property, mock (wiremock) and fake-backend tests.
# 3. cargo test -- --ignored runs the tests marked #[ignore = "needs docker engine"] against the
#    real engine and registries, one at a time. Here a missing engine or test environment fails
#    them loudly (SKIPPER_TEST_STRICT=1), as under CI=true; run by hand without this script, a
#    test that cannot find its engine says why and is skipped.
# 4. scripts/schemathesis.sh fuzzes the API of `skipper serve` from its OpenAPI document.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

export SKIPPER_TEST_STRICT=1
scripts/test-env.sh
scripts/browser.sh
cargo build -p skipper-bin --bin skipper --bin skippy
cargo test --workspace --all-features
cargo test --workspace --all-features -- --ignored --test-threads=1
# 4. The API fuzzed from its own OpenAPI document: no 5xx, every answer as documented.
SCHEMATHESIS_MAX_TIME="${SCHEMATHESIS_MAX_TIME:-45}" scripts/schemathesis.sh
