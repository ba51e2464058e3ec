//! The engine routing through Nginx Proxy Manager: the real `NpmClient` against `FakeNpm` (a
//! stateful fake of NPM's API on a local wiremock server), with skipper-core's `FakeRuntime` and
//! `MemoryStore`.
//!
//! Run with: `cargo test --test npm_engine`
//!
//! What is asserted is what NPM ends up holding (`FakeNpm::hosts`) and the exact write requests
//! the client sent (from the server's request log), so "switched in place" means one PUT on the
//! same host id, and "left as it was" means the full host list compares equal.
//!
//! FakeNpm is a real HTTP server on 127.0.0.1, so time is not paused here; health checks use a
//! 50 ms interval and a 2 s deadline instead.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use skipper_core::store::MemoryStore;
use skipper_core::subdomain::DEFAULT_PATTERN;
use skipper_core::testing::{Behavior, FakeRuntime, RecordingNotifier};
use skipper_core::{
    DeployRequest, DeployStatus, Deployment, DomainScheme, Engine, EngineSettings, ErrorKind,
    EventKind, ImageRef, Instance, InstanceFilter, InstanceState, Project, Route, RouteOptions,
    Stage, Step, StepStatus, StepTimeouts, Trigger, Upstream, UpstreamTarget,
};
use skipper_npm::NpmClient;
use skipper_npm::fake::{FakeNpm, FakeOp, Fault};

const REPO: &str = "localhost:5000/team/web";
const STAGE_DOMAIN: &str = "stage-dev-web.example.com";
const PROXY_HOSTS: &str = "/api/nginx/proxy-hosts";

fn instance_domain(tag: &str) -> String {
    format!("stage-dev-web-{tag}.example.com")
}

// ---------------------------------------------------------------------------------------------
// Harness

/// What differs between tests.
#[derive(Debug, Clone)]
struct Setup {
    max_instances: u32,
    upstream: UpstreamTarget,
    /// The engine's limit on each proxy call.
    route_timeout: Duration,
    /// The client's limit on each HTTP request.
    client_timeout: Duration,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            max_instances: 1,
            upstream: UpstreamTarget::ContainerName,
            route_timeout: Duration::from_secs(10),
            client_timeout: Duration::from_secs(5),
        }
    }
}

struct Harness {
    engine: Engine,
    rt: Arc<FakeRuntime>,
    npm: FakeNpm,
    notifier: Arc<RecordingNotifier>,
}

/// One write request the client sent to NPM.
#[derive(Debug, Clone)]
struct Write {
    method: String,
    path: String,
    body: Value,
}

impl Write {
    fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

fn lines(writes: &[Write]) -> Vec<String> {
    writes.iter().map(Write::line).collect()
}

fn project(name: &str, max_instances: u32) -> Project {
    let mut p = Project::new(name, &format!("localhost:5000/team/{name}")).unwrap();
    p.port = Some(8080);
    p.health.path = Some("/health".into());
    p.health.interval = Duration::from_millis(50);
    p.health.timeout = Duration::from_millis(200);
    p.health.deadline = Duration::from_secs(2);
    let mut dev = Stage::new("dev");
    dev.max_instances = max_instances;
    p.with_stage(dev)
}

async fn harness(setup: Setup) -> Harness {
    let npm = FakeNpm::start().await;
    let client = NpmClient::new(
        npm.config()
            .with_timeout(setup.client_timeout)
            .with_retries(3, Duration::from_millis(10)),
    )
    .unwrap();
    let rt = Arc::new(FakeRuntime::new());
    for tag in ["v1", "v2", "v3"] {
        rt.add_image(&format!("{REPO}:{tag}"), Behavior::Healthy);
    }
    rt.add_image(&format!("{REPO}:sick"), Behavior::Unhealthy);
    let notifier = Arc::new(RecordingNotifier::new());
    let settings = EngineSettings {
        domains: DomainScheme {
            domain: "example.com".into(),
            pattern: DEFAULT_PATTERN.into(),
        },
        upstream: setup.upstream,
        stop_grace: Duration::ZERO,
        timeouts: StepTimeouts {
            route: setup.route_timeout,
            ..StepTimeouts::default()
        },
        ..EngineSettings::default()
    };
    let engine = Engine::builder(rt.clone(), Arc::new(MemoryStore::new()))
        .proxy(Arc::new(client))
        .notifier(notifier.clone())
        .settings(settings)
        .build();
    engine
        .put_project(&project("web", setup.max_instances))
        .await
        .unwrap();
    Harness {
        engine,
        rt,
        npm,
        notifier,
    }
}

impl Harness {
    async fn try_deploy(&self, tag: &str) -> Deployment {
        let image = ImageRef::parse(&format!("{REPO}:{tag}")).unwrap();
        self.engine
            .deploy(DeployRequest::new("web", "dev", image))
            .await
            .unwrap()
    }

