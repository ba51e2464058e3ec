//! The `skipper` binary routing through Nginx Proxy Manager, end to end: real containers on a
//! real Docker engine, pulled from the test registry, with `FakeNpm` (a stateful fake of NPM's
//! API on 127.0.0.1) standing in for NPM.
//!
//! Run with:
//! `scripts/test-env.sh && cargo test --test npm_cli -- --ignored --test-threads=1`
//!
//! The binary is `SKIPPER_BIN`, else `<target>/<profile>/skipper` next to this test (built once
//! per test process with `cargo build -p skipper-bin --bin skipper`). It gets NPM from
//! `SKIPPER_NPM_URL`/`_EMAIL`/`_PASSWORD` with `SKIPPER_NPM_UPSTREAM=published`, so hosts forward
//! to `127.0.0.1:<published port>`. Each run has its own data directory, its own
//! `SKIPPER_SCOPE` and its own Docker network; every container and network with the scope's label
//! is removed when the test ends, failed or not. Without a reachable engine or
//! `target/test-env/env.sh` the test is skipped with a message, unless `CI=true`. The harness
//! shared with the other Docker tests is in `tests/common/`.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use skipper_npm::fake::FakeNpm;

use common::bin::{Run, World};
use common::docker::{Scope, docker};
use common::env::TestEnv;

/// The stage domain of project `app` (from `team/app`), stage `dev`, domain `localhost`.
const STAGE_DOMAIN: &str = "stage-dev-app.localhost";
/// No single command may take longer than this.
const COMMAND_LIMIT: Duration = Duration::from_secs(180);

/// One run's world: the registries, the fake NPM, and a scope, data directory and config file.
struct Harness {
    env: TestEnv,
    npm: FakeNpm,
    // Last, so that its containers and networks go after everything else is dropped.
    world: World,
}

impl Harness {
    /// `None` (after saying why) when the engine or the test environment is missing and this is
    /// not CI.
    async fn new(test: &str) -> Option<Self> {
        let env = common::env_or_skip(test, TestEnv::load)?;
        let world = World::new(Scope::new(&format!("npm-{test}")));
        tokio::task::spawn_blocking(common::bin::skipper_bin)
            .await
            .expect("locate the binary");
        Some(Self {
            env,
            npm: FakeNpm::start().await,
            world,
        })
    }

    /// `skipper <args> --json`, run off the runtime's thread so the fake keeps serving.
    async fn skipper(&self, args: &[&str]) -> Run {
        let mut c = self.world.command(args);
        c.current_dir(self.world.dir.path())
            .env("SKIPPER_NPM_URL", self.npm.uri())
            .env("SKIPPER_NPM_EMAIL", FakeNpm::EMAIL)
            .env("SKIPPER_NPM_PASSWORD", FakeNpm::PASSWORD)
            .env("SKIPPER_NPM_UPSTREAM", "published")
            .env_remove("SKIPPER_NPM_UPSTREAM_HOST")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let label = format!("skipper {args:?}");
        let out = tokio::task::spawn_blocking(move || {
            let mut child = c.spawn().unwrap_or_else(|e| panic!("run {label}: {e}"));
            let started = Instant::now();
            while child.try_wait().expect("wait for skipper").is_none() {
                if started.elapsed() > COMMAND_LIMIT {
                    let _ = child.kill();
                    panic!("{label} took longer than {COMMAND_LIMIT:?}");
                }
                #[allow(clippy::disallowed_methods, reason = "inside spawn_blocking")]
                std::thread::sleep(Duration::from_millis(50));
            }
            child.wait_with_output().expect("read skipper's output")
        })
        .await
        .expect("the command's thread");
        Run::from_output(args, out)
    }

    async fn deploy(&self, tag: &str, extra: &[&str]) -> Run {
        let image = self.env.image(tag);
        let mut args = vec!["deploy", image.as_str(), "--health-path", "/health"];
        args.extend_from_slice(extra);
        self.skipper(&args).await
    }

    /// NPM's host for `domain`; panics (showing every host) when there is none.
    fn host(&self, domain: &str) -> Value {
        self.npm
            .host_for(domain)
            .unwrap_or_else(|| panic!("no proxy host for {domain}: {:#?}", self.summary()))
    }

    /// `(id, forward_host, forward_port)` of `domain`'s host.
    fn target(&self, domain: &str) -> (u64, String, u16) {
        let h = self.host(domain);
        (
            h["id"].as_u64().expect("id"),
            h["forward_host"].as_str().expect("forward_host").to_owned(),
            h["forward_port"]
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .expect("forward_port"),
        )
    }

    /// Every host minus `modified_on`, for before/after comparisons.
    fn hosts(&self) -> Vec<Value> {
        self.npm
            .hosts()
            .into_iter()
            .map(|mut h| {
                h.as_object_mut()
                    .expect("a host object")
                    .remove("modified_on");
                h
            })
            .collect()
    }

