//! The deploy engine: composes the five backends and runs deploys, rollbacks, instance
//! operations and reconcile.
//!
//! The engine is reconciler-shaped. The store holds the desired state (which instance each
//! stage routes to); the runtime and the proxy hold what is; every command first reconciles one
//! with the other under the stage's lease, so a process killed at any point (kill -9) leaves a state
//! the next command repairs. A deploy is a saga: each step that changes the world pushes its
//! compensating action, and a failure anywhere runs them in reverse.

mod deploy;
mod health;
mod lock;
mod ops;
mod reconcile;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use lock::Lease;
pub use reconcile::ReconcileReport;

use crate::backend::{
    Credentials, DeploymentFilter, ImageMetadata, InstanceFilter, NodeRuntimes, Notifier,
    ProgressSender, ProxyManager, Registry, Runtime, Store,
};
use crate::error::{Error, ErrorKind, Result};
use crate::model::{Deployment, Event, Instance, InstanceState, Project, Trigger, labels};
use crate::reference::ImageRef;
use crate::subdomain::DomainScheme;

/// Where the proxy sends an instance's traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamTarget {
    /// The container's name and app port on the shared network (the proxy runs on it).
    ContainerName,
    /// The port published on the host, at `host` (default `127.0.0.1`).
    Published {
        /// The host the proxy reaches published ports at.
        host: Option<String>,
    },
}

/// Time limits for each step of a deploy. A step that overruns fails with
/// [`ErrorKind::Timeout`] and the deploy rolls back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepTimeouts {
    /// Pulling the image.
    pub pull: Duration,
    /// Creating the network and the container.
    pub create: Duration,
    /// Starting the container.
    pub start: Duration,
    /// Each proxy call.
    pub route: Duration,
    /// Stopping an old container.
    pub retire: Duration,
    /// Each store write.
    pub record: Duration,
    /// Any other backend call (inspect, list, logs).
    pub call: Duration,
    /// How long a deploy to a node that is offline waits for it to come back (the deploy is
    /// recorded and reported at once, then waits; past this it fails).
    pub node_wait: Duration,
}

impl Default for StepTimeouts {
    fn default() -> Self {
        Self {
            pull: Duration::from_secs(15 * 60),
            create: Duration::from_secs(60),
            start: Duration::from_secs(60),
            route: Duration::from_secs(30),
            retire: Duration::from_secs(60),
            record: Duration::from_secs(30),
            call: Duration::from_secs(30),
            node_wait: Duration::from_secs(10 * 60),
        }
    }
}

/// Engine-wide settings.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// How domains are built.
    pub domains: DomainScheme,
    /// The network for projects that name none.
    pub network: String,
    /// Publish app ports on 127.0.0.1 (embedded use, tests).
    pub publish: bool,
    /// Where the proxy sends traffic.
    pub upstream: UpstreamTarget,
    /// Grace period when stopping a container.
    pub stop_grace: Duration,
    /// After switching traffic away from a container, wait this long before stopping it, so
    /// in-flight requests finish.
    pub drain: Duration,
    /// Lease length of a stage lock (renewed while held).
    pub lock_ttl: Duration,
    /// How long to wait for another operation on the same stage.
    pub lock_wait: Duration,
    /// Step time limits.
    pub timeouts: StepTimeouts,
    /// How many container log lines a failure carries.
    pub log_lines: usize,
    /// A scope label put on (and required of) every container, so several engines or test runs
    /// share one Docker host without touching each other's containers.
    pub scope: Option<String>,
    /// Time allowed for one notifier delivery.
    pub notify_timeout: Duration,
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            domains: DomainScheme::default(),
            network: "skipper-net".into(),
            publish: true,
            upstream: UpstreamTarget::ContainerName,
            stop_grace: Duration::from_secs(10),
            drain: Duration::ZERO,
            lock_ttl: Duration::from_secs(30),
            lock_wait: Duration::from_secs(300),
            timeouts: StepTimeouts::default(),
            log_lines: 20,
            scope: None,
            notify_timeout: Duration::from_secs(10),
        }
    }
}

