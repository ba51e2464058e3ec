//! Detecting new images against the real CNCF distribution registry (Debian's `docker-registry`)
//! and a real Docker engine: `RegistryClient`, the `Watcher`, `skipper tags`, `skipper watch`,
//! and the registry's own push notifications.
//!
//! Run with:
//! `scripts/test-env.sh && cargo test --test registry_real -- --ignored --test-threads=1`
//!
//! The script builds the `skipper-test/app:*` images and runs the open registry (default
//! `127.0.0.1:5055`) these tests push to; where it is comes from `SKIPPER_TEST_*` variables or
//! `target/test-env/env.sh` (`SKIPPER_TEST_ENV_FILE` overrides the path). Without the engine or
//! that file each test is skipped with a message, unless `CI=true`, where that is a failure.
//!
//! Each test pushes to repositories of its own (`team/watch-<unique>`), deletes their manifests
//! again, runs the `skipper` binary (`SKIPPER_BIN`, else built once with cargo) with its own
//! data directory, `SKIPPER_SCOPE` and Docker network, and removes every container and network
//! with its scope label when it ends, failed or not. The notification test starts a registry of
//! its own on a free port; the shared ones are never restarted. The harness shared with the other
//! Docker tests is in `tests/common/`.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use secrecy::SecretString;
use serde_json::Value;
use skipper_core::store::MemoryStore;
use skipper_core::testing::{Behavior, FakeProxy, FakeRuntime};
use skipper_core::{Engine, ImageRef, Project, SeenTag, Stage};
use skipper_registry::watch::{Change, Registries, Watcher};
use skipper_registry::webhook::{self, WebhookSource};
use skipper_registry::{ObservedTag, RegistryClient, RegistryConfig, diff_tags};

use common::KillOnDrop;
use common::bin::{Run, World};
use common::docker::Scope;
use common::env::TestEnv;

// ---------------------------------------------------------------------------------------------
// Harness

const LOCAL_REPO: &str = "skipper-test/app";

/// One test's world: a unique name, a scope, a network, a data directory, a config file, and the
/// images it pushed. Dropping it removes the scope's containers and networks, then the pushed
/// manifests and the local tags, also when the test panics.
struct Harness {
    env: TestEnv,
    // Before `pushed`: the containers go before the images they run.
    world: World,
    pushed: Pushes,
}

/// `(registry, repository, digest)` of every push, and the local tags made for them.
type Pushed = (Vec<(String, String, String)>, Vec<String>);

/// Every push, and the local tags made for them; dropping it deletes the manifests from their
/// registries and removes the local tags.
struct Pushes(Mutex<Pushed>);

impl Harness {
    /// `None` (after saying why) when the engine or the test environment is missing and this is
    /// not CI.
    fn new(test: &str) -> Option<Self> {
        let env = common::env_or_skip(test, TestEnv::load)?;
        Some(Self {
            env,
            world: World::new(Scope::new(&format!("reg-{test}"))),
            pushed: Pushes(Mutex::new((Vec::new(), Vec::new()))),
        })
    }

    /// Unique to this test (hex digits only).
    fn unique(&self) -> &str {
        &self.world.scope.unique
    }

    /// `team/watch-<unique>`: a repository of this test's own.
    fn repository(&self) -> String {
        format!("team/watch-{}", self.unique())
    }

    /// `<open registry>/team/watch-<unique>`.
    fn watched(&self) -> String {
        format!("{}/{}", self.env.registry, self.repository())
    }

