//! The watcher against the in-memory fakes of skipper-core and a wiremock registry (one per
//! test). Real time; nothing here waits long: health probes of the fake runtime answer at
//! once.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use sha2::{Digest, Sha256};
use skipper_core::store::MemoryStore;
use skipper_core::testing::{Behavior, FakeProxy, FakeRuntime, RecordingNotifier};
use skipper_core::{
    DeployRequest, DeployStatus, DeploymentFilter, Engine, ErrorKind, Event, EventKind, ImageRef,
    Instance, InstanceFilter, Project, Stage, Store, Trigger,
};
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::{Change, Registries, WatchReport, Watcher, watch_key};
use crate::webhook::PushEvent;
use crate::{RegistryClient, RegistryConfig};

const REGISTRY: &str = "registry.test";
const WEB: &str = "team/web";

fn digest(seed: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(seed.as_bytes())))
}

/// What the fake registry serves per repository: tags (in listing order) with digests, or a
/// failing status for the tag listing.
#[derive(Clone)]
enum Repo {
    Tags(Vec<(String, String)>),
    Fail(u16, Option<u64>),
}

struct FakeRegistry {
    server: MockServer,
    repos: Mutex<BTreeMap<String, Repo>>,
}

impl FakeRegistry {
    async fn start() -> Self {
        Self {
            server: MockServer::start().await,
            repos: Mutex::new(BTreeMap::new()),
        }
    }

    /// Serve `repo` with these `(tag, generation)`s. Generation `a` is the digest the fake
    /// runtime reports when it pulls the tag (as a real pull reports the registry's); any
    /// other generation is a re-push.
    async fn serve(&self, repo: &str, tags: &[(&str, &str)]) {
        let tags = tags
            .iter()
            .map(|(t, g)| {
                let seed = match *g {
                    "a" => format!("{REGISTRY}/{repo}:{t}"),
                    g => format!("{REGISTRY}/{repo}:{t}@{g}"),
                };
                ((*t).to_owned(), digest(&seed))
            })
            .collect();
        self.set(repo, Repo::Tags(tags)).await;
    }

    async fn fail(&self, repo: &str, status: u16, retry_after: Option<u64>) {
        self.set(repo, Repo::Fail(status, retry_after)).await;
    }

    fn digest_of(&self, repo: &str, tag: &str) -> String {
        match self.repos.lock().unwrap().get(repo) {
            Some(Repo::Tags(tags)) => tags.iter().find(|(t, _)| t == tag).unwrap().1.clone(),
            _ => panic!("{repo} serves no tags"),
        }
    }

    async fn set(&self, repo: &str, content: Repo) {
        let all = {
            let mut repos = self.repos.lock().unwrap();
            repos.insert(repo.to_owned(), content);
            repos.clone()
        };
        self.server.reset().await;
        for (repo, content) in all {
            let list = Mock::given(method("GET")).and(path(format!("/v2/{repo}/tags/list")));
            match content {
                Repo::Fail(status, retry_after) => {
                    let mut resp = ResponseTemplate::new(status).set_body_json(json!({
                        "errors": [{"code": "UNAVAILABLE", "message": "try later"}]
                    }));
                    if let Some(secs) = retry_after {
                        resp = resp.insert_header("Retry-After", secs.to_string().as_str());
                    }
                    list.respond_with(resp).mount(&self.server).await;
                }
                Repo::Tags(tags) => {
                    let names: Vec<&str> = tags.iter().map(|(t, _)| t.as_str()).collect();
                    list.respond_with(
                        ResponseTemplate::new(200)
                            .set_body_json(json!({ "name": repo, "tags": names })),
                    )
                    .mount(&self.server)
                    .await;
                    for (tag, d) in &tags {
                        Mock::given(method("HEAD"))
                            .and(path(format!("/v2/{repo}/manifests/{tag}")))
                            .respond_with(
                                ResponseTemplate::new(200)
                                    .insert_header("Docker-Content-Digest", d.as_str())
                                    .insert_header(
                                        "Content-Type",
                                        "application/vnd.oci.image.manifest.v1+json",
                                    ),
                            )
                            .mount(&self.server)
                            .await;
                    }
                }
            }
        }
    }