/// When to pull the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PullPolicy {
    /// Always pull (the registry decides what the tag is now).
    #[default]
    Always,
    /// Pull only if the image is not present locally.
    Missing,
    /// Never pull; the image must be present.
    Never,
}

/// A request to deploy an image to a stage.
#[derive(Debug, Clone)]
pub struct DeployRequest {
    /// The project.
    pub project: String,
    /// The stage.
    pub stage: String,
    /// The image (must be in the project's repository and carry a tag).
    pub image: ImageRef,
    /// The explicit confirmation a `confirm: true` stage needs.
    pub confirmed: bool,
    /// What started it.
    pub trigger: Trigger,
    /// When to pull.
    pub pull: PullPolicy,
    /// Where pull progress goes.
    pub progress: Option<ProgressSender>,
    /// Cancelling this token interrupts the deploy between steps (a signal, a cancelled job):
    /// before the commit point it rolls back, after it the deploy finishes.
    pub cancel: Option<CancellationToken>,
    /// Run with these settings instead of the stored project's (a deploy's `--port`,
    /// `--health-path`, `--env`, `--max-instances`). They become the project's settings only
    /// when the deploy succeeds: a failed deploy changes nothing.
    pub settings: Option<crate::model::RunSettings>,
    /// Accept an image of another repository than the project's (the CLI deploying a new
    /// image into a project it made): that repository becomes the project's only when the
    /// deploy succeeds.
    pub adopt_repository: bool,
    /// The deployment's id, chosen by the caller (a server answers with it before the deploy
    /// ends). `None`: the engine makes one.
    pub id: Option<String>,
    /// The correlation id of whoever asked (an API request's `x-correlation-id`), kept in the
    /// deployment record and its events.
    pub correlation_id: Option<String>,
}

impl DeployRequest {
    /// A manual deploy with defaults.
    pub fn new(project: impl Into<String>, stage: impl Into<String>, image: ImageRef) -> Self {
        Self {
            project: project.into(),
            stage: stage.into(),
            image,
            confirmed: false,
            trigger: Trigger::Manual,
            pull: PullPolicy::Always,
            progress: None,
            cancel: None,
            settings: None,
            adopt_repository: false,
            id: None,
            correlation_id: None,
        }
    }

    /// Mark as confirmed.
    pub fn confirmed(mut self) -> Self {
        self.confirmed = true;
        self
    }
}

/// What an image says about how to run it: the defaults of a quick deploy.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct QuickDefaults {
    /// A project name derived from the repository.
    pub project: String,
    /// The app port: the `dev.skipper.port` label, else the first EXPOSEd port.
    pub port: Option<u16>,
    /// Whether the image has its own HEALTHCHECK.
    pub has_healthcheck: bool,
    /// The health path from the `dev.skipper.health-path` label, if set.
    pub health_path: Option<String>,
    /// The full metadata.
    pub metadata: ImageMetadata,
}

/// Builds an [`Engine`].
pub struct EngineBuilder {
    runtime: Arc<dyn Runtime>,
    store: Arc<dyn Store>,
    proxy: Option<Arc<dyn ProxyManager>>,
    registry: Option<Arc<dyn Registry>>,
    notifiers: Vec<Arc<dyn Notifier>>,
    credentials: HashMap<String, Credentials>,
    settings: EngineSettings,
    nodes: Option<Arc<dyn NodeRuntimes>>,
}

impl EngineBuilder {
    /// Drive other Docker hosts too: a project or stage naming a `node` runs on that node's
    /// runtime (see [`NodeRuntimes`]).
    pub fn nodes(mut self, nodes: Arc<dyn NodeRuntimes>) -> Self {
        self.nodes = Some(nodes);
        self
    }

    /// Route through this proxy.
    pub fn proxy(mut self, proxy: Arc<dyn ProxyManager>) -> Self {
        self.proxy = Some(proxy);
        self
    }

