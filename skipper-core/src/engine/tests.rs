//! Engine tests against the in-memory fakes. Time is paused: health intervals, timeouts and
//! hung calls advance virtual time only, so nothing here waits for real.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::model::{DeployStatus, EventKind, InstanceState, RunSettings, Stage, Step, StepStatus};
use crate::store::MemoryStore;
use crate::testing::{
    Behavior, FakeProxy, FakeRuntime, Fault, FlakyStore, Op, RecordingNotifier, StoreOp,
};

const REPO: &str = "localhost:5000/team/web";

struct Harness {
    engine: Engine,
    rt: Arc<FakeRuntime>,
    proxy: Arc<FakeProxy>,
    store: Arc<FlakyStore>,
    notifier: Arc<RecordingNotifier>,
}

fn settings() -> EngineSettings {
    EngineSettings {
        domains: DomainScheme {
            domain: "example.com".into(),
            pattern: crate::subdomain::DEFAULT_PATTERN.into(),
        },
        lock_wait: Duration::from_secs(600),
        ..EngineSettings::default()
    }
}

fn project(max_instances: u32) -> Project {
    let mut p = Project::new("web", REPO).unwrap();
    p.port = Some(8080);
    p.health.path = Some("/health".into());
    p.health.deadline = Duration::from_secs(20);
    let mut dev = Stage::new("dev");
    dev.max_instances = max_instances;
    let mut rel = Stage::new("rel");
    rel.tag_pattern = "v*".into();
    let mut prod = Stage::new("prod");
    prod.tag_pattern = "v*".into();
    prod.confirm = true;
    prod.promote_from = Some("rel".into());
    prod.subdomain = Some("launcher".into());
    p.with_stage(dev).with_stage(rel).with_stage(prod)
}

async fn harness_with(max_instances: u32, proxy: bool) -> Harness {
    let rt = Arc::new(FakeRuntime::new());
    for tag in ["v1", "v2", "v3", "v4"] {
        rt.add_image(&format!("{REPO}:{tag}"), Behavior::Healthy);
    }
    rt.add_image(&format!("{REPO}:sick"), Behavior::Unhealthy);
    rt.add_image(&format!("{REPO}:crash"), Behavior::Crash);
    let fake_proxy = Arc::new(FakeProxy::new());
    let store = Arc::new(FlakyStore::new(Arc::new(MemoryStore::new())));
    let notifier = Arc::new(RecordingNotifier::new());
    let mut b = Engine::builder(rt.clone(), store.clone())
        .notifier(notifier.clone())
        .settings(settings());
    if proxy {
        b = b.proxy(fake_proxy.clone());
    }
    let engine = b.build();
    engine.put_project(&project(max_instances)).await.unwrap();
    Harness {
        engine,
        rt,
        proxy: fake_proxy,
        store,
        notifier,
    }
}

async fn harness(max_instances: u32) -> Harness {
    harness_with(max_instances, true).await
}

fn image(tag: &str) -> ImageRef {
    ImageRef::parse(&format!("{REPO}:{tag}")).unwrap()
}

impl Harness {
    async fn deploy(&self, stage: &str, tag: &str) -> Deployment {
        self.engine
            .deploy(DeployRequest::new("web", stage, image(tag)))
            .await
            .unwrap()
    }

    async fn instances(&self, stage: &str) -> Vec<Instance> {
        self.engine
            .instances(&InstanceFilter {
                project: Some("web".into()),
                stage: Some(stage.into()),
            })
            .await
            .unwrap()
    }

    async fn active(&self, stage: &str) -> Instance {
        let active: Vec<_> = self
            .instances(stage)
            .await
            .into_iter()
            .filter(|i| i.active)
            .collect();
        assert_eq!(active.len(), 1, "exactly one active instance: {active:?}");
        active.into_iter().next().unwrap()
    }

    /// The invariants after a failed deploy: `v` still runs and is routed; nothing else exists.
    async fn assert_only_serving(&self, v: &Instance) {
        let cid = v.container_id.clone().unwrap();
        assert_eq!(
            self.rt.running(),
            vec![cid.clone()],
            "only the old container runs"
        );
        assert_eq!(
            self.rt.containers().len(),
            1,
            "no orphan container: {:?}",
            self.rt.containers()
        );
        let routes = self.proxy.routes();
        let up = v.upstream.clone().unwrap();
        assert_eq!(
            routes["stage-dev-web.example.com"].upstream, up,
            "stage domain still routed"
        );
        assert_eq!(
            routes[&v.domain].upstream, up,
            "instance domain still routed"
        );
        assert_eq!(routes.len(), 2, "no orphan route: {routes:?}");
        let insts = self.instances("dev").await;
        assert_eq!(insts.len(), 1, "no orphan instance record: {insts:?}");
        assert!(insts[0].active && insts[0].state == InstanceState::Running);
        assert_eq!(insts[0].id, v.id);
    }
}

#[tokio::test(start_paused = true)]
async fn deploy_routes_and_notifies() {
    let h = harness(1).await;
    let d = h.deploy("dev", "v1").await;
    assert_eq!(d.status, DeployStatus::Succeeded, "{d:?}");
    assert!(d.digest.as_deref().unwrap().starts_with("sha256:"));
    let i = h.active("dev").await;
    assert_eq!(i.tag, "v1");
    assert_eq!(i.domain, "stage-dev-web-v1.example.com");
    assert_eq!(i.container_name, format!("skipper-web-dev-{}", i.id));
    assert!(i.address.as_deref().unwrap().starts_with("127.0.0.1:"));
    let routes = h.proxy.routes();
    assert_eq!(
        routes["stage-dev-web.example.com"].upstream.host,
        i.container_name
    );
    assert_eq!(routes["stage-dev-web-v1.example.com"].upstream.port, 8080);
    let c = &h.rt.containers()[0];
    assert_eq!(c.labels[labels::PROJECT], "web");
    assert_eq!(c.labels[labels::STAGE], "dev");
    assert_eq!(c.labels[labels::TAG], "v1");
    assert_eq!(c.labels[labels::INSTANCE], i.id);
    assert_eq!(c.labels[labels::DEPLOYMENT], d.id);
    assert_eq!(h.rt.networks(), vec!["skipper-net".to_owned()]);
    let ev = h.notifier.events();
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].kind, EventKind::DeploySucceeded);
    assert_eq!(
        ev[0].url.as_deref(),
        Some("http://stage-dev-web.example.com")
    );
    let steps: Vec<Step> = d.steps.iter().map(|s| s.step).collect();
    assert_eq!(
        steps,
        Step::ALL.to_vec(),
        "one log entry per step, in order"
    );
}

#[tokio::test(start_paused = true)]
async fn blue_green_replaces_after_health() {
    let h = harness(1).await;
    h.deploy("dev", "v1").await;
    let v1 = h.active("dev").await;
    let d = h.deploy("dev", "v2").await;
    assert_eq!(d.status, DeployStatus::Succeeded);
    assert_eq!(d.replaced, vec![v1.id.clone()]);
    assert_eq!(d.previous_instance.as_deref(), Some(v1.id.as_str()));
    let v2 = h.active("dev").await;
    assert_eq!(v2.tag, "v2");
    assert_eq!(h.instances("dev").await.len(), 1);
    assert_eq!(h.rt.running(), vec![v2.container_id.clone().unwrap()]);
    assert_eq!(h.rt.containers().len(), 1, "the old container is removed");
    let routes = h.proxy.routes();
    assert_eq!(
        routes["stage-dev-web.example.com"].upstream,
        v2.upstream.clone().unwrap()
    );
    assert!(
        !routes.contains_key("stage-dev-web-v1.example.com"),
        "retired routes removed"
    );
    assert!(routes.contains_key("stage-dev-web-v2.example.com"));
}

#[tokio::test(start_paused = true)]
async fn max_instances_retires_the_oldest() {
    let h = harness(3).await;
    for tag in ["v1", "v2", "v3"] {
        assert_eq!(h.deploy("dev", tag).await.status, DeployStatus::Succeeded);
    }
    let before = h.instances("dev").await;
    assert_eq!(before.len(), 3);
    assert_eq!(h.rt.running().len(), 3);
    let d = h.deploy("dev", "v4").await;
    let oldest = before.iter().find(|i| i.tag == "v1").unwrap();
    assert_eq!(d.replaced, vec![oldest.id.clone()]);
    let tags: Vec<String> = h
        .instances("dev")
        .await
        .into_iter()
        .map(|i| i.tag)
        .collect();
    assert_eq!(tags, vec!["v2", "v3", "v4"]);
    assert_eq!(h.active("dev").await.tag, "v4");
    let routes = h.proxy.routes();
    for t in ["v2", "v3", "v4"] {
        assert!(routes.contains_key(&format!("stage-dev-web-{t}.example.com")));
    }
    assert!(!routes.contains_key("stage-dev-web-v1.example.com"));
}

#[tokio::test(start_paused = true)]
async fn policy_refusals_change_nothing() {
    let h = harness(1).await;
    let refused = |r: Result<Deployment>| {
        let e = r.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Rejected, "{e}");
        e.to_string()
    };
    // Pattern.
    let msg = refused(
        h.engine
            .deploy(DeployRequest::new("web", "rel", image("sick")))
            .await,
    );
    assert!(
        msg.contains("does not match") && msg.contains("\"v*\""),
        "{msg}"
    );
    // Another repository.
    let other = ImageRef::parse("localhost:5000/team/other:v1").unwrap();
    refused(
        h.engine
            .deploy(DeployRequest::new("web", "dev", other))
            .await,
    );
    // Promotion: v1 never ran in rel.
    let msg = refused(
        h.engine
            .deploy(DeployRequest::new("web", "prod", image("v1")).confirmed())
            .await,
    );
    assert!(msg.contains("has not run successfully in \"rel\""), "{msg}");
    assert!(h.rt.containers().is_empty() && h.proxy.routes().is_empty());
    assert!(
        h.engine
            .deployments(&DeploymentFilter::default())
            .await
            .unwrap()
            .is_empty()
    );

    // After it runs in rel: confirmation is still needed, then it deploys to the custom domain.
    h.deploy("rel", "v1").await;
    let msg = refused(
        h.engine
            .deploy(DeployRequest::new("web", "prod", image("v1")))
            .await,
    );
    assert!(msg.contains("confirmation"), "{msg}");
    let d = h
        .engine
        .deploy(DeployRequest::new("web", "prod", image("v1")).confirmed())
        .await
        .unwrap();
    assert_eq!(d.status, DeployStatus::Succeeded);
    assert!(h.proxy.routes().contains_key("launcher.example.com"));
    // Unknown project and stage.
    let e = h
        .engine
        .deploy(DeployRequest::new("nope", "dev", image("v1")))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    let e = h
        .engine
        .deploy(DeployRequest::new("web", "qa", image("v1")))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
}

