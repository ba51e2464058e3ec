//! The domain model: projects, stages, instances, deployments, events.
//!
//! These are plain data. They serialise with serde (the SQLite store keeps them as JSON columns,
//! the CLI prints them) and carry no behaviour beyond validation and small helpers.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::reference::ImageRef;

/// A timestamp in UTC.
pub type Timestamp = DateTime<Utc>;

/// Labels Skipper puts on every container it creates. Containers are found by these, never by
/// name, so a restart of the process (or a kill -9) can always find what it made.
pub mod labels {
    /// Present (`"true"`) on every container Skipper manages.
    pub const MANAGED: &str = "dev.skipper.managed";
    /// The project name.
    pub const PROJECT: &str = "dev.skipper.project";
    /// The stage name.
    pub const STAGE: &str = "dev.skipper.stage";
    /// The image tag.
    pub const TAG: &str = "dev.skipper.tag";
    /// The instance id.
    pub const INSTANCE: &str = "dev.skipper.instance";
    /// The id of the deployment that created the container.
    pub const DEPLOYMENT: &str = "dev.skipper.deployment";
    /// An embedder-chosen scope, so several engines (or test runs) on one Docker host never touch
    /// each other's containers.
    pub const SCOPE: &str = "dev.skipper.scope";
    /// The identity of the store that made the container ([`Store::store_id`]): reconcile
    /// adopts or removes only containers of its own store.
    ///
    /// [`Store::store_id`]: crate::backend::Store::store_id
    pub const STORE: &str = "dev.skipper.store";
    /// On an image (or container): the app's port, when the image EXPOSEs several or none.
    pub const PORT: &str = "dev.skipper.port";
    /// On an image: the HTTP path that answers 2xx when the app is healthy.
    pub const HEALTH_PATH: &str = "dev.skipper.health-path";
    /// The node the container was deployed to (absent: the engine's own runtime), so nodes
    /// that share one Docker engine never take each other's containers for orphans.
    pub const NODE: &str = "dev.skipper.node";
}

/// The defaults an image gives about itself: its app port (label `dev.skipper.port`, else its
/// first EXPOSE) and health path (label `dev.skipper.health-path`).
pub fn image_defaults(meta: &crate::backend::ImageMetadata) -> (Option<u16>, Option<String>) {
    let port = meta
        .labels
        .get(labels::PORT)
        .and_then(|p| p.parse().ok())
        .filter(|p| *p != 0)
        .or_else(|| meta.exposed_ports.first().copied());
    let path = meta
        .labels
        .get(labels::HEALTH_PATH)
        .filter(|p| p.starts_with('/') && !p.chars().any(char::is_whitespace))
        .cloned();
    (port, path)
}

/// A new random id: 12 lower-case hex characters (48 bits), short enough to type.
pub fn new_id() -> String {
    let u = uuid::Uuid::new_v4();
    hex::encode(&u.as_bytes()[..6])
}

/// Check a project or stage name: it becomes part of container names, paths and DNS labels, so
/// `[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?`.
pub fn validate_name(what: &'static str, value: &str) -> Result<()> {
    let err = |reason: &str| Error::InvalidName {
        what,
        value: value.to_owned(),
        reason: reason.to_owned(),
    };
    if value.is_empty() {
        return Err(err("it is empty"));
    }
    if value.len() > 40 {
        return Err(err("it is longer than 40 characters"));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(err("use only lower-case letters, digits and '-'"));
    }
    if value.starts_with('-') || value.ends_with('-') {
        return Err(err("it must not start or end with '-'"));
    }
    Ok(())
}

/// Names a project may not take: `new` is the dashboard's page for a new project
/// (`/projects/new`), so a project of that name could never be shown there.
pub const RESERVED_PROJECT_NAMES: &[&str] = &["new"];

/// Check a project name: [`validate_name`], and not one of [`RESERVED_PROJECT_NAMES`].
pub fn validate_project_name(value: &str) -> Result<()> {
    validate_name("project name", value)?;
    if RESERVED_PROJECT_NAMES.contains(&value) {
        return Err(Error::InvalidName {
            what: "project name",
            value: value.to_owned(),
            reason: "it is reserved (the dashboard's page for a new project is /projects/new)"
                .into(),
        });
    }
    Ok(())
}

