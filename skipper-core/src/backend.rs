//! The five backend traits the engine is written against, and the data they exchange.
//!
//! All are object-safe, `Send + Sync`, and held by the engine as `Arc<dyn Trait>`. The
//! [`testing`](crate::testing) module (feature `test-util`) has in-memory fakes with fault
//! injection for the runtime, the proxy, the store and notifiers, which every engine test uses;
//! `Registry` also has a mockall mock (`MockRegistry`), for exact-call tests.
//!
//! # Contracts every implementation keeps
//! - Removing something that is already gone succeeds (`remove_container`, `remove_route`,
//!   `delete_*`): compensation and reconcile call them without knowing what survived.
//! - Failures are [`Error`](crate::Error)s with the right [`ErrorKind`](crate::ErrorKind):
//!   `NotFound` for a missing container or image, `Unauthorized` for rejected credentials,
//!   `Transient`/`Timeout` for what a retry may fix.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::model::{Deployment, Event, Instance, Project, RouteOptions, SeenTag, Upstream};
use crate::reference::ImageRef;

/// Credentials for a registry.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password or token.
    pub secret: SecretString,
}

/// One progress report of an image pull.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullProgress {
    /// The layer id, if the report is about a layer.
    pub layer: Option<String>,
    /// Docker's status text (`Downloading`, `Pull complete`, ...).
    pub status: String,
    /// Bytes done, where known.
    pub current: Option<u64>,
    /// Bytes in all, where known.
    pub total: Option<u64>,
}

/// Where pull progress goes.
pub type ProgressSender = tokio::sync::mpsc::UnboundedSender<PullProgress>;

/// What a pull produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PulledImage {
    /// The local image id.
    pub id: String,
    /// The repository digest (`sha256:…`), where the registry gave one.
    pub digest: Option<String>,
}

/// An image's own HEALTHCHECK.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageHealthcheck {
    /// The test command (`["CMD-SHELL", "wget -q -O- localhost:8080/"]`).
    pub test: Vec<String>,
    /// Interval, if set.
    pub interval: Option<Duration>,
    /// Timeout, if set.
    pub timeout: Option<Duration>,
    /// Retries, if set.
    pub retries: Option<u32>,
}

/// What an image says about itself: the defaults for a quick deploy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageMetadata {
    /// The local image id.
    pub id: String,
    /// Repository digests.
    pub digests: Vec<String>,
    /// EXPOSEd TCP ports, ascending.
    pub exposed_ports: Vec<u16>,
    /// The HEALTHCHECK, if the image has one (and it is not `NONE`).
    pub healthcheck: Option<ImageHealthcheck>,
    /// Image labels.
    pub labels: BTreeMap<String, String>,
}

/// Everything needed to create a container for an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// Container name (unique per instance).
    pub name: String,
    /// The image to run.
    pub image: ImageRef,
    /// Environment.
    pub env: BTreeMap<String, String>,
    /// Labels, including Skipper's own.
    pub labels: BTreeMap<String, String>,
    /// Volumes, Docker style.
    pub volumes: Vec<String>,
    /// The network to join, if any.
    pub network: Option<String>,
    /// The app's port inside the container, if it serves one.
    pub port: Option<u16>,
    /// Publish `port` on 127.0.0.1 (an ephemeral host port) so host-side code can reach it.
    pub publish: bool,
}

/// A container's run state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RunState {
    /// Created, not started.
    Created,
    /// Running.
    Running,
    /// Restarting (after a crash, by restart policy).
    Restarting,
    /// Paused.
    Paused,
    /// Exited, with its exit code.
    Exited,
    /// Dead or being removed.
    Dead,
}

/// Docker's health status for containers with a HEALTHCHECK.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    /// The image has no health check.
    None,
    /// Not decided yet.
    Starting,
    /// Healthy.
    Healthy,
    /// Unhealthy.
    Unhealthy,
}

/// What the runtime knows about a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerInfo {
    /// Container id.
    pub id: String,
    /// Container name (without Docker's leading `/`).
    pub name: String,
    /// Its image, as given at create.
    pub image: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Run state.
    pub state: RunState,
    /// Exit code when exited.
    pub exit_code: Option<i64>,
    /// Docker health status.
    pub health: HealthStatus,
    /// `127.0.0.1:PORT` where the app port is published, if it is.
    pub published: Option<String>,
}

/// The result of one HTTP health probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeResult {
    /// The HTTP status, if the request got an answer.
    pub status: Option<u16>,
    /// What happened, in words (`GET http://127.0.0.1:49153/health → 503`).
    pub detail: String,
}

impl ProbeResult {
    /// 2xx or 3xx.
    pub fn is_healthy(&self) -> bool {
        self.status.is_some_and(|s| (200..400).contains(&s))
    }
}