    /// Deploy `tag` and insist that it succeeds.
    async fn deploy(&self, tag: &str) -> Deployment {
        let d = self.try_deploy(tag).await;
        assert_eq!(
            d.status,
            DeployStatus::Succeeded,
            "deploy of {tag}: {:?}",
            d.error
        );
        d
    }

    async fn instances(&self) -> Vec<Instance> {
        self.engine
            .instances(&InstanceFilter {
                project: Some("web".into()),
                stage: Some("dev".into()),
            })
            .await
            .unwrap()
    }

    /// The one instance running `tag`.
    async fn instance(&self, tag: &str) -> Instance {
        let all = self.instances().await;
        let found: Vec<_> = all.iter().filter(|i| i.tag == tag).cloned().collect();
        assert_eq!(found.len(), 1, "one instance of {tag}: {all:#?}");
        found.into_iter().next().unwrap()
    }

    /// NPM's host for `domain`; panics (showing every host) when there is none.
    fn host(&self, domain: &str) -> Value {
        self.npm
            .host_for(domain)
            .unwrap_or_else(|| panic!("no proxy host for {domain}: {:#?}", self.npm.hosts()))
    }

    fn host_id(&self, domain: &str) -> u64 {
        self.host(domain)["id"].as_u64().unwrap()
    }

    /// Every host as NPM shows it, minus `modified_on` (a host put back as it was has the same
    /// fields but a new modification time).
    fn hosts(&self) -> Vec<Value> {
        self.npm
            .hosts()
            .into_iter()
            .map(|mut h| {
                h.as_object_mut().unwrap().remove("modified_on");
                h
            })
            .collect()
    }

    /// Every create, update and delete of a proxy host the client sent, in order.
    async fn writes(&self) -> Vec<Write> {
        self.npm
            .server()
            .received_requests()
            .await
            .expect("wiremock records requests")
            .into_iter()
            .filter(|r| r.url.path().starts_with(PROXY_HOSTS) && r.method.as_str() != "GET")
            .map(|r| Write {
                method: r.method.as_str().to_owned(),
                path: r.url.path().to_owned(),
                body: serde_json::from_slice(&r.body).unwrap_or(Value::Null),
            })
            .collect()
    }

    /// The writes after the first `mark`.
    async fn writes_since(&self, mark: usize) -> Vec<Write> {
        self.writes().await.split_off(mark)
    }

    async fn mark(&self) -> usize {
        self.writes().await.len()
    }

    /// `domain` forwards to `inst`'s container by name on the app port.
    fn assert_forwards_to(&self, domain: &str, inst: &Instance) {
        let host = self.host(domain);
        assert_eq!(
            (&host["forward_host"], &host["forward_port"]),
            (&json!(inst.container_name), &json!(8080)),
            "{domain} should forward to {} ({})",
            inst.container_name,
            inst.tag
        );
    }
}

/// One line per host: id, domains, target, nginx state.
fn summary(hosts: &[Value]) -> Vec<String> {
    hosts
        .iter()
        .map(|h| {
            format!(
                "#{} {} -> {}://{}:{} nginx_online={}",
                h["id"],
                h["domain_names"],
                h["forward_scheme"].as_str().unwrap_or_default(),
                h["forward_host"].as_str().unwrap_or_default(),
                h["forward_port"],
                h["meta"]["nginx_online"]
            )
        })
        .collect()
}

/// The deployment's step log, one line per entry.
fn step_log(d: &Deployment) -> Vec<String> {
    d.steps
        .iter()
        .map(|s| format!("{} {:?}: {}", s.step.as_str(), s.status, s.message))
        .collect()
}

/// NPM's hosts compare equal, field by field (`modified_on` aside).
#[track_caller]
fn assert_same_hosts(after: &[Value], before: &[Value], context: &str) {
    assert!(
        after == before,
        "{context}: NPM's hosts changed\nbefore: {:#?}\nafter:  {:#?}",
        summary(before),
        summary(after)
    );
}

fn host_path(id: u64) -> String {
    format!("{PROXY_HOSTS}/{id}")
}

fn published_port(inst: &Instance) -> u16 {
    inst.address
        .as_deref()
        .and_then(|a| a.rsplit_once(':'))
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("{} has no published address", inst.id))
}