    /// Requests received as `METHOD /path`.
    async fn requests(&self) -> Vec<String> {
        self.server
            .received_requests()
            .await
            .unwrap_or_default()
            .iter()
            .map(|r| format!("{} {}", r.method, r.url.path()))
            .collect()
    }
}

struct Harness {
    engine: Engine,
    store: Arc<MemoryStore>,
    rt: Arc<FakeRuntime>,
    notifier: Arc<RecordingNotifier>,
    registry: FakeRegistry,
    registries: Arc<Registries>,
}

fn image(repo: &str, tag: &str) -> String {
    format!("{REGISTRY}/{repo}:{tag}")
}

/// `web`: stage `dev` (dev-*, auto) and `rel` (v*, announce only).
fn web() -> Project {
    let mut p = Project::new("web", &format!("{REGISTRY}/{WEB}")).unwrap();
    p.port = Some(8080);
    p.health.path = Some("/health".into());
    // The unhealthy image fails its gate quickly.
    p.health.interval = Duration::from_millis(100);
    p.health.deadline = Duration::from_millis(500);
    let mut dev = Stage::new("dev");
    dev.tag_pattern = "dev-*".into();
    dev.auto_deploy = true;
    let mut rel = Stage::new("rel");
    rel.tag_pattern = "v*".into();
    p.with_stage(dev).with_stage(rel)
}

async fn harness() -> Harness {
    let registry = FakeRegistry::start().await;
    let rt = Arc::new(FakeRuntime::new());
    for repo in [WEB, "team/api", "team/lib"] {
        for tag in [
            "dev-1", "dev-2", "dev-3", "dev-4", "v1.0.0", "v1.1.0", "v1.2.0", "v1.9.0", "v1.10.0",
            "v2.0.0",
        ] {
            rt.add_image(&image(repo, tag), Behavior::Healthy);
        }
        rt.add_image(&image(repo, "dev-sick"), Behavior::Unhealthy);
    }
    let store = Arc::new(MemoryStore::new());
    let notifier = Arc::new(RecordingNotifier::new());
    let mut registries = Registries::new()
        .with_defaults(false)
        .with_docker_config(false);
    registries.insert_client(
        RegistryClient::new(RegistryConfig {
            url: Some(registry.server.uri().parse().unwrap()),
            registry: Some(REGISTRY.into()),
            ..RegistryConfig::default()
        })
        .unwrap(),
    );
    let registries = Arc::new(registries);
    let engine = Engine::builder(rt.clone(), store.clone())
        .proxy(Arc::new(FakeProxy::new()))
        .notifier(notifier.clone())
        .registry(registries.clone())
        .build();
    engine.put_project(&web()).await.unwrap();
    Harness {
        engine,
        store,
        rt,
        notifier,
        registry,
        registries,
    }
}

impl Harness {
    fn watcher(&self) -> Watcher {
        Watcher::new(self.engine.clone()).unwrap()
    }

    async fn deploy(&self, project: &str, stage: &str, repo: &str, tag: &str) {
        let d = self
            .engine
            .deploy(DeployRequest::new(
                project,
                stage,
                ImageRef::parse(&image(repo, tag)).unwrap(),
            ))
            .await
            .unwrap();
        assert_eq!(d.status, DeployStatus::Succeeded, "{d:?}");
    }

    async fn active(&self, project: &str, stage: &str) -> Option<Instance> {
        self.engine
            .instances(&InstanceFilter {
                project: Some(project.into()),
                stage: Some(stage.into()),
            })
            .await
            .unwrap()
            .into_iter()
            .find(|i| i.active)
    }

