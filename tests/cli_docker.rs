//! The `skipper` binary, end to end, against a real Docker engine and real registries.
//!
//! Run with:
//! `scripts/test-env.sh && cargo test --test cli_docker -- --ignored --test-threads=1`
//!
//! Each test runs the built `skipper` (`cargo build -p skipper-bin --bin skipper` runs once per
//! test process; `SKIPPER_BIN` names a prebuilt binary instead) in embedded mode, with its own
//! data directory, its own `SKIPPER_SCOPE`, its own Docker network (through a config file) and an
//! empty Docker config (so registry credentials come only from what the test passes). It reads
//! the `--json` output and reaches apps only at the published `address`.
//!
//! Where the registries are comes from `SKIPPER_TEST_*` variables or `target/test-env/env.sh`
//! (written by `scripts/test-env.sh`; `SKIPPER_TEST_ENV_FILE` overrides the path). Without a
//! reachable engine or that file each test is skipped with a message, unless `CI=true`, where
//! that is a failure. Everything a test creates carries its scope label and is removed when the
//! test ends, failed or not. The harness shared with the other Docker tests is in `tests/common/`.

#![allow(
    clippy::disallowed_methods,
    reason = "these tests are synchronous: they drive processes and wait with thread::sleep, off any async runtime"
)]

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use common::KillOnDrop;
use common::bin::{Run, World};
use common::docker::{Scope, docker};
use common::env::TestEnv;
use common::http::{body, http_get};

// ---------------------------------------------------------------------------------------------
// Harness

/// One test's world (a scope, a network, a data directory, a config file) and the registries.
/// Dropping it removes every container and network with the scope's label, also when the test
/// panics.
struct Harness {
    env: TestEnv,
    world: World,
}

/// A container of the test's scope, as `docker ps -a` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Container {
    id: String,
    state: String,
    tag: String,
}

impl Harness {
    /// `None` (after saying why) when the engine or the test environment is missing and this is
    /// not CI.
    fn new(test: &str) -> Option<Self> {
        let env = common::env_or_skip(test, TestEnv::load_with_auth)?;
        let h = Self {
            env,
            world: World::new(Scope::new(&format!("cli-{test}"))),
        };
        common::bin::skipper_bin();
        Some(h)
    }

    /// `<open registry>/team/app:<tag>`.
    fn image(&self, tag: &str) -> String {
        self.env.image(tag)
    }

    /// Run `skipper <args> --json` to the end.
    fn skipper(&self, args: &[&str]) -> Run {
        let out = self
            .world
            .command(args)
            .output()
            .unwrap_or_else(|e| panic!("run skipper {args:?}: {e}"));
        Run::from_output(args, out)
    }

    /// Deploy `<open registry>/team/app:<tag>`, health-gated on `/health`.
    fn deploy(&self, tag: &str, extra: &[&str]) -> Run {
        let image = self.image(tag);
        let mut args = vec!["deploy", image.as_str(), "--health-path", "/health"];
        args.extend_from_slice(extra);
        self.skipper(&args)
    }

    /// `skipper ps --json`.
    fn ps(&self) -> Vec<Value> {
        let run = self.skipper(&["ps"]);
        assert_eq!(run.code, Some(0), "ps: {:#} {}", run.json, run.stderr);
        run.json.as_array().expect("ps --json is an array").clone()
    }

    /// `skipper history --json`, newest first.
    fn history(&self) -> Vec<Value> {
        let run = self.skipper(&["history"]);
        assert_eq!(run.code, Some(0), "history: {:#} {}", run.json, run.stderr);
        run.json
            .as_array()
            .expect("history --json is an array")
            .clone()
    }

    /// Every container with the scope's label, running or not.
    fn containers(&self) -> Vec<Container> {
        let out = docker(&[
            "ps",
            "-a",
            "--no-trunc",
            "--filter",
            &self.world.scope.filter(),
            "--format",
            "{{.ID}}\t{{.State}}\t{{.Label \"dev.skipper.tag\"}}",
        ]);
        out.lines()
            .filter_map(|l| {
                let mut f = l.split('\t');
                Some(Container {
                    id: f.next()?.to_owned(),
                    state: f.next()?.to_owned(),
                    tag: f.next().unwrap_or_default().to_owned(),
                })
            })
            .collect()
    }

