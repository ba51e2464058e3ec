//! The harness shared by the tests that need a real Docker engine (`cli_docker`, `docker_runtime`,
//! `npm_cli`, `registry_real`): `mod common;` in each. Each of those files is its own crate and
//! uses only part of this module, hence the `dead_code` allowances below.
//!
//! - whether to skip: [`ci`], [`skip`], [`env_or_skip`], [`or_skip!`]
//! - [`env`]: where `scripts/test-env.sh` put the registries
//! - [`docker`]: the docker CLI, and a test's own [`docker::Scope`], removed when it is dropped
//! - [`bin`]: the `skipper` binary, one test's [`bin::World`] to run it in, its `--json` output
//! - [`http`]: tiny HTTP GETs of the apps the tests deploy
//! - [`api`]: a free port, waiting for a condition, and curl calls of `skipper serve`'s API
//! - [`load`]: a load checker that never retries (also `examples/loadcheck.rs`)
//! - [`webdriver`]: a small WebDriver client, for the dashboard in headless Chromium
//! - [`KillOnDrop`]: a child process that does not outlive its test

use std::process::Child;

#[allow(dead_code, reason = "only the tests of `skipper serve` call its API")]
pub(crate) mod api;
#[allow(
    dead_code,
    reason = "docker_runtime does not run the binary; the other files run it"
)]
pub(crate) mod bin;
pub(crate) mod docker;
#[allow(
    dead_code,
    reason = "each file reads the parts of the environment it needs"
)]
pub(crate) mod env;
#[allow(
    dead_code,
    reason = "only cli_docker and npm_cli reach the deployed apps over HTTP"
)]
pub(crate) mod http;
#[allow(
    dead_code,
    reason = "only caddy_real (and examples/loadcheck) put load on a proxy"
)]
pub(crate) mod load;
#[allow(dead_code, reason = "only dashboard_browser drives a browser")]
pub(crate) mod webdriver;

use env::TestEnv;

/// `CI=true`, or `SKIPPER_TEST_STRICT=1` (the README's test command sets it): there a missing
/// engine or test environment fails the test instead of skipping it.
pub(crate) fn ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
        || std::env::var("SKIPPER_TEST_STRICT").as_deref() == Ok("1")
}

/// Say why `test` is skipped; under `CI=true` fail it instead.
pub(crate) fn skip(test: &str, why: &str) {
    assert!(
        !ci(),
        "{why} (CI=true or SKIPPER_TEST_STRICT=1: a missing engine fails the test)"
    );
    eprintln!("skipping {test}: {why}");
}

/// The test environment `load` finds, once the Docker engine answers; otherwise `None` after
/// [`skip`] said why (or failed the test under `CI=true`).
#[allow(
    dead_code,
    reason = "docker_runtime checks the engine through DockerRuntime instead"
)]
pub(crate) fn env_or_skip(
    test: &str,
    load: impl FnOnce() -> Result<TestEnv, String>,
) -> Option<TestEnv> {
    match docker::engine_reachable().and_then(|()| load()) {
        Ok(env) => Some(env),
        Err(why) => {
            skip(test, &why);
            None
        }
    }
}

/// `Some(value)` is `value`; `None` returns from the test (the harness has said why it skips).
macro_rules! or_skip {
    ($option:expr) => {
        match $option {
            Some(value) => value,
            None => return,
        }
    };
}
pub(crate) use or_skip;

/// A child process killed (SIGKILL) and reaped when dropped, unless taken back.
#[allow(
    dead_code,
    reason = "used by cli_docker and registry_real, which start long-running processes"
)]
pub(crate) struct KillOnDrop(pub(crate) Option<Child>);

#[allow(dead_code, reason = "only cli_docker looks at or takes back the child")]
impl KillOnDrop {
    pub(crate) fn child(&mut self) -> &mut Child {
        self.0.as_mut().expect("not taken")
    }

    pub(crate) fn take(&mut self) -> Child {
        self.0.take().expect("not taken")
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