/// How to make one step fail: the backend call each step makes, faulted. The tables below take
/// their steps from `Step::ALL`, and this match is exhaustive, so a new step without a fault
/// does not compile.
fn inject(h: &Harness, step: Step, fault: Fault) {
    match step {
        Step::Validate => h.store.inject(StoreOp::PutDeploymentStarted, fault),
        Step::Pull => h.rt.inject(Op::Pull, fault),
        Step::Create => h.rt.inject(Op::Create, fault),
        Step::Start => h.rt.inject(Op::Start, fault),
        Step::Health => {
            // Every probe fails (error) or never answers (timeout) until the deadline; a crash
            // needs only the first.
            let n = if fault == Fault::Crash { 1 } else { 100 };
            for _ in 0..n {
                h.rt.inject(Op::Probe, fault);
            }
        }
        Step::Route => h.proxy.fail_ensure("stage-dev-web-v2.example.com", fault),
        Step::Switch => h.proxy.fail_ensure("stage-dev-web.example.com", fault),
        Step::Commit => h.store.inject(StoreOp::Commit, fault),
        Step::Retire => h.rt.inject(Op::Stop, fault),
        Step::Record => h.store.inject(StoreOp::PutDeploymentSucceeded, fault),
    }
}

/// Whether `step` comes after the commit point (a failure there rolls forward).
fn after_commit(step: Step) -> bool {
    step > Step::Commit
}

impl Harness {
    /// The invariants of a settled stage: exactly one instance, of `tag`, active and running,
    /// routed on both domains; no other container or route; no deployment in progress.
    async fn assert_settled_on(&self, tag: &str, case: &str) {
        let insts = self.instances("dev").await;
        assert_eq!(insts.len(), 1, "{case}: one instance: {insts:#?}");
        let i = &insts[0];
        assert!(
            i.active && i.state == InstanceState::Running && i.tag == tag,
            "{case}: {i:#?}"
        );
        let cid = i.container_id.clone().unwrap();
        assert_eq!(
            self.rt.running(),
            vec![cid],
            "{case}: only its container runs"
        );
        assert_eq!(
            self.rt.containers().len(),
            1,
            "{case}: no unknown container"
        );
        let routes = self.proxy.routes();
        let up = i.upstream.clone().unwrap();
        assert_eq!(routes.len(), 2, "{case}: no orphan route: {routes:?}");
        assert_eq!(routes["stage-dev-web.example.com"].upstream, up, "{case}");
        assert_eq!(routes[&i.domain].upstream, up, "{case}");
        let open: Vec<_> = self
            .engine
            .deployments(&DeploymentFilter::default())
            .await
            .unwrap()
            .into_iter()
            .filter(|d| d.status == DeployStatus::InProgress)
            .collect();
        assert!(
            open.is_empty(),
            "{case}: deployments in progress: {open:#?}"
        );
    }

    /// A new engine on the same store, runtime and proxy: the next process.
    fn next_engine(&self) -> Engine {
        Engine::builder(self.rt.clone(), self.store.clone())
            .proxy(self.proxy.clone())
            .notifier(self.notifier.clone())
            .settings(settings())
            .build()
    }
}

/// The fault-injection table: every step of `Step::ALL`, failing with an error, a hang
/// (timeout) and an error after the call took effect. Before the commit point the old version
/// keeps running and routed, nothing is orphaned, and the failure is recorded with its step and
/// cause; after it the new version serves and reconcile finishes what was left.
#[tokio::test(start_paused = true)]
async fn fault_table() {
    let faults = [
        Fault::Error(ErrorKind::Transient),
        Fault::Hang,
        Fault::AppliedThenError(ErrorKind::Transient),
    ];
    for step in Step::ALL {
        for fault in faults {
            let case = format!("{step} / {fault:?}");
            let h = harness(1).await;
            assert_eq!(h.deploy("dev", "v1").await.status, DeployStatus::Succeeded);
            let v1 = h.active("dev").await;
            inject(&h, step, fault);
            let result = h
                .engine
                .deploy(DeployRequest::new("web", "dev", image("v2")))
                .await;
            let expected_kind = match (step, fault) {
                (Step::Health, _) => ErrorKind::Unhealthy,
                (_, Fault::Hang) => ErrorKind::Timeout,
                (_, Fault::Error(k) | Fault::AppliedThenError(k)) => k,
                (_, Fault::Crash) => unreachable!(),
            };
            let landed = matches!(fault, Fault::AppliedThenError(_));
            if step == Step::Validate {
                // The first record failed: nothing was attempted.
                let e = result.expect_err(&case);
                assert_eq!(e.kind(), expected_kind, "{case}: {e}");
                h.assert_only_serving(&v1).await;
            } else if after_commit(step) || (step == Step::Commit && landed) {
                // Past the commit point: the new version is live; no rollback.
                let d = result.expect(&case);
                assert_eq!(d.status, DeployStatus::Succeeded, "{case}: {d:#?}");
                assert_eq!(h.active("dev").await.tag, "v2", "{case}");
                assert_eq!(
                    h.proxy.route("stage-dev-web.example.com").unwrap().upstream,
                    h.active("dev").await.upstream.unwrap(),
                    "{case}"
                );
                if step != Step::Commit {
                    assert!(
                        d.steps
                            .iter()
                            .any(|s| s.step == step && s.status == crate::model::StepStatus::Failed),
                        "{case}: the failure is in the step log: {:#?}",
                        d.steps
                    );
                }
                assert_eq!(
                    h.notifier.events().pop().unwrap().kind,
                    EventKind::DeploySucceeded,
                    "{case}"
                );
            } else {
                let d = result.expect(&case);
                assert_eq!(d.status, DeployStatus::Failed, "{case}: {d:#?}");
                let err = d
                    .error
                    .clone()
                    .unwrap_or_else(|| panic!("{case}: no error recorded"));
                assert_eq!(err.step, step, "{case}: {err:?}");
                assert_eq!(err.kind, expected_kind, "{case}: {err:?}");
                assert!(!err.message.is_empty());
                h.assert_only_serving(&v1).await;
                // Recorded as failed in the store, with its step log.
                let stored = h.store.get_deployment(&d.id).await.unwrap().unwrap();
                assert_eq!(stored.status, DeployStatus::Failed, "{case}");
                assert!(
                    stored
                        .steps
                        .iter()
                        .any(|s| s.step == step && s.status == crate::model::StepStatus::Failed),
                    "{case}"
                );
                // Told.
                let last = h.notifier.events().pop().unwrap();
                assert_eq!(last.kind, EventKind::DeployFailed, "{case}");
                assert!(
                    last.message.contains(step.as_str()),
                    "{case}: {}",
                    last.message
                );
            }
            // One reconcile settles everything, on the version the commit point chose.
            h.rt.clear_faults();
            h.store.clear_faults();
            h.engine.reconcile().await.unwrap();
            let serving = if after_commit(step) || (step == Step::Commit && landed) {
                "v2"
            } else {
                "v1"
            };
            h.assert_settled_on(serving, &case).await;
            // And the stage still takes a good deploy afterwards.
            assert_eq!(
                h.deploy("dev", "v3").await.status,
                DeployStatus::Succeeded,
                "{case}"
            );
            h.assert_settled_on("v3", &case).await;
        }
    }
}

/// The crash table: the process dies at every step of `Step::ALL` (the task aborted where the
/// fault was reached, as `kill -9` would stop it). A new engine over the same store, runtime
/// and proxy repairs it with one reconcile: exactly one serving instance, the old one before
/// the commit point and the new one after, no unknown container, no deploy in progress.
#[tokio::test(start_paused = true)]
async fn crash_table() {
    for step in Step::ALL {
        let case = format!("crash at {step}");
        let h = harness(1).await;
        assert_eq!(h.deploy("dev", "v1").await.status, DeployStatus::Succeeded);
        inject(&h, step, Fault::Crash);
        let engine = h.engine.clone();
        let task = tokio::spawn(async move {
            engine
                .deploy_inner(DeployRequest::new("web", "dev", image("v2")))
                .await
        });
        let mut waited = 0;
        while !(h.rt.crashed() || h.proxy.crashed() || h.store.crashed()) {
            assert!(waited < 10_000, "{case}: the crash point was never reached");
            tokio::time::sleep(Duration::from_millis(10)).await;
            waited += 1;
        }
        task.abort();
        let _ = task.await;
        let next = h.next_engine();
        next.reconcile().await.unwrap();
        let serving = if after_commit(step) { "v2" } else { "v1" };
        h.assert_settled_on(serving, &case).await;
        // The next process deploys normally.
        let d = next
            .deploy(DeployRequest::new("web", "dev", image("v3")))
            .await
            .unwrap();
        assert_eq!(d.status, DeployStatus::Succeeded, "{case}: {d:#?}");
        h.assert_settled_on("v3", &case).await;
    }
}

#[tokio::test(start_paused = true)]
async fn unhealthy_and_crashing_images_roll_back_with_logs() {
    let h = harness(1).await;
    h.deploy("dev", "v1").await;
    let v1 = h.active("dev").await;

    let d = h.deploy("dev", "sick").await;
    let e = d.error.unwrap();
    assert_eq!((e.step, e.kind), (Step::Health, ErrorKind::Unhealthy));
    assert!(
        e.message.contains("GET") && e.message.contains("503"),
        "{}",
        e.message
    );
    assert!(
        e.logs.iter().any(|l| l.contains("database unreachable")),
        "{:?}",
        e.logs
    );
    h.assert_only_serving(&v1).await;

    let d = h.deploy("dev", "crash").await;
    let e = d.error.unwrap();
    assert_eq!((e.step, e.kind), (Step::Health, ErrorKind::Unhealthy));
    assert!(e.message.contains("exited with code 3"), "{}", e.message);
    assert!(e.logs.iter().any(|l| l.contains("fatal")), "{:?}", e.logs);
    h.assert_only_serving(&v1).await;
}

