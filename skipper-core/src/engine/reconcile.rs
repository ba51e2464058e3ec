//! Reconcile: drive what the runtime and the proxy have toward what the store says.
//!
//! Runs before every mutating command on a stage (under its lease) and on demand for
//! everything. It is idempotent and is not told why it runs: whatever state a killed process
//! left, the outcome is the same. On every pass:
//! - deployments a dead process left in progress are settled: completed when their new
//!   instance was committed active, rolled back otherwise;
//! - the stage's active instance runs: an exited container is started again, unless a person
//!   stopped it (`skipper stop` records that); a vanished one is reported and notified, on
//!   every pass while it lasts;
//! - container ids, addresses and upstreams follow what the runtime has now (a container
//!   recreated by hand, a restart that moved its published port);
//! - routes point where the store says.
//!
//! Only containers of this store are touched (label `dev.skipper.store`, see
//! [`Store::store_id`](crate::backend::Store::store_id)); containers made before stores had an
//! identity count as this store's only when the store has records of them. Everything else is
//! reported as foreign and left alone.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chrono::Utc;
use serde::Serialize;

use super::{Engine, timed};
use crate::backend::{ContainerInfo, DeploymentFilter, InstanceFilter, Route, RunState};
use crate::error::{ErrorKind, Result};
use crate::model::{
    DeployError, DeployStatus, Event, EventKind, Instance, InstanceState, Project, Stage, Step,
    StepStatus, labels,
};

/// What a pass over every stage read once: each stage's containers and the proxy's routes.
pub(crate) struct Snapshot<'a> {
    pub(crate) at: crate::model::Timestamp,
    pub(crate) containers: Vec<ContainerInfo>,
    /// `None`: the proxy could not be listed (each stage tries again).
    pub(crate) routes: Option<&'a [Route]>,
}

/// What a reconcile found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReconcileReport {
    /// Instances recreated from labelled containers the store did not know.
    pub adopted: Vec<String>,
    /// Instances whose container is gone: found so by this pass, or still so when active.
    pub missing: Vec<String>,
    /// Containers removed as orphans (names).
    pub removed_containers: Vec<String>,
    /// Deployments an interrupted process left in progress, now settled.
    pub interrupted: Vec<String>,
    /// Domains whose routes were repaired or removed.
    pub routes_repaired: Vec<String>,
    /// Active instances whose exited container was started again.
    pub restarted: Vec<String>,
    /// Instances whose container id, address or upstream was corrected from the runtime.
    pub updated: Vec<String>,
    /// Containers that belong to another Skipper store (or to none this store knows): never
    /// touched (names).
    pub foreign: Vec<String>,
    /// Stages skipped because another operation holds them.
    pub busy: Vec<String>,
    /// Nodes that could not be reached: their stages were left for a later pass.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreachable: Vec<String>,
}

impl ReconcileReport {
    /// What was repaired in `project`/`stage`, in words, if anything (for the event).
    fn repairs(&self, project: &str, stage: &str) -> Option<String> {
        let mut parts = Vec::new();
        let mut say = |what: &str, list: &[String]| {
            if !list.is_empty() {
                parts.push(format!("{what} {}", list.join(", ")));
            }
        };
        say("restarted", &self.restarted);
        say("adopted", &self.adopted);
        say("removed orphan containers", &self.removed_containers);
        say("settled interrupted deploys", &self.interrupted);
        say("repaired routes", &self.routes_repaired);
        say("corrected", &self.updated);
        (!parts.is_empty()).then(|| format!("{project}/{stage}: {}", parts.join("; ")))
    }

    /// Whether nothing needed repair.
    pub fn is_clean(&self) -> bool {
        self.adopted.is_empty()
            && self.removed_containers.is_empty()
            && self.interrupted.is_empty()
            && self.routes_repaired.is_empty()
            && self.restarted.is_empty()
            && self.updated.is_empty()
    }