    /// Tag the local `skipper-test/app:<variant>` as `<registry>/<repository>:<tag>`, push it and
    /// return the manifest digest the push reported.
    fn push(&self, variant: &str, registry: &str, repository: &str, tag: &str) -> String {
        let target = format!("{registry}/{repository}:{tag}");
        let local = format!("{LOCAL_REPO}:{variant}");
        let out = run("docker", &["tag", &local, &target]);
        assert!(
            out.status.success(),
            "docker tag {local} {target}: {}",
            text(&out.stderr)
        );
        self.pushed.0.lock().unwrap().1.push(target.clone());
        let out = run("docker", &["push", &target]);
        let stdout = text(&out.stdout);
        assert!(
            out.status.success(),
            "docker push {target}: {stdout}{}",
            text(&out.stderr)
        );
        let digest = stdout
            .split_whitespace()
            .skip_while(|w| *w != "digest:")
            .nth(1)
            .unwrap_or_else(|| panic!("no digest in the output of docker push: {stdout}"))
            .to_owned();
        self.pushed.0.lock().unwrap().0.push((
            registry.to_owned(),
            repository.to_owned(),
            digest.clone(),
        ));
        digest
    }

    /// Push `skipper-test/app:<variant>` as `<open registry>/team/watch-<unique>:<tag>`.
    fn push_watched(&self, variant: &str, tag: &str) -> String {
        self.push(variant, &self.env.registry, &self.repository(), tag)
    }

    /// `skipper <args> --json`: exit code and the parsed stdout.
    fn skipper(&self, args: &[&str]) -> (Option<i32>, Value, String) {
        let out = self
            .world
            .command(args)
            .output()
            .unwrap_or_else(|e| panic!("run skipper {args:?}: {e}"));
        let Run { code, json, stderr } = Run::from_output(args, out);
        (code, json, stderr)
    }
}