    /// Use this registry client (for promotion checks and tag listing).
    pub fn registry(mut self, registry: Arc<dyn Registry>) -> Self {
        self.registry = Some(registry);
        self
    }

    /// Add a notifier.
    pub fn notifier(mut self, notifier: Arc<dyn Notifier>) -> Self {
        self.notifiers.push(notifier);
        self
    }

    /// Credentials for the registry entry `name` (a project's `registry`).
    pub fn credentials(mut self, name: impl Into<String>, credentials: Credentials) -> Self {
        self.credentials.insert(name.into(), credentials);
        self
    }

    /// Replace the settings.
    pub fn settings(mut self, settings: EngineSettings) -> Self {
        self.settings = settings;
        self
    }

    /// Build the engine.
    pub fn build(self) -> Engine {
        let holder = format!(
            "{}/{}",
            lock::Holder::this_process().encode(),
            crate::model::new_id()
        );
        Engine {
            inner: Arc::new(Inner {
                runtime: self.runtime,
                store: self.store,
                proxy: self.proxy,
                registry: self.registry,
                notifiers: self.notifiers,
                credentials: self.credentials,
                settings: self.settings,
                nodes: self.nodes,
                holder,
                store_id: tokio::sync::OnceCell::new(),
                patterns: std::sync::Mutex::default(),
                tracker: TaskTracker::new(),
                shutdown: CancellationToken::new(),
                closing: AtomicBool::new(false),
                passes: AtomicU64::new(0),
                activity: tokio::sync::broadcast::channel(ACTIVITY_BUFFER).0,
            }),
        }
    }
}

struct Inner {
    runtime: Arc<dyn Runtime>,
    store: Arc<dyn Store>,
    proxy: Option<Arc<dyn ProxyManager>>,
    registry: Option<Arc<dyn Registry>>,
    notifiers: Vec<Arc<dyn Notifier>>,
    credentials: HashMap<String, Credentials>,
    settings: EngineSettings,
    nodes: Option<Arc<dyn NodeRuntimes>>,
    holder: String,
    store_id: tokio::sync::OnceCell<String>,
    patterns: std::sync::Mutex<HashMap<String, crate::pattern::TagPattern>>,
    tracker: TaskTracker,
    shutdown: CancellationToken,
    closing: AtomicBool,
    /// Reconcile passes so far (nodes no stage names are looked at every few).
    passes: AtomicU64,
    activity: tokio::sync::broadcast::Sender<Activity>,
}

/// How many activity items a slow subscriber may fall behind before it misses some (it is told,
/// with [`tokio::sync::broadcast::error::RecvError::Lagged`], and can read the store instead).
const ACTIVITY_BUFFER: usize = 1024;

/// What the engine is doing, as it happens: for live views (a server's event streams, a
/// dashboard). Records in the store stay the truth; this is the feed of their changes.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Activity {
    /// A deployment was recorded and runs (its first step, validate, is done).
    Started(Box<Deployment>),
    /// A step of a running deployment was logged: the deployment as it is now, its last step
    /// the new one (a view that missed some steps finds them all here).
    Step(Box<Deployment>),
    /// A deployment ended (succeeded or failed); the final record.
    Finished(Box<Deployment>),
    /// An event went to the notifiers (deploys, new versions, repairs, removals).
    Event(Box<Event>),
    /// An instance was stopped, started, restarted or removed: the instance as it is now (for
    /// a removal, as it was).
    Instance(Box<Instance>),
}

/// The deploy engine. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("holder", &self.inner.holder)
            .field("proxy", &self.inner.proxy.is_some())
            .field("notifiers", &self.inner.notifiers.len())
            .finish_non_exhaustive()
    }
}

/// Why a deploy must stop between steps: its lease was lost, its caller cancelled it, or the
/// engine is shutting down.
pub(crate) struct Guard {
    key: String,
    lost: CancellationToken,
    cancel: Option<CancellationToken>,
    shutdown: CancellationToken,
    tenure: std::sync::Arc<lock::Tenure>,
}