#[tokio::test(start_paused = true)]
async fn docker_healthcheck_and_settle_gates() {
    let h = harness_with(1, false).await;
    let mut p = project(1);
    p.health.path = None;
    h.engine.put_project(&p).await.unwrap();
    // An image with its own HEALTHCHECK.
    let img = image("hc");
    let mut meta = crate::backend::ImageMetadata {
        exposed_ports: vec![8080],
        healthcheck: Some(crate::testing::docker_healthcheck()),
        ..Default::default()
    };
    h.rt.add_image_with(&img, Behavior::Healthy, meta.clone(), None);
    let d = h.deploy("dev", "hc").await;
    assert_eq!(d.status, DeployStatus::Succeeded);
    assert!(
        d.steps.iter().any(|s| s.message.contains("HEALTHCHECK")),
        "{:?}",
        d.steps
    );
    let bad = image("hc-bad");
    h.rt.add_image_with(&bad, Behavior::Unhealthy, meta.clone(), None);
    let d = h.deploy("dev", "hc-bad").await;
    assert!(
        d.error
            .unwrap()
            .message
            .contains("HEALTHCHECK reports unhealthy")
    );
    // Neither: it must stay up through the settle period.
    meta.healthcheck = None;
    let plain = image("plain");
    h.rt.add_image_with(&plain, Behavior::Healthy, meta, None);
    let d = h.deploy("dev", "plain").await;
    assert_eq!(d.status, DeployStatus::Succeeded);
    assert!(d.steps.iter().any(|s| s.message.contains("staying up")));
    // Without a proxy nothing is routed, and the URL is the published address.
    assert!(
        d.steps
            .iter()
            .any(|s| s.step == Step::Switch && s.message == "no proxy configured")
    );
    let ev = h.notifier.events().pop().unwrap();
    assert!(ev.url.unwrap().starts_with("http://127.0.0.1:"));
}