    fn merge(&mut self, other: ReconcileReport) {
        self.adopted.extend(other.adopted);
        self.missing.extend(other.missing);
        self.removed_containers.extend(other.removed_containers);
        self.interrupted.extend(other.interrupted);
        self.routes_repaired.extend(other.routes_repaired);
        self.restarted.extend(other.restarted);
        self.updated.extend(other.updated);
        for f in other.foreign {
            if !self.foreign.contains(&f) {
                self.foreign.push(f);
            }
        }
        self.busy.extend(other.busy);
        for n in other.unreachable {
            if !self.unreachable.contains(&n) {
                self.unreachable.push(n);
            }
        }
    }
}

/// Containers by id and by instance label: an instance's container is the one with its
/// recorded id, else the one labelled with its id (recreated by hand, or not yet recorded).
pub(crate) struct ContainerIndex<'a> {
    by_id: BTreeMap<&'a str, &'a ContainerInfo>,
    by_instance: BTreeMap<&'a str, &'a ContainerInfo>,
}

impl<'a> ContainerIndex<'a> {
    pub(crate) fn new(containers: &'a [ContainerInfo]) -> Self {
        Self {
            by_id: containers.iter().map(|c| (c.id.as_str(), c)).collect(),
            by_instance: containers
                .iter()
                .filter_map(|c| label(c, labels::INSTANCE).map(|i| (i, c)))
                .collect(),
        }
    }

    pub(crate) fn of(&self, inst: &Instance) -> Option<&'a ContainerInfo> {
        inst.container_id
            .as_deref()
            .and_then(|id| self.by_id.get(id))
            .or_else(|| self.by_instance.get(inst.id.as_str()))
            .copied()
    }
}

/// How many of a stage's newest deployments reconcile reads.
const RECENT: usize = 10;

fn label<'a>(c: &'a ContainerInfo, key: &str) -> Option<&'a str> {
    c.labels.get(key).map(String::as_str)
}

/// Nodes no stage names are looked at on the first reconcile pass and every this many after.
const IDLE_NODES_EVERY: u64 = 10;

/// How many nodes one reconcile pass asks for their containers at a time.
const NODE_LISTS_AT_ONCE: usize = 16;

impl Engine {
    /// Reconcile every stage of every project, and remove this store's containers of unknown
    /// projects. Stages busy with another operation are skipped (and listed in the report).
    pub async fn reconcile(&self) -> Result<ReconcileReport> {
        let this = self.clone();
        self.tracked(async move { this.reconcile_all().await })
            .await
    }