impl Guard {
    /// The error to stop with, if the operation must stop now.
    pub(crate) fn check(&self) -> Result<()> {
        self.tenure.check()?;
        if self
            .cancel
            .as_ref()
            .is_some_and(CancellationToken::is_cancelled)
        {
            return Err(interrupted());
        }
        if self.shutdown.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        Ok(())
    }

    /// Whether the lease was lost (or lapsed).
    pub(crate) fn lease_lost(&self) -> bool {
        self.tenure.check().is_err()
    }

    /// Renew the lease in the store now, within `limit`: [`Error::LeaseLost`] if it is another
    /// holder's or lapsed. The renew task runs only every third of the TTL; a step that must not
    /// act on a lost lease (the switch) asks the store itself first.
    pub(crate) async fn renew(&self, limit: Duration) -> Result<()> {
        self.tenure.renew(limit).await
    }

    /// Resolves with the reason once the operation must stop.
    pub(crate) async fn stopped(&self) -> Error {
        let cancel = async {
            match &self.cancel {
                Some(c) => c.cancelled().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = self.lost.cancelled() => Error::LeaseLost { key: self.key.clone() },
            _ = cancel => interrupted(),
            _ = self.shutdown.cancelled() => Error::ShuttingDown,
        }
    }

    /// Run a call that changes the world to its end, once the operation may go on: a create,
    /// start or route call is never cut short, because a dropped call may still act after its
    /// undo ran (a container created after its removal by name found nothing). Such calls are
    /// short and bounded by their own timeouts; waits (pull, health gate) use [`Guard::run`].
    pub(crate) async fn whole<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        self.check()?;
        fut.await
    }

    /// Run `fut` unless the operation must stop first (then `fut` is dropped: a call cut short
    /// may still have acted, which is why every undo is pushed before its action).
    pub(crate) async fn run<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        self.check()?;
        tokio::select! {
            biased;
            e = self.stopped() => Err(e),
            r = fut => r,
        }
    }
}

fn interrupted() -> Error {
    Error::Interrupted {
        reason: "the deploy was interrupted (a signal, or its caller cancelled it)".into(),
    }
}

/// Run `fut` with a time limit, turning an overrun into [`Error::Timeout`].
pub(crate) async fn timed<T>(
    what: impl FnOnce() -> String,
    limit: Duration,
    fut: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => Err(Error::Timeout {
            what: what(),
            after: limit,
        }),
    }
}

impl Engine {
    /// Start building an engine on a runtime and a store.
    pub fn builder(runtime: Arc<dyn Runtime>, store: Arc<dyn Store>) -> EngineBuilder {
        EngineBuilder {
            runtime,
            store,
            proxy: None,
            registry: None,
            notifiers: Vec::new(),
            credentials: HashMap::new(),
            settings: EngineSettings::default(),
            nodes: None,
        }
    }