// ---------------------------------------------------------------------------------------------
// Routing on success

#[tokio::test]
async fn a_deploy_creates_the_instance_host_then_the_stage_host() {
    let h = harness(Setup::default()).await;
    h.deploy("v1").await;
    let v1 = h.instance("v1").await;

    assert_eq!(h.npm.hosts().len(), 2, "{:#?}", h.npm.hosts());
    for domain in [instance_domain("v1").as_str(), STAGE_DOMAIN] {
        let host = h.host(domain);
        assert_eq!(host["domain_names"], json!([domain]));
        assert_eq!(host["forward_scheme"], "http");
        assert_eq!(host["forward_host"], v1.container_name.as_str());
        assert_eq!(host["forward_port"], 8080);
        assert_eq!(host["enabled"], true);
        assert_eq!(host["meta"]["skipper"], true, "managed marker on {domain}");
        assert_eq!(host["meta"]["nginx_online"], true);
    }
    let writes = h.writes().await;
    assert_eq!(
        lines(&writes),
        [format!("POST {PROXY_HOSTS}"), format!("POST {PROXY_HOSTS}")]
    );
    assert_eq!(
        writes[0].body["domain_names"],
        json!([instance_domain("v1")]),
        "the instance's own domain comes first"
    );
    assert_eq!(writes[1].body["domain_names"], json!([STAGE_DOMAIN]));
}

#[tokio::test]
async fn a_second_deploy_switches_the_stage_host_with_one_put_and_retires_the_old_host() {
    let h = harness(Setup::default()).await;
    h.deploy("v1").await;
    let v1 = h.instance("v1").await;
    let stage_id = h.host_id(STAGE_DOMAIN);
    let stage_created = h.host(STAGE_DOMAIN)["created_on"].clone();
    let v1_host = h.host_id(&instance_domain("v1"));
    let mark = h.mark().await;

    let d = h.deploy("v2").await;
    let v2 = h.instance("v2").await;
    assert_eq!(d.replaced, vec![v1.id.clone()]);

    // The new instance's host, the switch of the stage host in place, then the old host goes.
    let writes = h.writes_since(mark).await;
    assert_eq!(
        lines(&writes),
        [
            format!("POST {PROXY_HOSTS}"),
            format!("PUT {}", host_path(stage_id)),
            format!("DELETE {}", host_path(v1_host)),
        ]
    );
    assert_eq!(
        writes[0].body["domain_names"],
        json!([instance_domain("v2")])
    );
    assert_eq!(
        writes[1].body,
        json!({ "forward_host": v2.container_name }),
        "the switch sends only the changed forward target"
    );

    // The stage's host is the same host (never deleted, never recreated), now forwarding to v2.
    assert_eq!(h.host_id(STAGE_DOMAIN), stage_id);
    assert_eq!(h.host(STAGE_DOMAIN)["created_on"], stage_created);
    h.assert_forwards_to(STAGE_DOMAIN, &v2);
    h.assert_forwards_to(&instance_domain("v2"), &v2);
    assert!(h.npm.host_for(&instance_domain("v1")).is_none());
    assert_eq!(h.npm.hosts().len(), 2, "{:#?}", h.npm.hosts());
    assert_eq!(h.rt.containers().len(), 1, "the old container is removed");
}

#[tokio::test]
async fn published_upstreams_forward_to_127_0_0_1_and_the_published_port() {
    let h = harness(Setup {
        upstream: UpstreamTarget::Published { host: None },
        ..Setup::default()
    })
    .await;
    h.deploy("v1").await;
    let v1 = h.instance("v1").await;
    let p1 = published_port(&v1);
    for domain in [instance_domain("v1").as_str(), STAGE_DOMAIN] {
        let host = h.host(domain);
        assert_eq!(host["forward_host"], "127.0.0.1", "{domain}");
        assert_eq!(host["forward_port"], p1, "{domain}");
    }
    let stage_id = h.host_id(STAGE_DOMAIN);
    let mark = h.mark().await;

    h.deploy("v2").await;
    let v2 = h.instance("v2").await;
    let p2 = published_port(&v2);
    assert_ne!(p1, p2);
    let writes = h.writes_since(mark).await;
    let puts: Vec<_> = writes.iter().filter(|w| w.method == "PUT").collect();
    assert_eq!(puts.len(), 1, "{:#?}", lines(&writes));
    assert_eq!(puts[0].path, host_path(stage_id));
    assert_eq!(puts[0].body, json!({ "forward_port": p2 }));
    assert_eq!(h.host_id(STAGE_DOMAIN), stage_id);
    let stage = h.host(STAGE_DOMAIN);
    assert_eq!(
        (&stage["forward_host"], &stage["forward_port"]),
        (&json!("127.0.0.1"), &json!(p2))
    );
    assert_eq!(h.host(&instance_domain("v2"))["forward_port"], p2);
    assert!(h.npm.host_for(&instance_domain("v1")).is_none());
}