    fn announcements(&self) -> Vec<Event> {
        self.notifier
            .events()
            .into_iter()
            .filter(|e| e.kind == EventKind::NewVersionAvailable)
            .collect()
    }

    async fn seen(&self, repo: &str) -> BTreeMap<String, Option<String>> {
        self.store
            .list_seen_tags(&format!("{REGISTRY}/{repo}"))
            .await
            .unwrap()
            .into_iter()
            .map(|s| (s.tag, s.digest))
            .collect()
    }
}

fn deployed(report: &WatchReport) -> Vec<(String, String, String, Change)> {
    report
        .deployed
        .iter()
        .map(|d| (d.project.clone(), d.stage.clone(), d.tag.clone(), d.change))
        .collect()
}

fn row(p: &str, s: &str, t: &str, c: Change) -> (String, String, String, Change) {
    (p.into(), s.into(), t.into(), c)
}

#[tokio::test]
async fn first_poll_records_a_baseline_and_redeploys_nothing() {
    let h = harness().await;
    h.deploy("web", "dev", WEB, "dev-1").await;
    h.registry
        .serve(WEB, &[("dev-1", "a"), ("dev-2", "a"), ("v1.0.0", "a")])
        .await;

    let report = h.watcher().run_once().await.unwrap();

    assert!(report.deployed.is_empty(), "{report:#?}");
    assert!(report.announced.is_empty(), "{report:#?}");
    assert!(report.errors.is_empty(), "{report:#?}");
    assert_eq!(report.polled.len(), 1);
    assert!(report.polled[0].baseline);
    assert_eq!(report.polled[0].tags, 3);
    assert!(
        report
            .skipped
            .iter()
            .any(|s| s.project == "web" && s.reason.contains("baseline")),
        "{report:#?}"
    );
    assert!(h.announcements().is_empty());
    assert_eq!(h.active("web", "dev").await.unwrap().tag, "dev-1");
    let seen = h.seen(WEB).await;
    assert_eq!(seen.len(), 3);
    assert_eq!(seen["dev-2"], Some(h.registry.digest_of(WEB, "dev-2")));
    // Digests are resolved with HEAD: a poll never counts as a pull.
    let requests = h.registry.requests().await;
    assert!(
        requests
            .iter()
            .any(|r| r.starts_with("HEAD /v2/team/web/manifests/"))
    );
    assert!(
        !requests
            .iter()
            .any(|r| r.starts_with("GET /v2/team/web/manifests/")),
        "{requests:?}"
    );
}

#[tokio::test]
async fn first_poll_fills_an_empty_auto_stage_with_the_newest_tag() {
    let h = harness().await;
    h.registry
        .serve(WEB, &[("dev-1", "a"), ("dev-2", "a"), ("v1.0.0", "a")])
        .await;

    let report = h.watcher().run_once().await.unwrap();

    assert_eq!(
        deployed(&report),
        vec![row("web", "dev", "dev-2", Change::FirstRun)],
        "{report:#?}"
    );
    // The stage without auto_deploy is neither deployed nor told about old tags.
    assert!(report.announced.is_empty());
    assert!(h.active("web", "rel").await.is_none());
    assert_eq!(h.active("web", "dev").await.unwrap().tag, "dev-2");
}