/// Check a node id: 1-63 of `a-z`, `0-9`, `-` and `_`, starting with a letter or digit (it
/// becomes a label value and part of paths on the server).
pub fn validate_node(value: &str) -> Result<()> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && value.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidName {
            what: "node",
            value: value.to_owned(),
            reason: "use 1-63 of a-z, 0-9, '-' and '_', starting with a letter or digit".into(),
        })
    }
}

/// Durations as humantime strings (`"30s"`, `"1m 30s"`) in serde.
pub mod duration_str {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Serialise as `"30s"`.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    /// Parse `"30s"`, `"500ms"`, `"2m"`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {s:?} ({e}); write it like \"30s\" or \"500ms\""
            ))
        })
    }
}

/// How the engine decides a new container is healthy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthCheck {
    /// HTTP path to probe (`/api/health`). Any 2xx or 3xx is healthy. Without it, the image's own
    /// Docker HEALTHCHECK is used, and without that, "still running after `settle`".
    pub path: Option<String>,
    /// Time between probes.
    #[serde(with = "duration_str")]
    pub interval: Duration,
    /// Time allowed for one probe request.
    #[serde(with = "duration_str")]
    pub timeout: Duration,
    /// Time allowed for the container to become healthy, from its start.
    #[serde(with = "duration_str")]
    pub deadline: Duration,
    /// With neither an HTTP path nor a Docker HEALTHCHECK: how long the container must stay up.
    #[serde(with = "duration_str")]
    pub settle: Duration,
}

impl Default for HealthCheck {
    fn default() -> Self {
        Self {
            path: None,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
            deadline: Duration::from_secs(60),
            settle: Duration::from_secs(3),
        }
    }
}

impl HealthCheck {
    /// Validate the settings.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if let Some(path) = &self.path {
            if !path.starts_with('/') {
                return Err(format!("health check path {path:?} must start with '/'"));
            }
            if path.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(format!("health check path {path:?} contains whitespace"));
            }
        }
        if self.interval.is_zero() || self.timeout.is_zero() || self.deadline.is_zero() {
            return Err("health check interval, timeout and deadline must be above zero".into());
        }
        if self.deadline < self.interval {
            return Err("health check deadline must be at least one interval".into());
        }
        Ok(())
    }
}

/// Per-project options for the reverse proxy route (used by proxies that support them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouteOptions {
    /// Allow websocket upgrades.
    pub websocket: bool,
    /// Block common exploits (NPM's `block_exploits`).
    pub block_exploits: bool,
    /// Serve over HTTP/2 (needs a certificate).
    pub http2: bool,
    /// An existing certificate id in the proxy.
    pub certificate_id: Option<u64>,
    /// Redirect HTTP to HTTPS (needs a certificate).
    pub ssl_forced: bool,
    /// An access list id in the proxy.
    pub access_list_id: Option<u64>,
    /// Extra proxy configuration, verbatim.
    pub advanced_config: Option<String>,
    /// Take over a proxy host for the domain that Skipper did not create (made by hand in the
    /// proxy's UI). Without it such a host is refused, never changed; `rm` never deletes one.
    pub adopt: bool,
}

/// One stage of a project (dev, rel, prod): which tags it takes and how it runs them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stage {
    /// The stage name (a DNS-safe label).
    pub name: String,
    /// Glob that a tag must match to deploy here (`dev-*`, `v*`).
    pub tag_pattern: String,
    /// Deploy matching new tags without being asked.
    pub auto_deploy: bool,
    /// How many versions may run side by side; the oldest is retired past it.
    pub max_instances: u32,
    /// Deploys need an explicit confirmation.
    pub confirm: bool,
    /// A tag may only deploy here if it runs (or ran successfully) in this stage.
    pub promote_from: Option<String>,
    /// A custom subdomain label for the stage (e.g. `launcher` for production).
    pub subdomain: Option<String>,
    /// The node (a Docker host running `skippy`) this stage runs on, overriding the project's;
    /// `None`: the project's node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

