//! The `skipper` binary routing through Nginx Proxy Manager, end to end: real containers on a
//! real Docker engine, pulled from the test registry, with `FakeNpm` (a stateful fake of NPM's
//! API on 127.0.0.1) standing in for NPM.
//!
//! Run with:
//! `scripts/test-env.sh && cargo test --test npm_cli -- --ignored --test-threads=1`
//!
//! The binary is `SKIPPER_BIN`, else `<target>/debug/skipper` next to this test (built with
//! `cargo build -p skipper-bin --bin skipper` when missing; `scripts/test.sh` builds it first). It
//! gets NPM from `SKIPPER_NPM_URL`/`_EMAIL`/`_PASSWORD` with `SKIPPER_NPM_UPSTREAM=published`, so
//! hosts forward to `127.0.0.1:<published port>`. Each run has its own data directory, its own
//! `SKIPPER_SCOPE` and its own Docker network; every container and network with the scope's label
//! is removed when the test ends, failed or not. Without a reachable engine or
//! `target/test-env/env.sh` the test is skipped with a message, unless `CI=true`.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use skipper_npm::fake::FakeNpm;

/// The label every container and network of a scoped engine carries.
const SCOPE_LABEL: &str = "dev.skipper.scope";
/// The stage domain of project `app` (from `team/app`), stage `dev`, domain `localhost`.
const STAGE_DOMAIN: &str = "stage-dev-app.localhost";
/// No single command may take longer than this.
const COMMAND_LIMIT: Duration = Duration::from_secs(180);

fn ci() -> bool {
    std::env::var("CI").as_deref() == Ok("true")
}

/// `SKIPPER_BIN`, else `<target>/<profile>/skipper` beside this test's executable
/// (`<target>/<profile>/deps/npm_cli-*`), built first if it is not there.
fn skipper_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("SKIPPER_BIN").filter(|b| !b.is_empty()) {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("the test executable's path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test executable sits in <target>/<profile>/deps");
    let bin = profile_dir.join("skipper");
    if !bin.exists() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "skipper-bin", "--bin", "skipper"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build of the skipper binary failed");
    }
    assert!(bin.exists(), "no skipper binary at {}", bin.display());
    bin
}

/// The open test registry from `SKIPPER_TEST_REGISTRY` or `target/test-env/env.sh`.
fn test_registry() -> Result<(String, String), String> {
    let path = std::env::var("SKIPPER_TEST_ENV_FILE")
        .unwrap_or_else(|_| format!("{}/target/test-env/env.sh", env!("CARGO_MANIFEST_DIR")));
    let mut vars: HashMap<String, String> = std::fs::read_to_string(&path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            let line = line.trim();
            let line = line.strip_prefix("export ").unwrap_or(line);
            let (k, v) = line.split_once('=')?;
            (!k.starts_with('#')).then(|| (k.to_owned(), v.trim_matches('"').to_owned()))
        })
        .collect();
    vars.extend(std::env::vars().filter(|(k, _)| k.starts_with("SKIPPER_TEST_")));
    let get = |k: &str| vars.get(k).filter(|v| !v.is_empty()).cloned();
    let registry = get("SKIPPER_TEST_REGISTRY").ok_or_else(|| {
        format!(
            "the test environment is not set up: run scripts/test-env.sh \
             (no SKIPPER_TEST_REGISTRY in the environment or in {path})"
        )
    })?;
    let repository = get("SKIPPER_TEST_REPOSITORY").unwrap_or_else(|| "team/app".into());
    Ok((registry, repository))
}

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("docker {args:?}: {e}"));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Removes every container and network with `scope`'s label when dropped, also on a panic.
struct Cleanup {
    scope: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let filter = format!("label={SCOPE_LABEL}={}", self.scope);
        let cleanup = move || {
            let ids = |args: &[&str]| -> Vec<String> {
                docker(args).split_whitespace().map(str::to_owned).collect()
            };
            let containers = ids(&["ps", "-aq", "--filter", &filter]);
            if !containers.is_empty() {
                let _ = Command::new("docker")
                    .args(["rm", "-f"])
                    .args(&containers)
                    .output();
            }
            let networks = ids(&["network", "ls", "-q", "--filter", &filter]);
            if !networks.is_empty() {
                let _ = Command::new("docker")
                    .args(["network", "rm"])
                    .args(&networks)
                    .output();
            }
        };
        // Blocking work off the async test's thread.
        let _ = std::thread::spawn(cleanup).join();
    }
}

/// One run's world: the binary, a scope, a data directory and config file, and the fake NPM.
struct Harness {
    bin: PathBuf,
    registry: String,
    repository: String,
    scope: String,
    dir: tempfile::TempDir,
    docker_config: tempfile::TempDir,
    npm: FakeNpm,
    // Last, so it runs after everything else is dropped.
    _cleanup: Cleanup,
}