    /// The engine's settings.
    pub fn settings(&self) -> &EngineSettings {
        &self.inner.settings
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The runtime.
    pub fn runtime(&self) -> &Arc<dyn Runtime> {
        &self.inner.runtime
    }

    /// The runtime of `node` (`None`: the engine's own). An unknown node is `NotFound`; an
    /// engine built without [`EngineBuilder::nodes`] refuses every node.
    pub fn runtime_on(&self, node: Option<&str>) -> Result<Arc<dyn Runtime>> {
        let Some(node) = node else {
            return Ok(self.inner.runtime.clone());
        };
        match &self.inner.nodes {
            None => Err(Error::rejected(format!(
                "node {node:?}: this engine drives only its own Docker host; nodes are \
                 registered with `skipper serve` (skipper node register --node-id {node})"
            ))),
            Some(nodes) => nodes.runtime(node).ok_or_else(|| {
                Error::not_found(format!(
                    "node {node:?} (register it: skipper node register --node-id {node})"
                ))
            }),
        }
    }

    /// The runtime of `node` for an operation that cannot wait: [`runtime_on`](Self::runtime_on),
    /// refused with [`Error::NodeOffline`] while the node is offline (a deploy instead waits
    /// for it, see [`StepTimeouts::node_wait`]).
    pub(crate) fn runtime_now(&self, node: Option<&str>) -> Result<Arc<dyn Runtime>> {
        let rt = self.runtime_on(node)?;
        match node {
            Some(n) if !self.reachable(node) => Err(Error::NodeOffline { node: n.to_owned() }),
            _ => Ok(rt),
        }
    }

    /// Whether `node` answers now (`None`, the engine's own runtime, always does).
    pub(crate) fn reachable(&self, node: Option<&str>) -> bool {
        match (node, &self.inner.nodes) {
            (Some(n), Some(nodes)) => nodes.is_reachable(n),
            _ => true,
        }
    }

    /// The nodes this engine drives besides its own host.
    pub(crate) fn known_nodes(&self) -> Vec<String> {
        self.inner
            .nodes
            .as_ref()
            .map(|n| n.nodes())
            .unwrap_or_default()
    }

    /// Whether a proxy is configured (routes are made).
    pub fn has_proxy(&self) -> bool {
        self.inner.proxy.is_some()
    }

    /// The registry client, if one was configured.
    pub fn registry(&self) -> Option<&Arc<dyn Registry>> {
        self.inner.registry.as_ref()
    }

    /// Validate and store a project (insert or replace).
    ///
    /// A stage that has instances keeps its node: moving it to another is refused (remove its
    /// instances first), so a stage's instances always run where the stage says.
    pub async fn put_project(&self, project: &Project) -> Result<()> {
        project.validate()?;
        if let Some(old) = self
            .stored(
                || "project read",
                self.inner.store.get_project(&project.name),
            )
            .await?
        {
            for stage in old.stages.keys() {
                let (from, to) = (old.node_of(stage), project.node_of(stage));
                if from == to || !project.stages.contains_key(stage) {
                    continue;
                }
                let running = self
                    .list_instances_timed(&InstanceFilter {
                        project: Some(project.name.clone()),
                        stage: Some(stage.clone()),
                    })
                    .await?;
                if !running.is_empty() {
                    let on = |n: Option<&str>| {
                        n.map_or("this engine's own host".to_owned(), |n| {
                            format!("node {n:?}")
                        })
                    };
                    return Err(Error::Conflict {
                        what: format!(
                            "stage {}/{stage} runs {} instance(s) on {}; remove them before \
                             moving the stage to {}",
                            project.name,
                            running.len(),
                            on(from),
                            on(to)
                        ),
                    });
                }
            }
        }
        self.inner.store.put_project(project).await
    }

    /// A project by name.
    pub async fn project(&self, name: &str) -> Result<Project> {
        self.stored(|| "project read", self.inner.store.get_project(name))
            .await?
            .ok_or_else(|| Error::not_found(format!("project {name:?}")))
    }

    /// Instances matching `filter`, oldest first, as the store has them.
    pub async fn instances(&self, filter: &InstanceFilter) -> Result<Vec<Instance>> {
        self.list_instances_timed(filter).await
    }

    /// Deployments matching `filter`, newest first.
    pub async fn deployments(&self, filter: &DeploymentFilter) -> Result<Vec<Deployment>> {
        self.list_deployments_timed(filter).await
    }

    pub(crate) async fn list_instances_timed(
        &self,
        filter: &InstanceFilter,
    ) -> Result<Vec<Instance>> {
        self.stored(|| "instance list", self.inner.store.list_instances(filter))
            .await
    }

    pub(crate) async fn list_deployments_timed(
        &self,
        filter: &DeploymentFilter,
    ) -> Result<Vec<Deployment>> {
        self.stored(
            || "deployment list",
            self.inner.store.list_deployments(filter),
        )
        .await
    }

    /// Instances matching `filter` as they are now, changing nothing (for read commands such as
    /// `skipper ps`): each state is what the runtime shows, so drift is visible. An instance
    /// whose container is gone shows as `missing`, one whose container exited as `exited`, and
    /// one left by a deploy whose process died as `interrupted`. Repairs are for
    /// [`reconcile`](Self::reconcile) and the mutating operations.
    pub async fn observe(&self, filter: &InstanceFilter) -> Result<Vec<Instance>> {
        let mut instances = self.list_instances_timed(filter).await?;
        if instances.is_empty() {
            return Ok(instances);
        }
        // Each instance's node (its stage's), and the containers of every node involved. A
        // node that cannot be read now leaves its instances as the store has them.
        let mut projects: HashMap<String, Option<Project>> = HashMap::new();
        let mut nodes: Vec<Option<String>> = Vec::with_capacity(instances.len());
        for inst in &instances {
            if !projects.contains_key(&inst.project) {
                let p = self
                    .stored(
                        || "project read",
                        self.inner.store.get_project(&inst.project),
                    )
                    .await?;
                projects.insert(inst.project.clone(), p);
            }
            let node = projects[&inst.project]
                .as_ref()
                .and_then(|p| p.node_of(&inst.stage))
                .map(str::to_owned);
            nodes.push(node);
        }
        let mut seen: HashMap<Option<String>, Option<Vec<crate::backend::ContainerInfo>>> =
            HashMap::new();
        for node in &nodes {
            if seen.contains_key(node) {
                continue;
            }
            let listed = match node.as_deref() {
                None => Some(self.managed_containers(None).await?),
                Some(n) if !self.reachable(Some(n)) => None,
                Some(n) => match self.managed_containers(Some(n)).await {
                    Ok(c) => Some(c),
                    Err(e) => {
                        tracing::warn!(node = n, error = %e.chain(), "cannot list the node's containers; its instances show as recorded");
                        None
                    }
                },
            };
            seen.insert(node.clone(), listed);
        }
        let indexes: HashMap<&Option<String>, reconcile::ContainerIndex<'_>> = seen
            .iter()
            .filter_map(|(n, c)| c.as_ref().map(|c| (n, reconcile::ContainerIndex::new(c))))
            .collect();
        let mut live_leases: HashMap<String, bool> = HashMap::new();
        for (inst, node) in instances.iter_mut().zip(&nodes) {
            let Some(index) = indexes.get(node) else {
                continue;
            };
            let container = index.of(inst);
            if inst.state == InstanceState::Starting {
                let key = lock::stage_key(&inst.project, &inst.stage);
                let live = match live_leases.get(&key) {
                    Some(l) => *l,
                    None => {
                        let l = self.lease_is_live(&key).await?;
                        live_leases.insert(key, l);
                        l
                    }
                };
                if !live {
                    inst.state = InstanceState::Interrupted;
                }
                continue;
            }
            match container {
                None => inst.state = InstanceState::Missing,
                Some(c) => {
                    if c.published.is_some() {
                        inst.address = c.published.clone();
                    }
                    let running = matches!(
                        c.state,
                        crate::backend::RunState::Running | crate::backend::RunState::Restarting
                    );
                    if running {
                        if inst.state != InstanceState::Retiring {
                            inst.state = InstanceState::Running;
                        }
                    } else if matches!(inst.state, InstanceState::Running | InstanceState::Missing)
                    {
                        inst.state = InstanceState::Exited;
                    }
                }
            }
        }
        Ok(instances)
    }

    /// The instance whose id is `id` or starts with `id` (at least 4 characters, unambiguous).
    pub async fn find_instance(&self, id: &str) -> Result<Instance> {
        if let Some(i) = self.inner.store.get_instance(id).await? {
            return Ok(i);
        }
        if id.chars().count() < 4 {
            return Err(Error::InvalidName {
                what: "instance id",
                value: id.to_owned(),
                reason: "give at least 4 characters of the instance id".into(),
            });
        }
        let all = self
            .inner
            .store
            .list_instances(&InstanceFilter::default())
            .await?;
        let matches: Vec<_> = all.into_iter().filter(|i| i.id.starts_with(id)).collect();
        match matches.len() {
            1 => return Ok(matches.into_iter().next().expect("one match")),
            0 => {}
            n => {
                return Err(Error::Conflict {
                    what: format!("{n} instances start with {id:?}; give more of the id"),
                });
            }
        }
        Err(Error::not_found(format!("instance {id:?}")))
    }

    /// Pull an image and read its defaults for a quick deploy (EXPOSE, HEALTHCHECK, labels).
    pub async fn quick_defaults(
        &self,
        image: &ImageRef,
        pull: PullPolicy,
        progress: Option<ProgressSender>,
    ) -> Result<QuickDefaults> {
        self.quick_defaults_on(None, image, pull, progress).await
    }

    /// [`quick_defaults`](Self::quick_defaults) on `node` (`None`: the engine's own runtime),
    /// where the image is pulled and inspected.
    pub async fn quick_defaults_on(
        &self,
        node: Option<&str>,
        image: &ImageRef,
        pull: PullPolicy,
        progress: Option<ProgressSender>,
    ) -> Result<QuickDefaults> {
        let rt = &self.runtime_now(node)?;
        let t = &self.inner.settings.timeouts;
        let present = pull != PullPolicy::Always
            && timed(|| "image lookup".into(), t.call, rt.has_image(image)).await?;
        if !present {
            if pull == PullPolicy::Never {
                return Err(Error::not_found(format!(
                    "image {image} locally (pull policy is never)"
                )));
            }
            timed(
                || format!("pull of {image}"),
                t.pull,
                rt.pull(image, None, progress),
            )
            .await?;
        }
        let metadata = timed(|| "image inspect".into(), t.call, rt.inspect_image(image)).await?;
        let (port, health_path) = crate::model::image_defaults(&metadata);
        let base = image.repository().rsplit('/').next().unwrap_or("app");
        let project = crate::subdomain::join_label(&[base], false);
        let project = if project.len() > 40 {
            project[..40].trim_end_matches('-').to_owned()
        } else {
            project
        };
        Ok(QuickDefaults {
            project,
            port,
            has_healthcheck: metadata.healthcheck.is_some(),
            health_path,
            metadata,
        })
    }

    /// Refuse new work and wait for in-flight deploys to finish or roll back. Health waits in
    /// progress are cut short (and roll back).
    pub async fn shutdown(&self) {
        self.inner.closing.store(true, Ordering::SeqCst);
        self.inner.tracker.close();
        self.inner.shutdown.cancel();
        self.inner.tracker.wait().await;
    }

    fn check_open(&self) -> Result<()> {
        if self.inner.closing.load(Ordering::SeqCst) {
            Err(Error::ShuttingDown)
        } else {
            Ok(())
        }
    }

    /// Run `fut` as a tracked task, so shutdown waits for it and a dropped caller never leaves a
    /// saga half-done.
    async fn tracked<T: Send + 'static>(
        &self,
        fut: impl std::future::Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        self.check_open()?;
        let handle = self.inner.tracker.spawn(fut);
        handle.await.map_err(|e| {
            Error::backend(
                "engine",
                ErrorKind::Internal,
                format!("an engine task failed: {e}"),
            )
        })?
    }