#[tokio::test]
async fn a_new_tag_deploys_to_the_matching_auto_stage_only() {
    let h = harness().await;
    h.deploy("web", "dev", WEB, "dev-1").await;
    h.registry
        .serve(WEB, &[("dev-1", "a"), ("v1.0.0", "a")])
        .await;
    let watcher = h.watcher();
    watcher.run_once().await.unwrap();

    h.registry
        .serve(WEB, &[("dev-1", "a"), ("dev-2", "a"), ("v1.0.0", "a")])
        .await;
    let report = watcher.run_once().await.unwrap();

    assert_eq!(
        deployed(&report),
        vec![row("web", "dev", "dev-2", Change::New)],
        "{report:#?}"
    );
    assert!(report.announced.is_empty(), "dev-2 does not match rel's v*");
    assert_eq!(report.polled[0].new, 1);
    assert!(!report.polled[0].baseline);
    let active = h.active("web", "dev").await.unwrap();
    assert_eq!(active.tag, "dev-2");
    assert!(h.active("web", "rel").await.is_none());
    let history = h
        .engine
        .deployments(&DeploymentFilter {
            project: Some("web".into()),
            stage: Some("dev".into()),
            limit: Some(1),
        })
        .await
        .unwrap();
    assert_eq!(history[0].trigger, Trigger::Poll);
    assert_eq!(
        h.seen(WEB).await["dev-2"],
        Some(h.registry.digest_of(WEB, "dev-2"))
    );

    // Nothing new: nothing happens.
    let again = watcher.run_once().await.unwrap();
    assert!(again.is_quiet(), "{again:#?}");
}

#[tokio::test]
async fn a_repository_another_watcher_is_polling_is_left_to_it() {
    let h = harness().await;
    h.deploy("web", "dev", WEB, "dev-1").await;
    h.registry.serve(WEB, &[("dev-1", "a")]).await;
    let watcher = h.watcher();
    watcher.run_once().await.unwrap();
    h.registry
        .serve(WEB, &[("dev-1", "a"), ("dev-2", "a")])
        .await;

    // Another process holds the repository's watch lease (same store, other engine).
    let other = Engine::builder(h.rt.clone(), h.store.clone()).build();
    let repository = format!("{REGISTRY}/{WEB}");
    let held = other
        .lease(&watch_key(&repository), Duration::ZERO)
        .await
        .unwrap()
        .expect("the lease is free");
    let report = watcher.run_once().await.unwrap();
    assert!(report.deployed.is_empty(), "{report:#?}");
    assert!(
        report
            .skipped
            .iter()
            .any(|s| s.reason.contains("another watcher")),
        "{report:#?}"
    );
    assert_eq!(h.active("web", "dev").await.unwrap().tag, "dev-1");

    // Once it is released, the next round acts on dev-2.
    held.release().await;
    let report = watcher.run_once().await.unwrap();
    assert_eq!(
        deployed(&report),
        vec![row("web", "dev", "dev-2", Change::New)]
    );
}

#[tokio::test]
async fn a_stage_without_auto_deploy_gets_one_event_for_the_newest_version() {
    let h = harness().await;
    h.deploy("web", "dev", WEB, "dev-1").await;
    h.registry
        .serve(WEB, &[("dev-1", "a"), ("v1.0.0", "a")])
        .await;
    let watcher = h.watcher();
    watcher.run_once().await.unwrap();

    // Listed lexically, as registries do: semver decides which is newest.
    h.registry
        .serve(
            WEB,
            &[
                ("dev-1", "a"),
                ("v1.0.0", "a"),
                ("v1.10.0", "a"),
                ("v1.2.0", "a"),
                ("v1.9.0", "a"),
            ],
        )
        .await;
    let report = watcher.run_once().await.unwrap();

    assert!(report.deployed.is_empty(), "{report:#?}");
    assert_eq!(report.announced.len(), 1, "{report:#?}");
    let a = &report.announced[0];
    assert_eq!(
        (a.project.as_str(), a.stage.as_str(), a.tag.as_str()),
        ("web", "rel", "v1.10.0")
    );
    assert_eq!(a.change, Change::New);
    let events = h.announcements();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].stage, "rel");
    let shown = events[0].image.clone().unwrap();
    assert_eq!(shown.tag(), Some("v1.10.0"));
    assert_eq!(
        shown.digest(),
        Some(h.registry.digest_of(WEB, "v1.10.0").as_str())
    );
    assert!(h.active("web", "rel").await.is_none());
    // All three are remembered: they are not announced again.
    assert!(watcher.run_once().await.unwrap().is_quiet());
    assert_eq!(h.announcements().len(), 1);
}