impl Stage {
    /// A stage with defaults: pattern `*`, no auto-deploy, one instance.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            tag_pattern: "*".into(),
            auto_deploy: false,
            max_instances: 1,
            confirm: false,
            promote_from: None,
            subdomain: None,
            node: None,
        }
    }

    /// Whether `tag` matches this stage's pattern.
    pub fn matches(&self, tag: &str) -> Result<bool> {
        Ok(crate::pattern::TagPattern::new(&self.tag_pattern)?.matches(tag))
    }
}

/// A project: one image repository and how to run it, with its stages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Project {
    /// The project name (a DNS-safe label).
    pub name: String,
    /// The image repository, normalised (`registry/path`, no tag).
    pub image: String,
    /// The name of the registry entry whose credentials pull this image, if any.
    pub registry: Option<String>,
    /// The container port the app listens on. `None`: read from the image's EXPOSE.
    pub port: Option<u16>,
    /// Health gate settings.
    pub health: HealthCheck,
    /// Environment variables.
    pub env: BTreeMap<String, String>,
    /// Volumes, Docker style: `name:/path`, `/host/path:/path[:ro]`.
    pub volumes: Vec<String>,
    /// Extra container labels.
    pub labels: BTreeMap<String, String>,
    /// The Docker network the containers join (the proxy reaches them there).
    pub network: Option<String>,
    /// Proxy route options.
    pub route: RouteOptions,
    /// Stages by name.
    pub stages: BTreeMap<String, Stage>,
    /// The node (a Docker host running `skippy`, registered with the server) the project's
    /// stages run on, unless a stage names its own. `None`: the engine's own runtime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

impl Project {
    /// A project with defaults for `image` (a repository; any tag is dropped).
    pub fn new(name: impl Into<String>, image: &str) -> Result<Self> {
        let name = name.into();
        validate_project_name(&name)?;
        Ok(Self {
            name,
            image: ImageRef::parse(image)?.name(),
            registry: None,
            port: None,
            health: HealthCheck::default(),
            env: BTreeMap::new(),
            volumes: Vec::new(),
            labels: BTreeMap::new(),
            network: None,
            route: RouteOptions::default(),
            stages: BTreeMap::new(),
            node: None,
        })
    }

    /// The node `stage` runs on: the stage's own, else the project's; `None` is the engine's
    /// own runtime.
    pub fn node_of(&self, stage: &str) -> Option<&str> {
        self.stages
            .get(stage)
            .and_then(|s| s.node.as_deref())
            .or(self.node.as_deref())
    }

    /// Add or replace a stage (builder style).
    pub fn with_stage(mut self, stage: Stage) -> Self {
        self.stages.insert(stage.name.clone(), stage);
        self
    }

    /// The stage named `name`.
    pub fn stage(&self, name: &str) -> Result<&Stage> {
        self.stages
            .get(name)
            .ok_or_else(|| Error::not_found(format!("stage {name:?} of project {:?}", self.name)))
    }

    /// The image reference of `tag` in this project's repository.
    pub fn image_ref(&self, tag: &str) -> Result<ImageRef> {
        ImageRef::parse(&self.image)?.with_tag(tag)
    }