impl Drop for Pushes {
    fn drop(&mut self) {
        let (manifests, mut local) = std::mem::take(&mut *self.0.lock().unwrap());
        for (registry, repository, digest) in manifests {
            // Pulls and pushes leave a `repo@digest` reference behind.
            local.push(format!("{registry}/{repository}@{digest}"));
            // The registries run with `storage.delete.enabled`; best effort.
            let _ = Command::new("curl")
                .args(["-s", "-o", "/dev/null", "-m", "5", "-X", "DELETE"])
                .arg(format!(
                    "http://{registry}/v2/{repository}/manifests/{digest}"
                ))
                .output();
        }
        if !local.is_empty() {
            let _ = Command::new("docker").arg("rmi").args(&local).output();
        }
    }
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {program} {args:?}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A client for the open test registry (anonymous: it has no auth).
fn client(registry: &str) -> RegistryClient {
    RegistryClient::new(RegistryConfig {
        registry: Some(registry.to_owned()),
        ..RegistryConfig::default()
    })
    .expect("a client for a loopback registry")
}

macro_rules! harness_or_skip {
    ($name:literal) => {
        common::or_skip!(Harness::new($name))
    };
}

// ---------------------------------------------------------------------------------------------
// RegistryClient

#[tokio::test]
#[ignore = "needs docker engine"]
async fn lists_the_tags_of_the_test_repository() {
    let h = harness_or_skip!("list");
    let image = ImageRef::parse(&format!("{}/{}", h.env.registry, h.env.repository)).unwrap();
    let tags = client(&h.env.registry).tags(&image).await.unwrap();
    for variant in h.env.variants() {
        assert!(tags.contains(&variant), "{variant} missing from {tags:?}");
    }
    // Through the trait the engine uses, too.
    let registry: Arc<dyn skipper_core::Registry> = Arc::new(client(&h.env.registry));
    assert_eq!(registry.list_tags(&image).await.unwrap(), tags);
}

#[tokio::test]
#[ignore = "needs docker engine"]
async fn resolves_the_digests_the_pushes_reported() {
    let h = harness_or_skip!("digests");
    let c = client(&h.env.registry);
    let mut compared = 0;
    for variant in h.env.variants() {
        let image = ImageRef::parse(&format!(
            "{}/{}:{variant}",
            h.env.registry, h.env.repository
        ))
        .unwrap();
        let digest = c.digest(&image).await.unwrap();
        assert!(
            digest.starts_with("sha256:") && digest.len() == 71,
            "{digest}"
        );
        if let Some(pushed) = h.env.digest(&variant) {
            assert_eq!(digest, pushed, "{variant}");
            compared += 1;
        }
    }
    assert!(compared >= 2, "env.sh recorded the digests of v1 and v2");
    let missing = ImageRef::parse(&format!(
        "{}/{}:no-such-tag",
        h.env.registry, h.env.repository
    ))
    .unwrap();
    let e = skipper_core::Error::from(c.digest(&missing).await.unwrap_err());
    assert_eq!(e.kind(), skipper_core::ErrorKind::NotFound, "{}", e.chain());
}

#[tokio::test]
#[ignore = "needs docker engine"]
async fn detects_a_repushed_tag() {
    let h = harness_or_skip!("repush");
    let repo = ImageRef::parse(&h.watched()).unwrap();
    let tag = repo.with_tag("dev-1").unwrap();
    let c = client(&h.env.registry);

    let first = h.push_watched("v1", "dev-1");
    assert_eq!(c.digest(&tag).await.unwrap(), first);
    // (Built from JSON: this crate has no direct chrono dependency.)
    let seen: Vec<SeenTag> = serde_json::from_value(serde_json::json!([{
        "repository": repo.name(),
        "tag": "dev-1",
        "digest": first,
        "first_seen": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:00:00Z",
    }]))
    .unwrap();

    // The same tag, pushed again from another image.
    let second = h.push_watched("v2", "dev-1");
    assert_ne!(first, second);
    let observed = vec![ObservedTag::new(
        "dev-1",
        Some(c.digest(&tag).await.unwrap()),
    )];
    let diff = diff_tags(&observed, &seen);
    assert!(diff.new.is_empty());
    assert_eq!(diff.changed.len(), 1);
    assert_eq!(
        (
            diff.changed[0].previous.as_str(),
            diff.changed[0].current.as_str()
        ),
        (first.as_str(), second.as_str())
    );
}

#[tokio::test]
#[ignore = "needs docker engine"]
async fn the_watcher_redeploys_a_repushed_tag_from_the_real_registry() {
    let h = harness_or_skip!("watcher");
    h.push_watched("v1", "dev-1");
    // The real registry, the in-memory runtime and store.
    let rt = Arc::new(FakeRuntime::new());
    rt.add_image(&format!("{}:dev-1", h.watched()), Behavior::Healthy);
    let mut registries = Registries::new().with_docker_config(false);
    registries.insert_client(client(&h.env.registry));
    let engine = Engine::builder(rt.clone(), Arc::new(MemoryStore::new()))
        .proxy(Arc::new(FakeProxy::new()))
        .registry(Arc::new(registries))
        .build();
    let mut project = Project::new("watched", &h.watched()).unwrap();
    project.port = Some(8080);
    project.health.path = Some("/health".into());
    let mut dev = Stage::new("dev");
    dev.tag_pattern = "dev-*".into();
    dev.auto_deploy = true;
    engine.put_project(&project.with_stage(dev)).await.unwrap();
    let watcher = Watcher::new(engine).unwrap();

    // First poll: the stage is empty, so its newest tag is deployed.
    let first = watcher.run_once().await.unwrap();
    assert!(first.errors.is_empty(), "{first:#?}");
    assert!(first.polled[0].baseline);
    assert_eq!(first.deployed.len(), 1, "{first:#?}");
    assert_eq!(first.deployed[0].change, Change::FirstRun);
    assert!(watcher.run_once().await.unwrap().is_quiet());

    h.push_watched("v2", "dev-1");
    let report = watcher.run_once().await.unwrap();
    assert_eq!(report.polled[0].repushed, 1, "{report:#?}");
    assert_eq!(report.deployed.len(), 1, "{report:#?}");
    assert_eq!(
        (report.deployed[0].tag.as_str(), report.deployed[0].change),
        ("dev-1", Change::Repushed)
    );
}

// ---------------------------------------------------------------------------------------------
// The CLI

#[test]
#[ignore = "needs docker engine"]
fn tags_json_lists_tags_newest_first_with_digests() {
    let h = harness_or_skip!("tags");
    let repo = format!("{}/{}", h.env.registry, h.env.repository);
    let (code, json, stderr) = h.skipper(&["tags", &repo]);
    assert_eq!(code, Some(0), "{json:#} {stderr}");
    let list = json.as_array().expect("an array");
    let tags: Vec<&str> = list.iter().filter_map(|t| t["tag"].as_str()).collect();
    assert_eq!(
        &tags[..2],
        ["v2", "v1"],
        "versions first, newest first: {tags:?}"
    );
    for variant in ["v1", "v2"] {
        let entry = list.iter().find(|t| t["tag"] == variant).unwrap();
        assert_eq!(entry["digest"].as_str(), h.env.digest(variant), "{entry}");
    }

    let (code, json, _) = h.skipper(&["tags", &repo, "--pattern", "v*", "--limit", "1"]);
    assert_eq!(code, Some(0));
    assert_eq!(json.as_array().unwrap().len(), 1);
    assert_eq!(json[0]["tag"], "v2");
}

#[test]
#[ignore = "needs docker engine"]
fn watch_once_baselines_then_deploys_a_new_tag() {
    let h = harness_or_skip!("watch");
    let project = format!("w{}", h.unique());
    h.world.write_config(&format!(
        "projects:\n  {project}:\n    image: {image}\n    \
         port: 8080\n    healthcheck: /health\n    stages:\n      dev: {{ tag_pattern: \"dev-*\", \
         auto_deploy: true }}\n",
        image = h.watched(),
    ));
    h.push_watched("v1", "dev-1");
    let dev1 = format!("{}:dev-1", h.watched());
    let (code, json, stderr) = h.skipper(&["deploy", &dev1, "--project", &project]);
    assert_eq!(
        (code, json["status"].as_str()),
        (Some(0), Some("succeeded")),
        "{json:#} {stderr}"
    );

    // First round: the tags are the baseline; the running stage is left alone.
    let (code, report, stderr) = h.skipper(&["watch", "--once"]);
    assert_eq!(code, Some(0), "{report:#} {stderr}");
    assert_eq!(report["polled"][0]["baseline"], true, "{report:#}");
    assert_eq!(report["polled"][0]["repository"], h.watched());
    assert_eq!(report["deployed"], Value::Array(vec![]), "{report:#}");
    assert_eq!(report["errors"], Value::Array(vec![]), "{report:#}");

    // A new tag: deployed.
    h.push_watched("v2", "dev-2");
    let (code, report, stderr) = h.skipper(&["watch", "--once"]);
    assert_eq!(code, Some(0), "{report:#} {stderr}");
    assert_eq!(report["polled"][0]["baseline"], false);
    let deployed = report["deployed"].as_array().unwrap();
    assert_eq!(deployed.len(), 1, "{report:#}");
    assert_eq!(deployed[0]["tag"], "dev-2");
    assert_eq!(deployed[0]["stage"], "dev");
    assert_eq!(deployed[0]["change"], "new");
    assert!(
        deployed[0].get("status").is_none(),
        "failed deploys are errors: {report:#}"
    );

    let (code, ps, _) = h.skipper(&["ps", "--project", &project]);
    assert_eq!(code, Some(0));
    let instances = ps.as_array().unwrap();
    assert_eq!(instances.len(), 1, "dev-1 was retired: {ps:#}");
    assert_eq!(instances[0]["tag"], "dev-2");
    assert_eq!(instances[0]["state"], "running");
    assert_eq!(instances[0]["active"], true);
    let (_, history, _) = h.skipper(&["history", "--project", &project]);
    assert_eq!(history[0]["trigger"], "poll", "{history:#}");

    // Nothing new: nothing deployed, even by a new process.
    let (code, report, _) = h.skipper(&["watch", "--once"]);
    assert_eq!(code, Some(0));
    assert_eq!(report["deployed"], Value::Array(vec![]), "{report:#}");
}

// ---------------------------------------------------------------------------------------------
// Push notifications

/// One request the listener received: its headers (lower-cased names) and body.
type Received = (HashMap<String, String>, Vec<u8>);

/// A tiny HTTP/1.1 server on 127.0.0.1 that answers every request `200` and hands it over.
fn listen() -> (u16, mpsc::Receiver<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a listener");
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let tx = tx.clone();
            std::thread::spawn(move || {
                let _ = serve(stream, &tx);
            });
        }
    });
    (port, rx)
}