#[tokio::test]
async fn a_repushed_tag_is_redeployed() {
    let h = harness().await;
    h.deploy("web", "dev", WEB, "dev-1").await;
    h.registry.serve(WEB, &[("dev-1", "a")]).await;
    let watcher = h.watcher();
    watcher.run_once().await.unwrap();
    h.registry
        .serve(WEB, &[("dev-1", "a"), ("dev-2", "a")])
        .await;
    let first = watcher.run_once().await.unwrap();
    assert_eq!(
        deployed(&first),
        vec![row("web", "dev", "dev-2", Change::New)]
    );
    let before = h.active("web", "dev").await.unwrap();

    // CI pushes dev-2 again: same tag, new manifest.
    h.registry
        .serve(WEB, &[("dev-1", "a"), ("dev-2", "b")])
        .await;
    let report = watcher.run_once().await.unwrap();

    assert_eq!(
        deployed(&report),
        vec![row("web", "dev", "dev-2", Change::Repushed)],
        "{report:#?}"
    );
    assert_eq!(report.polled[0].repushed, 1);
    let after = h.active("web", "dev").await.unwrap();
    assert_eq!(after.tag, "dev-2");
    assert_ne!(after.id, before.id, "a new instance replaced the old one");
    assert_eq!(
        h.seen(WEB).await["dev-2"],
        Some(h.registry.digest_of(WEB, "dev-2"))
    );
    assert!(watcher.run_once().await.unwrap().is_quiet());
}

#[tokio::test]
async fn a_restarted_watcher_does_not_redeploy() {
    let h = harness().await;
    h.registry
        .serve(WEB, &[("dev-1", "a"), ("v1.0.0", "a")])
        .await;
    let first = h.watcher().run_once().await.unwrap();
    assert_eq!(
        deployed(&first),
        vec![row("web", "dev", "dev-1", Change::FirstRun)]
    );
    h.registry
        .serve(WEB, &[("dev-1", "a"), ("dev-2", "a"), ("v1.0.0", "a")])
        .await;
    let second = h.watcher().run_once().await.unwrap();
    assert_eq!(
        deployed(&second),
        vec![row("web", "dev", "dev-2", Change::New)]
    );
    let pulls = h.rt.calls(skipper_core::testing::Op::Pull);

    // A new process: a new watcher (and engine) on the same store.
    let engine = Engine::builder(h.rt.clone(), h.store.clone())
        .proxy(Arc::new(FakeProxy::new()))
        .registry(h.registries.clone())
        .build();
    let restarted = Watcher::new(engine).unwrap();
    let report = restarted.run_once().await.unwrap();

    assert!(report.is_quiet(), "{report:#?}");
    assert!(!report.polled[0].baseline);
    assert_eq!(
        h.rt.calls(skipper_core::testing::Op::Pull),
        pulls,
        "nothing pulled"
    );
    assert_eq!(h.active("web", "dev").await.unwrap().tag, "dev-2");
}