    async fn reconcile_all(&self) -> Result<ReconcileReport> {
        let projects: BTreeMap<String, Project> = self
            .stored(|| "project list", self.inner.store.list_projects())
            .await?
            .into_iter()
            .map(|p| (p.name.clone(), p))
            .collect();
        let at = chrono::Utc::now();
        // The nodes to look at: the engine's own host, every node a stage runs on, and, on
        // the first pass and every IDLE_NODES_EVERY-th after, every node known (orphans on a
        // node no project names any more: a fleet of idle nodes is not asked every pass).
        let mut nodes: BTreeSet<Option<String>> = BTreeSet::from([None]);
        for p in projects.values() {
            for s in p.stages.keys() {
                nodes.insert(p.node_of(s).map(str::to_owned));
            }
        }
        let pass = self
            .inner
            .passes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if pass.is_multiple_of(IDLE_NODES_EVERY) {
            nodes.extend(self.known_nodes().into_iter().map(Some));
        }
        let mut report = ReconcileReport::default();
        // This store's containers by node; a node that cannot be read now is left for later.
        // The nodes are asked side by side (at most NODE_LISTS_AT_ONCE at a time).
        let mut containers: BTreeMap<Option<String>, Vec<ContainerInfo>> = BTreeMap::new();
        let mut listed = vec![(None, self.managed_containers(None).await?)];
        let permits = Arc::new(tokio::sync::Semaphore::new(NODE_LISTS_AT_ONCE));
        let mut asks = tokio::task::JoinSet::new();
        for n in nodes.into_iter().flatten() {
            if !self.reachable(Some(&n)) {
                report.unreachable.push(n);
                continue;
            }
            let (this, permits) = (self.clone(), permits.clone());
            asks.spawn(async move {
                let _permit = permits.acquire_owned().await;
                let r = this.managed_containers(Some(&n)).await;
                (n, r)
            });
        }
        while let Some(done) = asks.join_next().await {
            let (n, r) = match done {
                Ok(done) => done,
                Err(e) => {
                    tracing::warn!(error = %e, "a node's container list did not finish");
                    continue;
                }
            };
            match r {
                Ok(c) => listed.push((Some(n), c)),
                Err(e) => {
                    tracing::warn!(node = %n, error = %e.chain(), "cannot reach the node; its stages are reconciled on a later pass");
                    report.unreachable.push(n);
                }
            }
        }
        report.unreachable.sort();
        for (node, list) in listed {
            let (ours, foreign) = self.split_owned(list).await?;
            report.foreign.extend(foreign.into_iter().map(|c| c.name));
            containers.insert(node, ours);
        }
        // One read of the routes for the whole pass (a stage changed since reads its own).
        let routes = match &self.inner.proxy {
            Some(proxy) => timed(
                || "route list".into(),
                self.inner.settings.timeouts.route,
                proxy.list_routes(),
            )
            .await
            .ok(),
            None => None,
        };
        // Every (project, stage, node) to look at: the stages where they run, and wherever
        // this store's containers are found.
        let mut stages: BTreeSet<(String, String, Option<String>)> = projects
            .values()
            .flat_map(|p| {
                p.stages
                    .keys()
                    .map(|s| (p.name.clone(), s.clone(), p.node_of(s).map(str::to_owned)))
            })
            .collect();
        for (node, list) in &containers {
            for c in list {
                if let (Some(p), Some(s)) = (label(c, labels::PROJECT), label(c, labels::STAGE)) {
                    stages.insert((p.to_owned(), s.to_owned(), node.clone()));
                }
            }
        }
        for (p, s, node) in stages {
            let Some(on_node) = containers.get(&node) else {
                continue; // unreachable: said above
            };
            let Some(lock) = self
                .acquire_stage(&p, &s, std::time::Duration::ZERO)
                .await?
            else {
                report.busy.push(format!("{p}/{s}"));
                continue;
            };
            let r = match projects.get(&p).and_then(|proj| {
                proj.stages
                    .get(&s)
                    .filter(|_| proj.node_of(&s) == node.as_deref())
                    .map(|st| (proj, st))
            }) {
                Some((proj, st)) => {
                    let snapshot = Snapshot {
                        at,
                        containers: on_node
                            .iter()
                            .filter(|c| {
                                label(c, labels::PROJECT) == Some(p.as_str())
                                    && label(c, labels::STAGE) == Some(s.as_str())
                            })
                            .cloned()
                            .collect(),
                        routes: routes.as_deref(),
                    };
                    self.reconcile_stage_in(proj, st, Some(snapshot)).await
                }
                // Not a stage of this store on this node: its containers there are orphans.
                None => self.remove_unowned(node.as_deref(), on_node, &p, &s).await,
            };
            lock.release().await;
            let r = r?;
            if let Some(message) = r.repairs(&p, &s) {
                // One event per stage that needed repair (drift made by hand, a crash).
                self.notify(Event {
                    kind: EventKind::Repaired,
                    project: p.clone(),
                    stage: s.clone(),
                    image: None,
                    deployment_id: None,
                    instance_id: None,
                    url: None,
                    message,
                    at: chrono::Utc::now(),
                    correlation_id: None,
                })
                .await;
            }
            report.merge(r);
        }
        if !report.foreign.is_empty() {
            tracing::info!(
                count = report.foreign.len(),
                "containers belong to another Skipper store; left alone"
            );
        }
        Ok(report)
    }