#[tokio::test]
async fn redeploying_the_same_tag_moves_both_hosts_in_place() {
    let h = harness(Setup::default()).await;
    h.deploy("v1").await;
    let old = h.instance("v1").await;
    let ids = (h.host_id(STAGE_DOMAIN), h.host_id(&instance_domain("v1")));
    let mark = h.mark().await;

    h.deploy("v1").await;
    let new = h.instance("v1").await;
    assert_ne!(new.id, old.id);
    let writes = h.writes_since(mark).await;
    assert_eq!(
        lines(&writes),
        [
            format!("PUT {}", host_path(ids.1)),
            format!("PUT {}", host_path(ids.0))
        ],
        "no create and no delete: the retired instance shared the domain"
    );
    assert_eq!(
        (h.host_id(STAGE_DOMAIN), h.host_id(&instance_domain("v1"))),
        ids
    );
    h.assert_forwards_to(STAGE_DOMAIN, &new);
    h.assert_forwards_to(&instance_domain("v1"), &new);
}

#[tokio::test]
async fn removing_an_instance_deletes_its_host() {
    let h = harness(Setup {
        max_instances: 2,
        ..Setup::default()
    })
    .await;
    h.deploy("v1").await;
    h.deploy("v2").await;
    let (v1, v2) = (h.instance("v1").await, h.instance("v2").await);
    let stage_id = h.host_id(STAGE_DOMAIN);
    let v1_host = h.host_id(&instance_domain("v1"));
    let v2_host = h.host_id(&instance_domain("v2"));
    h.assert_forwards_to(STAGE_DOMAIN, &v2);

    // An inactive instance: only its own host goes.
    let mark = h.mark().await;
    h.engine.remove_instance(&v1.id).await.unwrap();
    assert_eq!(
        lines(&h.writes_since(mark).await),
        [format!("DELETE {}", host_path(v1_host))]
    );
    assert!(h.npm.host_for(&instance_domain("v1")).is_none());
    h.assert_forwards_to(STAGE_DOMAIN, &v2);
    h.assert_forwards_to(&instance_domain("v2"), &v2);

    // The active instance with no other to take over: its host and the stage's host go.
    let mark = h.mark().await;
    h.engine.remove_instance(&v2.id).await.unwrap();
    assert_eq!(
        lines(&h.writes_since(mark).await),
        [
            format!("DELETE {}", host_path(v2_host)),
            format!("DELETE {}", host_path(stage_id))
        ]
    );
    assert!(h.npm.hosts().is_empty(), "{:#?}", h.npm.hosts());
    assert!(h.rt.containers().is_empty());
}

#[tokio::test]
async fn removing_the_active_instance_hands_the_stage_host_to_the_other_in_place() {
    let h = harness(Setup {
        max_instances: 2,
        ..Setup::default()
    })
    .await;
    h.deploy("v1").await;
    h.deploy("v2").await;
    let (v1, v2) = (h.instance("v1").await, h.instance("v2").await);
    let stage_id = h.host_id(STAGE_DOMAIN);
    let v2_host = h.host_id(&instance_domain("v2"));

    let mark = h.mark().await;
    h.engine.remove_instance(&v2.id).await.unwrap();
    let writes = h.writes_since(mark).await;
    assert_eq!(
        lines(&writes),
        [
            format!("DELETE {}", host_path(v2_host)),
            format!("PUT {}", host_path(stage_id))
        ]
    );
    assert_eq!(writes[1].body, json!({ "forward_host": v1.container_name }));
    h.assert_forwards_to(STAGE_DOMAIN, &v1);
    h.assert_forwards_to(&instance_domain("v1"), &v1);
    assert_eq!(h.npm.hosts().len(), 2);
    assert!(h.instance("v1").await.active);
}