    /// Check names, stage patterns and references between stages.
    pub fn validate(&self) -> Result<()> {
        validate_project_name(&self.name)?;
        let repo = ImageRef::parse(&self.image)?;
        if repo.name() != self.image {
            return Err(Error::InvalidReference {
                input: self.image.clone(),
                reason: format!(
                    "a project image is a repository without tag, like {}",
                    repo.name()
                ),
            });
        }
        self.health
            .validate()
            .map_err(|reason| Error::InvalidName {
                what: "health check",
                value: self.health.path.clone().unwrap_or_default(),
                reason,
            })?;
        if self.port == Some(0) {
            return Err(Error::InvalidName {
                what: "port",
                value: "0".into(),
                reason: "a port is 1-65535".into(),
            });
        }
        for (key, stage) in &self.stages {
            validate_name("stage name", key)?;
            if &stage.name != key {
                return Err(Error::InvalidName {
                    what: "stage name",
                    value: stage.name.clone(),
                    reason: format!("does not match its key {key:?}"),
                });
            }
            crate::pattern::TagPattern::new(&stage.tag_pattern)?;
            if stage.max_instances == 0 {
                return Err(Error::InvalidName {
                    what: "max_instances",
                    value: "0".into(),
                    reason: format!("stage {key:?} must allow at least one instance"),
                });
            }
            if let Some(sub) = &stage.subdomain {
                crate::subdomain::validate_label(sub)?;
            }
            if let Some(node) = &stage.node {
                validate_node(node)?;
            }
        }
        if let Some(node) = &self.node {
            validate_node(node)?;
        }
        if let Some(e) = self.promotion_error() {
            return Err(Error::InvalidName {
                what: "promote_from",
                value: e.from,
                reason: e.reason,
            });
        }
        Ok(())
    }

    /// What is wrong with the stages' `promote_from`, if anything: a stage promoting from itself
    /// or from a stage the project does not have, or a cycle (`a → b → a`), which would let no
    /// tag in. The one check of these, used by [`validate`](Self::validate) and by the config
    /// file's loader (which adds the field and line). Stages are checked by name; a cycle is
    /// reported at its first stage by name.
    pub fn promotion_error(&self) -> Option<PromotionError> {
        let names = || self.stages.keys().cloned().collect::<Vec<_>>().join(", ");
        for (key, stage) in &self.stages {
            let Some(from) = &stage.promote_from else {
                continue;
            };
            let reason = if from == key {
                format!("stage {key:?} cannot promote from itself")
            } else if !self.stages.contains_key(from) {
                format!(
                    "{from:?} is not another stage of {} (stages: {})",
                    self.name,
                    names()
                )
            } else {
                continue;
            };
            return Some(PromotionError {
                stage: key.clone(),
                from: from.clone(),
                reason,
            });
        }
        // Each stage promotes from at most one other: follow the chain from every stage; a
        // chain that comes back to a stage on it is a cycle.
        for start in self.stages.keys() {
            let mut path: Vec<&str> = vec![start];
            let mut at = start.as_str();
            while let Some(next) = self.stages.get(at).and_then(|s| s.promote_from.as_deref()) {
                if let Some(i) = path.iter().position(|p| *p == next) {
                    // Only report it from its first stage by name, so the answer is stable.
                    let cycle = &path[i..];
                    let first = cycle.iter().min().copied().unwrap_or(next);
                    if first != start.as_str() {
                        break;
                    }
                    let mut shown: Vec<&str> = cycle.to_vec();
                    shown.push(first);
                    let from = self.stages[first].promote_from.clone().unwrap_or_default();
                    return Some(PromotionError {
                        stage: first.to_owned(),
                        from,
                        reason: format!(
                            "promote_from makes a cycle, {} (stage {first:?} would wait for itself); \
                             one stage of a chain must take its tags from the registry",
                            shown.join(" → ")
                        ),
                    });
                }
                path.push(next);
                at = next;
            }
        }
        None
    }
}

/// A stage's `promote_from` that cannot work ([`Project::promotion_error`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromotionError {
    /// The stage whose `promote_from` is wrong (for a cycle, its first stage by name).
    pub stage: String,
    /// The value of that `promote_from`.
    pub from: String,
    /// What is wrong, naming the stages (and the cycle, for a cycle).
    pub reason: String,
}

/// The lifecycle state of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum InstanceState {
    /// Being created and health-checked by a deploy in progress.
    Starting,
    /// Running (and healthy when it was deployed).
    Running,
    /// Stopped on request; can be started again.
    Stopped,
    /// Being retired: stopped, its container to be removed.
    Retiring,
    /// Its container disappeared behind Skipper's back.
    Missing,
    /// The container exists but exited on its own.
    Exited,
    /// Made by a deploy whose process died before finishing (only ever shown by read commands,
    /// never stored: the stage's next mutating command removes it).
    Interrupted,
}