#[tokio::test]
async fn errors_in_one_project_do_not_stop_the_others() {
    let h = harness().await;
    let mut api = Project::new("api", &format!("{REGISTRY}/team/broken")).unwrap();
    let mut dev = Stage::new("dev");
    dev.auto_deploy = true;
    api = api.with_stage(dev);
    h.engine.put_project(&api).await.unwrap();
    // A project whose registry has no client at all.
    let elsewhere = Project::new("elsewhere", "other.test/team/x")
        .unwrap()
        .with_stage(Stage::new("dev"));
    h.engine.put_project(&elsewhere).await.unwrap();
    h.deploy("web", "dev", WEB, "dev-1").await;
    h.registry.serve(WEB, &[("dev-1", "a")]).await;
    h.registry.fail("team/broken", 503, None).await;
    let watcher = h.watcher();
    let first = watcher.run_once().await.unwrap();
    let api_err = first.errors.iter().find(|e| e.project == "api").unwrap();
    assert_eq!(api_err.kind, ErrorKind::Transient);
    assert!(api_err.message.contains("503"), "{}", api_err.message);
    assert_eq!(api_err.stage, None);
    let other = first
        .errors
        .iter()
        .find(|e| e.project == "elsewhere")
        .unwrap();
    assert_eq!(other.kind, ErrorKind::Invalid);
    assert!(other.message.contains("other.test"), "{}", other.message);
    assert!(
        first
            .polled
            .iter()
            .any(|p| p.repository.ends_with(WEB) && p.baseline)
    );

    h.registry
        .serve(WEB, &[("dev-1", "a"), ("dev-2", "a")])
        .await;
    let report = watcher.run_once().await.unwrap();

    assert_eq!(
        deployed(&report),
        vec![row("web", "dev", "dev-2", Change::New)]
    );
    // The failing registry backs off; the others go on.
    assert!(
        report
            .skipped
            .iter()
            .any(|s| s.project == "api" && s.reason.contains("backing off")),
        "{report:#?}"
    );
    // Registry errors are not deploy failures.
    assert!(!report.deploy_failed());
    assert!(h.seen("team/broken").await.is_empty());
}

#[tokio::test]
async fn a_failing_registry_backs_off_as_long_as_it_asks() {
    let h = harness().await;
    h.registry.fail(WEB, 429, Some(120)).await;
    let watcher = h.watcher();

    let report = watcher.run_once().await.unwrap();
    let e = &report.errors[0];
    assert_eq!(
        (e.project.as_str(), e.kind),
        ("web", ErrorKind::RateLimited)
    );
    assert_eq!(e.retry_after_secs, Some(120));
    let asked = h.registry.requests().await.len();

    // The registry recovered, but it asked for two minutes: the next round leaves it alone.
    h.registry.serve(WEB, &[("dev-1", "a")]).await;
    let report = watcher.run_once().await.unwrap();
    assert!(report.errors.is_empty());
    assert!(report.polled.is_empty());
    let skipped = &report.skipped[0];
    assert!(
        skipped.reason.contains("backing off after 1 failed poll"),
        "{}",
        skipped.reason
    );
    assert!(
        skipped.reason.contains("next try in 1"),
        "{}",
        skipped.reason
    );
    assert_eq!(
        h.registry.requests().await.len(),
        0,
        "was {asked} before the reset"
    );
}

#[tokio::test]
async fn a_failed_deploy_rolls_back_and_is_not_retried() {
    let h = harness().await;
    h.deploy("web", "dev", WEB, "dev-1").await;
    h.registry.serve(WEB, &[("dev-1", "a")]).await;
    let watcher = h.watcher();
    watcher.run_once().await.unwrap();

    h.registry
        .serve(WEB, &[("dev-1", "a"), ("dev-sick", "a")])
        .await;
    let report = watcher.run_once().await.unwrap();

    assert!(report.deployed.is_empty(), "{report:#?}");
    assert_eq!(report.errors.len(), 1, "{report:#?}");
    assert!(
        report.errors[0].message.contains("rolled back"),
        "{report:#?}"
    );
    assert!(report.deploy_failed());
    assert_eq!(
        h.active("web", "dev").await.unwrap().tag,
        "dev-1",
        "rolled back"
    );
    assert!(watcher.run_once().await.unwrap().is_quiet(), "not retried");
}