#[tokio::test]
async fn rollback_switches_the_stage_host_back_in_place() {
    let h = harness(Setup {
        max_instances: 2,
        ..Setup::default()
    })
    .await;
    h.deploy("v1").await;
    h.deploy("v2").await;
    let v1 = h.instance("v1").await;
    let stage_id = h.host_id(STAGE_DOMAIN);
    let before = h.hosts();
    let mark = h.mark().await;

    let d = h.engine.rollback("web", "dev").await.unwrap();
    assert_eq!(d.status, DeployStatus::Succeeded, "{:?}", d.error);
    assert_eq!(d.trigger, Trigger::Rollback);
    let writes = h.writes_since(mark).await;
    assert_eq!(lines(&writes), [format!("PUT {}", host_path(stage_id))]);
    assert_eq!(writes[0].body, json!({ "forward_host": v1.container_name }));
    h.assert_forwards_to(STAGE_DOMAIN, &v1);
    // Only the stage host changed; both instance hosts are as they were.
    let changed: Vec<_> = h
        .hosts()
        .into_iter()
        .filter(|host| !before.contains(host))
        .map(|host| host["id"].clone())
        .collect();
    assert_eq!(changed, [json!(stage_id)]);
}

#[tokio::test]
async fn rollback_by_redeploy_switches_the_stage_host_back_in_place() {
    let h = harness(Setup::default()).await;
    h.deploy("v1").await;
    h.deploy("v2").await;
    let stage_id = h.host_id(STAGE_DOMAIN);
    let v2_host = h.host_id(&instance_domain("v2"));
    let mark = h.mark().await;

    let d = h.engine.rollback("web", "dev").await.unwrap();
    assert_eq!(d.status, DeployStatus::Succeeded, "{:?}", d.error);
    let v1 = h.instance("v1").await;
    assert_eq!(
        lines(&h.writes_since(mark).await),
        [
            format!("POST {PROXY_HOSTS}"),
            format!("PUT {}", host_path(stage_id)),
            format!("DELETE {}", host_path(v2_host)),
        ]
    );
    h.assert_forwards_to(STAGE_DOMAIN, &v1);
    h.assert_forwards_to(&instance_domain("v1"), &v1);
    assert!(h.npm.host_for(&instance_domain("v2")).is_none());
}

// ---------------------------------------------------------------------------------------------
// Failures: the previous routing stays exactly as it was

#[tokio::test]
async fn an_unhealthy_deploy_never_routes_to_its_container() {
    let h = harness(Setup::default()).await;
    h.deploy("v1").await;
    let v1 = h.instance("v1").await;
    let before = h.hosts();
    let mark = h.mark().await;

    let d = h.try_deploy("sick").await;
    assert_eq!(d.status, DeployStatus::Failed);
    assert_eq!(
        d.error.as_ref().map(|e| e.step),
        Some(Step::Health),
        "{:?}",
        d.error
    );
    assert!(
        h.writes_since(mark).await.is_empty(),
        "no write to NPM at all"
    );
    assert_same_hosts(&h.hosts(), &before, "unhealthy deploy");
    assert!(h.npm.host_for(&instance_domain("sick")).is_none());
    h.assert_forwards_to(STAGE_DOMAIN, &v1);
    assert_eq!(h.rt.running(), [v1.container_id.clone().unwrap()]);
    assert_eq!(
        h.rt.containers().len(),
        1,
        "the unhealthy container is removed"
    );
    let insts = h.instances().await;
    assert_eq!(insts.len(), 1);
    assert!(insts[0].active && insts[0].state == InstanceState::Running);
    assert!(
        h.notifier
            .events()
            .iter()
            .any(|e| e.kind == EventKind::DeployFailed)
    );
}

