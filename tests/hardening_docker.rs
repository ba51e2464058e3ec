//! What real machines do to Skipper, against the real Docker engine: another data directory on
//! the same engine, an emptied store file, `kill -9` at random moments, SIGTERM mid-deploy.
//!
//! Run with:
//! `scripts/test-env.sh && cargo test --test hardening_docker -- --ignored --test-threads=1`
//!
//! Each test runs the built `skipper` binary in its own scope (containers and networks removed
//! when the test ends, failed or not), as `tests/cli_docker.rs` does.

#![allow(
    clippy::disallowed_methods,
    reason = "these tests are synchronous: they drive processes and wait with thread::sleep, off any async runtime"
)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use common::KillOnDrop;
use common::bin::{Run, World};
use common::docker::{Scope, docker};
use common::env::TestEnv;
use common::http::body;

struct Harness {
    env: TestEnv,
    world: World,
}

impl Harness {
    fn new(test: &str) -> Option<Self> {
        let env = common::env_or_skip(test, TestEnv::load)?;
        let h = Self {
            env,
            world: World::new(Scope::new(&format!("hard-{test}"))),
        };
        common::bin::skipper_bin();
        Some(h)
    }

    fn run(&self, mut c: Command, args: &[&str]) -> Run {
        let out = c
            .output()
            .unwrap_or_else(|e| panic!("run skipper {args:?}: {e}"));
        Run::from_output(args, out)
    }

    /// `skipper <args> --json` on this world's store.
    fn skipper(&self, args: &[&str]) -> Run {
        self.run(self.world.command(args), args)
    }

    /// `skipper <args> --json` on another data directory, same engine, same scope.
    fn skipper_in(&self, data_dir: &std::path::Path, args: &[&str]) -> Run {
        let mut c = self.world.command(args);
        c.env("SKIPPER_DATA_DIR", data_dir);
        self.run(c, args)
    }

    fn deploy_args(&self, tag: &str) -> Vec<String> {
        [
            "deploy",
            &self.env.image(tag),
            "--health-path",
            "/health",
            "--health-timeout",
            "20s",
        ]
        .map(str::to_owned)
        .to_vec()
    }

    /// `(id, state, instance label)` of each container of the scope.
    fn containers(&self) -> Vec<(String, String, String)> {
        docker(&[
            "ps",
            "-a",
            "--no-trunc",
            "--filter",
            &self.world.scope.filter(),
            "--format",
            "{{.ID}}\t{{.State}}\t{{.Label \"dev.skipper.instance\"}}",
        ])
        .lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            Some((
                f.next()?.to_owned(),
                f.next()?.to_owned(),
                f.next().unwrap_or_default().to_owned(),
            ))
        })
        .collect()
    }

    fn ps(&self) -> Vec<Value> {
        let run = self.skipper(&["ps"]);
        assert_eq!(run.code, Some(0), "ps: {:#} {}", run.json, run.stderr);
        run.json.as_array().expect("ps --json is an array").clone()
    }
}

macro_rules! harness_or_skip {
    ($test:expr) => {
        common::or_skip!(Harness::new($test))
    };
}

fn address(v: &Value) -> String {
    v["instance"]["address"]
        .as_str()
        .or_else(|| v["address"].as_str())
        .unwrap_or_else(|| panic!("no address in {v:#}"))
        .to_owned()
}