    /// This store's identity (read once), the value of every container's `dev.skipper.store`
    /// label.
    pub async fn store_id(&self) -> Result<String> {
        self.inner
            .store_id
            .get_or_try_init(|| async {
                timed(
                    || "store identity".into(),
                    self.inner.settings.timeouts.record,
                    self.inner.store.store_id(),
                )
                .await
            })
            .await
            .cloned()
    }

    /// The labels selecting every container this engine manages on `node`.
    fn managed_selector(&self, node: Option<&str>) -> BTreeMap<String, String> {
        let mut sel = BTreeMap::new();
        sel.insert(labels::MANAGED.to_owned(), "true".to_owned());
        if let Some(scope) = &self.inner.settings.scope {
            sel.insert(labels::SCOPE.to_owned(), scope.clone());
        }
        if let Some(node) = node {
            sel.insert(labels::NODE.to_owned(), node.to_owned());
        }
        sel
    }

    /// Only the containers of this engine's scope, deployed for `node`. A label filter can
    /// require a label but not its absence, so the engine drops the others itself, or it would
    /// take another engine's (or another node's, on a shared Docker host) for orphans.
    fn in_scope(
        &self,
        node: Option<&str>,
        containers: Vec<crate::backend::ContainerInfo>,
    ) -> Vec<crate::backend::ContainerInfo> {
        let ours = self.inner.settings.scope.as_deref();
        containers
            .into_iter()
            .filter(|c| {
                c.labels.get(labels::SCOPE).map(String::as_str) == ours
                    && c.labels.get(labels::NODE).map(String::as_str) == node
            })
            .collect()
    }