/// Deploy v1, let `inject` make NPM misbehave, deploy v2: the deploy fails at `step`, NPM holds
/// exactly the hosts it held after v1 (ids, domains, targets, options, meta), v1's container is
/// the only one, and v1 is the active instance.
async fn npm_failure_leaves_routing_as_it_was(
    setup: Setup,
    step: Step,
    inject: impl FnOnce(&FakeNpm),
) -> (Harness, Deployment) {
    let h = harness(setup).await;
    h.deploy("v1").await;
    let v1 = h.instance("v1").await;
    let before = h.hosts();

    inject(&h.npm);
    let d = h.try_deploy("v2").await;
    assert_eq!(d.status, DeployStatus::Failed, "the deploy must fail");
    let error = d.error.clone().expect("a failed deploy has an error");
    assert_eq!(error.step, step, "{error:?}");

    assert_same_hosts(&h.hosts(), &before, &format!("steps {:#?}", step_log(&d)));
    h.assert_forwards_to(STAGE_DOMAIN, &v1);
    h.assert_forwards_to(&instance_domain("v1"), &v1);
    assert!(h.npm.host_for(&instance_domain("v2")).is_none());
    let v1_container = v1.container_id.clone().unwrap();
    assert_eq!(h.rt.running(), vec![v1_container.clone()]);
    let containers: Vec<_> = h.rt.containers().into_iter().map(|c| c.id).collect();
    assert_eq!(containers, [v1_container], "no orphan container");
    let insts = h.instances().await;
    assert_eq!(insts.len(), 1, "no orphan record: {insts:#?}");
    assert!(insts[0].active && insts[0].id == v1.id);
    (h, d)
}

#[tokio::test]
async fn npm_500_on_create_fails_at_route() {
    let (h, d) = npm_failure_leaves_routing_as_it_was(Setup::default(), Step::Route, |npm| {
        npm.fail_next(FakeOp::CreateHost, 1, Fault::Status(500));
    })
    .await;
    assert_eq!(d.error.unwrap().kind, ErrorKind::Transient);
    assert_eq!(
        h.npm.count(FakeOp::CreateHost),
        3,
        "the failed create is not repeated (v1 made two)"
    );
}

#[tokio::test]
async fn npm_502_page_on_create_fails_at_route() {
    npm_failure_leaves_routing_as_it_was(Setup::default(), Step::Route, |npm| {
        npm.fail_next(FakeOp::CreateHost, 1, Fault::Status(502));
    })
    .await;
}

#[tokio::test]
async fn npm_hanging_on_create_past_the_route_timeout_fails_at_route_and_removes_the_host() {
    let setup = Setup {
        route_timeout: Duration::from_millis(500),
        ..Setup::default()
    };
    let (h, d) = npm_failure_leaves_routing_as_it_was(setup, Step::Route, |npm| {
        // NPM makes the host but answers after the engine has given up.
        npm.fail_next(FakeOp::CreateHost, 1, Fault::Delay(Duration::from_secs(2)));
    })
    .await;
    assert_eq!(d.error.unwrap().kind, ErrorKind::Timeout);
    let writes = h.writes().await;
    assert_eq!(
        writes.last().map(Write::line).as_deref(),
        Some(format!("DELETE {}", host_path(3)).as_str()),
        "the host the lost create made is deleted: {:#?}",
        lines(&writes)
    );
}

#[tokio::test]
async fn a_create_whose_answer_is_lost_is_adopted_not_duplicated() {
    let h = harness(Setup {
        client_timeout: Duration::from_millis(300),
        ..Setup::default()
    })
    .await;
    h.deploy("v1").await;
    h.npm
        .fail_next(FakeOp::CreateHost, 1, Fault::Delay(Duration::from_secs(1)));
    h.deploy("v2").await;
    let v2 = h.instance("v2").await;
    assert_eq!(
        h.npm.count(FakeOp::CreateHost),
        3,
        "the create is not repeated (v1 made two)"
    );
    assert_eq!(h.npm.hosts().len(), 2, "{:#?}", h.npm.hosts());
    h.assert_forwards_to(&instance_domain("v2"), &v2);
    h.assert_forwards_to(STAGE_DOMAIN, &v2);
}

#[tokio::test]
async fn npm_500_on_every_update_attempt_fails_at_switch() {
    let (_, d) = npm_failure_leaves_routing_as_it_was(Setup::default(), Step::Switch, |npm| {
        npm.fail_next(FakeOp::UpdateHost, 3, Fault::Status(500));
    })
    .await;
    assert_eq!(d.error.unwrap().kind, ErrorKind::Transient);
}

#[tokio::test]
async fn npm_500_after_committing_every_update_fails_at_switch_and_switches_back() {
    npm_failure_leaves_routing_as_it_was(Setup::default(), Step::Switch, |npm| {
        // Each PUT is applied, and each answer is a 500: the stage host does point at v2.
        npm.fail_next(FakeOp::UpdateHost, 3, Fault::StatusAfterCommit(500));
    })
    .await;
}