    /// Poll `containers()` until `done` holds, or panic after `within`.
    fn wait_containers(
        &self,
        within: Duration,
        what: &str,
        done: impl Fn(&[Container]) -> bool,
    ) -> Vec<Container> {
        let start = Instant::now();
        loop {
            let list = self.containers();
            if done(&list) {
                return list;
            }
            assert!(
                start.elapsed() < within,
                "{what} within {within:?}: {list:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The published address of a deploy's (or a `ps` row's) instance.
fn address(v: &Value) -> String {
    let a = v["instance"]["address"]
        .as_str()
        .or_else(|| v["address"].as_str())
        .unwrap_or_else(|| panic!("no address in {v:#}"));
    assert!(a.starts_with("127.0.0.1:"), "{a}");
    a.to_owned()
}

fn instance_id(deploy: &Value) -> String {
    deploy["instance"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no instance id in {deploy:#}"))
        .to_owned()
}

fn container_id(deploy: &Value) -> String {
    deploy["instance"]["container_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no container id in {deploy:#}"))
        .to_owned()
}

/// `(tag, state, active)` of each `ps` row, oldest first.
fn summary(ps: &[Value]) -> Vec<(String, String, bool)> {
    ps.iter()
        .map(|i| {
            (
                i["tag"].as_str().unwrap_or_default().to_owned(),
                i["state"].as_str().unwrap_or_default().to_owned(),
                i["active"].as_bool().unwrap_or_default(),
            )
        })
        .collect()
}

fn running(tag: &str, active: bool) -> (String, String, bool) {
    (tag.to_owned(), "running".to_owned(), active)
}

/// Deploy v1 and check that it serves: the starting point of most tests.
fn deploy_v1(h: &Harness) -> Value {
    let v1 = h.deploy("v1", &[]).succeeded();
    assert_eq!(body(&address(&v1)), "v1");
    v1
}

/// v1 is still the one running, active and serving, in its original container, and alone.
fn assert_only_v1(h: &Harness, v1: &Value) {
    assert_eq!(summary(&h.ps()), vec![running("v1", true)]);
    let containers = h.containers();
    assert_eq!(
        containers,
        vec![Container {
            id: container_id(v1),
            state: "running".into(),
            tag: "v1".into(),
        }],
        "only v1's container is left"
    );
    assert_eq!(body(&address(v1)), "v1");
}

macro_rules! harness_or_skip {
    ($test:expr) => {
        common::or_skip!(Harness::new($test))
    };
}

// ---------------------------------------------------------------------------------------------
// Tests

#[test]
#[ignore = "needs docker engine"]
fn deploy_serves_the_image_at_its_address() {
    let h = harness_or_skip!("serve");
    let d = h.deploy("v1", &[]).succeeded();
    assert_eq!(
        d["project"], "app",
        "the project defaults to the image's name"
    );
    assert_eq!(d["stage"], "dev");
    assert_eq!(d["tag"], "v1");
    assert_eq!(d["trigger"], "manual");
    assert!(
        d["digest"]
            .as_str()
            .is_some_and(|s| s.starts_with("sha256:")),
        "{d:#}"
    );
    assert_eq!(d["replaced"], serde_json::json!([]));
    assert!(d["error"].is_null(), "{d:#}");
    let addr = address(&d);
    assert_eq!(
        d["url"],
        format!("http://{addr}"),
        "no proxy: the url is the address"
    );

    assert_eq!(body(&addr), "v1");
    assert_eq!(http_get(&addr, "/health").unwrap().0, 200);

    let ps = h.ps();
    assert_eq!(summary(&ps), vec![running("v1", true)]);
    assert_eq!(ps[0]["id"], d["instance"]["id"]);
    assert_eq!(address(&ps[0]), addr);
    let containers = h.containers();
    assert_eq!(containers.len(), 1, "{containers:?}");
    assert_eq!(containers[0].id, container_id(&d));
    assert_eq!(containers[0].state, "running");
}

#[test]
#[ignore = "needs docker engine"]
fn blue_green_replaces_v1_with_v2() {
    let h = harness_or_skip!("bluegreen");
    let v1 = deploy_v1(&h);
    let v2 = h.deploy("v2", &[]).succeeded();
    assert_eq!(body(&address(&v2)), "v2");
    assert_eq!(v2["replaced"], serde_json::json!([instance_id(&v1)]));
    assert_ne!(
        address(&v2),
        address(&v1),
        "a new container beside the old one"
    );

    assert_eq!(summary(&h.ps()), vec![running("v2", true)]);
    let containers = h.containers();
    assert_eq!(
        containers,
        vec![Container {
            id: container_id(&v2),
            state: "running".into(),
            tag: "v2".into(),
        }],
        "v1's container is gone"
    );
}

#[test]
#[ignore = "needs docker engine"]
fn max_instances_keeps_older_versions_and_evicts_the_oldest() {
    let h = harness_or_skip!("maxinst");
    let max = ["--max-instances", "3"];
    let v1 = h.deploy("v1", &max).succeeded();
    let v2 = h.deploy("v2", &max).succeeded();
    let hc = h.deploy("healthcheck", &max).succeeded();
    for d in [&v2, &hc] {
        assert_eq!(d["replaced"], serde_json::json!([]), "{d:#}");
    }
    assert_eq!(
        summary(&h.ps()),
        vec![
            running("v1", false),
            running("v2", false),
            running("healthcheck", true)
        ]
    );
    assert_eq!(body(&address(&v1)), "v1", "older versions keep running");
    assert_eq!(body(&address(&v2)), "v2");
    assert_eq!(body(&address(&hc)), "healthcheck");

    // The fourth evicts the oldest, v1.
    let slow = h.deploy("slow", &max).succeeded();
    assert_eq!(slow["replaced"], serde_json::json!([instance_id(&v1)]));
    assert_eq!(
        summary(&h.ps()),
        vec![
            running("v2", false),
            running("healthcheck", false),
            running("slow", true)
        ]
    );
    let mut tags: Vec<String> = h.containers().into_iter().map(|c| c.tag).collect();
    tags.sort();
    assert_eq!(
        tags,
        ["healthcheck", "slow", "v2"],
        "v1's container is gone"
    );
    assert_eq!(body(&address(&v2)), "v2");
    assert_eq!(body(&address(&hc)), "healthcheck");
    assert_eq!(body(&address(&slow)), "slow");
}

#[test]
#[ignore = "needs docker engine"]
fn unhealthy_image_rolls_back_and_v1_keeps_serving() {
    let h = harness_or_skip!("unhealthy");
    let v1 = deploy_v1(&h);
    let d = h.deploy("unhealthy", &["--health-timeout", "4s"]).failed();
    assert_eq!(d["tag"], "unhealthy");
    assert_eq!(d["error"]["step"], "health", "{d:#}");
    assert_eq!(d["error"]["kind"], "unhealthy", "{d:#}");
    let message = d["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("/health") && message.contains("404"),
        "the cause names the probe and its answer: {message}"
    );
    assert_eq!(d["replaced"], serde_json::json!([]));
    assert_only_v1(&h, &v1);
    let history = h.history();
    assert_eq!(history[0]["status"], "failed");
    assert_eq!(history[0]["error"]["step"], "health");
}

#[test]
#[ignore = "needs docker engine"]
fn crashing_image_rolls_back_with_exit_code_and_logs() {
    let h = harness_or_skip!("crash");
    let v1 = deploy_v1(&h);
    let d = h.deploy("crash", &[]).failed();
    assert_eq!(d["error"]["step"], "health", "{d:#}");
    assert_eq!(d["error"]["kind"], "unhealthy", "{d:#}");
    let logs: Vec<&str> = d["error"]["logs"]
        .as_array()
        .map(|l| l.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    assert!(
        logs.iter()
            .any(|l| l.contains("skipper-test crash: exiting with code 3")),
        "the logs carry the crash line: {logs:?}"
    );
    let message = d["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("code 3"),
        "the cause names the exit code: {message}"
    );
    assert_only_v1(&h, &v1);
}

#[test]
#[ignore = "needs docker engine"]
fn pull_failures_leave_no_container() {
    let h = harness_or_skip!("pullfail");
    let v1 = deploy_v1(&h);

    let d = h.deploy("no-such-tag", &[]).failed();
    assert_eq!(d["error"]["step"], "pull", "{d:#}");
    assert_eq!(d["error"]["kind"], "not_found", "{d:#}");
    assert!(d["instance"].is_null(), "{d:#}");
    assert_only_v1(&h, &v1);

    // The htpasswd registry, with no credentials anywhere (DOCKER_CONFIG is empty).
    let private = h.env.auth_image("v1");
    let d = h
        .skipper(&[
            "deploy",
            &private,
            "--project",
            "private",
            "--health-path",
            "/health",
        ])
        .failed();
    assert_eq!(d["error"]["step"], "pull", "{d:#}");
    assert_eq!(d["error"]["kind"], "unauthorized", "{d:#}");
    let message = d["error"]["message"].as_str().unwrap_or_default();
    assert!(
        !message.contains(&h.env.password),
        "a secret leaked: {message}"
    );
    assert_only_v1(&h, &v1);
}

#[test]
#[ignore = "needs docker engine"]
fn rollback_serves_the_previous_version_again() {
    let h = harness_or_skip!("rollback");
    deploy_v1(&h);
    let v2 = h.deploy("v2", &[]).succeeded();
    assert_eq!(body(&address(&v2)), "v2");

    let back = h
        .skipper(&["rollback", "--project", "app", "--stage", "dev"])
        .succeeded();
    assert_eq!(back["trigger"], "rollback", "{back:#}");
    assert_eq!(back["tag"], "v1", "{back:#}");
    assert_eq!(back["replaced"], serde_json::json!([instance_id(&v2)]));
    assert_eq!(body(&address(&back)), "v1");
    assert_eq!(summary(&h.ps()), vec![running("v1", true)]);
    let containers = h.containers();
    assert_eq!(containers.len(), 1, "{containers:?}");
    assert_eq!(containers[0].id, container_id(&back));
}

#[test]
#[ignore = "needs docker engine"]
fn rm_removes_the_container_and_the_record() {
    let h = harness_or_skip!("rm");
    let v1 = deploy_v1(&h);
    let id = instance_id(&v1);
    let run = h.skipper(&["rm", &id]);
    assert_eq!(run.code, Some(0), "{:#} {}", run.json, run.stderr);
    assert_eq!(run.json["action"], "removed");
    assert_eq!(run.json["id"], id.as_str());
    assert_eq!(h.containers(), vec![], "the container is gone");
    assert_eq!(h.ps(), Vec::<Value>::new(), "the record is gone");
    assert!(
        http_get(&address(&v1), "/").is_err(),
        "nothing answers any more"
    );
}

#[test]
#[ignore = "needs docker engine"]
fn a_container_removed_by_hand_shows_as_missing() {
    let h = harness_or_skip!("missing");
    let v1 = deploy_v1(&h);
    docker(&["rm", "-f", &container_id(&v1)]);
    assert_eq!(h.containers(), vec![]);

    let ps = h.ps();
    assert_eq!(ps.len(), 1, "{ps:#?}");
    assert_eq!(ps[0]["id"], instance_id(&v1).as_str());
    assert_eq!(ps[0]["state"], "missing", "{:#}", ps[0]);

    // Every reconcile says so while it lasts, not only the first: in `--json` and to a person.
    let id = instance_id(&v1);
    for pass in 1..=2 {
        let r = h.skipper(&["reconcile"]);
        assert_eq!(
            r.json["missing"],
            serde_json::json!([id]),
            "pass {pass}: {:#}",
            r.json
        );
        let out = h
            .world
            .text_command(&["reconcile"])
            .output()
            .expect("run skipper reconcile");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("missing") && text.contains(&id),
            "pass {pass}: {text}"
        );
    }

    // The next deploy replaces the missing instance.
    let v2 = h.deploy("v2", &[]).succeeded();
    assert_eq!(body(&address(&v2)), "v2");
    assert_eq!(summary(&h.ps()), vec![running("v2", true)]);
}

#[test]
#[ignore = "needs docker engine"]
fn kill_9_during_the_health_check_is_repaired_by_the_next_command() {
    let h = harness_or_skip!("kill9");
    let v1 = deploy_v1(&h);

    let image = h.image("unhealthy");
    let child = h
        .world
        .command(&[
            "deploy",
            &image,
            "--health-path",
            "/health",
            "--health-timeout",
            "60s",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start skipper deploy");
    let mut child = KillOnDrop(Some(child));
    let seen = h.wait_containers(
        Duration::from_secs(30),
        "the new version's container running",
        |list| {
            list.iter()
                .any(|c| c.tag == "unhealthy" && c.state == "running")
        },
    );
    assert_eq!(seen.len(), 2, "{seen:?}");
    // Well inside the health wait (60s of 404s).
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        child.child().try_wait().unwrap().is_none(),
        "the deploy is still waiting for health"
    );
    child.child().kill().expect("kill -9 the deploy");
    child.child().wait().expect("reap it");
    assert_eq!(h.containers().len(), 2, "the orphan is still there");
    // `ps` changes nothing: it shows the dead deploy's instance as interrupted.
    let ps = h.ps();
    assert!(ps.iter().any(|i| i["state"] == "interrupted"), "{ps:#?}");
    assert_eq!(h.containers().len(), 2, "ps removed nothing");

    // The next mutating command takes the dead process's lease over at once (no waiting out
    // its TTL: the stage is not busy) and repairs.
    let r = h.skipper(&["reconcile"]);
    assert_eq!(r.json["busy"], serde_json::json!([]), "{:#}", r.json);
    assert_eq!(
        r.json["interrupted"].as_array().map(Vec::len),
        Some(1),
        "{:#}",
        r.json
    );
    assert_only_v1(&h, &v1);
    let history = h.history();
    assert_eq!(history[0]["tag"], "unhealthy");
    assert_eq!(history[0]["status"], "failed", "{:#}", history[0]);
    let message = history[0]["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("interrupted"), "{message}");
}

#[test]
#[ignore = "needs docker engine"]
fn concurrent_deploys_to_one_stage_take_turns() {
    let h = harness_or_skip!("concurrent");
    // The store exists already: two processes creating it at once is the next test's concern.
    assert_eq!(h.ps(), Vec::<Value>::new());
    let spawn = |tag: &str| {
        let image = h.image(tag);
        let args = [
            "deploy",
            image.as_str(),
            "--health-path",
            "/health",
            "--max-instances",
            "1",
        ];
        let child = h
            .world
            .command(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start skipper deploy");
        (args.map(str::to_owned), KillOnDrop(Some(child)))
    };
    let (a, b) = (spawn("v1"), spawn("v2"));
    let finish = |(args, mut child): ([String; 6], KillOnDrop)| {
        let out = child
            .take()
            .wait_with_output()
            .expect("wait for skipper deploy");
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Run::from_output(&args, out).succeeded()
    };
    let (a, b) = (finish(a), finish(b));

    let ps = h.ps();
    assert_eq!(ps.len(), 1, "exactly one instance: {ps:#?}");
    let (first, last) = if ps[0]["id"] == a["instance"]["id"] {
        (&b, &a)
    } else {
        (&a, &b)
    };
    assert_eq!(ps[0]["id"], last["instance"]["id"], "{ps:#?}");
    assert_eq!(
        last["replaced"],
        serde_json::json!([instance_id(first)]),
        "the second deploy retired the first"
    );
    let containers = h.containers();
    assert_eq!(containers.len(), 1, "{containers:?}");
    assert_eq!(containers[0].state, "running");
    assert_eq!(containers[0].id, container_id(last));
    let tag = last["tag"].as_str().unwrap_or_default();
    assert_eq!(body(&address(last)), tag);
}

#[test]
#[ignore = "needs docker engine"]
fn two_processes_can_create_the_store_at_once() {
    let h = harness_or_skip!("newstore");
    // The race is narrow: a few rounds, each on a new data directory.
    for round in 0..8 {
        let data = h.world.dir.path().join(format!("data-{round}"));
        let start = || {
            h.world
                .command(&["ps"])
                .env("SKIPPER_DATA_DIR", &data)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map(|c| KillOnDrop(Some(c)))
                .expect("start skipper ps")
        };
        let (mut a, mut b) = (start(), start());
        for child in [&mut a, &mut b] {
            let out = child
                .take()
                .wait_with_output()
                .expect("wait for skipper ps");
            let run = Run::from_output(&["ps"], out);
            assert_eq!(
                (run.code, &run.json),
                (Some(0), &serde_json::json!([])),
                "round {round}: {}",
                run.stderr
            );
        }
    }
}

#[test]
#[ignore = "needs docker engine"]
fn quick_deploy_takes_port_and_health_check_from_the_image() {
    let h = harness_or_skip!("quick");
    // No --port, no --health-path: EXPOSE 8080 and the image's HEALTHCHECK.
    let image = h.image("healthcheck");
    let d = h.skipper(&["deploy", &image]).succeeded();
    assert_eq!(body(&address(&d)), "healthcheck", "port 8080 from EXPOSE");
    let mentions_healthcheck = |d: &Value| {
        d["steps"].as_array().is_some_and(|steps| {
            steps.iter().any(|s| {
                s["step"] == "health"
                    && s["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("HEALTHCHECK"))
            })
        })
    };
    assert!(
        mentions_healthcheck(&d),
        "the health step names the Docker HEALTHCHECK: {d:#}"
    );
    let history = h.history();
    assert!(mentions_healthcheck(&history[0]), "{:#}", history[0]);
    let port = docker(&[
        "inspect",
        "-f",
        "{{index .Config.Labels \"dev.skipper.port\"}}",
        &container_id(&d),
    ]);
    assert_eq!(port.trim(), "8080");
}

#[test]
#[ignore = "needs docker engine"]
fn private_registry_credentials_come_from_the_config() {
    let h = harness_or_skip!("private");
    let (registry, user, password) = (h.env.auth_registry(), &h.env.user, &h.env.password);
    h.world.write_config(&format!(
        "registries:\n  \
           private: {{ url: \"http://{registry}\", type: distribution, username: {user}, token: {password} }}\n\
         projects:\n  \
           app:\n    \
             registry: private\n    \
             image: {registry}/{repo}\n    \
             port: 8080\n    \
             healthcheck: /health\n    \
             stages:\n      \
               dev: {{ tag_pattern: \"*\" }}\n",
        repo = h.env.repository
    ));
    let image = format!("{registry}/{}:v1", h.env.repository);
    let d = h.skipper(&["deploy", &image]).succeeded();
    assert_eq!(d["project"], "app");
    assert!(
        d["digest"]
            .as_str()
            .is_some_and(|s| s.starts_with("sha256:")),
        "{d:#}"
    );
    assert_eq!(body(&address(&d)), "v1");
    let text = d.to_string();
    assert!(!text.contains(password.as_str()), "a secret leaked: {text}");
}

// ---------------------------------------------------------------------------------------------
// The output contract (issue 9, items 13 and 14): exit codes 0/1/2, one JSON document on stdout
// under --json whatever fails, no panic on a closed pipe, tables that fit 80 columns.

/// `skipper <args>` with no Docker engine to reach (an address nothing answers) and a fresh data
/// directory: for what must hold before any engine is involved.
fn offline(args: &[&str], data: &std::path::Path) -> std::process::Command {
    let mut c = std::process::Command::new(common::bin::skipper_bin());
    c.args(args)
        .env("SKIPPER_DATA_DIR", data)
        .env(
            "DOCKER_HOST",
            "unix:///nonexistent/skipper-test-docker.sock",
        )
        .env_remove("SKIPPER_CONFIG")
        .env_remove("SKIPPER_NPM_URL")
        .env_remove("RUST_LOG")
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null());
    c
}

/// Run `c` with its stdout closed before it writes (the reader went away, as `| head -c 10`
/// does): its exit code and stderr.
fn with_closed_stdout(mut c: std::process::Command) -> (Option<i32>, String) {
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start skipper");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait for skipper");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_no_panic(what: &str, (code, stderr): &(Option<i32>, String), want: i32) {
    assert!(
        !stderr.contains("panicked") && *code != Some(101),
        "{what} panicked on a closed stdout: exit {code:?}\n{stderr}"
    );
    assert_eq!(*code, Some(want), "{what}: {stderr}");
}

/// The keys of the error object every failure document carries.
fn error_keys(doc: &Value) -> Vec<String> {
    let mut keys: Vec<String> = doc["error"]
        .as_object()
        .unwrap_or_else(|| panic!("no error object in {doc:#}"))
        .keys()
        .cloned()
        .collect();
    keys.sort();
    keys
}

#[test]
fn usage_errors_under_json_exit_2_with_one_error_document() {
    let dir = tempfile::tempdir().expect("temp dir");
    for args in [
        &["deploy", "app:v1", "--port", "70000"][..],
        &["deploy", "app:v1", "--pull", "bogus"],
        &["ps", "--bogus"],
        &["deploy"],
        &["deploy", "app:v1", "--env", "A B=1"],
        &["deploy", "app:v1", "--env", "A\nB=1"],
    ] {
        let mut all = args.to_vec();
        all.push("--json");
        let out = offline(&all, dir.path()).output().expect("run skipper");
        let run = Run::from_output(&all, out);
        assert_eq!(run.code, Some(2), "{args:?}: {:#} {}", run.json, run.stderr);
        assert_eq!(run.json["status"], "failed", "{:#}", run.json);
        assert_eq!(run.json["error"]["kind"], "invalid", "{:#}", run.json);
        assert_eq!(error_keys(&run.json), ["kind", "logs", "message", "step"]);
        let message = run.json["error"]["message"].as_str().unwrap_or_default();
        assert!(
            !message.is_empty() && !message.contains('\n'),
            "{message:?}"
        );
    }
    // Without --json: clap's text on stderr, nothing on stdout, still 2.
    let out = offline(&["ps", "--bogus"], dir.path())
        .output()
        .expect("run skipper");
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    // --help and --version are not errors.
    let out = offline(&["--version", "--json"], dir.path())
        .output()
        .expect("run skipper");
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("skipper "));
}

#[test]
fn a_failing_command_under_json_prints_the_error_envelope() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = offline(&["ps", "--json"], dir.path())
        .output()
        .expect("run skipper");
    let run = Run::from_output(&["ps", "--json"], out);
    assert_eq!(run.code, Some(1), "no engine to reach: {:#}", run.json);
    assert_eq!(run.json["status"], "failed");
    assert_eq!(error_keys(&run.json), ["kind", "logs", "message", "step"]);
}

/// SIGTERM while a deploy is still setting up (here its Docker engine accepts the connection
/// and never answers): the deploy ends at once with its usual document, `status: failed`, kind
/// `interrupted`, and exit 1, not killed by the signal with nothing said.
#[test]
fn a_sigterm_during_setup_ends_the_deploy_as_interrupted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("docker.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind a socket");
    let (connected, arrived) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming().flatten() {
            held.push(conn);
            let _ = connected.send(());
        }
    });
    let args = ["deploy", "app:v1", "--json"];
    let mut c = offline(&args, &dir.path().join("data"));
    c.env("DOCKER_HOST", format!("unix://{}", socket.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = KillOnDrop(Some(c.spawn().expect("start skipper deploy")));
    arrived
        .recv_timeout(Duration::from_secs(60))
        .expect("skipper connects to its Docker engine");
    let pid = child.child().id().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill -TERM");
    assert!(sent.success());
    let out = child.take().wait_with_output().expect("wait for skipper");
    let run = Run::from_output(&args, out);
    assert_eq!(run.code, Some(1), "{:#} {}", run.json, run.stderr);
    assert_eq!(run.json["status"], "failed", "{:#}", run.json);
    assert_eq!(run.json["error"]["kind"], "interrupted", "{:#}", run.json);
    assert_eq!(error_keys(&run.json), ["kind", "logs", "message", "step"]);
}

#[test]
fn a_closed_stdout_ends_quietly_without_a_panic() {
    let dir = tempfile::tempdir().expect("temp dir");
    let usage = with_closed_stdout(offline(&["ps", "--bogus", "--json"], dir.path()));
    assert_no_panic("a usage error", &usage, 2);
    let failed = with_closed_stdout(offline(&["ps", "--json"], dir.path()));
    assert_no_panic("a failed ps", &failed, 1);
    let help = with_closed_stdout(offline(&["--help"], dir.path()));
    assert_no_panic("--help", &help, 0);
}

#[test]
fn an_empty_skipper_data_dir_means_unset() {
    let home = tempfile::tempdir().expect("temp dir");
    let out = offline(&["ps", "--json"], std::path::Path::new(""))
        .env("HOME", home.path())
        .env_remove("XDG_DATA_HOME")
        .output()
        .expect("run skipper");
    let run = Run::from_output(&["ps", "--json"], out);
    assert_ne!(run.code, Some(2), "not a usage error: {:#}", run.json);
    assert!(
        home.path()
            .join(".local/share/skipper/skipper.db")
            .is_file(),
        "the default data directory is used: {:#}",
        run.json
    );
}

#[test]
#[ignore = "needs docker engine"]
fn ps_and_history_fit_80_columns_and_survive_a_closed_pipe() {
    let h = harness_or_skip!("columns");
    let image = h.image("v1");
    let d = h
        .skipper(&[
            "deploy",
            &image,
            "--project",
            "launcher-api",
            "--stage",
            "staging",
            "--health-path",
            "/health",
        ])
        .succeeded();
    assert!(d["instance"]["domain"].as_str().unwrap_or_default().len() > 20);
    for (args, header) in [(&["ps"][..], "ID "), (&["history"], "ID ")] {
        let out = h
            .world
            .text_command(args)
            .env_remove("COLUMNS")
            .output()
            .expect("run skipper");
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.starts_with(header), "{args:?} has a header:\n{text}");
        for line in text.lines() {
            assert!(line.chars().count() <= 80, "{args:?}: {line:?}");
        }
        let narrow = h
            .world
            .text_command(args)
            .env("COLUMNS", "60")
            .output()
            .expect("run skipper");
        for line in String::from_utf8_lossy(&narrow.stdout).lines() {
            assert!(line.chars().count() <= 60, "{args:?}: {line:?}");
        }
        let closed = with_closed_stdout(h.world.text_command(args));
        assert_no_panic(&format!("{args:?}"), &closed, 0);
        let closed = with_closed_stdout(h.world.command(args));
        assert_no_panic(&format!("{args:?} --json"), &closed, 0);
    }
}

#[test]
#[ignore = "needs docker engine"]
fn refusals_have_the_envelope_and_the_images_tag() {
    let h = harness_or_skip!("refusal");
    h.world.write_config(&format!(
        "projects:\n  app:\n    image: {}/{}\n    port: 8080\n    stages:\n      \
         prod: {{ tag_pattern: \"v*\", confirm: true }}\n",
        h.env.registry, h.env.repository
    ));
    let image = h.image("v1");
    let refused = h.skipper(&["deploy", &image, "--stage", "prod"]);
    assert_eq!(refused.code, Some(1), "{:#}", refused.json);
    let refused = refused.failed();
    assert_eq!(refused["tag"], "v1", "{refused:#}");
    assert_eq!(refused["error"]["kind"], "rejected", "{refused:#}");

    let invalid = h.skipper(&["deploy", "Not/Valid:x"]);
    assert_eq!(invalid.code, Some(1), "{:#}", invalid.json);
    let invalid = invalid.failed();
    assert_eq!(invalid["error"]["kind"], "invalid", "{invalid:#}");
    let keys = |v: &Value| {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    };
    assert_eq!(
        keys(&invalid),
        keys(&refused),
        "one shape for every refusal"
    );
    assert_eq!(error_keys(&invalid), error_keys(&refused));
}

#[test]
#[ignore = "needs docker engine"]
fn rm_with_a_short_prefix_asks_for_four_characters() {
    let h = harness_or_skip!("shortid");
    let v1 = deploy_v1(&h);
    let id = instance_id(&v1);
    let run = h.skipper(&["rm", &id[..3]]);
    assert_eq!(run.code, Some(1), "{:#}", run.json);
    assert_eq!(run.json["error"]["kind"], "invalid", "{:#}", run.json);
    let message = run.json["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("at least 4 characters"), "{message}");
    assert_eq!(summary(&h.ps()), vec![running("v1", true)]);
}

#[test]
#[ignore = "needs docker engine"]
fn a_local_image_id_deploys_that_image() {
    let h = harness_or_skip!("imageid");
    deploy_v1(&h);
    let v2 = h.image("v2");
    docker(&["pull", "-q", &v2]);
    let id = docker(&["image", "inspect", "-f", "{{.Id}}", &v2]);
    let id = id.trim();
    assert!(id.starts_with("sha256:"), "{id}");
    let d = h
        .skipper(&["deploy", id, "--project", "app", "--health-path", "/health"])
        .succeeded();
    assert_eq!(d["tag"], "v2", "{d:#}");
    assert_eq!(body(&address(&d)), "v2");
}

#[test]
#[ignore = "needs docker engine"]
fn a_read_only_data_dir_lets_ps_and_history_work() {
    let h = harness_or_skip!("readonly");
    let v1 = deploy_v1(&h);
    // A read-only bind mount of the data directory, in a mount namespace of its own (root
    // would write through a chmod).
    let data = h.world.data_dir();
    let read_only = |args: &[&str]| {
        let inner = h.world.command(args);
        let mut c = std::process::Command::new("unshare");
        c.args(["--user", "--map-root-user", "--mount", "sh", "-c"])
            .arg("mount --bind \"$0\" \"$0\" && mount -o remount,bind,ro \"$0\" && shift && exec \"$@\"")
            .arg(&data)
            .arg("skipper")
            .arg(inner.get_program())
            .args(inner.get_args())
            .stdin(Stdio::null());
        for (k, v) in inner.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        c.output().expect("run unshare")
    };
    let probe = read_only(&["--version"]);
    if probe.status.code() != Some(0) {
        common::skip(
            "a_read_only_data_dir_lets_ps_and_history_work",
            &format!(
                "cannot mount the data directory read-only: {}",
                String::from_utf8_lossy(&probe.stderr)
            ),
        );
        return;
    }
    let ps = Run::from_output(&["ps"], read_only(&["ps"]));
    assert_eq!(ps.code, Some(0), "{:#} {}", ps.json, ps.stderr);
    assert_eq!(ps.json[0]["id"], instance_id(&v1).as_str(), "{:#}", ps.json);
    let history = Run::from_output(&["history"], read_only(&["history"]));
    assert_eq!(
        history.code,
        Some(0),
        "{:#} {}",
        history.json,
        history.stderr
    );
    assert_eq!(history.json[0]["tag"], "v1");
    let rm = Run::from_output(&["rm"], read_only(&["rm", &instance_id(&v1)]));
    assert_eq!(rm.code, Some(1), "{:#}", rm.json);
    let message = rm.json["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("read-only"), "{message}");
    assert_only_v1(&h, &v1);
}