impl InstanceState {
    /// The state's snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Running => "running",
            Self::Stopped => "stopped",
            Self::Retiring => "retiring",
            Self::Missing => "missing",
            Self::Exited => "exited",
            Self::Interrupted => "interrupted",
        }
    }
}

impl fmt::Display for InstanceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a proxy sends traffic for a route.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Upstream {
    /// `http` or `https`.
    pub scheme: String,
    /// Host name (a container name on the shared network, or `127.0.0.1`).
    pub host: String,
    /// Port.
    pub port: u16,
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
    }
}

/// One running version of a project in a stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// The instance id.
    pub id: String,
    /// The project name.
    pub project: String,
    /// The stage name.
    pub stage: String,
    /// The image it runs.
    pub image: ImageRef,
    /// The tag it runs.
    pub tag: String,
    /// The image digest, where known.
    pub digest: Option<String>,
    /// The container's name (unique per instance).
    pub container_name: String,
    /// The container id, once created.
    pub container_id: Option<String>,
    /// Where host-side code reaches the app (`127.0.0.1:49153`), where published.
    pub address: Option<String>,
    /// Where the proxy sends this instance's traffic.
    pub upstream: Option<Upstream>,
    /// The instance's own domain (`stage-dev-app-abc123.example.com`).
    pub domain: String,
    /// Lifecycle state.
    pub state: InstanceState,
    /// Whether the stage's domain routes to this instance.
    pub active: bool,
    /// The deployment that created it.
    pub deployment_id: String,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it last changed.
    pub updated_at: Timestamp,
}

/// The steps of a deploy, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Step {
    /// Check pattern, promotion and confirmation.
    Validate,
    /// Pull the image and record its digest.
    Pull,
    /// Create the container on the network.
    Create,
    /// Start it.
    Start,
    /// Wait until it is healthy.
    Health,
    /// Route the instance's own domain to it.
    Route,
    /// Switch the stage's domain to it.
    Switch,
    /// Record the switch: the new instance active, the replaced ones retiring. This is the
    /// commit point: a deploy that fails or dies before it rolls back, one after it rolls
    /// forward (reconcile finishes it).
    Commit,
    /// Retire the oldest instances past `max_instances`.
    Retire,
    /// Record the outcome.
    Record,
}

impl Step {
    /// Every step, in order.
    pub const ALL: [Step; 10] = [
        Step::Validate,
        Step::Pull,
        Step::Create,
        Step::Start,
        Step::Health,
        Step::Route,
        Step::Switch,
        Step::Commit,
        Step::Retire,
        Step::Record,
    ];

    /// The step's snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Validate => "validate",
            Self::Pull => "pull",
            Self::Create => "create",
            Self::Start => "start",
            Self::Health => "health",
            Self::Route => "route",
            Self::Switch => "switch",
            Self::Commit => "commit",
            Self::Retire => "retire",
            Self::Record => "record",
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeployStatus {
    /// Under way.
    InProgress,
    /// The new version is live.
    Succeeded,
    /// It failed and was rolled back; the previous version serves.
    Failed,
}

impl DeployStatus {
    /// The status' snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InProgress => "in_progress",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }
}

/// What happened in one step of a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// The step completed.
    Done,
    /// The step failed.
    Failed,
    /// The step's work was undone during rollback.
    Undone,
    /// The step had nothing to do.
    Skipped,
}

/// One entry of a deployment's step log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Which step.
    pub step: Step,
    /// What happened.
    pub status: StepStatus,
    /// Details (what was pulled, probed, routed...).
    pub message: String,
    /// When.
    pub at: Timestamp,
}

/// Why a deployment failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployError {
    /// The step that failed.
    pub step: Step,
    /// The error's kind.
    pub kind: ErrorKind,
    /// The full error message.
    pub message: String,
    /// The new container's last log lines, when it was unhealthy or crashed.
    pub logs: Vec<String>,
}