#[tokio::test]
async fn a_failed_deploy_counts_as_a_failure_in_the_summary_and_the_json() {
    let h = harness().await;
    h.deploy("web", "dev", WEB, "dev-1").await;
    h.registry.serve(WEB, &[("dev-1", "a")]).await;
    let watcher = h.watcher();
    watcher.run_once().await.unwrap();
    h.registry
        .serve(WEB, &[("dev-1", "a"), ("dev-sick", "a")])
        .await;

    let report = watcher.run_once().await.unwrap();

    assert_eq!(
        report.summary(),
        "1 repository polled, 0 deployed, 0 announced, 0 skipped, 1 error",
        "{report:#?}"
    );
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["deployed"], json!([]), "{json:#}");
    let errors = json["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{json:#}");
    let e = &errors[0];
    assert_eq!(
        (&e["project"], &e["stage"], &e["tag"], &e["kind"]),
        (
            &json!("web"),
            &json!("dev"),
            &json!("dev-sick"),
            &json!("unhealthy")
        ),
        "{json:#}"
    );
    let history = h
        .engine
        .deployments(&DeploymentFilter {
            project: Some("web".into()),
            stage: Some("dev".into()),
            limit: Some(1),
        })
        .await
        .unwrap();
    assert_eq!(history[0].status, DeployStatus::Failed);
    assert_eq!(e["deployment_id"], json!(history[0].id), "{json:#}");
    assert!(report.deploy_failed());
}

#[tokio::test]
async fn a_deploy_that_could_not_start_is_tried_again_next_round() {
    let h = harness().await;
    h.deploy("web", "dev", WEB, "dev-1").await;
    h.registry.serve(WEB, &[("dev-1", "a")]).await;
    h.watcher().run_once().await.unwrap();
    h.registry
        .serve(WEB, &[("dev-1", "a"), ("dev-2", "a")])
        .await;

    // The process is shutting down: the engine takes no new work.
    h.engine.shutdown().await;
    let report = h.watcher().run_once().await.unwrap();
    assert!(report.deployed.is_empty());
    let e = &report.errors[0];
    assert_eq!(
        (e.stage.as_deref(), e.tag.as_deref()),
        (Some("dev"), Some("dev-2"))
    );
    assert!(report.deploy_failed());
    assert!(
        !h.seen(WEB).await.contains_key("dev-2"),
        "left for the next round"
    );

    let engine = Engine::builder(h.rt.clone(), h.store.clone())
        .proxy(Arc::new(FakeProxy::new()))
        .registry(h.registries.clone())
        .build();
    let report = Watcher::new(engine).unwrap().run_once().await.unwrap();
    assert_eq!(
        deployed(&report),
        vec![row("web", "dev", "dev-2", Change::New)]
    );
}

#[tokio::test]
async fn never_downgrades_and_skips_what_already_runs() {
    let h = harness().await;
    let mut p = web();
    p.stages.get_mut("rel").unwrap().auto_deploy = true;
    h.engine.put_project(&p).await.unwrap();
    h.deploy("web", "dev", WEB, "dev-1").await;
    h.deploy("web", "rel", WEB, "v2.0.0").await;
    h.registry
        .serve(WEB, &[("dev-1", "a"), ("v2.0.0", "a")])
        .await;
    let watcher = h.watcher();
    watcher.run_once().await.unwrap();

    // A hotfix of the old line, and a tag somebody deployed by hand already.
    h.deploy("web", "dev", WEB, "dev-2").await;
    h.registry
        .serve(
            WEB,
            &[
                ("dev-1", "a"),
                ("dev-2", "a"),
                ("v1.9.0", "a"),
                ("v2.0.0", "a"),
            ],
        )
        .await;
    let report = watcher.run_once().await.unwrap();

    assert!(report.deployed.is_empty(), "{report:#?}");
    let reasons: BTreeMap<&str, &str> = report
        .skipped
        .iter()
        .map(|s| (s.stage.as_deref().unwrap(), s.reason.as_str()))
        .collect();
    assert!(reasons["rel"].contains("older than v2.0.0"), "{reasons:?}");
    assert!(reasons["dev"].contains("already runs"), "{reasons:?}");
    assert_eq!(h.active("web", "rel").await.unwrap().tag, "v2.0.0");
}