fn serve(stream: TcpStream, tx: &mpsc::Sender<Received>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    // Keep-alive: one request after another on the same connection.
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let mut headers = HashMap::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line)?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
            }
        }
        let length: usize = headers
            .get("content-length")
            .and_then(|l| l.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        writer.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")?;
        if tx.send((headers, body)).is_err() {
            return Ok(());
        }
    }
}

/// A port nothing listens on now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

#[tokio::test]
#[ignore = "needs docker engine"]
async fn registry_push_notifications_reach_a_listener_and_parse() {
    let h = harness_or_skip!("notify");
    if Command::new("docker-registry")
        .arg("--version")
        .output()
        .is_err()
    {
        common::skip(
            "notify",
            "docker-registry is not installed (scripts/test-env.sh installs it)",
        );
        return;
    }
    let (listener_port, received) = listen();
    let port = free_port();
    let registry = format!("127.0.0.1:{port}");
    let token = "notify-test-token";
    let config = h.world.dir.path().join("registry.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\n\
             log:\n  level: warn\n\
             storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n\
             http:\n  addr: {registry}\n  secret: skipper-notify-test\n\
             notifications:\n  endpoints:\n    - name: skipper-test\n      \
             url: http://127.0.0.1:{listener_port}/events\n      \
             headers:\n        Authorization: [\"Bearer {token}\"]\n      \
             timeout: 2s\n      threshold: 3\n      backoff: 1s\n",
            storage = h.world.dir.path().join("registry-data").display(),
        ),
    )
    .unwrap();
    let log = std::fs::File::create(h.world.dir.path().join("registry.log")).unwrap();
    let child = Command::new("docker-registry")
        .arg("serve")
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start docker-registry");
    let _registry = KillOnDrop(Some(child));
    let c = client(&registry);
    let started = Instant::now();
    while c.ping().await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the extra registry did not start: {}",
            std::fs::read_to_string(h.world.dir.path().join("registry.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let repository = format!("team/notify-{}", h.unique());
    let digest = h.push("v1", &registry, &repository, "n1");

    // The registry posts blob and manifest events, possibly in several envelopes.
    let deadline = Instant::now() + Duration::from_secs(30);
    let event = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (headers, body) = received
            .recv_timeout(left)
            .expect("a notification of the manifest push within 30 s");
        let auth = headers.get("authorization").map(String::as_str);
        webhook::verify_token(
            WebhookSource::Distribution,
            auth,
            &SecretString::from(token.to_owned()),
        )
        .expect("the configured Authorization header");
        assert!(
            headers
                .get("content-type")
                .is_some_and(|t| t.starts_with(webhook::DISTRIBUTION_EVENTS_MEDIA_TYPE)),
            "{headers:?}"
        );
        let events = webhook::parse_distribution(&body, None)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&body)));
        if let Some(e) = events.into_iter().next() {
            break e;
        }
    };
    assert_eq!(event.source, WebhookSource::Distribution);
    assert_eq!(event.image.registry(), registry);
    assert_eq!(event.image.repository(), repository);
    assert_eq!(event.image.tag(), Some("n1"));
    assert_eq!(event.image.digest(), Some(digest.as_str()));
}