#[tokio::test]
async fn npm_update_timing_out_on_every_attempt_fails_at_switch_and_switches_back() {
    let setup = Setup {
        client_timeout: Duration::from_millis(300),
        ..Setup::default()
    };
    let (_, d) = npm_failure_leaves_routing_as_it_was(setup, Step::Switch, |npm| {
        npm.fail_next(FakeOp::UpdateHost, 3, Fault::Delay(Duration::from_secs(1)));
    })
    .await;
    assert_eq!(d.error.unwrap().kind, ErrorKind::Transient);
}

#[tokio::test]
async fn npm_hanging_on_update_past_the_route_timeout_fails_at_switch_and_switches_back() {
    let setup = Setup {
        route_timeout: Duration::from_millis(500),
        ..Setup::default()
    };
    let (_, d) = npm_failure_leaves_routing_as_it_was(setup, Step::Switch, |npm| {
        npm.fail_next(FakeOp::UpdateHost, 1, Fault::Delay(Duration::from_secs(2)));
    })
    .await;
    assert_eq!(d.error.unwrap().kind, ErrorKind::Timeout);
}

/// Retiring comes after the commit point: NPM refusing to delete the old version's host does
/// not take the new version down. The deploy succeeds with the failure in its step log, the old
/// container is left stopped-or-running for reconcile, and one reconcile removes the host and
/// the container.
#[tokio::test]
async fn npm_500_on_deleting_the_old_host_rolls_forward_and_reconcile_finishes() {
    let h = harness(Setup::default()).await;
    h.deploy("v1").await;
    h.npm.fail_next(FakeOp::DeleteHost, 3, Fault::Status(500));
    let d = h.try_deploy("v2").await;
    assert_eq!(d.status, DeployStatus::Succeeded, "{:#?}", step_log(&d));
    assert!(
        d.steps
            .iter()
            .any(|s| s.step == Step::Retire && s.status == StepStatus::Failed),
        "{:#?}",
        step_log(&d)
    );
    let v2 = h.instance("v2").await;
    h.assert_forwards_to(STAGE_DOMAIN, &v2);
    assert_eq!(
        h.rt.calls(skipper_core::testing::Op::Stop),
        0,
        "v1 is not stopped while its host could not be removed"
    );
    h.engine.reconcile().await.unwrap();
    assert!(h.npm.host_for(&instance_domain("v1")).is_none());
    let insts = h.instances().await;
    assert_eq!(insts.len(), 1, "{insts:#?}");
    assert_eq!(h.rt.containers().len(), 1);
    h.assert_forwards_to(STAGE_DOMAIN, &v2);
}

#[tokio::test]
async fn nginx_refusing_the_new_host_fails_the_deploy_and_rolls_back() {
    let (_, d) = npm_failure_leaves_routing_as_it_was(Setup::default(), Step::Route, |npm| {
        npm.break_nginx_for(&instance_domain("v2"), "host not found in upstream");
    })
    .await;
    let error = d.error.unwrap();
    assert_eq!(error.kind, ErrorKind::Invalid);
    assert!(
        error.message.contains("host not found in upstream"),
        "{}",
        error.message
    );
    assert!(
        d.steps
            .iter()
            .any(|s| s.step == Step::Route && s.status == StepStatus::Undone),
        "the refused host is removed: {:#?}",
        d.steps
    );
}

#[tokio::test]
async fn nginx_refusing_the_switched_stage_host_fails_the_deploy_and_points_it_back() {
    let h = harness(Setup::default()).await;
    h.deploy("v1").await;
    let v1 = h.instance("v1").await;
    let stage_id = h.host_id(STAGE_DOMAIN);
    h.npm.break_nginx_for(STAGE_DOMAIN, "invalid server name");

    let d = h.try_deploy("v2").await;
    assert_eq!(d.status, DeployStatus::Failed);
    assert_eq!(
        d.error.as_ref().map(|e| e.step),
        Some(Step::Switch),
        "{:?}",
        d.error
    );
    // nginx still refuses the domain (whatever it forwards to), but the host forwards to the
    // container that runs, not to the one the rollback removed.
    assert_eq!(h.host_id(STAGE_DOMAIN), stage_id);
    h.assert_forwards_to(STAGE_DOMAIN, &v1);
    assert!(h.npm.host_for(&instance_domain("v2")).is_none());
    assert_eq!(h.rt.containers().len(), 1);
}

