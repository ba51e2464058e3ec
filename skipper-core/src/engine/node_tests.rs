//! One engine, several Docker hosts: stages that name a `node` run on that node's runtime
//! (issue 11). Against the in-memory fakes, with paused time.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::model::{DeployStatus, InstanceState, Stage};
use crate::store::MemoryStore;
use crate::testing::{Behavior, FakeProxy, FakeRuntime, Op, StaticNodes};

const REPO: &str = "localhost:5000/team/web";

struct Fleet {
    engine: Engine,
    local: Arc<FakeRuntime>,
    remote: Arc<FakeRuntime>,
    nodes: Arc<StaticNodes>,
    store: Arc<MemoryStore>,
}

fn runtime() -> Arc<FakeRuntime> {
    let rt = Arc::new(FakeRuntime::new());
    for tag in ["v1", "v2"] {
        rt.add_image(&format!("{REPO}:{tag}"), Behavior::Healthy);
    }
    rt
}

/// Project `web`: stage `dev` on node `n1`, stage `rel` on the engine's own host. With
/// `shared`, node `n1` is the same Docker host as the engine's own (two agents, or an agent
/// beside the server, on one engine).
async fn fleet(shared: bool) -> Fleet {
    let local = runtime();
    let remote = if shared { local.clone() } else { runtime() };
    let nodes = Arc::new(StaticNodes::new());
    nodes.add("n1", remote.clone());
    let store = Arc::new(MemoryStore::new());
    let engine = Engine::builder(local.clone(), store.clone())
        .proxy(Arc::new(FakeProxy::new()))
        .nodes(nodes.clone())
        .settings(EngineSettings {
            lock_wait: Duration::from_secs(600),
            ..EngineSettings::default()
        })
        .build();
    let mut p = Project::new("web", REPO).unwrap();
    p.port = Some(8080);
    p.health.path = Some("/health".into());
    let mut dev = Stage::new("dev");
    dev.node = Some("n1".into());
    p = p.with_stage(dev).with_stage(Stage::new("rel"));
    engine.put_project(&p).await.unwrap();
    Fleet {
        engine,
        local,
        remote,
        nodes,
        store,
    }
}

fn image(tag: &str) -> ImageRef {
    ImageRef::parse(&format!("{REPO}:{tag}")).unwrap()
}

impl Fleet {
    async fn deploy(&self, stage: &str, tag: &str) -> Deployment {
        let d = self
            .engine
            .deploy(DeployRequest::new("web", stage, image(tag)))
            .await
            .unwrap();
        assert_eq!(d.status, DeployStatus::Succeeded, "{d:?}");
        d
    }

    async fn instance(&self, stage: &str) -> Instance {
        let list = self
            .engine
            .instances(&InstanceFilter {
                project: Some("web".into()),
                stage: Some(stage.into()),
            })
            .await
            .unwrap();
        assert_eq!(list.len(), 1, "{list:?}");
        list.into_iter().next().unwrap()
    }
}

fn node_of(rt: &FakeRuntime, id: &str) -> Option<String> {
    rt.containers()
        .into_iter()
        .find(|c| c.id == id)
        .and_then(|c| c.labels.get(labels::NODE).cloned())
}

