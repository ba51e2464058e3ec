//! `DockerRuntime` against a real Docker engine and real registries.
//!
//! Run with:
//! `scripts/test-env.sh && cargo test --test docker_runtime -- --ignored --test-threads=1`
//!
//! The script builds the `skipper-test/app:*` images and starts two registries (open, and
//! htpasswd-protected); the tests read where from `SKIPPER_TEST_*` variables or, failing that,
//! from `target/test-env/env.sh` (`SKIPPER_TEST_ENV_FILE` overrides the path). Without a reachable
//! engine each test is skipped with a message, unless `CI=true`, where that is a failure.
//!
//! Every test labels what it creates with its own `dev.skipper.scope` and removes it on drop,
//! failed or not. The harness shared with the other Docker tests is in `tests/common/`.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use secrecy::SecretString;
use skipper_core::docker::{DockerRuntime, PORT_LABEL};
use skipper_core::model::labels;
use skipper_core::{
    ContainerInfo, ContainerSpec, Credentials, ErrorKind, HealthStatus, ImageRef, RunState, Runtime,
};

use common::docker::Scope;
use common::env::TestEnv;

// ---------------------------------------------------------------------------------------------
// Harness

/// Where the registries of `scripts/test-env.sh` are; panics when they are not set up (the
/// engine is, or the test would have been skipped).
fn test_env() -> TestEnv {
    TestEnv::load_with_auth().unwrap_or_else(|why| panic!("{why}"))
}

/// A local test image (built by the script, never pulled).
fn local(variant: &str) -> ImageRef {
    ImageRef::parse(&format!("skipper-test/app:{variant}")).unwrap()
}

/// A runtime confined to `scope`, or `None` (after saying so) when no engine is reachable and
/// this is not CI.
async fn runtime(scope: &Scope) -> Option<DockerRuntime> {
    match DockerRuntime::connect().await {
        Ok(rt) => Some(rt.with_scope(scope.name.clone())),
        Err(e) => {
            let why = format!("the Docker engine is unreachable: {}", e.chain());
            common::skip(&scope.name, &why);
            None
        }
    }
}

macro_rules! runtime_or_skip {
    ($scope:expr) => {
        common::or_skip!(runtime(&$scope).await)
    };
}

/// Forget a local tag so a pull really talks to the registry.
fn untag(image: &ImageRef) {
    let _ = Command::new("docker")
        .args(["image", "rm", &image.to_string()])
        .output();
}

fn spec(scope: &Scope, suffix: &str, image: ImageRef) -> ContainerSpec {
    ContainerSpec {
        name: format!("skipper-test-{}-{suffix}", scope.name),
        image,
        env: BTreeMap::from([("SKIPPER_TEST".into(), "1".into())]),
        labels: BTreeMap::from([
            (labels::MANAGED.into(), "true".into()),
            ("dev.skipper.test.role".into(), suffix.into()),
        ]),
        volumes: Vec::new(),
        network: None,
        port: Some(8080),
        publish: false,
    }
}