#[tokio::test(start_paused = true)]
async fn a_failing_notifier_never_fails_a_deploy() {
    let h = harness(1).await;
    h.notifier.fail_with(Fault::Error(ErrorKind::Transient));
    assert_eq!(h.deploy("dev", "v1").await.status, DeployStatus::Succeeded);
    h.notifier.fail_with(Fault::Hang);
    assert_eq!(h.deploy("dev", "v2").await.status, DeployStatus::Succeeded);
    assert_eq!(h.notifier.events().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn pull_failures_leave_nothing_behind() {
    let h = harness(1).await;
    let d = h.deploy("dev", "missing-tag").await;
    let e = d.error.unwrap();
    assert_eq!((e.step, e.kind), (Step::Pull, ErrorKind::NotFound));
    assert!(h.rt.containers().is_empty() && h.proxy.routes().is_empty());
    assert!(h.instances("dev").await.is_empty());

    // A private image: no credentials → unauthorized; with them → deployed.
    let private = image("private");
    h.rt.add_image_with(
        &private,
        Behavior::Healthy,
        crate::backend::ImageMetadata {
            exposed_ports: vec![8080],
            ..Default::default()
        },
        Some(("ci".into(), "s3cret".into())),
    );
    let d = h.deploy("dev", "private").await;
    assert_eq!(d.error.unwrap().kind, ErrorKind::Unauthorized);
    let mut p = project(1);
    p.registry = Some("gitea".into());
    h.engine.put_project(&p).await.unwrap();
    let engine = Engine::builder(h.rt.clone(), h.store.clone())
        .settings(settings())
        .credentials(
            "gitea",
            crate::backend::Credentials {
                username: "ci".into(),
                secret: "s3cret".to_owned().into(),
            },
        )
        .build();
    let d = engine
        .deploy(DeployRequest::new("web", "dev", private))
        .await
        .unwrap();
    assert_eq!(d.status, DeployStatus::Succeeded, "{:?}", d.error);
}

#[tokio::test(start_paused = true)]
async fn rollback_redeploys_or_switches() {
    // max 1: the old container is gone, so rollback deploys v1 again.
    let h = harness(1).await;
    h.deploy("dev", "v1").await;
    h.deploy("dev", "v2").await;
    let d = h.engine.rollback("web", "dev").await.unwrap();
    assert_eq!(d.status, DeployStatus::Succeeded);
    assert_eq!(d.trigger, Trigger::Rollback);
    assert_eq!(h.active("dev").await.tag, "v1");
    assert_eq!(h.rt.running().len(), 1);
    assert!(d.image.digest().is_some(), "rollback pins the digest");

    // max 2: v1 still runs; rollback just switches traffic, and the next rollback goes forward.
    let h = harness(2).await;
    h.deploy("dev", "v1").await;
    let v1 = h.active("dev").await;
    h.deploy("dev", "v2").await;
    let containers = h.rt.calls(Op::Create);
    let d = h.engine.rollback("web", "dev").await.unwrap();
    assert_eq!(d.status, DeployStatus::Succeeded);
    assert_eq!(h.rt.calls(Op::Create), containers, "no new container");
    assert_eq!(h.active("dev").await.id, v1.id);
    assert_eq!(
        h.proxy.route("stage-dev-web.example.com").unwrap().upstream,
        v1.upstream.unwrap()
    );
    assert_eq!(h.rt.running().len(), 2);

    // Nothing to roll back to.
    let h = harness(1).await;
    h.deploy("dev", "v1").await;
    assert_eq!(
        h.engine.rollback("web", "dev").await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
}

#[tokio::test(start_paused = true)]
async fn instance_operations() {
    let h = harness(2).await;
    h.deploy("dev", "v1").await;
    h.deploy("dev", "v2").await;
    let v2 = h.active("dev").await;
    let short = &v2.id[..6];
    let i = h.engine.stop_instance(short).await.unwrap();
    assert_eq!(i.state, InstanceState::Stopped);
    assert_eq!(h.rt.running().len(), 1);
    assert_eq!(
        h.engine.start_instance(&v2.id).await.unwrap().state,
        InstanceState::Running
    );
    assert_eq!(
        h.engine.restart_instance(&v2.id).await.unwrap().state,
        InstanceState::Running
    );
    // Removing the active instance hands the stage's domain to the other one.
    h.engine.remove_instance(&v2.id).await.unwrap();
    let v1 = h.active("dev").await;
    assert_eq!(v1.tag, "v1");
    let routes = h.proxy.routes();
    assert_eq!(
        routes["stage-dev-web.example.com"].upstream,
        v1.upstream.clone().unwrap()
    );
    assert!(!routes.contains_key(&v2.domain));
    h.engine.remove_instance(&v1.id).await.unwrap();
    assert!(h.proxy.routes().is_empty() && h.rt.containers().is_empty());
    assert_eq!(
        h.engine.remove_instance(&v1.id).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    let events: Vec<EventKind> = h.notifier.events().iter().map(|e| e.kind).collect();
    assert_eq!(
        events
            .iter()
            .filter(|k| **k == EventKind::InstanceRemoved)
            .count(),
        2
    );
}

#[tokio::test(start_paused = true)]
async fn reconcile_marks_missing_and_removes_orphans() {
    // A vanished active instance is reported on every pass while it lasts (8.4c, 9.11).
    let h = harness(1).await;
    h.deploy("dev", "v1").await;
    let v1 = h.active("dev").await;
    // Removed behind Skipper's back.
    h.rt.remove_behind_back(v1.container_id.as_deref().unwrap());
    let r = h.engine.reconcile().await.unwrap();
    assert_eq!(r.missing, vec![v1.id.clone()]);
    assert_eq!(h.instances("dev").await[0].state, InstanceState::Missing);
    // A second reconcile repairs nothing (it is idempotent), but the stage is still down: it
    // says so again, and notifies again.
    let again = h.engine.reconcile().await.unwrap();
    assert!(again.is_clean(), "{again:?}");
    assert_eq!(again.missing, vec![v1.id.clone()], "{again:?}");
    let missing: Vec<_> = h
        .notifier
        .events()
        .into_iter()
        .filter(|e| e.kind == EventKind::InstanceMissing)
        .collect();
    assert_eq!(missing.len(), 2, "one event per pass: {missing:#?}");
    assert_eq!(missing[1].instance_id.as_deref(), Some(v1.id.as_str()));
    assert!(
        missing[1].message.contains("is gone"),
        "{}",
        missing[1].message
    );
    // The next deploy replaces the missing instance.
    assert_eq!(h.deploy("dev", "v2").await.status, DeployStatus::Succeeded);
    assert_eq!(h.instances("dev").await.len(), 1);

    // A labelled container of a project the store does not know is an orphan.
    let spec = crate::backend::ContainerSpec {
        name: "skipper-ghost-dev-x".into(),
        image: image("v1"),
        env: Default::default(),
        labels: [
            (labels::MANAGED.to_owned(), "true".to_owned()),
            (labels::PROJECT.to_owned(), "ghost".to_owned()),
            (labels::STAGE.to_owned(), "dev".to_owned()),
            (labels::STORE.to_owned(), h.engine.store_id().await.unwrap()),
        ]
        .into(),
        volumes: vec![],
        network: None,
        port: Some(8080),
        publish: true,
    };
    h.rt.create_container(&spec).await.unwrap();
    // One of no store this one knows (made before stores had ids, by another store): foreign.
    let mut stranger = spec.clone();
    stranger.name = "skipper-ghost-dev-y".into();
    stranger.labels.remove(labels::STORE);
    h.rt.create_container(&stranger).await.unwrap();
    let r = h.engine.reconcile().await.unwrap();
    assert_eq!(r.removed_containers, vec!["skipper-ghost-dev-x".to_owned()]);
    assert_eq!(r.foreign, vec!["skipper-ghost-dev-y".to_owned()]);
    assert_eq!(h.rt.containers().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn reconcile_adopts_a_container_the_store_lost() {
    let h = harness(1).await;
    h.deploy("dev", "v1").await;
    let v1 = h.active("dev").await;
    h.store.delete_instance(&v1.id).await.unwrap();
    let r = h.engine.reconcile().await.unwrap();
    assert_eq!(r.adopted, vec![v1.id.clone()]);
    let adopted = h.active("dev").await;
    assert_eq!(
        (adopted.tag.as_str(), adopted.container_id.as_ref()),
        ("v1", v1.container_id.as_ref())
    );
}

/// A process killed mid-deploy (the future dropped while the health check runs, as kill -9
/// would stop it) leaves a state the next engine repairs: the new container removed, the old
/// version running and routed, the deployment settled as failed.
#[tokio::test(start_paused = true)]
async fn killed_mid_health_check_is_repaired() {
    let h = harness(1).await;
    h.deploy("dev", "v1").await;
    let v1 = h.active("dev").await;
    for _ in 0..1000 {
        h.rt.inject(Op::Probe, Fault::Hang);
    }
    let engine = h.engine.clone();
    let task = tokio::spawn(async move {
        engine
            .deploy_inner(DeployRequest::new("web", "dev", image("v2")))
            .await
    });
    // Wait (in virtual time) until the new container exists, then kill.
    while h.rt.containers().len() < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    task.abort();
    let _ = task.await;
    assert_eq!(
        h.rt.containers().len(),
        2,
        "the kill left the new container behind"
    );

    // A fresh engine (the next process) on the same backends.
    let next = Engine::builder(h.rt.clone(), h.store.clone())
        .proxy(h.proxy.clone())
        .settings(EngineSettings {
            lock_ttl: Duration::from_secs(5),
            ..settings()
        })
        .build();
    tokio::time::sleep(Duration::from_secs(31)).await; // the dead holder's lease expires
    let r = next.reconcile().await.unwrap();
    assert_eq!(r.interrupted.len(), 1, "{r:?}");
    assert_eq!(r.removed_containers.len(), 1, "{r:?}");
    h.assert_only_serving(&v1).await;
    let d = next
        .deployments(&DeploymentFilter::default())
        .await
        .unwrap();
    let killed = d.iter().find(|d| d.tag == "v2").unwrap();
    assert_eq!(killed.status, DeployStatus::Failed);
    assert!(
        killed
            .error
            .as_ref()
            .unwrap()
            .message
            .contains("interrupted")
    );
}

/// Killed after the commit point (the new instance recorded active) but before the deployment
/// was marked done: reconcile completes it instead.
#[tokio::test(start_paused = true)]
async fn killed_after_commit_is_completed() {
    let h = harness(1).await;
    h.deploy("dev", "v1").await;
    h.store.inject(StoreOp::PutDeploymentSucceeded, Fault::Hang);
    let engine = h.engine.clone();
    let task = tokio::spawn(async move {
        engine
            .deploy_inner(DeployRequest::new("web", "dev", image("v2")))
            .await
    });
    tokio::time::sleep(Duration::from_secs(5)).await;
    task.abort();
    let _ = task.await;
    tokio::time::sleep(Duration::from_secs(31)).await;
    let r = h.engine.reconcile().await.unwrap();
    assert_eq!(r.interrupted.len(), 1, "{r:?}");
    let v2 = h.active("dev").await;
    assert_eq!(v2.tag, "v2");
    assert_eq!(
        h.instances("dev").await.len(),
        1,
        "the retired v1 record is gone"
    );
    assert_eq!(h.rt.running(), vec![v2.container_id.clone().unwrap()]);
    assert_eq!(h.rt.containers().len(), 1);
    let d = h
        .engine
        .deployments(&DeploymentFilter::default())
        .await
        .unwrap();
    assert_eq!(d[0].status, DeployStatus::Succeeded, "{d:#?}");
}

#[tokio::test(start_paused = true)]
async fn concurrent_deploys_on_one_stage_are_serialised() {
    let h = harness(1).await;
    h.deploy("dev", "v1").await;
    let (a, b, c) = tokio::join!(
        h.engine
            .deploy(DeployRequest::new("web", "dev", image("v2"))),
        h.engine
            .deploy(DeployRequest::new("web", "dev", image("v3"))),
        h.engine
            .deploy(DeployRequest::new("web", "rel", image("v4"))),
    );
    for d in [a.unwrap(), b.unwrap(), c.unwrap()] {
        assert_eq!(d.status, DeployStatus::Succeeded, "{:?}", d.error);
    }
    let insts = h.instances("dev").await;
    assert_eq!(insts.len(), 1, "{insts:?}");
    let active = h.active("dev").await;
    assert_eq!(
        h.proxy.route("stage-dev-web.example.com").unwrap().upstream,
        active.upstream.unwrap()
    );
    assert_eq!(h.rt.running().len(), 2, "one per stage");
}

#[tokio::test(start_paused = true)]
async fn a_busy_stage_times_out_clearly() {
    let h = harness(1).await;
    let e = Engine::builder(h.rt.clone(), h.store.clone())
        .settings(EngineSettings {
            lock_wait: Duration::from_secs(2),
            ..settings()
        })
        .build();
    assert!(
        h.store
            .try_lock("stage/web/dev", "someone-else", Duration::from_secs(600))
            .await
            .unwrap()
    );
    let err = e
        .deploy(DeployRequest::new("web", "dev", image("v1")))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert!(
        err.to_string()
            .contains("another operation on stage \"dev\""),
        "{err}"
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_rolls_back_in_flight_deploys_and_refuses_new_ones() {
    let h = harness(1).await;
    h.deploy("dev", "v1").await;
    let v1 = h.active("dev").await;
    for _ in 0..1000 {
        h.rt.inject(Op::Probe, Fault::Error(ErrorKind::Transient));
    }
    let engine = h.engine.clone();
    let inflight = tokio::spawn(async move {
        engine
            .deploy(DeployRequest::new("web", "dev", image("v2")))
            .await
    });
    while h.rt.containers().len() < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    h.engine.shutdown().await;
    let d = inflight.await.unwrap().unwrap();
    assert_eq!(d.status, DeployStatus::Failed);
    assert!(d.error.unwrap().message.contains("shutting down"));
    h.assert_only_serving(&v1).await;
    let e = h
        .engine
        .deploy(DeployRequest::new("web", "dev", image("v3")))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::ShuttingDown));
}

#[tokio::test(start_paused = true)]
async fn colliding_tags_get_distinct_domains() {
    let h = harness(2).await;
    for t in ["v1.0", "v1_0"] {
        h.rt.add_image(&format!("{REPO}:{t}"), Behavior::Healthy);
        assert_eq!(h.deploy("dev", t).await.status, DeployStatus::Succeeded);
    }
    let insts = h.instances("dev").await;
    assert_eq!(insts.len(), 2);
    assert_ne!(insts[0].domain, insts[1].domain);
    assert_eq!(h.proxy.routes().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn quick_defaults_come_from_the_image() {
    let h = harness(1).await;
    let img = ImageRef::parse("localhost:5000/team/My_App:v1");
    assert!(img.is_err(), "upper-case repositories are rejected");
    let img = image("hc2");
    let mut labels_map = std::collections::BTreeMap::new();
    labels_map.insert("dev.skipper.health-path".to_owned(), "/up".to_owned());
    h.rt.add_image_with(
        &img,
        Behavior::Healthy,
        crate::backend::ImageMetadata {
            exposed_ports: vec![3000, 9090],
            healthcheck: Some(crate::testing::docker_healthcheck()),
            labels: labels_map,
            ..Default::default()
        },
        None,
    );
    let q = h
        .engine
        .quick_defaults(&img, PullPolicy::Missing, None)
        .await
        .unwrap();
    assert_eq!(q.project, "web");
    assert_eq!(q.port, Some(3000));
    assert!(q.has_healthcheck);
    assert_eq!(q.health_path.as_deref(), Some("/up"));
}

#[tokio::test(start_paused = true)]
async fn image_labels_give_port_and_health_path() {
    let h = harness_with(1, false).await;
    let mut p = project(1);
    p.port = None;
    p.health.path = None;
    h.engine.put_project(&p).await.unwrap();
    let img = image("labelled");
    h.rt.add_image_with(
        &img,
        Behavior::Healthy,
        crate::backend::ImageMetadata {
            exposed_ports: vec![9000, 8080],
            labels: [
                (labels::PORT.to_owned(), "8080".to_owned()),
                (labels::HEALTH_PATH.to_owned(), "/health".to_owned()),
            ]
            .into(),
            ..Default::default()
        },
        None,
    );
    let d = h.deploy("dev", "labelled").await;
    assert_eq!(d.status, DeployStatus::Succeeded, "{:?}", d.error);
    assert!(
        d.steps
            .iter()
            .any(|s| s.message == "healthy by HTTP GET /health on port 8080"),
        "{:?}",
        d.steps
    );
}

/// An unscoped engine never touches the containers of a scoped one on the same host (and the
/// other way round).
#[tokio::test(start_paused = true)]
async fn engines_in_other_scopes_are_left_alone() {
    let h = harness(1).await;
    let scoped = Engine::builder(h.rt.clone(), Arc::new(MemoryStore::new()))
        .settings(EngineSettings {
            scope: Some("tenant-a".into()),
            ..settings()
        })
        .build();
    scoped.put_project(&project(1)).await.unwrap();
    let d = scoped
        .deploy(DeployRequest::new("web", "dev", image("v1")))
        .await
        .unwrap();
    assert_eq!(d.status, DeployStatus::Succeeded);
    assert_eq!(h.rt.containers()[0].labels[labels::SCOPE], "tenant-a");
    // The unscoped engine's store knows nothing of it, yet it must not call it an orphan.
    let r = h.engine.reconcile().await.unwrap();
    assert!(
        r.removed_containers.is_empty() && r.adopted.is_empty(),
        "{r:?}"
    );
    h.deploy("dev", "v2").await;
    assert_eq!(h.rt.running().len(), 2);
    let r = scoped.reconcile().await.unwrap();
    assert!(
        r.removed_containers.is_empty() && r.adopted.is_empty(),
        "{r:?}"
    );
    assert_eq!(h.rt.running().len(), 2);
}

/// Two stores on one Docker engine (another data dir, `sudo`, a typo in `SKIPPER_DATA_DIR`)
/// deploy and reconcile side by side and never touch each other's containers; an empty store
/// (an emptied file) removes nothing either.
#[tokio::test(start_paused = true)]
async fn two_stores_on_one_engine_never_touch_each_other() {
    let a = harness(1).await;
    let b = Engine::builder(a.rt.clone(), Arc::new(MemoryStore::new()))
        .settings(settings())
        .build();
    b.put_project(&project(1)).await.unwrap();
    assert_eq!(a.deploy("dev", "v1").await.status, DeployStatus::Succeeded);
    let d = b
        .deploy(DeployRequest::new("web", "dev", image("v2")))
        .await
        .unwrap();
    assert_eq!(d.status, DeployStatus::Succeeded, "{d:#?}");
    assert_eq!(a.rt.running().len(), 2);
    let ra = a.engine.reconcile().await.unwrap();
    let rb = b.reconcile().await.unwrap();
    for r in [&ra, &rb] {
        assert!(
            r.removed_containers.is_empty() && r.adopted.is_empty(),
            "{r:?}"
        );
        assert_eq!(
            r.foreign.len(),
            1,
            "the other store's container is reported: {r:?}"
        );
    }
    // Another deploy on each side retires only its own.
    assert_eq!(a.deploy("dev", "v3").await.status, DeployStatus::Succeeded);
    assert_eq!(a.rt.running().len(), 2);
    let empty = Engine::builder(a.rt.clone(), Arc::new(MemoryStore::new()))
        .settings(settings())
        .build();
    let r = empty.reconcile().await.unwrap();
    assert!(
        r.removed_containers.is_empty() && r.adopted.is_empty(),
        "{r:?}"
    );
    assert_eq!(r.foreign.len(), 2, "{r:?}");
    assert_eq!(a.rt.running().len(), 2);
}

/// Containers made before stores had an identity (no store label) are this store's only when
/// it has records of them.
#[tokio::test(start_paused = true)]
async fn unlabelled_containers_are_kept_when_this_store_knows_them() {
    let h = harness(1).await;
    h.deploy("dev", "v1").await;
    let v1 = h.active("dev").await;
    // As an older Skipper made it: no store label.
    let cid = v1.container_id.clone().unwrap();
    h.rt.strip_label(&cid, labels::STORE);
    let r = h.engine.reconcile().await.unwrap();
    assert!(r.foreign.is_empty() && r.is_clean(), "{r:?}");
    assert_eq!(h.active("dev").await.id, v1.id);
    // Another store knows nothing of it: foreign, untouched.
    let other = Engine::builder(h.rt.clone(), Arc::new(MemoryStore::new()))
        .settings(settings())
        .build();
    other.put_project(&project(1)).await.unwrap();
    let r = other.reconcile().await.unwrap();
    assert_eq!(r.foreign.len(), 1, "{r:?}");
    assert!(
        r.removed_containers.is_empty() && r.adopted.is_empty(),
        "{r:?}"
    );
    assert_eq!(h.rt.running(), vec![cid]);
}

/// `observe` (what `skipper ps` shows) changes nothing and shows drift.
#[tokio::test(start_paused = true)]
async fn observing_changes_nothing_and_shows_drift() {
    let h = harness(2).await;
    h.deploy("dev", "v1").await;
    h.deploy("dev", "v2").await;
    let insts = h.instances("dev").await;
    let (v1, v2) = (insts[0].clone(), insts[1].clone());
    h.rt.remove_behind_back(v1.container_id.as_deref().unwrap());
    h.rt.exit_behind_back(v2.container_id.as_deref().unwrap(), 137);
    let seen = h.engine.observe(&InstanceFilter::default()).await.unwrap();
    let state = |id: &str| seen.iter().find(|i| i.id == id).unwrap().state;
    assert_eq!(state(&v1.id), InstanceState::Missing);
    assert_eq!(state(&v2.id), InstanceState::Exited);
    assert_eq!(h.instances("dev").await, insts, "the store is unchanged");
    assert!(h.rt.running().is_empty(), "nothing was started");
    // A store with no records, on an engine with containers: observing changes nothing.
    let empty = Engine::builder(h.rt.clone(), Arc::new(MemoryStore::new()))
        .settings(settings())
        .build();
    assert!(
        empty
            .observe(&InstanceFilter::default())
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(h.rt.containers().len(), 1);
}

/// A lease whose holder is a process of this host that no longer exists is taken over at once,
/// not after its TTL; a live holder's is not.
#[tokio::test(start_paused = true)]
async fn a_dead_local_holder_is_taken_over_at_once() {
    let h = harness(1).await;
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    let me = super::lock::Holder::this_process().encode();
    let dead = {
        let mut parts: Vec<&str> = me.split(':').collect();
        let pid = pid.to_string();
        parts[3] = &pid;
        format!("{}/old-engine/acq", parts.join(":"))
    };
    assert!(
        h.store
            .try_lock("stage/web/dev", &dead, Duration::from_secs(3600))
            .await
            .unwrap()
    );
    let e = Engine::builder(h.rt.clone(), h.store.clone())
        .settings(EngineSettings {
            lock_wait: Duration::ZERO,
            ..settings()
        })
        .build();
    let d = e
        .deploy(DeployRequest::new("web", "dev", image("v1")))
        .await
        .unwrap();
    assert_eq!(d.status, DeployStatus::Succeeded, "{d:#?}");
    // A live holder (this process) is waited for.
    let live = format!("{me}/other-engine/acq");
    assert!(
        h.store
            .try_lock("stage/web/dev", &live, Duration::from_secs(3600))
            .await
            .unwrap()
    );
    let err = e
        .deploy(DeployRequest::new("web", "dev", image("v2")))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
}

/// A deploy that loses its lease (paused past it, and another process took the stage over)
/// never commits: it stops, removes what it made, and the other holder's state stands.
#[tokio::test(start_paused = true)]
async fn a_holder_that_lost_its_lease_never_commits() {
    let h = harness(1).await;
    h.deploy("dev", "v1").await;
    let v1 = h.active("dev").await;
    for _ in 0..1000 {
        h.rt.inject(Op::Probe, Fault::Hang);
    }
    let engine = h.engine.clone();
    let task = tokio::spawn(async move {
        engine
            .deploy(DeployRequest::new("web", "dev", image("v2")))
            .await
    });
    while h.rt.containers().len() < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Another process takes the stage over (as after the paused holder's lease expired).
    let holder = h
        .store
        .lease_holder("stage/web/dev")
        .await
        .unwrap()
        .unwrap();
    assert!(
        h.store
            .take_over_lock(
                "stage/web/dev",
                &holder,
                "another-process",
                Duration::from_secs(3600)
            )
            .await
            .unwrap()
    );
    let d = task.await.unwrap().unwrap();
    assert_eq!(d.status, DeployStatus::Failed, "{d:#?}");
    let e = d.error.unwrap();
    assert_eq!(e.kind, ErrorKind::Interrupted, "{e:?}");
    assert!(e.message.contains("lost the lease"), "{}", e.message);
    assert_eq!(
        h.active("dev").await.id,
        v1.id,
        "v1 is still the active one"
    );
    assert_eq!(h.rt.containers().len(), 1, "the new container was removed");
    assert_eq!(
        h.proxy.route("stage-dev-web.example.com").unwrap().upstream,
        v1.upstream.unwrap()
    );
}

/// A holder whose lease is taken over while its route call hangs (a slow proxy, a process
/// paused in the call) and whose renew task has not noticed yet: it neither switches nor
/// commits, and its rollback puts no stale route back over the new holder's.
#[tokio::test(start_paused = true)]
async fn a_lease_taken_over_during_the_route_call_undoes_nothing_of_the_new_holders() {
    let h = harness(1).await;
    h.deploy("dev", "v1").await;
    let mut slow = settings();
    // Renewal comes too late to notice, and the held call does not time out.
    slow.lock_ttl = Duration::from_secs(3600);
    slow.timeouts.route = Duration::from_secs(3600);
    let old = Engine::builder(h.rt.clone(), h.store.clone())
        .proxy(h.proxy.clone())
        .settings(slow)
        .build();
    let held = h.proxy.hold_ensure("stage-dev-web-v2.example.com");
    let task = tokio::spawn(async move {
        old.deploy(DeployRequest::new("web", "dev", image("v2")))
            .await
    });
    held.reached.await.unwrap();

    // The old holder's lease lapses and another process takes the stage and deploys v3.
    let key = "stage/web/dev";
    let stale = h.store.lease_holder(key).await.unwrap().unwrap();
    let ttl = Duration::from_secs(3600);
    assert!(
        h.store
            .take_over_lock(key, &stale, "expired", ttl)
            .await
            .unwrap()
    );
    h.store.unlock(key, "expired").await.unwrap();
    let lease = h.engine.lease(key, Duration::ZERO).await.unwrap().unwrap();
    let project = h.engine.project("web").await.unwrap();
    let stage = project.stage("dev").unwrap().clone();
    let new = h
        .engine
        .deploy_locked(
            project,
            stage,
            "v3".into(),
            DeployRequest::new("web", "dev", image("v3")),
            &lease,
        )
        .await
        .unwrap();
    assert_eq!(new.status, DeployStatus::Succeeded, "{new:#?}");
    let v3 = h.active("dev").await;

    // The old holder's route call answers; it goes on, still holding nothing.
    held.release.send(()).unwrap();
    let d = task.await.unwrap().unwrap();
    lease.release().await;
    assert_eq!(d.status, DeployStatus::Failed, "{d:#?}");
    let e = d.error.clone().unwrap();
    assert_eq!(e.kind, ErrorKind::Interrupted, "{e:?}");
    assert!(e.message.contains("lost the lease"), "{}", e.message);
    assert!(
        !d.steps
            .iter()
            .any(|s| s.step == Step::Switch && s.status == StepStatus::Done),
        "the old holder never switched: {:#?}",
        d.steps
    );
    assert_eq!(h.active("dev").await.id, v3.id, "v3 is the only active one");
    assert_eq!(
        h.proxy.route("stage-dev-web.example.com").unwrap().upstream,
        v3.upstream.clone().unwrap(),
        "the stage domain is still the new holder's"
    );
    assert_eq!(
        h.proxy.route(&v3.domain).unwrap().upstream,
        v3.upstream.clone().unwrap()
    );
    assert_eq!(
        h.rt.running(),
        vec![v3.container_id.clone().unwrap()],
        "only v3 runs"
    );
}

/// A holder paused between its switch and its commit, whose stage another process then
/// deployed: the fenced commit is refused, and that refusal alone (the renew task has not run)
/// stops it putting its stale routes back over the new holder's.
#[tokio::test(start_paused = true)]
async fn a_commit_refused_for_a_lost_lease_puts_no_route_back() {
    let h = harness(1).await;
    h.deploy("dev", "v1").await;
    let mut slow = settings();
    slow.lock_ttl = Duration::from_secs(3600);
    let old = Engine::builder(h.rt.clone(), h.store.clone())
        .proxy(h.proxy.clone())
        .settings(slow)
        .build();
    let held = h.store.hold(StoreOp::Commit);
    let task = tokio::spawn(async move {
        old.deploy(DeployRequest::new("web", "dev", image("v2")))
            .await
    });
    held.reached.await.unwrap();

    // Its lease lapses; another process deploys v3 and is done (the lease is free again).
    let key = "stage/web/dev";
    let stale = h.store.lease_holder(key).await.unwrap().unwrap();
    let ttl = Duration::from_secs(3600);
    assert!(
        h.store
            .take_over_lock(key, &stale, "expired", ttl)
            .await
            .unwrap()
    );
    h.store.unlock(key, "expired").await.unwrap();
    assert_eq!(h.deploy("dev", "v3").await.status, DeployStatus::Succeeded);
    let v3 = h.active("dev").await;

    held.release.send(()).unwrap();
    let d = task.await.unwrap().unwrap();
    assert_eq!(d.status, DeployStatus::Failed, "{d:#?}");
    let e = d.error.clone().unwrap();
    assert_eq!(
        (e.step, e.kind),
        (Step::Commit, ErrorKind::Interrupted),
        "{e:?}"
    );
    assert_eq!(h.active("dev").await.id, v3.id, "v3 is the only active one");
    assert_eq!(
        h.proxy.route("stage-dev-web.example.com").unwrap().upstream,
        v3.upstream.clone().unwrap(),
        "no stale route was put back over v3's"
    );
    assert_eq!(h.rt.running(), vec![v3.container_id.clone().unwrap()]);
}

/// An instance operation writes under its stage's lease like a deploy: one whose lease was
/// taken over before its write writes nothing over the new holder's records.
#[tokio::test(start_paused = true)]
async fn an_instance_operation_that_lost_its_lease_writes_nothing() {
    let h = harness(1).await;
    h.deploy("dev", "v1").await;
    let v1 = h.active("dev").await;
    let held = h.store.hold(StoreOp::Commit);
    let (engine, id) = (h.engine.clone(), v1.id.clone());
    let task = tokio::spawn(async move { engine.stop_instance(&id).await });
    held.reached.await.unwrap();
    let key = "stage/web/dev";
    let stale = h.store.lease_holder(key).await.unwrap().unwrap();
    let ttl = Duration::from_secs(3600);
    assert!(
        h.store
            .take_over_lock(key, &stale, "another", ttl)
            .await
            .unwrap()
    );
    held.release.send(()).unwrap();
    let e = task.await.unwrap().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Interrupted, "{e:?}");
    let kept = h.store.get_instance(&v1.id).await.unwrap().unwrap();
    assert_eq!(
        kept.state,
        InstanceState::Running,
        "the stale write was refused"
    );
}

/// A holder paused past its lease (SIGSTOP: its clock moved on, its tasks did not run) finds
/// the lease lapsed when it resumes, and does not take it back even when it is free: another
/// process may have held it meanwhile.
#[tokio::test(start_paused = true)]
async fn a_holder_paused_past_its_lease_does_not_take_it_back() {
    let h = harness(1).await;
    let key = "stage/web/dev";
    let lease = h.engine.lease(key, Duration::ZERO).await.unwrap().unwrap();
    let ttl = h.engine.settings().lock_ttl;
    // Renewed on time, it stays held.
    tokio::time::sleep(ttl * 2).await;
    assert!(!lease.is_lost());
    // Paused: the clock jumps past the TTL before the renew task runs again.
    tokio::time::advance(ttl * 2).await;
    let lost = lease.lost_token();
    tokio::time::timeout(ttl, lost.cancelled())
        .await
        .expect("the lease is lost once the holder resumes");
    assert!(
        h.store.try_lock(key, "someone-else", ttl).await.unwrap(),
        "the paused holder did not renew its lapsed lease"
    );
    lease.release().await;
}

/// A cancelled deploy (SIGINT/SIGTERM in the CLI) rolls back between steps and says so.
#[tokio::test(start_paused = true)]
async fn a_cancelled_deploy_rolls_back_as_interrupted() {
    let h = harness(1).await;
    h.deploy("dev", "v1").await;
    let v1 = h.active("dev").await;
    for _ in 0..1000 {
        h.rt.inject(Op::Probe, Fault::Hang);
    }
    let cancel = tokio_util::sync::CancellationToken::new();
    let mut req = DeployRequest::new("web", "dev", image("v2"));
    req.cancel = Some(cancel.clone());
    let engine = h.engine.clone();
    let task = tokio::spawn(async move { engine.deploy(req).await });
    while h.rt.containers().len() < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cancel.cancel();
    let d = task.await.unwrap().unwrap();
    assert_eq!(d.status, DeployStatus::Failed);
    let e = d.error.unwrap();
    assert_eq!(
        (e.step, e.kind),
        (Step::Health, ErrorKind::Interrupted),
        "{e:?}"
    );
    assert!(e.message.contains("interrupted"), "{}", e.message);
    h.assert_only_serving(&v1).await;
}

/// A cancel (SIGINT/SIGTERM in the CLI) after the commit point, while the old version drains
/// and retires: the deploy finishes (nothing is compensated) and says it succeeded.
#[tokio::test(start_paused = true)]
async fn a_cancel_during_retire_finishes_the_deploy() {
    let h = harness(1).await;
    h.deploy("dev", "v1").await;
    let engine = Engine::builder(h.rt.clone(), h.store.clone())
        .proxy(h.proxy.clone())
        .settings(EngineSettings {
            drain: Duration::from_secs(10),
            ..settings()
        })
        .build();
    let cancel = tokio_util::sync::CancellationToken::new();
    let mut req = DeployRequest::new("web", "dev", image("v2"));
    req.cancel = Some(cancel.clone());
    let task = tokio::spawn(async move { engine.deploy(req).await });
    // Committed: v2 is active, and the deploy waits out the drain before stopping v1.
    while !h
        .instances("dev")
        .await
        .iter()
        .any(|i| i.tag == "v2" && i.active)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(h.rt.running().len(), 2, "v1 still runs (draining)");
    cancel.cancel();
    let d = task.await.unwrap().unwrap();
    assert_eq!(d.status, DeployStatus::Succeeded, "{d:#?}");
    assert!(d.error.is_none(), "{d:#?}");
    assert!(
        d.steps
            .iter()
            .any(|s| s.step == Step::Retire && s.status == StepStatus::Done),
        "v1 was retired: {:#?}",
        d.steps
    );
    h.assert_settled_on("v2", "cancelled during retire").await;
}

/// Reconcile drives toward the desired state on every pass: the active instance's exited
/// container is started again, unless a person stopped it.
#[tokio::test(start_paused = true)]
async fn reconcile_restarts_the_active_instance_unless_stopped_on_purpose() {
    let h = harness(1).await;
    h.deploy("dev", "v1").await;
    let v1 = h.active("dev").await;
    let cid = v1.container_id.clone().unwrap();
    h.rt.exit_behind_back(&cid, 137);
    let r = h.engine.reconcile().await.unwrap();
    assert_eq!(r.restarted, vec![v1.id.clone()], "{r:?}");
    assert_eq!(h.rt.running(), vec![cid.clone()]);
    h.engine.stop_instance(&v1.id).await.unwrap();
    let r = h.engine.reconcile().await.unwrap();
    assert!(r.restarted.is_empty(), "{r:?}");
    assert!(
        h.rt.running().is_empty(),
        "a stopped instance stays stopped"
    );
}

/// A container recreated by hand with the same labels: reconcile takes its real id and
/// address, and later operations act on it.
#[tokio::test(start_paused = true)]
async fn a_container_recreated_by_hand_is_followed() {
    let h = harness(1).await;
    h.deploy("dev", "v1").await;
    let v1 = h.active("dev").await;
    let new_id =
        h.rt.recreate_behind_back(v1.container_id.as_deref().unwrap())
            .unwrap();
    let r = h.engine.reconcile().await.unwrap();
    assert_eq!(r.updated, vec![v1.id.clone()], "{r:?}");
    assert_eq!(
        h.active("dev").await.container_id.as_deref(),
        Some(new_id.as_str())
    );
    assert_eq!(h.deploy("dev", "v2").await.status, DeployStatus::Succeeded);
    h.assert_settled_on("v2", "after a recreated container")
        .await;
}

/// With upstreams at published ports, a restart that moves the port moves the route too.
#[tokio::test(start_paused = true)]
async fn routes_follow_a_published_port_that_moved() {
    let rt = Arc::new(FakeRuntime::new());
    rt.add_image(&format!("{REPO}:v1"), Behavior::Healthy);
    let proxy = Arc::new(FakeProxy::new());
    let engine = Engine::builder(rt.clone(), Arc::new(MemoryStore::new()))
        .proxy(proxy.clone())
        .settings(EngineSettings {
            upstream: UpstreamTarget::Published { host: None },
            ..settings()
        })
        .build();
    engine.put_project(&project(1)).await.unwrap();
    engine
        .deploy(DeployRequest::new("web", "dev", image("v1")))
        .await
        .unwrap();
    let before = proxy.route("stage-dev-web.example.com").unwrap().upstream;
    let i = &engine.instances(&InstanceFilter::default()).await.unwrap()[0];
    engine.restart_instance(&i.id).await.unwrap();
    // The restart gave it another port; the route still points at the old one until now.
    let r = engine.reconcile().await.unwrap();
    let after = proxy.route("stage-dev-web.example.com").unwrap().upstream;
    let i = &engine.instances(&InstanceFilter::default()).await.unwrap()[0];
    assert_ne!(before.port, after.port, "{r:?}");
    assert_eq!(
        Some(after.port),
        i.address
            .as_deref()
            .and_then(|a| a.rsplit_once(':'))
            .and_then(|(_, p)| p.parse().ok())
    );
    assert!(
        r.routes_repaired
            .contains(&"stage-dev-web.example.com".to_owned()),
        "{r:?}"
    );
}

/// Retiring one of two instances of the same tag keeps the route the survivor uses.
#[tokio::test(start_paused = true)]
async fn retiring_one_of_two_instances_of_a_tag_keeps_the_survivors_route() {
    let h = harness(2).await;
    h.deploy("dev", "v1").await;
    h.deploy("dev", "v1").await;
    assert_eq!(h.deploy("dev", "v2").await.status, DeployStatus::Succeeded);
    let insts = h.instances("dev").await;
    assert_eq!(insts.len(), 2);
    let survivor = insts.iter().find(|i| i.tag == "v1").unwrap();
    assert_eq!(
        h.proxy.route(&survivor.domain).map(|r| r.upstream),
        survivor.upstream.clone(),
        "{:?}",
        h.proxy.routes()
    );
}

/// An image that EXPOSEs nothing deploys without publishing, gated on "still up after settle";
/// asked to probe a path without a port, the deploy says "pass --port" instead of failing at
/// create.
#[tokio::test(start_paused = true)]
async fn an_image_without_a_port_deploys_on_settle_or_asks_for_one() {
    let h = harness_with(1, false).await;
    let mut p = project(1);
    p.port = None;
    p.health.path = None;
    h.engine.put_project(&p).await.unwrap();
    let img = image("noport");
    h.rt.add_image_with(
        &img,
        Behavior::Healthy,
        crate::backend::ImageMetadata::default(),
        None,
    );
    let d = h.deploy("dev", "noport").await;
    assert_eq!(d.status, DeployStatus::Succeeded, "{d:#?}");
    assert!(d.steps.iter().any(|s| s.message.contains("staying up")));
    assert_eq!(h.rt.containers()[0].published, None, "nothing to publish");
    p.health.path = Some("/health".into());
    h.engine.put_project(&p).await.unwrap();
    let d = h.deploy("dev", "noport").await;
    let e = d.error.unwrap();
    assert_eq!((e.step, e.kind), (Step::Pull, ErrorKind::Rejected), "{e:?}");
    assert!(e.message.contains("pass --port"), "{}", e.message);
}

/// `stage-{stage}-{project}` is not injective once names hold `-`: the second project whose
/// stage domain (or instance domain) another's already is, is refused, naming both owners;
/// the first one's route is untouched. Two instances of one tag get domains of their own.
#[tokio::test(start_paused = true)]
async fn one_projects_domain_never_serves_another_projects_app() {
    let h = harness(2).await;
    let simple = |name: &str, stage: &str| {
        let mut p = Project::new(name, REPO).unwrap();
        p.port = Some(8080);
        p.health.path = Some("/health".into());
        p.with_stage(Stage::new(stage))
    };
    h.engine.put_project(&simple("a-b", "c")).await.unwrap();
    h.engine.put_project(&simple("b", "c-a")).await.unwrap();
    let d = h
        .engine
        .deploy(DeployRequest::new("a-b", "c", image("v1")))
        .await
        .unwrap();
    assert_eq!(d.status, DeployStatus::Succeeded, "{d:#?}");
    let first = h.proxy.route("stage-c-a-b.example.com").unwrap().upstream;
    let d = h
        .engine
        .deploy(DeployRequest::new("b", "c-a", image("v1")))
        .await
        .unwrap();
    let e = d.error.expect("refused");
    assert_eq!(e.kind, ErrorKind::Conflict, "{e:?}");
    assert!(
        e.message.contains("stage-c-a-b.example.com") && e.message.contains("stage a-b/c"),
        "{}",
        e.message
    );
    assert_eq!(
        h.proxy.route("stage-c-a-b.example.com").unwrap().upstream,
        first
    );

    // Instance domains: project web tag api-v1 against project web-api tag v1.
    h.rt.add_image(&format!("{REPO}:api-v1"), Behavior::Healthy);
    assert_eq!(
        h.deploy("dev", "api-v1").await.status,
        DeployStatus::Succeeded
    );
    h.engine
        .put_project(&simple("web-api", "dev"))
        .await
        .unwrap();
    let d = h
        .engine
        .deploy(DeployRequest::new("web-api", "dev", image("v1")))
        .await
        .unwrap();
    let e = d.error.expect("refused");
    assert!(
        e.message.contains("stage-dev-web-api-v1.example.com"),
        "{}",
        e.message
    );

    // The same tag twice in one stage: two domains.
    h.deploy("rel", "v1").await;
    let mut p = project(2);
    p.stages.get_mut("rel").unwrap().max_instances = 2;
    h.engine.put_project(&p).await.unwrap();
    h.deploy("rel", "v1").await;
    let rel = h.instances("rel").await;
    assert_eq!(rel.len(), 2);
    assert_ne!(rel[0].domain, rel[1].domain);
}

/// A failed deploy's settings are not kept: the project probes what it probed before, and the
/// next plain deploy and a rollback work. A successful deploy's settings are kept, and a
/// rollback runs the target with the settings it ran with.
#[tokio::test(start_paused = true)]
async fn a_deploys_settings_are_kept_only_when_it_succeeds() {
    let h = harness(1).await;
    h.deploy("dev", "v1").await;
    h.deploy("dev", "v2").await;
    let project = h.engine.project("web").await.unwrap();
    let mut bad = RunSettings::of(&project, project.stage("dev").unwrap());
    bad.health.path = Some("/healthzz".into());
    bad.port = Some(9999);
    let mut req = DeployRequest::new("web", "dev", image("sick"));
    req.settings = Some(bad);
    let d = h.engine.deploy(req).await.unwrap();
    assert_eq!(d.status, DeployStatus::Failed, "{d:#?}");
    assert_eq!(
        h.engine.project("web").await.unwrap(),
        project,
        "nothing kept"
    );

    // A good deploy with new settings keeps them.
    let mut good = RunSettings::of(&project, project.stage("dev").unwrap());
    good.env.insert("MODE".into(), "v3".into());
    let mut req = DeployRequest::new("web", "dev", image("v3"));
    req.settings = Some(good);
    assert_eq!(
        h.engine.deploy(req).await.unwrap().status,
        DeployStatus::Succeeded
    );
    assert_eq!(h.engine.project("web").await.unwrap().env["MODE"], "v3");
    // Rollback runs v2 as it ran: without MODE.
    let d = h.engine.rollback("web", "dev").await.unwrap();
    assert_eq!(d.status, DeployStatus::Succeeded, "{d:#?}");
    assert_eq!(h.active("dev").await.tag, "v2");
    assert!(
        !h.engine
            .project("web")
            .await
            .unwrap()
            .env
            .contains_key("MODE")
    );
}

/// A deploy of another repository into a project (the CLI's `deploy other/app:v1 --project
/// web`) makes that repository the project's only when it succeeds (9.9).
#[tokio::test(start_paused = true)]
async fn a_deploy_of_another_repository_changes_the_project_only_when_it_succeeds() {
    let h = harness(1).await;
    h.deploy("dev", "v1").await;
    const OTHER: &str = "localhost:5000/team/other";
    h.rt.add_image(&format!("{OTHER}:sick"), Behavior::Unhealthy);
    h.rt.add_image(&format!("{OTHER}:v1"), Behavior::Healthy);
    let other = |tag: &str| ImageRef::parse(&format!("{OTHER}:{tag}")).unwrap();
    let before = h.engine.project("web").await.unwrap();

    // Not asked for: refused, as before.
    let e = h
        .engine
        .deploy(DeployRequest::new("web", "dev", other("v1")))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Rejected, "{e}");

    let mut req = DeployRequest::new("web", "dev", other("sick"));
    req.adopt_repository = true;
    let d = h.engine.deploy(req).await.unwrap();
    assert_eq!(d.status, DeployStatus::Failed, "{d:#?}");
    assert_eq!(
        h.engine.project("web").await.unwrap(),
        before,
        "a failed deploy keeps the project's repository"
    );

    let mut req = DeployRequest::new("web", "dev", other("v1"));
    req.adopt_repository = true;
    let d = h.engine.deploy(req).await.unwrap();
    assert_eq!(d.status, DeployStatus::Succeeded, "{d:#?}");
    assert_eq!(
        h.engine.project("web").await.unwrap().image,
        other("v1").name()
    );
}

/// A deploy's settings are written to the project only under the project's lease: while
/// another holder keeps it, they are not saved (the deploy itself succeeded).
#[tokio::test(start_paused = true)]
async fn settings_are_never_written_without_the_project_lease() {
    let h = harness(1).await;
    h.deploy("dev", "v1").await;
    let project = h.engine.project("web").await.unwrap();
    let ttl = Duration::from_secs(3600);
    assert!(
        h.store
            .try_lock("project/web", "someone-else", ttl)
            .await
            .unwrap()
    );
    let mut settings = RunSettings::of(&project, project.stage("dev").unwrap());
    settings.env.insert("MODE".into(), "v2".into());
    let mut req = DeployRequest::new("web", "dev", image("v2"));
    req.settings = Some(settings);
    let d = h.engine.deploy(req).await.unwrap();
    assert_eq!(d.status, DeployStatus::Succeeded, "{d:#?}");
    assert_eq!(
        h.engine.project("web").await.unwrap(),
        project,
        "nothing written without the lease"
    );
}

/// The health gate probes at once, then backs off from 50 ms, doubling, up to the health
/// check's interval (8.8a): an app that listens a moment after its start is seen then.
#[tokio::test(start_paused = true)]
async fn the_health_gate_probes_at_once_and_backs_off_to_its_interval() {
    let h = harness(1).await;
    let mut p = h.engine.project("web").await.unwrap();
    p.health.interval = Duration::from_secs(1);
    p.health.deadline = Duration::from_secs(4);
    h.engine.put_project(&p).await.unwrap();
    let d = h.deploy("dev", "sick").await;
    assert_eq!(d.status, DeployStatus::Failed, "{d:#?}");
    let times = h.rt.probe_times();
    let gaps: Vec<u128> = times
        .windows(2)
        .map(|w| (w[1] - w[0]).as_millis())
        .collect();
    assert_eq!(
        gaps,
        vec![50, 100, 200, 400, 800, 1000, 1000],
        "the probe schedule (ms between probes) until the 4 s deadline"
    );

    // Refused twice, then listening: healthy at the third probe, 150 ms after the first.
    let h = harness(1).await;
    h.rt.inject(Op::Probe, Fault::Error(ErrorKind::Transient));
    h.rt.inject(Op::Probe, Fault::Error(ErrorKind::Transient));
    let d = h.deploy("dev", "v1").await;
    assert_eq!(d.status, DeployStatus::Succeeded, "{d:#?}");
    let times = h.rt.probe_times();
    assert_eq!(times.len(), 3, "{times:?}");
    assert_eq!((times[2] - times[0]).as_millis(), 150);
}

/// A deploy waiting for another operation's lease is cancelled (a signal): it gives up while
/// it waits, with nothing recorded or started, and the other operation goes on untouched.
#[tokio::test(start_paused = true)]
async fn a_deploy_cancelled_while_it_waits_for_the_lease_gives_up_at_once() {
    let h = harness(1).await;
    h.deploy("dev", "v1").await;
    let key = "stage/web/dev";
    let other = h.engine.lease(key, Duration::ZERO).await.unwrap().unwrap();
    let cancel = tokio_util::sync::CancellationToken::new();
    let mut req = DeployRequest::new("web", "dev", image("v2"));
    req.cancel = Some(cancel.clone());
    let engine = h.engine.clone();
    let waiting = tokio::spawn(async move { engine.deploy(req).await });
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(!waiting.is_finished(), "it waits for the lease");
    cancel.cancel();
    let e = waiting.await.unwrap().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Interrupted, "{e:?}");
    assert!(!other.is_lost(), "the holder keeps its lease");
    let history = h
        .engine
        .deployments(&DeploymentFilter::default())
        .await
        .unwrap();
    assert_eq!(history.len(), 1, "nothing recorded: {history:?}");
    assert!(
        !h.rt
            .containers()
            .iter()
            .any(|c| c.labels[labels::TAG] == "v2"),
        "nothing started"
    );
    other.release().await;
}

/// A rollback holds the stage's lease from choosing its target to the end of its redeploy
/// (8.4h): one acquisition throughout, and a deploy started meanwhile waits, then builds on
/// what the rollback made.
#[tokio::test(start_paused = true)]
async fn a_deploy_started_during_a_rollback_waits_for_all_of_it() {
    let h = harness(1).await;
    h.deploy("dev", "v1").await;
    h.deploy("dev", "v2").await;
    let key = "stage/web/dev";
    // Hold the rollback in its first step (the reconcile's history read), under the lease.
    let held = h.store.hold(StoreOp::ListDeployments);
    let engine = h.engine.clone();
    let rollback = tokio::spawn(async move { engine.rollback("web", "dev").await });
    held.reached.await.unwrap();
    let picking = h.store.lease_holder(key).await.unwrap().expect("held");
    let engine = h.engine.clone();
    let deploy = tokio::spawn(async move {
        engine
            .deploy(DeployRequest::new("web", "dev", image("v3")))
            .await
    });
    // The redeploy of v1 waits in its health gate (two probes that never answer).
    h.rt.inject(Op::Probe, Fault::Hang);
    h.rt.inject(Op::Probe, Fault::Hang);
    held.release.send(()).unwrap();
    while h.rt.probe_times().len() < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let redeploying = h.store.lease_holder(key).await.unwrap().expect("held");
    assert_eq!(redeploying, picking, "one lease, held throughout");
    assert!(
        !h.rt
            .containers()
            .iter()
            .any(|c| c.labels[labels::TAG] == "v3"),
        "the deploy has not started"
    );

    let r = rollback.await.unwrap().unwrap();
    assert_eq!(r.status, DeployStatus::Succeeded, "{r:#?}");
    let d = deploy.await.unwrap().unwrap();
    assert_eq!(d.status, DeployStatus::Succeeded, "{d:#?}");
    assert_eq!(
        d.previous_instance, r.instance_id,
        "the deploy replaced what the rollback made"
    );
    h.assert_settled_on("v3", "after the rollback and the deploy")
        .await;
}

/// `rm` of an instance whose container was recreated by hand removes the container that is
/// really there (before, it removed the stale id, said "removed", and the container ran on).
#[tokio::test(start_paused = true)]
async fn rm_removes_a_container_recreated_by_hand() {
    let h = harness(1).await;
    h.deploy("dev", "v1").await;
    let v1 = h.active("dev").await;
    h.rt.recreate_behind_back(v1.container_id.as_deref().unwrap())
        .unwrap();
    h.engine.remove_instance(&v1.id).await.unwrap();
    assert!(h.rt.containers().is_empty(), "{:?}", h.rt.containers());
    assert!(h.instances("dev").await.is_empty());
}

/// `rm` says it failed when a container of the instance is still there after the removal (a
/// second one made by hand with its labels): the error names it, and the record is kept.
/// (9.8b: a test of the error branch, which was right but untested.)
#[tokio::test(start_paused = true)]
async fn rm_fails_while_a_container_of_the_instance_is_left() {
    let h = harness(1).await;
    h.deploy("dev", "v1").await;
    let v1 = h.active("dev").await;
    let original = h.rt.containers().remove(0);
    let copy = crate::backend::ContainerSpec {
        name: "by-hand-copy".into(),
        image: image("v1"),
        env: Default::default(),
        labels: original.labels.clone(),
        volumes: vec![],
        network: None,
        port: Some(8080),
        publish: true,
    };
    h.rt.create_container(&copy).await.unwrap();
    let e = h.engine.remove_instance(&v1.id).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    // One of the two was removed; the error names the one left.
    let left = h.rt.containers();
    assert_eq!(left.len(), 1, "{left:?}");
    let message = e.to_string();
    assert!(
        message.contains(&left[0].id) && message.contains(&v1.id),
        "{message}"
    );
    let kept = h.instances("dev").await;
    assert_eq!(kept.len(), 1, "the record is kept: {kept:?}");
    assert_eq!(kept[0].id, v1.id);
}

/// Stop and start reach every live view: the feed carries the instance as it is after each.
#[tokio::test(start_paused = true)]
async fn the_activity_feed_shows_instance_operations() {
    let h = harness(1).await;
    let d = h
        .engine
        .deploy(DeployRequest::new("web", "dev", image("v1")))
        .await
        .unwrap();
    let id = d.instance_id.unwrap();
    let mut feed = h.engine.activity();
    h.engine.stop_instance(&id).await.unwrap();
    h.engine.start_instance(&id).await.unwrap();
    let mut states = Vec::new();
    while let Ok(a) = feed.try_recv() {
        if let Activity::Instance(i) = a {
            assert_eq!(i.id, id);
            states.push(i.state);
        }
    }
    assert_eq!(states, vec![InstanceState::Stopped, InstanceState::Running]);
    // A refused operation tells no one anything.
    assert!(h.engine.stop_instance("no-such").await.is_err());
    assert!(feed.try_recv().is_err());
}

/// The activity feed tells a live view what happens: the deployment (with the caller's id and
/// correlation id) starts, each step as it is logged, the end with the final record, and the
/// events the notifiers got. A failed deploy ends in `Finished` too.
#[tokio::test(start_paused = true)]
async fn the_activity_feed_shows_a_deploy_as_it_happens() {
    let h = harness(1).await;
    let mut feed = h.engine.activity();
    let mut req = DeployRequest::new("web", "dev", image("v1"));
    req.id = Some("d-chosen".into());
    req.correlation_id = Some("ci-run-7".into());
    let d = h.engine.deploy(req).await.unwrap();
    assert_eq!(d.id, "d-chosen");
    assert_eq!(d.correlation_id.as_deref(), Some("ci-run-7"));
    let stored = h.engine.store().get_deployment("d-chosen").await.unwrap();
    assert_eq!(stored.unwrap().correlation_id.as_deref(), Some("ci-run-7"));

    let mut seen = Vec::new();
    while let Ok(a) = feed.try_recv() {
        seen.push(a);
    }
    assert!(
        matches!(&seen[0], Activity::Started(d) if d.id == "d-chosen" && d.status == DeployStatus::InProgress),
        "{seen:?}"
    );
    let steps: Vec<Step> = seen
        .iter()
        .filter_map(|a| match a {
            Activity::Step(d) if d.id == "d-chosen" => d.steps.last().map(|r| r.step),
            _ => None,
        })
        .collect();
    let logged: Vec<Step> = d.steps.iter().skip(1).map(|r| r.step).collect();
    assert_eq!(steps, logged, "every step after validate, in order");
    let finished = seen
        .iter()
        .position(|a| matches!(a, Activity::Finished(f) if f.status == DeployStatus::Succeeded));
    let event = seen
        .iter()
        .position(|a| matches!(a, Activity::Event(e) if e.kind == EventKind::DeploySucceeded && e.correlation_id.as_deref() == Some("ci-run-7")));
    assert!(finished.is_some() && event.is_some(), "{seen:?}");

    let mut feed = h.engine.activity();
    let failed = h.deploy("dev", "sick").await;
    assert_eq!(failed.status, DeployStatus::Failed);
    let mut ended = None;
    while let Ok(a) = feed.try_recv() {
        if let Activity::Finished(f) = a {
            ended = Some(f);
        }
    }
    let ended = ended.expect("a failed deploy ends in Finished");
    assert_eq!(ended.id, failed.id);
    assert!(ended.error.is_some());
}

/// Deleting a stage removes its instances (routes, containers, records) and the stage; deleting
/// the project removes the rest. Nothing is left behind.
#[tokio::test(start_paused = true)]
async fn deleting_a_stage_or_project_removes_what_it_runs() {
    let h = harness(2).await;
    h.deploy("dev", "v1").await;
    h.deploy("dev", "v2").await;
    h.deploy("rel", "v1").await;
    assert_eq!(h.rt.running().len(), 3);
    let p = h.engine.delete_stage("web", "dev").await.unwrap();
    assert!(!p.stages.contains_key("dev"));
    assert!(h.instances("dev").await.is_empty());
    assert_eq!(h.rt.running().len(), 1, "only rel's instance runs");
    assert!(
        h.proxy.routes().keys().all(|d| !d.contains("dev")),
        "{:?}",
        h.proxy.routes()
    );
    let e = h.engine.delete_stage("web", "dev").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    h.engine.delete_project("web").await.unwrap();
    assert!(h.rt.containers().is_empty());
    assert!(h.proxy.routes().is_empty());
    assert!(h.engine.store().get_project("web").await.unwrap().is_none());
}

/// A pass reads containers and routes once, before it takes each stage's lease. A stage that
/// changed since (a deploy finished in between) must not be judged on that old read: its new
/// container is not "missing", its route is not "repaired".
#[tokio::test(start_paused = true)]
async fn a_stage_changed_since_the_pass_read_it_is_read_again() {
    let h = harness(1).await;
    let before = chrono::Utc::now();
    tokio::time::advance(Duration::from_millis(5)).await;
    h.deploy("dev", "v1").await;
    let project = h.engine.project("web").await.unwrap();
    let stage = project.stage("dev").unwrap().clone();
    let stale = reconcile::Snapshot {
        at: before,
        containers: Vec::new(),
        routes: Some(&[]),
    };
    let r = h
        .engine
        .reconcile_stage_in(&project, &stage, Some(stale))
        .await
        .unwrap();
    assert!(r.is_clean() && r.missing.is_empty(), "{r:?}");
    let v1 = h.active("dev").await;
    assert_eq!(v1.state, InstanceState::Running);
    // The same empty snapshot taken after the deploy is believed: the container is missing.
    let fresh = reconcile::Snapshot {
        at: chrono::Utc::now() + chrono::Duration::seconds(1),
        containers: Vec::new(),
        routes: None,
    };
    let r = h
        .engine
        .reconcile_stage_in(&project, &stage, Some(fresh))
        .await
        .unwrap();
    assert_eq!(r.missing, vec![v1.id.clone()], "{r:?}");
}

/// A pass that repairs a stage says so to the notifiers, one event per stage, naming what it
/// did; a clean pass says nothing.
#[tokio::test(start_paused = true)]
async fn a_repair_by_reconcile_is_an_event() {
    let h = harness(1).await;
    h.deploy("dev", "v1").await;
    let before = h.notifier.events().len();
    assert!(h.engine.reconcile().await.unwrap().is_clean());
    assert_eq!(h.notifier.events().len(), before, "nothing to say");
    let v1 = h.active("dev").await;
    h.rt.exit_behind_back(v1.container_id.as_deref().unwrap(), 137);
    let r = h.engine.reconcile().await.unwrap();
    assert_eq!(r.restarted, vec![v1.id.clone()]);
    let e = h.notifier.events().pop().unwrap();
    assert_eq!(e.kind, EventKind::Repaired);
    assert_eq!((e.project.as_str(), e.stage.as_str()), ("web", "dev"));
    assert!(
        e.message.contains("restarted") && e.message.contains(&v1.id),
        "{}",
        e.message
    );
}