    /// A store call within the record time limit (an embedder's hanging store must not hold a
    /// stage lease forever).
    pub(crate) async fn stored<T>(
        &self,
        what: impl FnOnce() -> &'static str,
        fut: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        timed(
            || format!("store {}", what()),
            self.inner.settings.timeouts.record,
            fut,
        )
        .await
    }

    /// Labelled containers of this engine's scope on `node`.
    pub(crate) async fn managed_containers(
        &self,
        node: Option<&str>,
    ) -> Result<Vec<ContainerInfo>> {
        self.containers_matching(node, &self.managed_selector(node))
            .await
    }

    /// Containers of this engine's scope on `node` that carry every label of `extra` too.
    pub(crate) async fn containers_matching(
        &self,
        node: Option<&str>,
        extra: &BTreeMap<String, String>,
    ) -> Result<Vec<ContainerInfo>> {
        let mut selector = self.managed_selector(node);
        selector.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
        let rt = self.runtime_on(node)?;
        let containers = timed(
            || match node {
                Some(n) => format!("container list on node {n}"),
                None => "container list".into(),
            },
            self.inner.settings.timeouts.call,
            rt.list_containers(&selector),
        )
        .await?;
        Ok(self.in_scope(node, containers))
    }

    /// This store's containers, and the others. A container carrying a store label is this
    /// store's when the label is this store's id. One without (made before stores had an
    /// identity) is this store's only if the store has a record of its instance or deployment:
    /// an empty or another store must never take it for an orphan.
    pub(crate) async fn split_owned(
        &self,
        containers: Vec<ContainerInfo>,
    ) -> Result<(Vec<ContainerInfo>, Vec<ContainerInfo>)> {
        let me = self.store_id().await?;
        let store = &self.inner.store;
        let (mut ours, mut foreign) = (Vec::new(), Vec::new());
        for c in containers {
            let mine = match label(&c, labels::STORE) {
                Some(id) => id == me,
                None => {
                    let instance = match label(&c, labels::INSTANCE) {
                        Some(i) => self
                            .stored(|| "instance read", store.get_instance(i))
                            .await?
                            .is_some(),
                        None => false,
                    };
                    instance
                        || match label(&c, labels::DEPLOYMENT) {
                            Some(d) => self
                                .stored(|| "deployment read", store.get_deployment(d))
                                .await?
                                .is_some(),
                            None => false,
                        }
                }
            };
            if mine { ours.push(c) } else { foreign.push(c) }
        }
        Ok((ours, foreign))
    }

    /// This store's containers of a project or stage the store does not know (or not on this
    /// node): orphans.
    async fn remove_unowned(
        &self,
        node: Option<&str>,
        containers: &[ContainerInfo],
        project: &str,
        stage: &str,
    ) -> Result<ReconcileReport> {
        let mut report = ReconcileReport::default();
        for c in containers {
            if label(c, labels::PROJECT) == Some(project) && label(c, labels::STAGE) == Some(stage)
            {
                self.remove_container_quietly(node, &c.id).await?;
                report.removed_containers.push(c.name.clone());
            }
        }
        Ok(report)
    }

    async fn remove_container_quietly(&self, node: Option<&str>, id: &str) -> Result<()> {
        let rt = self.runtime_on(node)?;
        timed(
            || "container removal".into(),
            self.inner.settings.timeouts.call,
            rt.remove_container(id),
        )
        .await
    }

    /// This store's containers of one stage, and the foreign ones.
    pub(crate) async fn stage_containers(
        &self,
        node: Option<&str>,
        project: &str,
        stage: &str,
    ) -> Result<(Vec<ContainerInfo>, Vec<ContainerInfo>)> {
        let selector = BTreeMap::from([
            (labels::PROJECT.to_owned(), project.to_owned()),
            (labels::STAGE.to_owned(), stage.to_owned()),
        ]);
        let containers = self.containers_matching(node, &selector).await?;
        self.split_owned(containers).await
    }