    /// Credentials for a project's registry: those given to the builder, else the store's
    /// (`registry/<name>` secret and `registry/<name>/username` setting), else none (the runtime
    /// may fall back to the user's Docker config).
    async fn credentials_for(&self, project: &Project) -> Result<Option<Credentials>> {
        let Some(name) = &project.registry else {
            return Ok(None);
        };
        if let Some(c) = self.inner.credentials.get(name) {
            return Ok(Some(c.clone()));
        }
        let store = &self.inner.store;
        let secret = self
            .stored(
                || "credential read",
                store.get_credential(&format!("registry/{name}")),
            )
            .await?;
        let user = self
            .stored(
                || "setting read",
                store.get_setting(&format!("registry/{name}/username")),
            )
            .await?;
        Ok(match (user, secret) {
            (Some(username), Some(secret)) => Some(Credentials { username, secret }),
            _ => None,
        })
    }

    /// Deliver an event from outside the engine (a registry watcher's "new version available")
    /// to every notifier, each within `notify_timeout`. Failures are logged, never returned.
    pub async fn announce(&self, event: Event) {
        self.notify(event).await;
    }

    /// Subscribe to the engine's [`Activity`]: deployments starting, their steps, their ends,
    /// and every event sent to the notifiers, as they happen.
    pub fn activity(&self) -> tokio::sync::broadcast::Receiver<Activity> {
        self.inner.activity.subscribe()
    }