#[tokio::test(start_paused = true)]
async fn a_stage_on_a_node_runs_on_that_nodes_runtime() {
    let f = fleet(false).await;
    f.deploy("dev", "v1").await;
    f.deploy("rel", "v1").await;
    let dev = f.instance("dev").await;
    let rel = f.instance("rel").await;
    let (dev_c, rel_c) = (dev.container_id.unwrap(), rel.container_id.unwrap());
    assert_eq!(
        f.remote.running(),
        vec![dev_c.clone()],
        "dev runs on n1 only"
    );
    assert_eq!(f.local.running(), vec![rel_c.clone()], "rel runs here only");
    assert_eq!(node_of(&f.remote, &dev_c).as_deref(), Some("n1"));
    assert_eq!(node_of(&f.local, &rel_c), None);

    // Blue-green on the node: v2 replaces v1 there.
    f.deploy("dev", "v2").await;
    let dev2 = f.instance("dev").await;
    assert_eq!(dev2.tag, "v2");
    assert_eq!(f.remote.running(), vec![dev2.container_id.clone().unwrap()]);

    // Instance operations go to the node.
    let stopped = f.engine.stop_instance(&dev2.id).await.unwrap();
    assert_eq!(stopped.state, InstanceState::Stopped);
    assert!(f.remote.running().is_empty(), "stopped on n1");
    assert_eq!(f.local.running(), vec![rel_c.clone()], "rel untouched");
    f.engine.start_instance(&dev2.id).await.unwrap();
    assert_eq!(f.remote.running().len(), 1);

    // Reading both hosts shows both running; the restart moved the node's published port,
    // which one reconcile follows (upstream and route), and then nothing is left to repair.
    let seen = f.engine.observe(&InstanceFilter::default()).await.unwrap();
    assert!(
        seen.iter().all(|i| i.state == InstanceState::Running),
        "{seen:?}"
    );
    let report = f.engine.reconcile().await.unwrap();
    assert_eq!(report.updated, vec![dev2.id.clone()], "{report:?}");
    let report = f.engine.reconcile().await.unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert!(
        report.missing.is_empty() && report.unreachable.is_empty(),
        "{report:?}"
    );

    // Rollback on the node.
    let back = f.engine.rollback("web", "dev").await.unwrap();
    assert_eq!(back.status, DeployStatus::Succeeded, "{back:?}");
    assert_eq!(f.instance("dev").await.tag, "v1");
    assert_eq!(f.remote.running().len(), 1);
    assert_eq!(f.local.running(), vec![rel_c]);
}

#[tokio::test(start_paused = true)]
async fn nodes_on_one_docker_host_never_take_each_others_containers() {
    let f = fleet(true).await;
    f.deploy("dev", "v1").await;
    f.deploy("rel", "v1").await;
    assert_eq!(f.local.running().len(), 2);
    for _ in 0..2 {
        let report = f.engine.reconcile().await.unwrap();
        assert!(report.is_clean(), "{report:?}");
        assert!(report.removed_containers.is_empty(), "{report:?}");
    }
    assert_eq!(f.local.running().len(), 2, "both stages still run");
    let seen = f.engine.observe(&InstanceFilter::default()).await.unwrap();
    assert!(
        seen.iter().all(|i| i.state == InstanceState::Running),
        "{seen:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_unknown_node_is_refused_before_anything_runs() {
    let f = fleet(false).await;
    let mut p = f.engine.project("web").await.unwrap();
    p.stages.get_mut("rel").unwrap().node = Some("nowhere".into());
    f.engine.put_project(&p).await.unwrap();
    let e = f
        .engine
        .deploy(DeployRequest::new("web", "rel", image("v1")))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert!(e.to_string().contains("node \"nowhere\""), "{e}");
    assert_eq!(f.local.calls(Op::Create) + f.remote.calls(Op::Create), 0);

    // An engine that drives no nodes says so.
    let lone = Engine::builder(runtime(), Arc::new(MemoryStore::new())).build();
    lone.put_project(&p).await.unwrap();
    let e = lone
        .deploy(DeployRequest::new("web", "rel", image("v1")))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Rejected, "{e}");
    assert!(e.to_string().contains("skipper serve"), "{e}");
}