#[tokio::test]
async fn promotion_follows_its_source_stage_in_the_same_round() {
    let h = harness().await;
    let mut lib = Project::new("lib", &format!("{REGISTRY}/team/lib")).unwrap();
    lib.port = Some(8080);
    lib.health.path = Some("/health".into());
    let mut rel = Stage::new("rel");
    rel.tag_pattern = "v*".into();
    rel.auto_deploy = true;
    // "prod" sorts before "rel", so name order would try it first and be refused.
    let mut prod = Stage::new("prod");
    prod.tag_pattern = "v*".into();
    prod.auto_deploy = true;
    prod.promote_from = Some("rel".into());
    h.engine
        .put_project(&lib.with_stage(rel).with_stage(prod))
        .await
        .unwrap();
    h.registry.serve(WEB, &[]).await;
    h.registry.serve("team/lib", &[("v1.0.0", "a")]).await;
    let watcher = h.watcher();
    let first = watcher.run_once().await.unwrap();
    assert_eq!(
        deployed(&first),
        vec![
            row("lib", "rel", "v1.0.0", Change::FirstRun),
            row("lib", "prod", "v1.0.0", Change::FirstRun),
        ],
        "{first:#?}"
    );

    h.registry
        .serve("team/lib", &[("v1.0.0", "a"), ("v1.1.0", "a")])
        .await;
    let report = watcher.run_once().await.unwrap();
    assert_eq!(
        deployed(&report),
        vec![
            row("lib", "rel", "v1.1.0", Change::New),
            row("lib", "prod", "v1.1.0", Change::New),
        ],
        "{report:#?}"
    );
}

#[tokio::test]
async fn a_push_deploys_to_matching_auto_stages_and_is_remembered() {
    let h = harness().await;
    h.deploy("web", "dev", WEB, "dev-1").await;
    h.registry.serve(WEB, &[("dev-1", "a")]).await;
    let watcher = h.watcher();
    watcher.run_once().await.unwrap();
    h.registry
        .serve(WEB, &[("dev-1", "a"), ("dev-3", "a"), ("v1.0.0", "a")])
        .await;

    let push = |tag: &str| PushEvent {
        image: ImageRef::parse(&image(WEB, tag))
            .unwrap()
            .with_digest(&h.registry.digest_of(WEB, tag))
            .unwrap(),
        source: crate::WebhookSource::Distribution,
    };
    let report = watcher.handle_push(&push("dev-3")).await.unwrap();
    assert_eq!(
        deployed(&report),
        vec![row("web", "dev", "dev-3", Change::Pushed)]
    );
    let history = h
        .engine
        .deployments(&DeploymentFilter {
            project: Some("web".into()),
            limit: Some(1),
            ..DeploymentFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(history[0].trigger, Trigger::Webhook);

    // Delivered twice: nothing happens.
    let again = watcher.handle_push(&push("dev-3")).await.unwrap();
    assert!(again.is_quiet(), "{again:#?}");
    assert!(
        again.skipped[0].reason.contains("already seen"),
        "{again:#?}"
    );

    // A version for the stage without auto_deploy: announced.
    let v = watcher.handle_push(&push("v1.0.0")).await.unwrap();
    assert!(v.deployed.is_empty());
    assert_eq!(v.announced.len(), 1);
    assert_eq!(v.announced[0].stage, "rel");

    // The poller sees both as known.
    let polled = watcher.run_once().await.unwrap();
    assert!(polled.is_quiet(), "{polled:#?}");

    // A repository nobody watches.
    let other = PushEvent {
        image: ImageRef::parse(&image("team/other", "v1")).unwrap(),
        source: crate::WebhookSource::Generic,
    };
    assert!(watcher.handle_push(&other).await.unwrap().is_quiet());
}

#[test]
fn a_watcher_needs_an_engine_with_a_registry() {
    let engine =
        Engine::builder(Arc::new(FakeRuntime::new()), Arc::new(MemoryStore::new())).build();
    let e = Watcher::new(engine).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Rejected);
    assert!(e.to_string().contains("EngineBuilder::registry"), "{e}");
}