    /// Tell the activity feed (nobody listening is fine).
    pub(crate) fn publish(&self, activity: Activity) {
        let _ = self.inner.activity.send(activity);
    }

    /// Deliver an event to every notifier; failures are logged, never returned.
    async fn notify(&self, event: Event) {
        self.publish(Activity::Event(Box::new(event.clone())));
        for n in &self.inner.notifiers {
            let r = timed(
                || "notification".into(),
                self.inner.settings.notify_timeout,
                n.notify(&event),
            )
            .await;
            if let Err(e) = r {
                tracing::warn!(error = %e.chain(), kind = ?event.kind, "notifier failed; the operation itself is unaffected");
            }
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod node_tests;

#[cfg(test)]
mod find_instance_tests {
    use std::sync::Arc;

    use super::*;
    use crate::store::{MemoryStore, conformance::sample_instance};
    use crate::testing::FakeRuntime;

    #[tokio::test]
    async fn an_id_prefix_needs_four_characters_unless_it_is_an_exact_id() {
        let store = Arc::new(MemoryStore::new());
        let engine = Engine::builder(Arc::new(FakeRuntime::new()), store.clone()).build();
        let mut short = sample_instance("web", "dev", chrono::Utc::now());
        short.id = "abc".into();
        let long = sample_instance("web", "dev", chrono::Utc::now());
        store.put_instance(&short).await.unwrap();
        store.put_instance(&long).await.unwrap();

        assert_eq!(engine.find_instance("abc").await.unwrap().id, "abc");
        assert_eq!(
            engine.find_instance(&long.id[..4]).await.unwrap().id,
            long.id
        );
        for too_short in ["", "x", &long.id[..3]] {
            let e = engine.find_instance(too_short).await.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Invalid, "{too_short:?}: {e}");
            assert!(
                e.to_string()
                    .contains("give at least 4 characters of the instance id"),
                "{e}"
            );
        }
        let e = engine.find_instance("zzzz").await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    }
}