/// Another store on the same engine (`--data-dir` elsewhere, `sudo`, a typo, a fresh checkout)
/// and an emptied store file never remove this store's containers.
#[test]
#[ignore = "needs docker engine"]
fn another_store_and_an_emptied_store_never_touch_the_containers() {
    let h = harness_or_skip!("stores");
    let args = h.deploy_args("v1");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let v1 = h.skipper(&args).succeeded();
    let serving = address(&v1);
    assert_eq!(body(&serving), "v1");

    let other = tempfile::tempdir().expect("temp dir");
    let b = other.path().join("data");
    let ps = h.skipper_in(&b, &["ps"]);
    assert_eq!(ps.code, Some(0), "{:#} {}", ps.json, ps.stderr);
    let r = h.skipper_in(&b, &["reconcile"]);
    assert_eq!(r.code, Some(0), "{:#} {}", r.json, r.stderr);
    assert_eq!(
        r.json["removed_containers"],
        serde_json::json!([]),
        "{:#}",
        r.json
    );
    assert_eq!(
        r.json["foreign"].as_array().map(Vec::len),
        Some(1),
        "{:#}",
        r.json
    );
    // A deploy through the other store (another project) leaves this one's container alone.
    let mut args_b = h.deploy_args("v2");
    args_b.extend(["--project".into(), "other".into()]);
    let args_b: Vec<&str> = args_b.iter().map(String::as_str).collect();
    h.skipper_in(&b, &args_b).succeeded();
    assert_eq!(
        body(&serving),
        "v1",
        "still serving after the other store's deploy"
    );
    assert_eq!(h.containers().len(), 2);

    // The store file emptied (a botched restore): reads and reconcile remove nothing.
    let db = h.world.dir.path().join("data").join("skipper.db");
    std::fs::write(&db, b"").expect("empty the store");
    for f in ["skipper.db-wal", "skipper.db-shm"] {
        let _ = std::fs::remove_file(h.world.dir.path().join("data").join(f));
    }
    assert!(h.ps().is_empty(), "the emptied store knows nothing");
    let r = h.skipper(&["reconcile"]);
    assert_eq!(r.code, Some(0), "{:#} {}", r.json, r.stderr);
    assert_eq!(
        r.json["removed_containers"],
        serde_json::json!([]),
        "{:#}",
        r.json
    );
    assert_eq!(h.containers().len(), 2, "nothing was removed");
    assert!(h.containers().iter().all(|c| c.1 == "running"));
    assert_eq!(body(&serving), "v1");
}