    /// One line per host, for failure messages.
    fn summary(&self) -> Vec<String> {
        self.npm
            .hosts()
            .iter()
            .map(|h| {
                format!(
                    "#{} {} -> {}:{}",
                    h["id"], h["domain_names"], h["forward_host"], h["forward_port"]
                )
            })
            .collect()
    }

    /// The running containers of this run, as `(instance id, tag)`.
    fn running(&self) -> Vec<(String, String)> {
        let mut list: Vec<_> = docker(&[
            "ps",
            "--filter",
            &self.world.scope.filter(),
            "--format",
            "{{.Label \"dev.skipper.instance\"}}\t{{.Label \"dev.skipper.tag\"}}",
        ])
        .lines()
        .filter_map(|l| {
            let (i, t) = l.split_once('\t')?;
            Some((i.to_owned(), t.to_owned()))
        })
        .collect();
        list.sort();
        list
    }
}

fn instance_domain(tag: &str) -> String {
    format!("stage-dev-app-{tag}.localhost")
}

/// The port of an `address` like `127.0.0.1:32768`.
fn port_of(deploy: &Value) -> u16 {
    deploy["instance"]["address"]
        .as_str()
        .and_then(|a| a.rsplit_once(':'))
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("no published address in {deploy:#}"))
}

/// The body of `GET /` at `127.0.0.1:port` (which must answer 200), with the stage domain as
/// `Host`: what a proxy following the stage host would reach.
async fn get_root(port: u16) -> String {
    tokio::task::spawn_blocking(move || {
        common::http::body_as(&format!("127.0.0.1:{port}"), STAGE_DOMAIN)
    })
    .await
    .expect("the request's thread")
}

#[tokio::test]
#[ignore = "needs docker engine"]
async fn deploy_rm_and_a_failed_deploy_route_through_npm() {
    let h = common::or_skip!(Harness::new("route").await);

    // v1, then v2 beside it: both instance hosts, the stage host on v2.
    let d1 = h.deploy("v1", &["--max-instances", "2"]).await.succeeded();
    let p1 = port_of(&d1);
    let stage = h.target(STAGE_DOMAIN);
    assert_eq!(
        (stage.1.as_str(), stage.2),
        ("127.0.0.1", p1),
        "{:#?}",
        h.summary()
    );
    assert_eq!(h.target(&instance_domain("v1")).2, p1);
    assert_eq!(d1["url"], format!("http://{STAGE_DOMAIN}"));

    let d2 = h.deploy("v2", &[]).await.succeeded();
    let p2 = port_of(&d2);
    assert_ne!(p1, p2);
    let switched = h.target(STAGE_DOMAIN);
    assert_eq!(
        switched,
        (stage.0, "127.0.0.1".to_owned(), p2),
        "the stage host is switched in place: {:#?}",
        h.summary()
    );
    let (_, v2_host, v2_port) = h.target(&instance_domain("v2"));
    assert_eq!((v2_host.as_str(), v2_port), ("127.0.0.1", p2));
    let (_, v1_host, v1_port) = h.target(&instance_domain("v1"));
    assert_eq!((v1_host.as_str(), v1_port), ("127.0.0.1", p1));
    assert_eq!(h.npm.hosts().len(), 3, "{:#?}", h.summary());
    for host in h.npm.hosts() {
        assert_eq!(host["meta"]["skipper"], true, "managed: {host:#}");
    }
    // Where the stage host forwards really is v2.
    assert_eq!(get_root(switched.2).await, "v2");

    // `rm` of v1 (not the active one): its host goes, the stage host stays on v2.
    let v1_id = d1["instance"]["id"]
        .as_str()
        .expect("instance id")
        .to_owned();
    let rm = h.skipper(&["rm", &v1_id]).await;
    assert_eq!(rm.code, Some(0), "{:#} {}", rm.json, rm.stderr);
    assert!(
        h.npm.host_for(&instance_domain("v1")).is_none(),
        "{:#?}",
        h.summary()
    );
    assert_eq!(h.target(STAGE_DOMAIN), switched);
    assert_eq!(h.npm.hosts().len(), 2, "{:#?}", h.summary());

    // An unhealthy version: the deploy fails at the health gate and NPM is left as it was.
    let before = h.hosts();
    let failed = h
        .deploy("unhealthy", &["--health-timeout", "3s"])
        .await
        .failed();
    assert_eq!(failed["error"]["step"], "health", "{failed:#}");
    assert_eq!(h.hosts(), before, "routing unchanged: {:#?}", h.summary());
    assert!(h.npm.host_for(&instance_domain("unhealthy")).is_none());
    let v2_id = d2["instance"]["id"]
        .as_str()
        .expect("instance id")
        .to_owned();
    assert_eq!(h.running(), [(v2_id, "v2".to_owned())], "only v2 runs");
    assert_eq!(get_root(p2).await, "v2");
}