/// Inspect `id` until `done` holds, or panic after `within`.
async fn wait_for(
    rt: &DockerRuntime,
    id: &str,
    within: Duration,
    what: &str,
    done: impl Fn(&ContainerInfo) -> bool,
) -> ContainerInfo {
    let start = Instant::now();
    loop {
        let info = rt.inspect_container(id).await.unwrap();
        if done(&info) {
            return info;
        }
        assert!(
            start.elapsed() < within,
            "{what} within {within:?}; last seen {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

const GRACE: Duration = Duration::from_secs(1);

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test]
#[ignore = "needs docker engine"]
async fn pull_from_open_registry_reports_progress_and_digest() {
    let scope = Scope::new("pull-open");
    let rt = runtime_or_skip!(scope);
    let env = test_env();
    let image = ImageRef::parse(&env.image("v1")).unwrap();
    untag(&image);
    assert!(!rt.has_image(&image).await.unwrap());

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let pulled = rt.pull(&image, None, Some(tx)).await.unwrap();
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    assert!(!events.is_empty(), "no progress events");
    assert!(
        events.iter().any(|e| e.status.contains("Pulling from")),
        "{events:?}"
    );
    assert!(events.iter().any(|e| e.layer.is_some()), "{events:?}");
    let digest = pulled.digest.expect("a registry pull has a repo digest");
    assert!(digest.starts_with("sha256:"), "{digest}");
    if let Some(pushed) = env.digest("v1") {
        assert_eq!(digest, pushed, "the digest of the push");
    }
    assert!(pulled.id.starts_with("sha256:"), "{}", pulled.id);
    assert!(rt.has_image(&image).await.unwrap());

    // Pinned by digest: the same image, and the digest comes back as given.
    let pinned = image.with_digest(&digest).unwrap();
    let again = rt.pull(&pinned, None, None).await.unwrap();
    assert_eq!(again.id, pulled.id);
    assert_eq!(again.digest.as_deref(), Some(digest.as_str()));
}

#[tokio::test]
#[ignore = "needs docker engine"]
async fn pull_of_a_missing_tag_or_repository_is_not_found() {
    let scope = Scope::new("pull-missing");
    let rt = runtime_or_skip!(scope);
    let env = test_env();
    let err = rt
        .pull(
            &ImageRef::parse(&env.image("no-such-tag")).unwrap(),
            None,
            None,
        )
        .await
        .unwrap_err();
    eprintln!("missing tag: {}", err.chain());
    assert_eq!(err.kind(), ErrorKind::NotFound, "{}", err.chain());
    assert!(err.to_string().contains("no-such-tag"), "{err}");

    let repo = ImageRef::parse(&format!("{}/team/no-such-repo:v1", env.registry)).unwrap();
    let err = rt.pull(&repo, None, None).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{}", err.chain());
}

#[tokio::test]
#[ignore = "needs docker engine"]
async fn pull_from_auth_registry_needs_the_right_credentials() {
    let scope = Scope::new("pull-auth");
    let rt = runtime_or_skip!(scope);
    let rt = rt.with_docker_config(None);
    let env = test_env();
    let image = ImageRef::parse(&env.auth_image("v2")).unwrap();
    untag(&image);

    let err = rt.pull(&image, None, None).await.unwrap_err();
    eprintln!("no credentials: {}", err.chain());
    assert_eq!(err.kind(), ErrorKind::Unauthorized, "{}", err.chain());
    assert!(err.to_string().contains("without credentials"), "{err}");

    let wrong = Credentials {
        username: env.user.clone(),
        secret: SecretString::from("not-the-password"),
    };
    let err = rt.pull(&image, Some(wrong), None).await.unwrap_err();
    eprintln!("wrong credentials: {}", err.chain());
    assert_eq!(err.kind(), ErrorKind::Unauthorized, "{}", err.chain());
    assert!(!err.chain().contains("not-the-password"), "a secret leaked");

    let right = Credentials {
        username: env.user.clone(),
        secret: SecretString::from(env.password.clone()),
    };
    let pulled = rt.pull(&image, Some(right), None).await.unwrap();
    assert!(pulled.digest.is_some_and(|d| d.starts_with("sha256:")));

    // Without explicit credentials the Docker CLI config is read, as `docker pull` does.
    untag(&image);
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"{{"auths": {{"http://{}": {{"username": "{}", "password": "{}"}}}}}}"#,
        env.auth_registry(),
        env.user,
        env.password
    );
    std::fs::write(dir.path().join("config.json"), config).unwrap();
    let rt = rt.with_docker_config(Some(dir.path().to_owned()));
    rt.pull(&image, None, None).await.unwrap();
}

#[tokio::test]
#[ignore = "needs docker engine"]
async fn published_container_answers_health_probes_on_loopback() {
    let scope = Scope::new("probe");
    let rt = runtime_or_skip!(scope);
    let env = test_env();
    let network = scope.network();
    rt.ensure_network(&network).await.unwrap();
    rt.ensure_network(&network).await.unwrap();
    let image = ImageRef::parse(&env.image("v1")).unwrap();
    rt.pull(&image, None, None).await.unwrap();

    let mut web = spec(&scope, "web", image.clone());
    web.network = Some(network.clone());
    web.publish = true;
    let id = rt.create_container(&web).await.unwrap();
    let created = rt.inspect_container(&id).await.unwrap();
    assert_eq!(created.state, RunState::Created);
    assert_eq!(created.published, None, "nothing is bound before start");

    rt.start_container(&id).await.unwrap();
    let info = rt.inspect_container(&id).await.unwrap();
    assert_eq!(info.state, RunState::Running);
    assert_eq!(info.name, web.name);
    assert_eq!(info.image, image.to_string());
    assert_eq!(info.labels[labels::SCOPE], scope.name);
    assert_eq!(info.labels[PORT_LABEL], "8080");
    assert_eq!(info.labels["dev.skipper.test.role"], "web");
    assert_eq!(info.health, HealthStatus::None);
    let published = info.published.clone().expect("published");
    assert!(published.starts_with("127.0.0.1:"), "{published}");

    let start = Instant::now();
    let probe = loop {
        let p = rt
            .probe_http(&info, 8080, "/health", Duration::from_secs(2))
            .await
            .unwrap();
        if p.status.is_some() || start.elapsed() > Duration::from_secs(10) {
            break p;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(probe.status, Some(200), "{}", probe.detail);
    assert!(probe.is_healthy());
    assert!(probe.detail.contains(&published), "{}", probe.detail);
    let missing = rt
        .probe_http(&info, 8080, "no-such-page", Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(missing.status, Some(404), "{}", missing.detail);

    // Joined the network under its own name.
    let out = Command::new("docker")
        .args([
            "inspect",
            "-f",
            &format!("{{{{json (index .NetworkSettings.Networks \"{network}\").Aliases}}}}"),
            &id,
        ])
        .output()
        .unwrap();
    let aliases = String::from_utf8_lossy(&out.stdout);
    assert!(aliases.contains(&web.name), "aliases {aliases}");

    // Not published: nothing to probe, and that is an answer, not an error.
    let quiet = spec(&scope, "quiet", image);
    let quiet_id = rt.create_container(&quiet).await.unwrap();
    rt.start_container(&quiet_id).await.unwrap();
    let quiet_info = rt.inspect_container(&quiet_id).await.unwrap();
    assert_eq!(quiet_info.published, None);
    let p = rt
        .probe_http(&quiet_info, 8080, "/health", Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(p.status, None);
    assert_eq!(p.detail, "not published");
}

#[tokio::test]
#[ignore = "needs docker engine"]
async fn slow_container_is_unanswered_then_healthy() {
    let scope = Scope::new("slow");
    let rt = runtime_or_skip!(scope);
    let mut slow = spec(&scope, "slow", local("slow"));
    slow.publish = true;
    let id = rt.create_container(&slow).await.unwrap();
    rt.start_container(&id).await.unwrap();
    let info = rt.inspect_container(&id).await.unwrap();
    let first = rt
        .probe_http(&info, 8080, "/health", Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(first.status, None, "nothing serves yet: {}", first.detail);
    assert!(
        first.detail.starts_with("GET http://127.0.0.1:"),
        "{}",
        first.detail
    );
    let start = Instant::now();
    loop {
        let p = rt
            .probe_http(&info, 8080, "/health", Duration::from_secs(1))
            .await
            .unwrap();
        if p.is_healthy() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "never healthy: {}",
            p.detail
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The unhealthy image serves, but never /health.
    let mut sick = spec(&scope, "sick", local("unhealthy"));
    sick.publish = true;
    let sick_id = rt.create_container(&sick).await.unwrap();
    rt.start_container(&sick_id).await.unwrap();
    let sick_info = rt.inspect_container(&sick_id).await.unwrap();
    let start = Instant::now();
    let p = loop {
        let p = rt
            .probe_http(&sick_info, 8080, "/health", Duration::from_secs(1))
            .await
            .unwrap();
        if p.status.is_some() || start.elapsed() > Duration::from_secs(10) {
            break p;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(p.status, Some(404), "{}", p.detail);
    assert!(!p.is_healthy());
}

#[tokio::test]
#[ignore = "needs docker engine"]
async fn inspect_image_reads_expose_healthcheck_and_labels() {
    let scope = Scope::new("inspect-image");
    let rt = runtime_or_skip!(scope);
    let meta = rt.inspect_image(&local("healthcheck")).await.unwrap();
    assert_eq!(meta.exposed_ports, vec![8080]);
    let hc = meta.healthcheck.expect("the image has a HEALTHCHECK");
    assert!(hc.test.iter().any(|t| t.contains("wget")), "{:?}", hc.test);
    assert_eq!(hc.interval, Some(Duration::from_secs(1)));
    assert_eq!(hc.timeout, Some(Duration::from_secs(2)));
    assert_eq!(hc.retries, Some(3));
    assert_eq!(meta.labels["dev.skipper.test.variant"], "healthcheck");
    assert!(meta.id.starts_with("sha256:"));

    let v1 = rt.inspect_image(&local("v1")).await.unwrap();
    assert_eq!(v1.exposed_ports, vec![8080]);
    assert_eq!(v1.healthcheck, None);

    let missing = local("no-such-variant");
    assert!(!rt.has_image(&missing).await.unwrap());
    let err = rt.inspect_image(&missing).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{}", err.chain());

    // The engine runs the HEALTHCHECK and reports it.
    let id = rt
        .create_container(&spec(&scope, "hc", local("healthcheck")))
        .await
        .unwrap();
    rt.start_container(&id).await.unwrap();
    wait_for(&rt, &id, Duration::from_secs(20), "healthy", |i| {
        i.health == HealthStatus::Healthy
    })
    .await;
}

#[tokio::test]
#[ignore = "needs docker engine"]
async fn crashing_container_exits_with_its_code_and_logs() {
    let scope = Scope::new("crash");
    let rt = runtime_or_skip!(scope);
    let id = rt
        .create_container(&spec(&scope, "crash", local("crash")))
        .await
        .unwrap();
    rt.start_container(&id).await.unwrap();
    // The restart policy (unless-stopped) brings it back, so it is Exited or Restarting.
    wait_for(&rt, &id, Duration::from_secs(15), "exit code 3", |i| {
        i.exit_code == Some(3) && matches!(i.state, RunState::Exited | RunState::Restarting)
    })
    .await;
    rt.stop_container(&id, GRACE).await.unwrap();
    let info = wait_for(&rt, &id, Duration::from_secs(15), "exited", |i| {
        i.state == RunState::Exited
    })
    .await;
    assert_eq!(info.exit_code, Some(3), "{info:?}");
    assert_eq!(info.published, None);

    let logs = rt.logs(&id, 5).await.unwrap();
    assert!(!logs.is_empty() && logs.len() <= 5, "{logs:?}");
    assert!(
        logs.iter()
            .all(|l| l == "skipper-test crash: exiting with code 3"),
        "{logs:?}"
    );
    assert_eq!(rt.logs(&id, 1).await.unwrap().len(), 1);
    assert!(rt.logs(&id, 0).await.unwrap().is_empty());
    let err = rt
        .logs("skipper-test-no-such-container", 5)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{}", err.chain());
}

#[tokio::test]
#[ignore = "needs docker engine"]
async fn list_containers_filters_by_label_and_scope() {
    let scope = Scope::new("list");
    let rt = runtime_or_skip!(scope);
    let a = rt
        .create_container(&spec(&scope, "a", local("v1")))
        .await
        .unwrap();
    let b = rt
        .create_container(&spec(&scope, "b", local("v2")))
        .await
        .unwrap();
    rt.start_container(&b).await.unwrap();

    let ids = |list: Vec<ContainerInfo>| {
        let mut ids: Vec<String> = list.into_iter().map(|c| c.id).collect();
        ids.sort();
        ids
    };
    let role_a = BTreeMap::from([("dev.skipper.test.role".to_owned(), "a".to_owned())]);
    assert_eq!(
        ids(rt.list_containers(&role_a).await.unwrap()),
        vec![a.clone()]
    );
    let managed = BTreeMap::from([(labels::MANAGED.to_owned(), "true".to_owned())]);
    let mut both = vec![a.clone(), b.clone()];
    both.sort();
    assert_eq!(ids(rt.list_containers(&managed).await.unwrap()), both);
    let all = rt.list_containers(&BTreeMap::new()).await.unwrap();
    assert_eq!(all.len(), 2, "the scope alone: {all:?}");
    let created = all.iter().find(|c| c.id == a).unwrap();
    assert_eq!(
        created.state,
        RunState::Created,
        "stopped ones are listed too"
    );
    let nobody = BTreeMap::from([("dev.skipper.test.role".to_owned(), "c".to_owned())]);
    assert!(rt.list_containers(&nobody).await.unwrap().is_empty());

    // Another scope sees none of them.
    let other = Scope::new("list-other");
    let rt_other = runtime_or_skip!(other);
    assert!(rt_other.list_containers(&managed).await.unwrap().is_empty());
}

#[tokio::test]
#[ignore = "needs docker engine"]
async fn lifecycle_stop_start_restart_remove() {
    let scope = Scope::new("lifecycle");
    let rt = runtime_or_skip!(scope);
    let web = spec(&scope, "web", local("v1"));
    let id = rt.create_container(&web).await.unwrap();
    let err = rt.create_container(&web).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{}", err.chain());

    rt.start_container(&id).await.unwrap();
    rt.start_container(&id).await.unwrap(); // already running
    assert_eq!(
        rt.inspect_container(&id).await.unwrap().state,
        RunState::Running
    );

    rt.stop_container(&id, GRACE).await.unwrap();
    let stopped = rt.inspect_container(&id).await.unwrap();
    assert_eq!(stopped.state, RunState::Exited);
    assert!(stopped.exit_code.is_some());
    rt.stop_container(&id, GRACE).await.unwrap(); // already stopped

    rt.start_container(&id).await.unwrap();
    assert_eq!(
        rt.inspect_container(&id).await.unwrap().state,
        RunState::Running
    );
    rt.restart_container(&id, GRACE).await.unwrap();
    let restarted = rt.inspect_container(&id).await.unwrap();
    assert_eq!(restarted.state, RunState::Running);
    assert_eq!(restarted.exit_code, None);

    // By name works as well as by id.
    rt.remove_container(&web.name).await.unwrap();
    let err = rt.inspect_container(&id).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{}", err.chain());
    rt.remove_container(&id).await.unwrap(); // already gone
    let err = rt.stop_container(&id, GRACE).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{}", err.chain());
    let err = rt.start_container(&id).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{}", err.chain());

    // A missing image is NotFound at create.
    let err = rt
        .create_container(&spec(&scope, "ghost", local("no-such-variant")))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{}", err.chain());
    assert!(err.to_string().contains("local image"), "{err}");

    // A missing network is NotFound too: at create on newer engines, at start on 20.10.
    let mut lost = spec(&scope, "lost", local("v1"));
    lost.network = Some(scope.network());
    let err = match rt.create_container(&lost).await {
        Err(e) => e,
        Ok(id) => rt.start_container(&id).await.unwrap_err(),
    };
    eprintln!("missing network: {}", err.chain());
    assert_eq!(err.kind(), ErrorKind::NotFound, "{}", err.chain());
}

#[tokio::test]
#[ignore = "needs docker engine"]
async fn ensure_network_is_idempotent_under_a_race() {
    let scope = Scope::new("network");
    let rt = runtime_or_skip!(scope);
    // Two runtimes share no lock: the race is the engine's to settle (and ours to tidy up).
    let rt2 = runtime_or_skip!(scope);
    let network = scope.network();
    let (a, b) = tokio::join!(rt.ensure_network(&network), rt2.ensure_network(&network));
    a.unwrap();
    b.unwrap();
    rt.ensure_network(&network).await.unwrap();
    let out = Command::new("docker")
        .args([
            "network",
            "ls",
            "-q",
            "--filter",
            &format!("name=^{network}$"),
        ])
        .output()
        .unwrap();
    let count = String::from_utf8_lossy(&out.stdout).lines().count();
    assert_eq!(count, 1, "one network named {network}");
}

/// Duplicates left by an earlier race (made here through the API, which allows them on Docker
/// 20.10) are removed whenever the network is looked up, not only right after a create.
#[tokio::test]
#[ignore = "needs docker engine"]
async fn duplicate_networks_converge_to_one_on_lookup() {
    let scope = Scope::new("dupnet");
    let rt = runtime_or_skip!(scope);
    let network = scope.network();
    let body = format!(
        r#"{{"Name":"{network}","CheckDuplicate":false,"Labels":{{"dev.skipper.scope":"{}"}}}}"#,
        scope.name
    );
    let socket = std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|h| h.strip_prefix("unix://").map(str::to_owned))
        .unwrap_or_else(|| "/var/run/docker.sock".into());
    let count = || {
        let out = Command::new("docker")
            .args([
                "network",
                "ls",
                "-q",
                "--filter",
                &format!("name=^{network}$"),
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    for _ in 0..2 {
        let ok = Command::new("curl")
            .args([
                "-sf",
                "--unix-socket",
                &socket,
                "-H",
                "Content-Type: application/json",
            ])
            .args(["-d", &body, "http://localhost/networks/create"])
            .output()
            .unwrap();
        assert!(
            ok.status.success(),
            "{}",
            String::from_utf8_lossy(&ok.stderr)
        );
    }
    if count() < 2 {
        eprintln!("this engine refuses duplicate network names; nothing to converge");
        return;
    }
    rt.ensure_network(&network).await.unwrap();
    assert_eq!(count(), 1, "one network named {network}");
}

/// Needs no engine: nothing answers at these addresses.
#[tokio::test]
async fn unreachable_engine_is_a_clear_error() {
    let err = DockerRuntime::connect_to("tcp://127.0.0.1:1")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transient, "{}", err.chain());
    let msg = err.to_string();
    assert!(
        msg.contains("cannot reach the Docker engine at tcp://127.0.0.1:1"),
        "{msg}"
    );
    assert!(msg.contains("is it running? set DOCKER_HOST"), "{msg}");

    let err = DockerRuntime::connect_to("unix:///nonexistent/docker.sock")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transient, "{}", err.chain());
    assert!(
        err.to_string()
            .contains("cannot reach the Docker engine at unix:///nonexistent/docker.sock"),
        "{err}"
    );

    let err = DockerRuntime::connect_to("ftp://127.0.0.1:1")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid, "{}", err.chain());
}