/// The runtimes of other Docker hosts (nodes), by node id: what lets one engine drive many
/// hosts. A project or stage that names a `node` runs on that node's runtime; everything else
/// on the engine's own. `skipper serve` implements it with a runtime that forwards each call to
/// the node's agent (`skippy`); an embedder may bring its own (a bollard client per host).
pub trait NodeRuntimes: Send + Sync {
    /// The runtime of `node`, or `None` when no such node is known (a deploy to it is refused).
    fn runtime(&self, node: &str) -> Option<Arc<dyn Runtime>>;

    /// Whether `node` answers now. A periodic reconcile skips a node that does not (and says
    /// so) rather than waiting out a time limit per call; deploys wait for it regardless.
    fn is_reachable(&self, node: &str) -> bool {
        let _ = node;
        true
    }

    /// Every node known, so reconcile also finds orphans on a node no project names any more.
    fn nodes(&self) -> Vec<String>;
}

/// Runs containers: Docker through bollard, an in-memory fake, or an embedder's own.
#[async_trait]
pub trait Runtime: Send + Sync {
    /// Make sure `network` exists (create it if missing).
    async fn ensure_network(&self, network: &str) -> Result<()>;
    /// Pull `image`, reporting progress. `NotFound` for a missing tag, `Unauthorized` for bad
    /// credentials.
    async fn pull(
        &self,
        image: &ImageRef,
        credentials: Option<Credentials>,
        progress: Option<ProgressSender>,
    ) -> Result<PulledImage>;
    /// Whether the image is present locally (for `--pull missing`).
    async fn has_image(&self, image: &ImageRef) -> Result<bool>;
    /// Read an image's EXPOSE, HEALTHCHECK and labels.
    async fn inspect_image(&self, image: &ImageRef) -> Result<ImageMetadata>;
    /// Create (not start) a container; returns its id. `Conflict` if the name is taken.
    async fn create_container(&self, spec: &ContainerSpec) -> Result<String>;
    /// Start a created or stopped container.
    async fn start_container(&self, id: &str) -> Result<()>;
    /// Stop a container, giving it `grace` before it is killed. Stopping a stopped one succeeds.
    async fn stop_container(&self, id: &str, grace: Duration) -> Result<()>;
    /// Restart a container.
    async fn restart_container(&self, id: &str, grace: Duration) -> Result<()>;
    /// Remove a container (forcibly). Removing a missing one succeeds.
    async fn remove_container(&self, id: &str) -> Result<()>;
    /// Inspect a container. `NotFound` if it does not exist.
    async fn inspect_container(&self, id: &str) -> Result<ContainerInfo>;
    /// Every container carrying all of `labels` (key → value), running or not.
    async fn list_containers(
        &self,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<ContainerInfo>>;
    /// One HTTP GET of `path` on the container's app `port`, within `timeout`. An answer of any
    /// status is `Ok`; only a failure to ask at all (the container is gone) is `Err`.
    async fn probe_http(
        &self,
        container: &ContainerInfo,
        port: u16,
        path: &str,
        timeout: Duration,
    ) -> Result<ProbeResult>;
    /// The last `lines` lines of the container's output, oldest first.
    async fn logs(&self, id: &str, lines: usize) -> Result<Vec<String>>;
}

/// A container registry: lists tags and resolves digests without pulling.
#[cfg_attr(any(test, feature = "test-util"), mockall::automock)]
#[async_trait]
pub trait Registry: Send + Sync {
    /// Every tag of `repository` (the tag/digest of the reference are ignored), in registry order.
    async fn list_tags(&self, repository: &ImageRef) -> Result<Vec<String>>;
    /// The manifest digest `image`'s tag points at, without counting as a pull.
    async fn resolve_digest(&self, image: &ImageRef) -> Result<String>;
}

/// A route in a reverse proxy: `domain` → `upstream`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// The domain served.
    pub domain: String,
    /// Where traffic goes.
    pub upstream: Upstream,
    /// Options (websocket, certificates, ...).
    pub options: RouteOptions,
}

/// A reverse proxy Skipper routes through (Nginx Proxy Manager, Caddy, an embedder's own).
#[async_trait]
pub trait ProxyManager: Send + Sync {
    /// Make `route.domain` forward to `route.upstream`: create it, or switch an existing route in
    /// place (the domain never disappears). Idempotent.
    async fn ensure_route(&self, route: &Route) -> Result<()>;
    /// Remove the route for `domain`. Removing a missing route succeeds.
    async fn remove_route(&self, domain: &str) -> Result<()>;
    /// The routes this proxy holds that Skipper manages.
    async fn list_routes(&self) -> Result<Vec<Route>>;
}

/// Which instances to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceFilter {
    /// Only this project.
    pub project: Option<String>,
    /// Only this stage (with `project`).
    pub stage: Option<String>,
}