/// A tiny deterministic generator (the seed is printed, so a failing run can be replayed with
/// `SKIPPER_SOAK_SEED`).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// The kill -9 soak: deploys of good, unhealthy, slow-to-start and SIGTERM-ignoring images,
/// each killed with SIGKILL at a random moment. After every kill one `skipper reconcile` takes
/// the dead process's lease over at once and leaves exactly one serving instance of the stage,
/// no container that no instance claims, and no deploy in progress.
#[test]
#[ignore = "needs docker engine"]
fn kill_9_at_random_moments_always_leaves_one_serving_instance() {
    let h = harness_or_skip!("soak");
    let rounds: u64 = std::env::var("SKIPPER_SOAK_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let seed = std::env::var("SKIPPER_SOAK_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("soak: {rounds} rounds, SKIPPER_SOAK_SEED={seed}");
    let mut rng = Lcg(seed);
    let first = h.deploy_args("v1");
    let first: Vec<&str> = first.iter().map(String::as_str).collect();
    h.skipper(&first).succeeded();
    let images = ["v1", "v2", "unhealthy", "slow", "stubborn"];
    for round in 0..rounds {
        let tag = images[rng.next(images.len() as u64) as usize];
        let delay = Duration::from_millis(rng.next(5000));
        let case = format!("round {round}: {tag}, killed after {delay:?} (seed {seed})");
        let args = h.deploy_args(tag);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut c = h.world.command(&args);
        // A stop that takes a while (the stubborn image waits out the grace): a wide window
        // in which the old version is being stopped.
        c.env("SKIPPER_STOP_GRACE", "3s")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = KillOnDrop(Some(c.spawn().expect("start skipper deploy")));
        let start = Instant::now();
        while start.elapsed() < delay && child.child().try_wait().unwrap().is_none() {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.child().kill();
        let _ = child.child().wait();

        // One reconcile, right away: the dead holder's lease is taken over, not waited out.
        let r = h.skipper(&["reconcile"]);
        assert_eq!(r.code, Some(0), "{case}: {:#} {}", r.json, r.stderr);
        assert_eq!(
            r.json["busy"],
            serde_json::json!([]),
            "{case}: {:#}",
            r.json
        );

        let ps = h.ps();
        let active: Vec<&Value> = ps
            .iter()
            .filter(|i| i.get("active") == Some(&Value::Bool(true)))
            .collect();
        assert_eq!(active.len(), 1, "{case}: one active instance: {ps:#?}");
        assert_eq!(active[0]["state"], "running", "{case}: {ps:#?}");
        let answer = body(&address(active[0]));
        assert_eq!(
            Some(answer.as_str()),
            active[0]["tag"].as_str(),
            "{case}: the active instance serves its version"
        );
        let claimed: Vec<&str> = ps.iter().filter_map(|i| i["id"].as_str()).collect();
        for (id, state, instance) in h.containers() {
            assert!(
                claimed.contains(&instance.as_str()),
                "{case}: container {id} ({state}) of instance {instance:?} is claimed by none: {ps:#?}"
            );
        }
        let history = h.skipper(&["history"]);
        let open: Vec<&Value> = history
            .json
            .as_array()
            .expect("history is an array")
            .iter()
            .filter(|d| d["status"] == "in_progress")
            .collect();
        assert!(open.is_empty(), "{case}: deploys in progress: {open:#?}");
    }
}

/// SIGTERM (a cancelled CI job) or Ctrl-C during a deploy: it rolls back, prints its usual
/// result with `status: failed` and the cause "interrupted", and exits 1.
#[test]
#[ignore = "needs docker engine"]
fn sigterm_during_a_deploy_rolls_back_and_says_interrupted() {
    let h = harness_or_skip!("sigterm");
    let first = h.deploy_args("v1");
    let first: Vec<&str> = first.iter().map(String::as_str).collect();
    let v1 = h.skipper(&first).succeeded();
    let args = h.deploy_args("slow");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut c = h.world.command(&args);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = KillOnDrop(Some(c.spawn().expect("start skipper deploy")));
    let start = Instant::now();
    while h.containers().len() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the slow container never appeared"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let pid = child.child().id().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let out = child.take().wait_with_output().expect("wait for skipper");
    let run = Run::from_output(&args, out);
    assert_eq!(run.code, Some(1), "{:#} {}", run.json, run.stderr);
    let d = run.failed();
    assert_eq!(d["error"]["kind"], "interrupted", "{d:#}");
    assert!(
        d["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("interrupted"),
        "{d:#}"
    );
    let containers = h.containers();
    assert_eq!(
        containers.len(),
        1,
        "the half-deployed container is gone: {containers:?}"
    );
    assert_eq!(body(&address(&v1)), "v1");
    let history = h.skipper(&["history"]);
    assert_eq!(history.json[0]["status"], "failed", "{:#}", history.json);
}

/// Send `signal` (`-STOP`, `-CONT`, `-TERM`) to a process.
fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill {signal} {pid}");
}

/// A second SIGTERM (or Ctrl-C) while the first is still rolling the deploy back exits at once
/// (143, as a shell reports a SIGTERM); whatever the deploy left, the next command repairs.
#[test]
#[ignore = "needs docker engine"]
fn a_second_sigterm_exits_at_once() {
    let h = harness_or_skip!("sigterm2");
    let first = h.deploy_args("v1");
    let first: Vec<&str> = first.iter().map(String::as_str).collect();
    let v1 = h.skipper(&first).succeeded();
    // A deploy that stays in its health gate (404s) far longer than the test.
    let mut args = h.deploy_args("unhealthy");
    args[5] = "300s".into();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut c = h.world.command(&args);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = KillOnDrop(Some(c.spawn().expect("start skipper deploy")));
    let start = Instant::now();
    while h.containers().len() < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the new container never appeared"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let pid = child.child().id();
    signal(pid, "-TERM");
    signal(pid, "-TERM");
    let out = child.take().wait_with_output().expect("wait for skipper");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(143), "{stderr}");
    assert!(stderr.contains("interrupted again"), "{stderr}");

    let r = h.skipper(&["reconcile"]);
    assert_eq!(r.code, Some(0), "{:#} {}", r.json, r.stderr);
    let containers = h.containers();
    assert_eq!(containers.len(), 1, "only v1's container: {containers:?}");
    assert_eq!(body(&address(&v1)), "v1");
    let history = h.skipper(&["history"]).json;
    assert_eq!(history[0]["tag"], "unhealthy", "{history:#}");
    assert_eq!(history[0]["status"], "failed", "{history:#}");
}

/// A deploy paused past its lease (SIGSTOP) while another process deploys the stage: resumed
/// (SIGCONT), it stops as interrupted, having lost the lease; it never commits, and the stage
/// keeps one active instance, the other process's, with a true history.
#[test]
#[ignore = "needs docker engine"]
fn a_deploy_paused_past_its_lease_never_commits() {
    let h = harness_or_skip!("sigstop");
    let first = h.deploy_args("v1");
    let first: Vec<&str> = first.iter().map(String::as_str).collect();
    h.skipper(&first).succeeded();
    // A deploy that stays in its health gate (404s) far longer than the test.
    let mut paused = h.deploy_args("unhealthy");
    paused[5] = "300s".into();
    let paused: Vec<&str> = paused.iter().map(String::as_str).collect();
    let mut c = h.world.command(&paused);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = KillOnDrop(Some(c.spawn().expect("start skipper deploy")));
    let start = Instant::now();
    loop {
        let list = h.containers();
        if list.len() == 2 && list.iter().all(|c| c.1 == "running") {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the paused deploy's container never ran: {list:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let pid = child.child().id();
    signal(pid, "-STOP");
    // Another process deploys v2: it gets the stage once the paused holder's lease expires
    // (it cannot be taken over at once: the holder's process still exists).
    let second = h.deploy_args("v2");
    let second: Vec<&str> = second.iter().map(String::as_str).collect();
    let v2 = h.skipper(&second).succeeded();
    signal(pid, "-CONT");
    let out = child.take().wait_with_output().expect("wait for skipper");
    let run = Run::from_output(&paused, out);
    assert_eq!(run.code, Some(1), "{:#} {}", run.json, run.stderr);
    let d = run.failed();
    assert_eq!(d["error"]["kind"], "interrupted", "{d:#}");
    let message = d["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("lost the lease"), "{d:#}");

    let ps = h.ps();
    let active: Vec<_> = ps.iter().filter(|i| i["active"] == true).collect();
    assert_eq!(active.len(), 1, "one active instance: {ps:#?}");
    assert_eq!(active[0]["tag"], "v2", "{ps:#?}");
    assert_eq!(ps.len(), 1, "{ps:#?}");
    assert_eq!(body(&address(&v2)), "v2");
    let containers = h.containers();
    assert_eq!(containers.len(), 1, "only v2's container: {containers:?}");
    let history = h.skipper(&["history"]).json;
    let status = |tag: &str| -> Vec<&str> {
        history
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["tag"] == tag)
            .filter_map(|e| e["status"].as_str())
            .collect()
    };
    assert_eq!(status("unhealthy"), vec!["failed"], "{history:#}");
    assert_eq!(status("v2"), vec!["succeeded"], "{history:#}");
}

/// Two stages of a new project deployed at once (and the network created at once): both
/// deploys succeed, the project keeps both stages, and both stay up after a reconcile.
#[test]
#[ignore = "needs docker engine"]
fn two_first_deploys_of_one_project_keep_both_stages() {
    let h = harness_or_skip!("stages");
    let children: Vec<_> = ["a", "b"]
        .iter()
        .map(|stage| {
            let mut args = h.deploy_args("v1");
            args.extend([
                "--project".into(),
                "xt".into(),
                "--stage".into(),
                (*stage).into(),
            ]);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let mut c = h.world.command(&args);
            c.stdout(Stdio::piped()).stderr(Stdio::piped());
            (
                args.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>(),
                c.spawn().expect("spawn"),
            )
        })
        .collect();
    for (args, child) in children {
        let out = child.wait_with_output().expect("wait");
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Run::from_output(&args, out).succeeded();
    }
    let r = h.skipper(&["reconcile"]);
    assert_eq!(
        r.json["removed_containers"],
        serde_json::json!([]),
        "{:#}",
        r.json
    );
    let ps = h.ps();
    let mut stages: Vec<(&str, &str)> = ps
        .iter()
        .map(|i| {
            (
                i["stage"].as_str().unwrap_or(""),
                i["state"].as_str().unwrap_or(""),
            )
        })
        .collect();
    stages.sort();
    assert_eq!(stages, vec![("a", "running"), ("b", "running")], "{ps:#?}");
    let networks = docker(&[
        "network",
        "ls",
        "-q",
        "--filter",
        &format!("name=^{}$", h.world.scope.network()),
    ]);
    assert_eq!(networks.lines().count(), 1, "one network: {networks}");
}

/// A failed deploy's flags are not saved: after `deploy v2 --health-path /healthzz` fails, a
/// plain deploy probes `/health` again and succeeds, and `rollback` works.
#[test]
#[ignore = "needs docker engine"]
fn a_failed_deploys_flags_are_not_saved() {
    let h = harness_or_skip!("flags");
    let first = h.deploy_args("v1");
    let first: Vec<&str> = first.iter().map(String::as_str).collect();
    h.skipper(&first).succeeded();
    let v2 = h.env.image("v2");
    let bad = [
        "deploy",
        v2.as_str(),
        "--health-path",
        "/healthzz",
        "--health-timeout",
        "3s",
    ];
    h.skipper(&bad).failed();
    let plain = ["deploy", v2.as_str()];
    let d = h.skipper(&plain).succeeded();
    assert!(
        d["steps"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["message"]
                .as_str()
                .is_some_and(|m| m.contains("GET /health on")))),
        "{d:#}"
    );
    let r = h.skipper(&["rollback", "--project", "app"]);
    let r = r.succeeded();
    assert_eq!(body(&address(&r)), "v1");
}

/// A failed deploy of another repository into a project leaves the project's repository as it
/// was; a successful one changes it (9.9).
#[test]
#[ignore = "needs docker engine"]
fn a_failed_deploy_keeps_the_projects_repository() {
    let h = harness_or_skip!("repo");
    let first = h.deploy_args("v1");
    let first: Vec<&str> = first.iter().map(String::as_str).collect();
    h.skipper(&first).succeeded();
    let registry_repo = h.env.image("v1");
    let registry_repo = registry_repo.rsplit_once(':').map(|(r, _)| r).unwrap();
    let image = |tag: &str| -> String {
        let export = h
            .world
            .text_command(&["config", "export"])
            .output()
            .unwrap();
        assert!(export.status.success(), "{export:?}");
        let text = String::from_utf8_lossy(&export.stdout).into_owned();
        text.lines()
            .find_map(|l| l.trim().strip_prefix("image:"))
            .unwrap_or_else(|| panic!("{tag}: no image in {text}"))
            .trim()
            .trim_matches('"')
            .to_owned()
    };
    assert!(
        image("first").ends_with(registry_repo),
        "{}",
        image("first")
    );
    let local = |tag: &str| {
        [
            "deploy",
            &format!("skipper-test/app:{tag}"),
            "--project",
            "app",
            "--pull",
            "never",
            "--health-path",
            "/health",
            "--health-timeout",
            "3s",
        ]
        .map(|s| s.to_owned())
    };
    let bad = local("unhealthy");
    let bad: Vec<&str> = bad.iter().map(String::as_str).collect();
    h.skipper(&bad).failed();
    let after_failure = image("after the failure");
    assert!(after_failure.ends_with(registry_repo), "{after_failure}");
    let good = local("v2");
    let good: Vec<&str> = good.iter().map(String::as_str).collect();
    h.skipper(&good).succeeded();
    let after_success = image("after the success");
    assert!(
        after_success.ends_with("skipper-test/app"),
        "{after_success}"
    );
}

/// Rolling back a local image that also carries another repository's digest (it was pushed to
/// a registry too) deploys what is present locally, not `<image>@<that digest>` from Docker Hub.
#[test]
#[ignore = "needs docker engine"]
fn rollback_of_a_local_image_uses_what_is_present() {
    let h = harness_or_skip!("localrb");
    let deploy = |tag: &str| {
        let image = format!("skipper-test/app:{tag}");
        let args = [
            "deploy",
            image.as_str(),
            "--project",
            "loc",
            "--health-path",
            "/health",
            "--pull",
            "never",
        ];
        h.skipper(&args).succeeded()
    };
    let v1 = deploy("v1");
    assert!(
        v1["digest"].is_null(),
        "no digest of another repository: {v1:#}"
    );
    deploy("v2");
    let r = h.skipper(&["rollback", "--project", "loc"]).succeeded();
    assert_eq!(body(&address(&r)), "v1");
}