/// A finished `skipper ... --json`.
#[derive(Debug)]
struct Run {
    code: Option<i32>,
    json: Value,
    stderr: String,
}

impl Run {
    fn succeeded(self) -> Value {
        assert_eq!(
            (self.code, self.json["status"].as_str()),
            (Some(0), Some("succeeded")),
            "{:#}\nstderr: {}",
            self.json,
            self.stderr
        );
        self.json
    }

    fn failed(self) -> Value {
        assert!(
            self.code != Some(0) && self.json["status"] == "failed",
            "expected a failed deploy, got exit {:?}: {:#}\nstderr: {}",
            self.code,
            self.json,
            self.stderr
        );
        self.json
    }
}

impl Harness {
    /// `None` (after saying why) when the engine or the test environment is missing and this is
    /// not CI.
    async fn new(test: &str) -> Option<Self> {
        let skip = |why: String| {
            assert!(!ci(), "CI=true and {why}");
            eprintln!("skipping {test}: {why}");
            None
        };
        match Command::new("docker")
            .args(["info", "--format", "{{.ServerVersion}}"])
            .output()
        {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                return skip(format!(
                    "the Docker engine is unreachable: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ));
            }
            Err(e) => return skip(format!("the docker CLI cannot run: {e}")),
        }
        let (registry, repository) = match test_registry() {
            Ok(r) => r,
            Err(why) => return skip(why),
        };
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock after 1970")
            .subsec_nanos();
        let scope = format!("npm-{test}-{}-{nanos:x}", std::process::id());
        let dir = tempfile::tempdir().expect("temp dir");
        // The run's own network, so that it too carries the scope's label and is cleaned up.
        std::fs::write(
            dir.path().join("skipper.yaml"),
            format!("global:\n  network: skipper-test-{scope}\n"),
        )
        .expect("write the config file");
        let bin = tokio::task::spawn_blocking(skipper_bin)
            .await
            .expect("locate the binary");
        Some(Self {
            bin,
            registry,
            repository,
            _cleanup: Cleanup {
                scope: scope.clone(),
            },
            scope,
            dir,
            docker_config: tempfile::tempdir().expect("temp dir"),
            npm: FakeNpm::start().await,
        })
    }

    fn image(&self, tag: &str) -> String {
        format!("{}/{}:{tag}", self.registry, self.repository)
    }

    /// `skipper <args> --json`, run off the runtime's thread so the fake keeps serving.
    async fn skipper(&self, args: &[&str]) -> Run {
        let mut c = Command::new(&self.bin);
        c.args(args)
            .arg("--json")
            .current_dir(self.dir.path())
            .env("SKIPPER_CONFIG", self.dir.path().join("skipper.yaml"))
            .env("SKIPPER_DATA_DIR", self.dir.path().join("data"))
            .env("SKIPPER_SCOPE", &self.scope)
            .env("SKIPPER_STOP_GRACE", "1s")
            .env("SKIPPER_NPM_URL", self.npm.uri())
            .env("SKIPPER_NPM_EMAIL", FakeNpm::EMAIL)
            .env("SKIPPER_NPM_PASSWORD", FakeNpm::PASSWORD)
            .env("SKIPPER_NPM_UPSTREAM", "published")
            .env("DOCKER_CONFIG", self.docker_config.path())
            .env_remove("SKIPPER_NPM_UPSTREAM_HOST")
            .env_remove("SKIPPER_SECRET_KEY")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
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
                std::thread::sleep(Duration::from_millis(50));
            }
            child.wait_with_output().expect("read skipper's output")
        })
        .await
        .expect("the command's thread");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let json = serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!(
                "skipper {args:?}: stdout is not one JSON document ({e}); exit {:?}\n\
                 stdout: {stdout}\nstderr: {stderr}",
                out.status.code()
            )
        });
        Run {
            code: out.status.code(),
            json,
            stderr,
        }
    }

    async fn deploy(&self, tag: &str, extra: &[&str]) -> Run {
        let image = self.image(tag);
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
            &format!("label={SCOPE_LABEL}={}", self.scope),
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

/// GET `/` at `127.0.0.1:port` (the body), what a proxy following the host would reach.
async fn get_root(port: u16) -> String {
    tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the app");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            s,
            "GET / HTTP/1.0\r\nHost: {STAGE_DOMAIN}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).expect("read the answer");
        text.split_once("\r\n\r\n")
            .map(|(_, body)| body.trim().to_owned())
            .unwrap_or(text)
    })
    .await
    .expect("the request's thread")
}

#[tokio::test]
#[ignore = "needs docker engine"]
async fn deploy_rm_and_a_failed_deploy_route_through_npm() {
    let Some(h) = Harness::new("route").await else {
        return;
    };

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