/// Which deployments to list (newest first).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeploymentFilter {
    /// Only this project.
    pub project: Option<String>,
    /// Only this stage.
    pub stage: Option<String>,
    /// At most this many.
    pub limit: Option<usize>,
}

/// A lease held while writing: fenced writes succeed only while `holder` still holds `key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The lease key (`stage/<project>/<stage>`).
    pub key: String,
    /// The holder that must still hold it.
    pub holder: String,
}

/// Where Skipper keeps its state: SQLite by default, in memory for tests, PostgreSQL later.
///
/// Records are whole values (`put_*` inserts or replaces by id), so every backend stores the same
/// shapes and the trait needs no SQL. Locks are leases: held until released or until `ttl`
/// passes without renewal, so a killed process never holds a stage forever.
#[async_trait]
pub trait Store: Send + Sync {
    /// This store's identity: made once when the store is created and kept in it, never
    /// changed. The engine labels every container it creates with it, and reconcile touches only
    /// containers that carry it, so two stores on one Docker engine never touch each other's.
    async fn store_id(&self) -> Result<String>;

    /// Insert or replace a project (with its stages).
    async fn put_project(&self, project: &Project) -> Result<()>;
    /// A project by name.
    async fn get_project(&self, name: &str) -> Result<Option<Project>>;
    /// Every project, by name.
    async fn list_projects(&self) -> Result<Vec<Project>>;
    /// Delete a project (its instances and deployments stay as history). Missing is fine.
    async fn delete_project(&self, name: &str) -> Result<()>;

    /// Insert or replace an instance.
    async fn put_instance(&self, instance: &Instance) -> Result<()>;
    /// An instance by id.
    async fn get_instance(&self, id: &str) -> Result<Option<Instance>>;
    /// Instances matching `filter`, oldest first.
    async fn list_instances(&self, filter: &InstanceFilter) -> Result<Vec<Instance>>;
    /// Delete an instance record. Missing is fine.
    async fn delete_instance(&self, id: &str) -> Result<()>;

    /// Insert or replace a deployment.
    async fn put_deployment(&self, deployment: &Deployment) -> Result<()>;
    /// A deployment by id.
    async fn get_deployment(&self, id: &str) -> Result<Option<Deployment>>;
    /// Deployments matching `filter`, newest first.
    async fn list_deployments(&self, filter: &DeploymentFilter) -> Result<Vec<Deployment>>;

    /// A setting.
    async fn get_setting(&self, key: &str) -> Result<Option<String>>;
    /// Set a setting.
    async fn put_setting(&self, key: &str, value: &str) -> Result<()>;

    /// Store a secret (encrypted at rest by persistent stores).
    async fn put_credential(&self, name: &str, secret: &SecretString) -> Result<()>;
    /// A secret by name.
    async fn get_credential(&self, name: &str) -> Result<Option<SecretString>>;
    /// The names of stored secrets (never their values).
    async fn list_credentials(&self) -> Result<Vec<String>>;
    /// Delete a secret. Missing is fine.
    async fn delete_credential(&self, name: &str) -> Result<()>;

    /// Record a tag seen in a registry (insert, or update its digest).
    async fn put_seen_tag(&self, seen: &SeenTag) -> Result<()>;
    /// The tags seen for `repository`.
    async fn list_seen_tags(&self, repository: &str) -> Result<Vec<SeenTag>>;

    /// Take the lease `key` for `holder`, or renew it if `holder` has it. `false` if someone else
    /// holds an unexpired lease. Works across processes for persistent stores.
    async fn try_lock(&self, key: &str, holder: &str, ttl: Duration) -> Result<bool>;
    /// Release `key` if `holder` has it.
    async fn unlock(&self, key: &str, holder: &str) -> Result<()>;
    /// Who holds lease `key` now, expired or not (`None`: nobody).
    async fn lease_holder(&self, key: &str) -> Result<Option<String>>;
    /// Take lease `key` over from `previous` (a holder known to be dead), for `holder`: only if
    /// `previous` still has it, whether or not it expired. `false` if anyone else has it now.
    async fn take_over_lock(
        &self,
        key: &str,
        previous: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool>;
    /// Write `instances` and then `deployments` in one transaction, only while `fence.holder`
    /// still holds `fence.key`. A holder that lost its lease gets a `Conflict` error and nothing
    /// is written, so it can never overwrite what the lease's new holder decided.
    async fn put_fenced(
        &self,
        fence: &Fence,
        instances: &[Instance],
        deployments: &[Deployment],
    ) -> Result<()>;
}

/// Delivers events (webhooks, chat, email...). A failing notifier never fails a deploy.
#[async_trait]
pub trait Notifier: Send + Sync {
    /// Deliver `event`.
    async fn notify(&self, event: &Event) -> Result<()>;
}