/// What started a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Trigger {
    /// A person, through the CLI or API.
    Manual,
    /// A registry webhook.
    Webhook,
    /// The registry poller.
    Poll,
    /// A rollback to a previous version.
    Rollback,
    /// A promotion from another stage.
    Promote,
}

/// One attempt to deploy an image to a stage, with its ordered step log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    /// The deployment id.
    pub id: String,
    /// The project.
    pub project: String,
    /// The stage.
    pub stage: String,
    /// The image deployed.
    pub image: ImageRef,
    /// Its tag.
    pub tag: String,
    /// Its digest, once pulled.
    pub digest: Option<String>,
    /// The instance this deployment created.
    pub instance_id: Option<String>,
    /// The instance the stage's domain routed to before.
    pub previous_instance: Option<String>,
    /// Instances retired by this deployment.
    pub replaced: Vec<String>,
    /// Outcome.
    pub status: DeployStatus,
    /// What started it.
    pub trigger: Trigger,
    /// Step log, in order.
    pub steps: Vec<StepRecord>,
    /// The failure, when `status` is `Failed`.
    pub error: Option<DeployError>,
    /// When it started.
    pub started_at: Timestamp,
    /// When it ended.
    pub finished_at: Option<Timestamp>,
    /// The settings it ran with (so a rollback to it runs it the same way). `None` in records
    /// written before Skipper kept them.
    #[serde(default)]
    pub settings: Option<RunSettings>,
    /// The correlation id of whoever asked for it (an API request's `x-correlation-id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
}

/// The project settings a deployment ran with: what a deploy's flags can change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunSettings {
    /// The app port.
    pub port: Option<u16>,
    /// The health gate.
    pub health: HealthCheck,
    /// The environment.
    pub env: BTreeMap<String, String>,
    /// The stage's `max_instances`.
    pub max_instances: u32,
}

impl RunSettings {
    /// The settings of `project`'s `stage`.
    pub fn of(project: &Project, stage: &Stage) -> Self {
        Self {
            port: project.port,
            health: project.health.clone(),
            env: project.env.clone(),
            max_instances: stage.max_instances,
        }
    }

    /// `project` with these settings applied to it and to its stage `stage`.
    pub fn apply(&self, project: &mut Project, stage: &str) {
        project.port = self.port;
        project.health = self.health.clone();
        project.env = self.env.clone();
        if let Some(s) = project.stages.get_mut(stage) {
            s.max_instances = self.max_instances;
        }
    }
}

impl Deployment {
    /// Append to the step log.
    pub fn log(&mut self, step: Step, status: StepStatus, message: impl Into<String>) {
        self.steps.push(StepRecord {
            step,
            status,
            message: message.into(),
            at: Utc::now(),
        });
    }
}

/// What happened, for notifiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventKind {
    /// A deploy started (sent by `skipper serve`'s outbox, from the engine's activity feed).
    DeployStarted,
    /// A deploy went live.
    DeploySucceeded,
    /// A deploy failed and was rolled back.
    DeployFailed,
    /// A stage was rolled back to its previous version.
    RolledBack,
    /// A new tag matches a stage that does not auto-deploy.
    NewVersionAvailable,
    /// An instance was removed.
    InstanceRemoved,
    /// Reconcile repaired a divergence.
    Repaired,
    /// A stage's active instance lost its container (removed behind Skipper's back).
    InstanceMissing,
    /// A node's agent is sending heartbeats again (`project` and `stage` are empty). A
    /// filter may also spell it `node.online`.
    #[serde(alias = "node.online")]
    NodeOnline,
    /// A node's agent stopped sending heartbeats (`project` and `stage` are empty). A filter
    /// may also spell it `node.offline`.
    #[serde(alias = "node.offline")]
    NodeOffline,
    /// A test sent by a person (the dashboard's "Send a test event", `POST
    /// /v1/notifications/test`): every target gets it, whatever its `events` and `projects`.
    Test,
}