    /// Reconcile one stage. The caller holds the stage's lease, so any deployment still marked
    /// in progress belongs to a process that died.
    pub(crate) async fn reconcile_stage(
        &self,
        project: &Project,
        stage: &Stage,
    ) -> Result<ReconcileReport> {
        self.reconcile_stage_in(project, stage, None).await
    }

    /// [`reconcile_stage`](Self::reconcile_stage), reading the stage's containers and the
    /// routes from `snapshot` (one read for a whole pass) unless the stage changed since it was
    /// taken: then they are read again, under the lease.
    pub(crate) async fn reconcile_stage_in(
        &self,
        project: &Project,
        stage: &Stage,
        snapshot: Option<Snapshot<'_>>,
    ) -> Result<ReconcileReport> {
        self.reconcile_stage_with(project, stage, snapshot, None)
            .await
    }

    /// [`reconcile_stage_in`](Self::reconcile_stage_in), leaving the deployment `running` (the
    /// caller's own, recorded before it could reconcile) as it is.
    pub(crate) async fn reconcile_stage_with(
        &self,
        project: &Project,
        stage: &Stage,
        snapshot: Option<Snapshot<'_>>,
        running: Option<&str>,
    ) -> Result<ReconcileReport> {
        let store = &self.inner.store;
        let node = project.node_of(&stage.name);
        let rt = &self.runtime_now(node)?;
        let call = self.inner.settings.timeouts.call;
        let mut report = ReconcileReport::default();

        let filter = InstanceFilter {
            project: Some(project.name.clone()),
            stage: Some(stage.name.clone()),
        };
        let mut instances = self.list_instances_timed(&filter).await?;

        // 1. Settle deployments a dead process left in progress. Every operation on a stage
        // reconciles it first, under its lease, so a dead one is always among the newest few.
        let history = self
            .list_deployments_timed(&DeploymentFilter {
                project: Some(project.name.clone()),
                stage: Some(stage.name.clone()),
                limit: Some(RECENT),
            })
            .await?;
        // The snapshot holds if nothing of this stage changed since it was taken (every
        // change of a stage writes an instance or a deployment, under the lease we now hold).
        let snapshot = snapshot.filter(|snap| {
            !instances.iter().any(|i| i.updated_at >= snap.at)
                && !history
                    .iter()
                    .any(|d| d.started_at >= snap.at || d.finished_at.is_some_and(|f| f >= snap.at))
        });
        let (containers, snapshot_routes) = match snapshot {
            Some(snap) => (snap.containers, Some(snap.routes)),
            None => {
                let (containers, foreign) = self
                    .stage_containers(node, &project.name, &stage.name)
                    .await?;
                report.foreign = foreign.into_iter().map(|c| c.name).collect();
                (containers, None)
            }
        };
        let mut failed_deploys: BTreeSet<String> = history
            .iter()
            .filter(|d| d.status == DeployStatus::Failed)
            .map(|d| d.id.clone())
            .collect();
        // An inactive instance made by an older deploy: look that deploy up.
        let seen: BTreeSet<String> = history.iter().map(|d| d.id.clone()).collect();
        for inst in instances.iter().filter(|i| !i.active) {
            if !seen.contains(&inst.deployment_id)
                && self
                    .stored(
                        || "deployment read",
                        store.get_deployment(&inst.deployment_id),
                    )
                    .await?
                    .is_some_and(|d| d.status == DeployStatus::Failed)
            {
                failed_deploys.insert(inst.deployment_id.clone());
            }
        }
        for mut d in history
            .into_iter()
            .filter(|d| d.status == DeployStatus::InProgress && Some(d.id.as_str()) != running)
        {
            let committed = d
                .instance_id
                .as_ref()
                .and_then(|id| instances.iter().find(|i| &i.id == id))
                .is_some_and(|i| i.active);
            let last = d.steps.last().map_or(Step::Validate, |s| s.step);
            if committed {
                // Past the commit point: roll forward. Retiring instances are removed below.
                d.status = DeployStatus::Succeeded;
                d.log(
                    Step::Record,
                    StepStatus::Done,
                    "completed by reconcile after the process stopped",
                );
                // Only the committed instance stays active.
                for i in instances.iter_mut() {
                    if i.active && Some(&i.id) != d.instance_id.as_ref() {
                        i.active = false;
                        self.stored(|| "instance write", store.put_instance(i))
                            .await?;
                    }
                }
            } else {
                d.status = DeployStatus::Failed;
                d.error = Some(DeployError {
                    step: last,
                    kind: ErrorKind::Interrupted,
                    message: format!(
                        "interrupted: the process stopped during step {last}; rolled back by reconcile"
                    ),
                    logs: Vec::new(),
                });
                failed_deploys.insert(d.id.clone());
            }
            d.finished_at = Some(Utc::now());
            self.stored(|| "deployment write", store.put_deployment(&d))
                .await?;
            tracing::warn!(deployment = %d.id, status = d.status.as_str(), "settled an interrupted deployment");
            report.interrupted.push(d.id.clone());
        }

        // 2. Instances against containers.
        let index = ContainerIndex::new(&containers);
        let mut known_containers = BTreeSet::new();
        let mut kept = Vec::new();
        for mut inst in instances {
            let container = index.of(&inst);
            if let Some(c) = container {
                known_containers.insert(c.id.clone());
            }
            let abandoned = failed_deploys.contains(&inst.deployment_id) && !inst.active;
            if abandoned
                || inst.state == InstanceState::Retiring
                || inst.state == InstanceState::Starting
            {
                // Made by a deploy that failed or died, or retired and not yet removed.
                if let Some(c) = container {
                    self.remove_container_quietly(node, &c.id).await?;
                    report.removed_containers.push(c.name.clone());
                }
                self.stored(|| "instance delete", store.delete_instance(&inst.id))
                    .await?;
                continue;
            }
            let before = inst.clone();
            match container {
                None => {
                    // The active one is said (and notified) on every pass while it lasts, not
                    // only the first that sees it: the stage is down until a deploy or rollback.
                    if inst.active || inst.state != InstanceState::Missing {
                        report.missing.push(inst.id.clone());
                        if inst.active {
                            self.notify(Event {
                                kind: EventKind::InstanceMissing,
                                project: inst.project.clone(),
                                stage: inst.stage.clone(),
                                image: Some(inst.image.clone()),
                                deployment_id: Some(inst.deployment_id.clone()),
                                instance_id: Some(inst.id.clone()),
                                url: None,
                                message: format!(
                                    "the container of {}/{}'s live instance {} ({}) is gone; \
                                     deploy again or roll back",
                                    inst.project, inst.stage, inst.id, inst.tag
                                ),
                                at: Utc::now(),
                                correlation_id: None,
                            })
                            .await;
                        }
                    }
                    inst.state = InstanceState::Missing;
                }
                Some(c) => {
                    let mut c = c.clone();
                    let running = c.state == RunState::Running || c.state == RunState::Restarting;
                    if !running && inst.active && inst.state != InstanceState::Stopped {
                        // The stage's live instance is meant to run (it crashed, or an
                        // interrupted operation stopped it): start it again.
                        timed(|| "container start".into(), call, rt.start_container(&c.id)).await?;
                        report.restarted.push(inst.id.clone());
                        inst.state = InstanceState::Running;
                        // A start publishes the port anew, maybe elsewhere.
                        if let Ok(fresh) = timed(
                            || "container inspect".into(),
                            call,
                            rt.inspect_container(&c.id),
                        )
                        .await
                        {
                            c = fresh;
                        }
                    } else if running {
                        inst.state = InstanceState::Running;
                    } else if inst.state != InstanceState::Stopped {
                        inst.state = InstanceState::Exited;
                    }
                    if c.published.is_some() {
                        inst.address = c.published.clone();
                    }
                    // Found by its label under another id: recreated by hand, keep the real one.
                    inst.container_id = Some(c.id.clone());
                    if let (Some(up), Some(_)) = (&inst.upstream, &c.published) {
                        let follows = self.upstream_for(&inst.container_name, up.port, Some(&c));
                        if matches!(
                            self.inner.settings.upstream,
                            super::UpstreamTarget::Published { .. }
                        ) && follows != *up
                        {
                            inst.upstream = Some(follows);
                        }
                    }
                }
            }
            if before != inst {
                if before.container_id != inst.container_id
                    || before.address != inst.address
                    || before.upstream != inst.upstream
                {
                    report.updated.push(inst.id.clone());
                }
                inst.updated_at = Utc::now();
                self.stored(|| "instance write", store.put_instance(&inst))
                    .await?;
            }
            kept.push(inst);
        }

        // 3. This store's containers no instance claims: orphans of failed deploys, or adoptable.
        for c in containers
            .iter()
            .filter(|c| !known_containers.contains(&c.id))
        {
            let deployment = label(c, labels::DEPLOYMENT).unwrap_or_default();
            let known = self
                .stored(|| "deployment read", store.get_deployment(deployment))
                .await?
                .map(|d| d.status);
            let adoptable = matches!(known, Some(DeployStatus::Succeeded) | None)
                && !failed_deploys.contains(deployment)
                && label(c, labels::INSTANCE).is_some()
                && label(c, labels::TAG).is_some();
            if !adoptable {
                self.remove_container_quietly(node, &c.id).await?;
                report.removed_containers.push(c.name.clone());
                continue;
            }
            let inst = self.adopt(project, stage, c, kept.iter().any(|i| i.active))?;
            self.stored(|| "instance write", store.put_instance(&inst))
                .await?;
            report.adopted.push(inst.id.clone());
            kept.push(inst);
        }

        // 4. Routes: the stage's domain goes to the active instance; instance domains to their
        // instances; domains of this stage that no instance owns are removed.
        if let Some(proxy) = &self.inner.proxy {
            let t = self.inner.settings.timeouts.route;
            let listed: Result<std::borrow::Cow<'_, [Route]>> = match snapshot_routes {
                Some(Some(routes)) => Ok(std::borrow::Cow::Borrowed(routes)),
                _ => timed(|| "route list".into(), t, proxy.list_routes())
                    .await
                    .map(std::borrow::Cow::Owned),
            };
            match listed {
                Err(e) => {
                    tracing::warn!(error = %e, "cannot list proxy routes; routes not reconciled this time")
                }
                Ok(routes) => {
                    let domains = &self.inner.settings.domains;
                    let stage_domain = domains.stage_domain(
                        &project.name,
                        &stage.name,
                        stage.subdomain.as_deref(),
                    );
                    let prefix =
                        format!("{}-", domains.stage_label(&project.name, &stage.name, None));
                    let suffix = format!(".{}", domains.domain);
                    let mut desired: BTreeMap<String, Route> = BTreeMap::new();
                    for i in kept.iter().filter(|i| i.state == InstanceState::Running) {
                        if let Some(up) = &i.upstream {
                            desired.insert(
                                i.domain.clone(),
                                Route {
                                    domain: i.domain.clone(),
                                    upstream: up.clone(),
                                    options: project.route.clone(),
                                },
                            );
                            if i.active {
                                desired.insert(
                                    stage_domain.clone(),
                                    Route {
                                        domain: stage_domain.clone(),
                                        upstream: up.clone(),
                                        options: project.route.clone(),
                                    },
                                );
                            }
                        }
                    }
                    let current: BTreeMap<&str, &Route> =
                        routes.iter().map(|r| (r.domain.as_str(), r)).collect();
                    // Another project's or stage's domains can start with this stage's label
                    // (`stage-dev-web-` is a prefix of project `web-api`'s domains): those are
                    // never this stage's to remove.
                    // (Read only when a route looks stale: usually none does.)
                    let mut foreign: Option<BTreeSet<String>> = None;
                    for (domain, want) in &desired {
                        if current.get(domain.as_str()).map(|r| &r.upstream) != Some(&want.upstream)
                        {
                            timed(|| format!("route {domain}"), t, proxy.ensure_route(want))
                                .await?;
                            report.routes_repaired.push(domain.clone());
                        }
                    }
                    for r in routes.iter() {
                        let ours = r.domain == stage_domain
                            || (r.domain.starts_with(&prefix) && r.domain.ends_with(&suffix));
                        if !ours
                            || desired.contains_key(&r.domain)
                            || kept.iter().any(|i| i.domain == r.domain)
                        {
                            continue;
                        }
                        if foreign.is_none() {
                            foreign = Some(self.foreign_domains(project, stage).await?);
                        }
                        if !foreign.as_ref().is_some_and(|f| f.contains(&r.domain)) {
                            timed(
                                || format!("route removal {}", r.domain),
                                t,
                                proxy.remove_route(&r.domain),
                            )
                            .await?;
                            report.routes_repaired.push(r.domain.clone());
                        }
                    }
                }
            }
        }
        if !report.is_clean() || !report.missing.is_empty() {
            tracing::info!(project = %project.name, stage = %stage.name, ?report, "reconciled");
        }
        Ok(report)
    }

    /// The stage domains of every other stage the store knows, and the domains of every other
    /// stage's instances.
    async fn foreign_domains(&self, project: &Project, stage: &Stage) -> Result<BTreeSet<String>> {
        let store = &self.inner.store;
        let domains = &self.inner.settings.domains;
        let mine = |p: &str, s: &str| p == project.name && s == stage.name;
        let mut foreign = BTreeSet::new();
        for p in self
            .stored(|| "project list", store.list_projects())
            .await?
        {
            for s in p.stages.values().filter(|s| !mine(&p.name, &s.name)) {
                foreign.insert(domains.stage_domain(&p.name, &s.name, s.subdomain.as_deref()));
            }
        }
        for i in self
            .list_instances_timed(&InstanceFilter::default())
            .await?
        {
            if !mine(&i.project, &i.stage) {
                foreign.insert(i.domain);
            }
        }
        Ok(foreign)
    }

    /// An instance record for a labelled container the store lost.
    fn adopt(
        &self,
        project: &Project,
        stage: &Stage,
        c: &ContainerInfo,
        has_active: bool,
    ) -> Result<Instance> {
        let id = label(c, labels::INSTANCE).unwrap_or_default().to_owned();
        let tag = label(c, labels::TAG).unwrap_or_default().to_owned();
        let image =
            crate::reference::ImageRef::parse(&c.image).or_else(|_| project.image_ref(&tag))?;
        let running = c.state == RunState::Running;
        let now = Utc::now();
        Ok(Instance {
            id,
            project: project.name.clone(),
            stage: stage.name.clone(),
            image,
            tag: tag.clone(),
            digest: None,
            container_name: c.name.clone(),
            container_id: Some(c.id.clone()),
            address: c.published.clone(),
            upstream: project
                .port
                .map(|port| self.upstream_for(&c.name, port, Some(c))),
            domain: self.inner.settings.domains.instance_domain(
                &project.name,
                &stage.name,
                &tag,
                false,
            ),
            state: if running {
                InstanceState::Running
            } else {
                InstanceState::Exited
            },
            active: running && !has_active,
            deployment_id: label(c, labels::DEPLOYMENT).unwrap_or_default().to_owned(),
            created_at: now,
            updated_at: now,
        })
    }
}