#[tokio::test(start_paused = true)]
async fn reconcile_skips_an_unreachable_node_and_says_so() {
    let f = fleet(false).await;
    f.deploy("dev", "v1").await;
    f.deploy("rel", "v1").await;
    let rel = f.instance("rel").await;
    // Drift on this host is still repaired while n1 is away.
    f.local
        .exit_behind_back(rel.container_id.as_deref().unwrap(), 137);
    f.nodes.set_reachable("n1", false);
    let lists = f.remote.calls(Op::List);
    let report = f.engine.reconcile().await.unwrap();
    assert_eq!(report.unreachable, vec!["n1".to_owned()]);
    assert_eq!(report.restarted, vec![rel.id.clone()], "{report:?}");
    assert_eq!(f.remote.calls(Op::List), lists, "n1 was not called");
    // Back: clean.
    f.nodes.set_reachable("n1", true);
    let report = f.engine.reconcile().await.unwrap();
    assert!(
        report.unreachable.is_empty() && report.is_clean(),
        "{report:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_stage_with_instances_keeps_its_node() {
    let f = fleet(false).await;
    f.deploy("dev", "v1").await;
    let mut p = f.engine.project("web").await.unwrap();
    p.stages.get_mut("dev").unwrap().node = None;
    let e = f.engine.put_project(&p).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Conflict, "{e}");
    assert!(e.to_string().contains("node \"n1\""), "{e}");
    // Moving the project's default does not move a stage that names its own node.
    let mut q = f.engine.project("web").await.unwrap();
    q.node = Some("n1".into());
    f.engine.put_project(&q).await.unwrap();
    // Once its instances are removed, it may move.
    let dev = f.instance("dev").await;
    f.engine.remove_instance(&dev.id).await.unwrap();
    assert!(f.remote.containers().is_empty(), "removed on n1");
    f.engine.put_project(&p).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn orphans_on_a_node_no_project_names_are_removed_there() {
    let f = fleet(false).await;
    f.deploy("dev", "v1").await;
    assert_eq!(f.remote.containers().len(), 1);
    // The project record goes behind the engine's back (a restored backup): its container on
    // n1 is this store's orphan, found because n1 is a known node.
    f.store.delete_project("web").await.unwrap();
    let report = f.engine.reconcile().await.unwrap();
    assert_eq!(report.removed_containers.len(), 1, "{report:?}");
    assert!(f.remote.containers().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_deploy_to_an_offline_node_is_recorded_at_once_and_waits_for_it() {
    let f = fleet(false).await;
    f.nodes.set_reachable("n1", false);
    let mut feed = f.engine.activity();
    let engine = f.engine.clone();
    let task = tokio::spawn(async move {
        engine
            .deploy(DeployRequest::new("web", "dev", image("v1")))
            .await
    });
    // Started (so a server answers 202) while the node is still away; nothing ran there.
    let started = loop {
        match feed.recv().await.unwrap() {
            Activity::Started(d) => break d,
            _ => continue,
        }
    };
    assert_eq!(started.status, DeployStatus::InProgress);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(!task.is_finished(), "still waiting for n1");
    assert_eq!(f.remote.calls(Op::Create), 0);
    let waiting = f
        .engine
        .store()
        .get_deployment(&started.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(waiting.status, DeployStatus::InProgress, "{waiting:?}");
    f.nodes.set_reachable("n1", true);
    let d = task.await.unwrap().unwrap();
    assert_eq!(d.status, DeployStatus::Succeeded, "{d:?}");
    assert_eq!(d.id, started.id);
    assert!(
        d.steps
            .iter()
            .any(|s| s.message.contains("n1 is offline: waiting")),
        "{:?}",
        d.steps
    );
    assert_eq!(f.remote.running().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_node_that_stays_offline_fails_the_deploy_at_its_deadline() {
    let f = fleet(false).await;
    f.nodes.set_reachable("n1", false);
    let d = f
        .engine
        .deploy(DeployRequest::new("web", "dev", image("v1")))
        .await
        .unwrap();
    assert_eq!(d.status, DeployStatus::Failed, "{d:?}");
    let e = d.error.unwrap();
    assert_eq!(e.step, crate::model::Step::Validate);
    assert_eq!(e.kind, ErrorKind::Timeout);
    assert!(e.message.contains("node \"n1\""), "{}", e.message);
    assert_eq!(f.remote.calls(Op::Create), 0);
    assert!(f.remote.containers().is_empty() && f.local.containers().is_empty());
    // Nothing is left in progress, and the stage deploys once the node is back.
    f.nodes.set_reachable("n1", true);
    f.deploy("dev", "v1").await;
}

#[tokio::test(start_paused = true)]
async fn a_node_lost_mid_deploy_fails_in_time_and_reconcile_cleans_up_when_it_returns() {
    let f = fleet(false).await;
    f.deploy("dev", "v1").await;
    let v1 = f.instance("dev").await;
    // v2's container is made and started, then the node goes away: every later call hangs.
    for op in [Op::Inspect, Op::Probe, Op::Remove, Op::Stop] {
        for _ in 0..50 {
            f.remote.inject(op, crate::testing::Fault::Hang);
        }
    }
    let d = f
        .engine
        .deploy(DeployRequest::new("web", "dev", image("v2")))
        .await
        .unwrap();
    assert_eq!(d.status, DeployStatus::Failed, "{d:?}");
    assert_eq!(d.error.as_ref().unwrap().step, crate::model::Step::Health);
    assert_eq!(d.error.as_ref().unwrap().kind, ErrorKind::Timeout);
    // The undo could not reach the node: v2's container is still there, v1 still the stage's.
    assert_eq!(f.remote.containers().len(), 2);
    assert_eq!(f.instance("dev").await.id, v1.id);
    // Back: one reconcile removes what the failed deploy left; v1 serves alone.
    f.remote.clear_faults();
    let report = f.engine.reconcile().await.unwrap();
    assert_eq!(report.removed_containers.len(), 1, "{report:?}");
    assert_eq!(f.remote.running(), vec![v1.container_id.clone().unwrap()]);
    assert!(f.engine.reconcile().await.unwrap().is_clean());
}

#[tokio::test(start_paused = true)]
async fn what_cannot_wait_is_refused_at_once_while_its_node_is_offline() {
    // A rollback or an instance operation answers its caller now: on an offline node it is
    // refused before anything is sent there (never queued behind an agent that is not there).
    let f = fleet(false).await;
    f.deploy("dev", "v1").await;
    f.deploy("dev", "v2").await;
    let serving = f.instance("dev").await;
    f.nodes.set_reachable("n1", false);
    let (lists, stops) = (f.remote.calls(Op::List), f.remote.calls(Op::Stop));
    let all = DeploymentFilter::default();
    let history = f.engine.deployments(&all).await.unwrap().len();

    let e = f.engine.rollback("web", "dev").await.unwrap_err();
    assert!(
        matches!(&e, Error::NodeOffline { node } if node == "n1"),
        "{e:?}"
    );
    assert_eq!(e.kind(), ErrorKind::Transient);
    let e = f.engine.stop_instance(&serving.id).await.unwrap_err();
    assert!(matches!(&e, Error::NodeOffline { .. }), "{e:?}");

    assert_eq!(f.remote.calls(Op::List), lists, "n1 was not called");
    assert_eq!(f.remote.calls(Op::Stop), stops);
    let now = f.engine.deployments(&all).await.unwrap().len();
    assert_eq!(now, history, "nothing recorded");
    let still = f.instance("dev").await;
    assert_eq!(
        (still.id, still.state),
        (serving.id, InstanceState::Running)
    );

    // Back online: the same calls work.
    f.nodes.set_reachable("n1", true);
    let d = f.engine.rollback("web", "dev").await.unwrap();
    assert_eq!((d.status, d.tag.as_str()), (DeployStatus::Succeeded, "v1"));
}

#[tokio::test(start_paused = true)]
async fn a_node_no_stage_names_is_looked_at_every_few_passes_not_every_pass() {
    // A fleet of idle nodes: each pass asks the nodes stages run on; the others on the first
    // pass and every tenth (their orphans are found then).
    let f = fleet(false).await;
    let idle = runtime();
    f.nodes.add("n2", idle.clone());
    f.deploy("dev", "v1").await;
    let (busy_before, idle_before) = (f.remote.calls(Op::List), idle.calls(Op::List));
    for _ in 0..11 {
        let report = f.engine.reconcile().await.unwrap();
        assert!(report.is_clean(), "{report:?}");
    }
    assert_eq!(
        f.remote.calls(Op::List) - busy_before,
        11,
        "n1 runs a stage: every pass"
    );
    assert_eq!(idle.calls(Op::List) - idle_before, 2, "n2: passes 1 and 11");
}