#[tokio::test]
async fn a_rollback_whose_switch_fails_leaves_the_stage_host_on_the_current_version() {
    let h = harness(Setup {
        max_instances: 2,
        ..Setup::default()
    })
    .await;
    h.deploy("v1").await;
    h.deploy("v2").await;
    let v2 = h.instance("v2").await;
    let before = h.hosts();
    // NPM applies each PUT and answers 500: the switch to v1 is made, yet reported failed.
    h.npm
        .fail_next(FakeOp::UpdateHost, 3, Fault::StatusAfterCommit(500));

    let d = h.engine.rollback("web", "dev").await.unwrap();
    assert_eq!(d.status, DeployStatus::Failed);
    assert_eq!(d.error.as_ref().map(|e| e.step), Some(Step::Switch));
    assert_same_hosts(&h.hosts(), &before, &format!("steps {:#?}", step_log(&d)));
    h.assert_forwards_to(STAGE_DOMAIN, &v2);
    assert!(
        h.instance("v2").await.active,
        "v2 is still the active instance"
    );
}

// ---------------------------------------------------------------------------------------------
// Reconcile

#[tokio::test]
async fn reconcile_repairs_a_stage_host_pointed_elsewhere_by_hand() {
    let h = harness(Setup::default()).await;
    h.deploy("v1").await;
    let v1 = h.instance("v1").await;
    let stage_id = h.host_id(STAGE_DOMAIN);

    // Someone points the stage's host at something else, in place (as NPM's UI does).
    let elsewhere = Route {
        domain: STAGE_DOMAIN.into(),
        upstream: Upstream {
            scheme: "http".into(),
            host: "somewhere-else".into(),
            port: 9999,
        },
        options: RouteOptions::default(),
    };
    h.npm.client().ensure(&elsewhere).await.unwrap();
    assert_eq!(h.host(STAGE_DOMAIN)["forward_host"], "somewhere-else");
    let mark = h.mark().await;

    let report = h.engine.reconcile().await.unwrap();
    assert_eq!(report.routes_repaired, [STAGE_DOMAIN]);
    let writes = h.writes_since(mark).await;
    assert_eq!(lines(&writes), [format!("PUT {}", host_path(stage_id))]);
    assert_eq!(h.host_id(STAGE_DOMAIN), stage_id);
    h.assert_forwards_to(STAGE_DOMAIN, &v1);

    // Run again: nothing left to repair.
    let report = h.engine.reconcile().await.unwrap();
    assert!(report.routes_repaired.is_empty(), "{report:?}");
}

#[tokio::test]
async fn reconcile_recreates_a_host_deleted_by_hand() {
    let h = harness(Setup::default()).await;
    h.deploy("v1").await;
    let v1 = h.instance("v1").await;
    assert!(h.npm.delete_host(h.host_id(&instance_domain("v1"))));

    let report = h.engine.reconcile().await.unwrap();
    assert_eq!(report.routes_repaired, [instance_domain("v1")]);
    h.assert_forwards_to(&instance_domain("v1"), &v1);
    h.assert_forwards_to(STAGE_DOMAIN, &v1);
}

#[tokio::test]
async fn deploying_a_project_leaves_the_hosts_of_a_project_whose_name_extends_its_own() {
    let h = harness(Setup::default()).await;
    h.engine.put_project(&project("web-api", 1)).await.unwrap();
    h.rt.add_image("localhost:5000/team/web-api:v1", Behavior::Healthy);
    let image = ImageRef::parse("localhost:5000/team/web-api:v1").unwrap();
    let d = h
        .engine
        .deploy(DeployRequest::new("web-api", "dev", image))
        .await
        .unwrap();
    assert_eq!(d.status, DeployStatus::Succeeded, "{:?}", d.error);
    let api_hosts = h.hosts();
    let api_domains: Vec<_> = api_hosts
        .iter()
        .map(|h| h["domain_names"][0].clone())
        .collect();
    assert_eq!(
        api_domains,
        [
            json!("stage-dev-web-api-v1.example.com"),
            json!("stage-dev-web-api.example.com")
        ]
    );

    // Project "web"'s stage label `stage-dev-web` is a prefix of web-api's domains.
    h.deploy("v1").await;
    h.engine.reconcile().await.unwrap();
    for host in &api_hosts {
        assert!(
            h.hosts().contains(host),
            "web-api's host {} was touched: {:#?}",
            host["domain_names"][0],
            h.npm.hosts()
        );
    }
    assert_eq!(h.npm.hosts().len(), 4);
}