/// An event delivered to notifiers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// What happened.
    pub kind: EventKind,
    /// The project.
    pub project: String,
    /// The stage.
    pub stage: String,
    /// The image, if any.
    pub image: Option<ImageRef>,
    /// The deployment, if any.
    pub deployment_id: Option<String>,
    /// The instance, if any.
    pub instance_id: Option<String>,
    /// A URL where the version can be reached, if routed.
    pub url: Option<String>,
    /// A one-line human summary.
    pub message: String,
    /// When.
    pub at: Timestamp,
    /// The correlation id of whoever asked for the deployment (an API request's
    /// `x-correlation-id`), so a CI job can find its own events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
}

impl Event {
    /// An event about a deployment: project, stage, image, deployment and instance filled in
    /// from it; no URL.
    pub fn for_deployment(kind: EventKind, d: &Deployment, message: impl Into<String>) -> Self {
        Self {
            kind,
            project: d.project.clone(),
            stage: d.stage.clone(),
            image: Some(d.image.clone()),
            deployment_id: Some(d.id.clone()),
            instance_id: d.instance_id.clone(),
            url: None,
            message: message.into(),
            at: Utc::now(),
            correlation_id: d.correlation_id.clone(),
        }
    }

    /// The same event with a URL.
    pub fn with_url(mut self, url: Option<String>) -> Self {
        self.url = url;
        self
    }
}

/// A tag seen in a registry (what the watcher remembers so a restart never redeploys old tags).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenTag {
    /// The repository (`registry/path`).
    pub repository: String,
    /// The tag.
    pub tag: String,
    /// Its digest when last seen.
    pub digest: Option<String>,
    /// When it was first seen.
    pub first_seen: Timestamp,
    /// When its digest last changed.
    pub updated_at: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `p` with stages `name → promote_from`.
    fn project(stages: &[(&str, Option<&str>)]) -> Project {
        let mut p = Project::new("p", "registry.test/team/p").unwrap();
        for (name, from) in stages {
            let mut s = Stage::new(*name);
            s.promote_from = from.map(str::to_owned);
            p = p.with_stage(s);
        }
        p
    }

    fn reason(p: &Project) -> String {
        match p.validate().unwrap_err() {
            Error::InvalidName { what, reason, .. } => {
                assert_eq!(what, "promote_from");
                reason
            }
            other => panic!("not a promote_from error: {other:?}"),
        }
    }

    #[test]
    fn promote_from_chains_are_valid() {
        project(&[("dev", None), ("rel", Some("dev")), ("prod", Some("rel"))])
            .validate()
            .unwrap();
    }

    #[test]
    fn promote_from_cycles_are_refused_naming_the_cycle() {
        let two = project(&[("a", Some("b")), ("b", Some("a"))]);
        let r = reason(&two);
        assert!(r.contains("a → b → a"), "{r}");

        let three = project(&[
            ("c", Some("a")),
            ("a", Some("b")),
            ("b", Some("c")),
            ("d", None),
        ]);
        let r = reason(&three);
        assert!(r.contains("a → b → c → a"), "{r}");
        let e = three.promotion_error().unwrap();
        assert_eq!(e.stage, "a");
    }

    #[test]
    fn promote_from_itself_or_a_missing_stage_is_refused() {
        let r = reason(&project(&[("a", Some("a"))]));
        assert!(r.contains("itself"), "{r}");
        let r = reason(&project(&[("a", None), ("b", Some("qa"))]));
        assert!(r.contains("\"qa\"") && r.contains("stages: a, b"), "{r}");
    }

    #[test]
    fn a_project_may_not_take_a_dashboard_page_name() {
        let e = Project::new("new", "registry.test/team/p").unwrap_err();
        assert!(e.to_string().contains("/projects/new"), "{e}");
        let mut p = Project::new("news", "registry.test/team/p").unwrap();
        p.name = "new".into();
        assert!(p.validate().is_err());
        let e = crate::config::Config::parse("projects:\n  new:\n    image: a/b\n").unwrap_err();
        assert!(e.to_string().contains("reserved"), "{e}");
    }
}
