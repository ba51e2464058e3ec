//! Watching registries for new images: polling rounds, and push notifications.
//!
//! A [`Watcher`] holds an [`Engine`] and a set of [`Registries`]. Each polling round
//! ([`Watcher::run_once`]) goes over every project in the engine's store, grouped by image
//! repository (projects sharing a repository share one poll):
//!
//! 1. list the repository's tags;
//! 2. resolve digests with `HEAD` (never a pull) for the newest
//!    [`digests_per_stage`](WatchSettings::digests_per_stage) tags of each stage's pattern and for
//!    every tag never seen before, at most [`max_digests`](WatchSettings::max_digests) a round;
//! 3. compare with the tags remembered in the store ([`Store::list_seen_tags`](skipper_core::Store::list_seen_tags)) — a tag never
//!    seen is **new**, a seen tag whose digest moved is **re-pushed** ([`select::diff_tags`]);
//! 4. decide, stage by stage, for the newest (semver-aware, [`select::select_tags`]) new or
//!    re-pushed tag matching the stage's pattern;
//! 5. remember what was seen ([`Store::put_seen_tag`](skipper_core::Store::put_seen_tag)), so a restart never redeploys old tags.
//!
//! [`Watcher::handle_push`] does steps 4 and 5 for a tag a webhook announced.
//!
//! # The rules
//!
//! | situation | what happens |
//! |---|---|
//! | the repository was never polled (no seen tags) | **baseline**: every tag is recorded, nothing is deployed or announced — except that an `auto_deploy` stage with no instance at all gets the newest matching tag (a new project should start running; a running one is never redeployed just because the watcher started) |
//! | a new or re-pushed tag matches an `auto_deploy` stage | the newest such tag is deployed through [`Engine::deploy`] with [`Trigger::Poll`] (or [`Trigger::Webhook`]): health-gated, rolled back on failure |
//! | … but the stage's active instance already runs that tag at that digest | skipped: nothing to do (a manual deploy got there first, or a webhook is delivered twice) |
//! | … but the tag is an older version than the one the stage runs (`v1.9.4` pushed while `v2.0.0` runs) | skipped: the watcher never downgrades |
//! | a new or re-pushed tag matches a stage without `auto_deploy`, or with `confirm: true` | a [`EventKind::NewVersionAvailable`] event goes to the engine's notifiers ([`Engine::announce`]) |
//! | stages with `promote_from` | handled after their source stage, so a tag deployed to `rel` this round may be promoted to an automatic `prod` in the same round; the engine refuses a tag that has not run in the source |
//!
//! A deploy that fails its health gate is rolled back by the engine and **not retried** until
//! the tag moves again (or a newer one appears): retrying a broken image every round only
//! churns. A deploy that could not start for a passing reason (the stage stayed busy, the engine
//! is shutting down, a timeout) leaves the tag unrecorded, so the next round tries again.
//!
//! Errors are per repository: a registry that fails (unreachable, 401, 429) is reported for its
//! projects, backs off exponentially from [`backoff`](WatchSettings::backoff) up to
//! [`max_backoff`](WatchSettings::max_backoff) — or longer when the registry asked for more with
//! `Retry-After` — and never stops the other repositories of the round.
//!
//! Deploys run one after the other, so a long health gate delays the rest of the round; the next
//! round starts [`run`](Watcher::run)'s interval after the previous one ended.
//!
//! Ordering caveat (see [`select`]): tags that are not versions are ordered by the registry's
//! listing, which is lexical on the common registries; name such tags so they sort by time
//! (`dev-20240611-1532`, `build-000123`) or rely on webhooks.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use skipper_core::config::{RegistrySettings, RegistryType};
use skipper_core::{
    Credentials, DeployRequest, DeployStatus, Engine, Error, ErrorKind, Event, EventKind, ImageRef,
    Instance, InstanceFilter, InstanceState, Project, Registry, SeenTag, Stage, TagPattern,
    Trigger,
};
use tokio::time::Instant;

use crate::client::{RegistryClient, RegistryConfig, RegistryKind};
use crate::error::RegistryError;
use crate::select::{self, ObservedTag, TagDiff};
use crate::webhook::PushEvent;
use skipper_core::docker_config::docker_config_credentials;

// ---------------------------------------------------------------------------------------------
// Registries

/// The client config for one `registries:` entry of the config file, and the registry name
/// (`host[:port]`, as image references carry it) it serves.
///
/// Docker Hub and GHCR entries use their service's endpoints (`docker.io`, `ghcr.io`) whatever
/// `url` says; Gitea and distribution entries use `url` as the API endpoint. Credentials are
/// taken only when both `username` and `token` are set; otherwise [`Registries`] looks in the
/// Docker client config, as `docker pull` would.
pub fn registry_config(settings: &RegistrySettings) -> (String, RegistryConfig) {
    let kind = match settings.kind {
        RegistryType::Dockerhub => RegistryKind::DockerHub,
        RegistryType::Ghcr => RegistryKind::Ghcr,
        RegistryType::Gitea => RegistryKind::Gitea,
        RegistryType::Distribution => RegistryKind::Distribution,
    };
    let credentials = match (&settings.username, &settings.token) {
        (Some(username), Some(secret)) => Some(Credentials {
            username: username.clone(),
            secret: secret.clone(),
        }),
        _ => None,
    };
    let mut config = RegistryConfig {
        credentials,
        ..RegistryConfig::new(kind)
    };
    match kind.default_registry() {
        Some(name) => (name.to_owned(), config),
        None => {
            let host = settings.host();
            config.url = Some(settings.url.clone());
            config.registry = Some(host.clone());
            (host, config)
        }
    }
}

/// A client as the watcher holds it: the concrete [`RegistryClient`] keeps its typed errors
/// (with the registry's `Retry-After`); any other [`Registry`] is used through the trait.
#[derive(Clone)]
enum Client {
    Native(RegistryClient),
    Dyn(Arc<dyn Registry>),
}

/// A failed registry or store call, with the wait the registry asked for, if it said.
struct PollError {
    error: Error,
    retry_after: Option<Duration>,
}

impl From<RegistryError> for PollError {
    fn from(e: RegistryError) -> Self {
        Self {
            retry_after: e.retry_after(),
            error: e.into(),
        }
    }
}

impl From<Error> for PollError {
    fn from(error: Error) -> Self {
        Self {
            error,
            retry_after: None,
        }
    }
}

impl Client {
    async fn tags(&self, repository: &ImageRef) -> Result<Vec<String>, PollError> {
        Ok(match self {
            Self::Native(c) => c.tags(repository).await?,
            Self::Dyn(r) => r.list_tags(repository).await?,
        })
    }

    async fn digest(&self, image: &ImageRef) -> Result<String, PollError> {
        Ok(match self {
            Self::Native(c) => c.digest(image).await?,
            Self::Dyn(r) => r.resolve_digest(image).await?,
        })
    }

    fn as_dyn(&self) -> Arc<dyn Registry> {
        match self {
            Self::Native(c) => Arc::new(c.clone()),
            Self::Dyn(r) => r.clone(),
        }
    }
}

/// Registry clients by registry name (`docker.io`, `ghcr.io`, `127.0.0.1:5000`: the
/// `host[:port]` image references carry).
///
/// Clients come from, in order: those [inserted](Self::insert); the config file's `registries:`
/// entries ([`from_settings`](Self::from_settings)); and, for any other registry, a default
/// client made on first use — anonymous, or with the credentials `docker pull` would use
/// ([`docker_config_credentials`]). Entries without credentials also look there.
pub struct Registries {
    clients: Mutex<HashMap<String, Client>>,
    configs: HashMap<String, RegistryConfig>,
    docker_config: bool,
    defaults: bool,
}

impl std::fmt::Debug for Registries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let clients: BTreeSet<String> = self
            .clients
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .cloned()
            .collect();
        f.debug_struct("Registries")
            .field("clients", &clients)
            .field("configured", &self.configs.keys().collect::<BTreeSet<_>>())
            .field("docker_config", &self.docker_config)
            .field("defaults", &self.defaults)
            .finish()
    }
}

impl Default for Registries {
    fn default() -> Self {
        Self::new()
    }
}

impl Registries {
    /// No configured registry: every registry gets a default client.
    pub fn new() -> Self {
        Self {
            clients: Mutex::new(HashMap::new()),
            configs: HashMap::new(),
            docker_config: true,
            defaults: true,
        }
    }

    /// Clients for the config file's `registries:` entries (see [`registry_config`]). Fails on
    /// an entry no client can be built for (plain http to a non-loopback host, say).
    pub fn from_settings<'a>(
        settings: impl IntoIterator<Item = &'a RegistrySettings>,
    ) -> crate::Result<Self> {
        let mut registries = Self::new();
        for s in settings {
            let (name, config) = registry_config(s);
            // Validate now, so a bad entry fails at start-up rather than at the first poll.
            RegistryClient::new(config.clone()).map_err(|e| RegistryError::Config {
                reason: format!("registries.{}: {e}", s.name),
            })?;
            registries.configs.insert(name, config);
        }
        Ok(registries)
    }

    /// Use `client` for `registry` (a `host[:port]`), through the [`Registry`] trait.
    pub fn insert(&mut self, registry: impl Into<String>, client: Arc<dyn Registry>) {
        self.clients
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(registry.into(), Client::Dyn(client));
    }

    /// Use `client` for the registry it serves ([`RegistryClient::registry`]). Unlike
    /// [`insert`](Self::insert), the watcher then sees the registry's `Retry-After` on 429.
    pub fn insert_client(&mut self, client: RegistryClient) {
        self.clients
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(client.registry().to_owned(), Client::Native(client));
    }

    /// Whether to look for credentials in the Docker client config when an entry or a default
    /// client has none (default: yes).
    pub fn with_docker_config(mut self, yes: bool) -> Self {
        self.docker_config = yes;
        self
    }

    /// Whether registries neither inserted nor configured get a default client (default: yes).
    /// Without, they fail with [`RegistryError::Config`].
    pub fn with_defaults(mut self, yes: bool) -> Self {
        self.defaults = yes;
        self
    }

    /// The client for `registry` (a `host[:port]`), made on first use.
    pub async fn get(&self, registry: &str) -> crate::Result<Arc<dyn Registry>> {
        Ok(self.client(registry).await?.as_dyn())
    }

    async fn client(&self, registry: &str) -> crate::Result<Client> {
        if let Some(c) = self.lock().get(registry) {
            return Ok(c.clone());
        }
        let mut config = match self.configs.get(registry) {
            Some(c) => c.clone(),
            None if self.defaults => RegistryConfig {
                registry: Some(registry.to_owned()),
                ..RegistryConfig::new(RegistryKind::detect(registry))
            },
            None => {
                return Err(RegistryError::Config {
                    reason: format!("no client is configured for registry {registry}"),
                });
            }
        };
        if config.credentials.is_none() && self.docker_config {
            let host = registry.to_owned();
            config.credentials =
                tokio::task::spawn_blocking(move || docker_config_credentials(&host))
                    .await
                    .unwrap_or_default();
        }
        let client = Client::Native(RegistryClient::new(config)?);
        // Another caller may have made one meanwhile; either will do, keep the first.
        Ok(self
            .lock()
            .entry(registry.to_owned())
            .or_insert(client)
            .clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Client>> {
        self.clients.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

// ---------------------------------------------------------------------------------------------
// The report

/// Why a tag was acted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Change {
    /// A tag never seen before.
    New,
    /// A seen tag that now points at another manifest.
    Repushed,
    /// The first poll of the repository, for a stage that has no instance yet.
    FirstRun,
    /// A webhook announced the push.
    Pushed,
}

impl Change {
    /// The change's snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::New => "new",
            Self::Repushed => "repushed",
            Self::FirstRun => "first_run",
            Self::Pushed => "pushed",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::New => "a new tag",
            Self::Repushed => "the tag was re-pushed (its digest changed)",
            Self::FirstRun => "first poll, and the stage has no instance yet",
            Self::Pushed => "a webhook announced the push",
        }
    }
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A repository polled in a round.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolledRepository {
    /// The repository (`registry/path`).
    pub repository: String,
    /// The projects watching it.
    pub projects: Vec<String>,
    /// Tags listed.
    pub tags: usize,
    /// Digests resolved (with `HEAD`).
    pub digests: usize,
    /// Tags never seen before.
    pub new: usize,
    /// Seen tags whose digest changed.
    pub repushed: usize,
    /// Whether this was the first poll (the baseline).
    pub baseline: bool,
}

/// A deploy the watcher ran that succeeded: the new version serves. A deploy that failed (and
/// was rolled back) is a [`ProjectError`] with its [`deployment_id`](ProjectError::deployment_id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployed {
    /// The project.
    pub project: String,
    /// The stage.
    pub stage: String,
    /// The tag deployed.
    pub tag: String,
    /// Its digest: the pulled one, else the one the registry announced.
    pub digest: Option<String>,
    /// Why.
    pub change: Change,
    /// The deployment's id (see `skipper history`).
    pub deployment_id: String,
}

/// A "new version available" event sent to the notifiers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announced {
    /// The project.
    pub project: String,
    /// The stage.
    pub stage: String,
    /// The tag.
    pub tag: String,
    /// Its digest, if resolved.
    pub digest: Option<String>,
    /// Why.
    pub change: Change,
    /// Why it was announced rather than deployed.
    pub reason: String,
}

/// A decision not to act.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    /// The project.
    pub project: String,
    /// The stage, when the decision was about one.
    pub stage: Option<String>,
    /// The tag, when the decision was about one.
    pub tag: Option<String>,
    /// Why.
    pub reason: String,
}

/// Something that failed for a project (the rest of the round went on): a registry or store
/// call, a deploy that could not start, or a deploy that ran, failed and was rolled back (then
/// [`deployment_id`](Self::deployment_id) is set).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectError {
    /// The project.
    pub project: String,
    /// The stage, when a deploy could not start.
    pub stage: Option<String>,
    /// The tag, when a deploy could not start.
    pub tag: Option<String>,
    /// The error's kind (`unauthorized`, `rate_limited`, `transient`, ...).
    pub kind: ErrorKind,
    /// The error, with its causes.
    pub message: String,
    /// How long the registry asked to wait, in seconds, when it said.
    pub retry_after_secs: Option<u64>,
    /// The failed deployment (see `skipper history`), when a deploy ran and was rolled back.
    #[serde(default)]
    pub deployment_id: Option<String>,
}

/// What one polling round (or one push) did. Serialises to JSON for `skipper watch --json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchReport {
    /// When the round started.
    pub started_at: DateTime<Utc>,
    /// When it ended.
    pub finished_at: DateTime<Utc>,
    /// The repositories polled (empty for a push).
    pub polled: Vec<PolledRepository>,
    /// Deploys that succeeded. Failed ones are in [`errors`](Self::errors).
    pub deployed: Vec<Deployed>,
    /// "New version available" events sent.
    pub announced: Vec<Announced>,
    /// Decisions not to act, with reasons.
    pub skipped: Vec<Skipped>,
    /// Failures, per project, failed deploys included.
    pub errors: Vec<ProjectError>,
}

impl WatchReport {
    fn start() -> Self {
        let now = Utc::now();
        Self {
            started_at: now,
            finished_at: now,
            polled: Vec::new(),
            deployed: Vec::new(),
            announced: Vec::new(),
            skipped: Vec::new(),
            errors: Vec::new(),
        }
    }

    /// Whether a deploy failed (and was rolled back) or could not start.
    pub fn deploy_failed(&self) -> bool {
        self.errors.iter().any(|e| e.stage.is_some())
    }

    /// Whether nothing was deployed, announced or failed.
    pub fn is_quiet(&self) -> bool {
        self.deployed.is_empty() && self.announced.is_empty() && self.errors.is_empty()
    }

    /// One line: `2 repositories polled, 1 deployed, 0 announced, 1 skipped, 0 errors`. A deploy
    /// that failed counts as an error, not as deployed.
    pub fn summary(&self) -> String {
        format!(
            "{} repositor{} polled, {} deployed, {} announced, {} skipped, {} error{}",
            self.polled.len(),
            if self.polled.len() == 1 { "y" } else { "ies" },
            self.deployed.len(),
            self.announced.len(),
            self.skipped.len(),
            self.errors.len(),
            if self.errors.len() == 1 { "" } else { "s" },
        )
    }

    fn error(&mut self, project: &str, stage: Option<&str>, tag: Option<&str>, e: &PollError) {
        self.errors.push(ProjectError {
            project: project.to_owned(),
            stage: stage.map(str::to_owned),
            tag: tag.map(str::to_owned),
            kind: e.error.kind(),
            message: e.error.chain(),
            retry_after_secs: e.retry_after.map(|d| d.as_secs().max(1)),
            deployment_id: None,
        });
    }

    fn skip(&mut self, project: &str, stage: Option<&str>, tag: Option<&str>, reason: String) {
        self.skipped.push(Skipped {
            project: project.to_owned(),
            stage: stage.map(str::to_owned),
            tag: tag.map(str::to_owned),
            reason,
        });
    }
}

// ---------------------------------------------------------------------------------------------
// The watcher

/// The store lease a watcher holds while it acts on a repository.
fn watch_key(repository: &str) -> String {
    format!("watch/{repository}")
}

/// How a [`Watcher`] polls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchSettings {
    /// Digests resolved per stage and round, for the newest tags matching its pattern: re-pushes
    /// of these tags are detected. Default 10.
    pub digests_per_stage: usize,
    /// Digests resolved per repository and round at most (new tags included). Default 100.
    pub max_digests: usize,
    /// The wait after a repository's first failed poll; it doubles with each failure in a row.
    /// Default 30 s.
    pub backoff: Duration,
    /// The longest backoff, unless the registry asks for longer. Default 30 min.
    pub max_backoff: Duration,
    /// Watch only these projects (`None`: every project in the store).
    pub projects: Option<BTreeSet<String>>,
}

impl Default for WatchSettings {
    fn default() -> Self {
        Self {
            digests_per_stage: 10,
            max_digests: 100,
            backoff: Duration::from_secs(30),
            max_backoff: Duration::from_secs(30 * 60),
            projects: None,
        }
    }
}

struct Backoff {
    failures: u32,
    until: Instant,
    last_error: String,
}

struct Inner {
    engine: Engine,
    registries: Arc<Registries>,
    settings: WatchSettings,
    backoff: Mutex<HashMap<String, Backoff>>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Detects new images and deploys or announces them (see the [module docs](self) for the rules).
///
/// Cheap to clone; clones share the backoff state and the per-repository locks, so a polling
/// loop and a webhook handler never act on one repository at the same time.
///
/// ```no_run
/// use std::sync::Arc;
/// use std::time::Duration;
/// use skipper_registry::watch::{Registries, Watcher};
/// # async fn run(engine: skipper_core::Engine) -> skipper_core::Result<()> {
/// let watcher = Watcher::new(engine, Arc::new(Registries::new()));
/// let report = watcher.run_once().await?;
/// println!("{}", report.summary());
/// // Or every 5 minutes (plus up to 30 s of jitter) until `stop` is sent or dropped:
/// let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
/// # drop(stop);
/// watcher
///     .run(Duration::from_secs(300), Duration::from_secs(30), async {
///         let _ = stopped.await;
///     })
///     .await;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Watcher {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher")
            .field("registries", &self.inner.registries)
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

/// A tag a stage may act on.
struct Candidate {
    tag: String,
    digest: Option<String>,
    change: Change,
}

/// What one repository's poll found.
struct Round<'a> {
    tags: &'a [String],
    digests: &'a HashMap<String, String>,
    diff: &'a TagDiff,
    baseline: bool,
}

impl Watcher {
    /// A watcher with the default [`WatchSettings`].
    pub fn new(engine: Engine, registries: Arc<Registries>) -> Self {
        Self::with_settings(engine, registries, WatchSettings::default())
    }

    /// A watcher with these settings.
    pub fn with_settings(
        engine: Engine,
        registries: Arc<Registries>,
        settings: WatchSettings,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                engine,
                registries,
                settings,
                backoff: Mutex::new(HashMap::new()),
                locks: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The engine deploys go through.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// The registry clients.
    pub fn registries(&self) -> &Arc<Registries> {
        &self.inner.registries
    }

    /// One polling round over every project in the store (or those in
    /// [`WatchSettings::projects`]). Failures of a repository or a deploy are in the report; only
    /// a failure to list the projects is an `Err`.
    pub async fn run_once(&self) -> skipper_core::Result<WatchReport> {
        let mut report = WatchReport::start();
        let mut by_repository: BTreeMap<String, Vec<Project>> = BTreeMap::new();
        for project in self.projects().await? {
            match ImageRef::parse(&project.image) {
                Ok(image) => by_repository.entry(image.name()).or_default().push(project),
                Err(e) => report.error(&project.name, None, None, &e.into()),
            }
        }
        for (repository, projects) in &by_repository {
            self.poll_repository(repository, projects, &mut report)
                .await;
        }
        report.finished_at = Utc::now();
        Ok(report)
    }

    /// Poll every `interval` (plus a random `jitter` of up to that much, so several watchers do
    /// not poll in step) until `shutdown` completes. The first round starts at once; each round
    /// is logged. An interval under one second counts as one second.
    ///
    /// Stopping mid-round is safe: tags are recorded only after their deploys, and the engine
    /// finishes (or rolls back) a deploy whose caller went away.
    pub async fn run(
        &self,
        interval: Duration,
        jitter: Duration,
        shutdown: impl Future<Output = ()>,
    ) {
        self.run_with(interval, jitter, shutdown, |_| {}).await;
    }

    /// [`run`](Self::run), handing each round's report to `on_round`.
    pub async fn run_with(
        &self,
        interval: Duration,
        jitter: Duration,
        shutdown: impl Future<Output = ()>,
        mut on_round: impl FnMut(&WatchReport),
    ) {
        let interval = interval.max(Duration::from_secs(1));
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                result = self.run_once() => match result {
                    Ok(report) => {
                        if report.is_quiet() {
                            tracing::debug!(summary = %report.summary(), "polling round done");
                        } else {
                            tracing::info!(summary = %report.summary(), "polling round done");
                        }
                        on_round(&report);
                    }
                    Err(e) => tracing::warn!(error = %e.chain(), "a polling round failed; trying again next round"),
                },
            }
            let pause = interval + jitter.mul_f64(random_fraction());
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                () = tokio::time::sleep(pause) => {}
            }
        }
        tracing::info!("watcher stopped");
    }

    /// Act on a push a webhook announced: for every project whose image is the pushed
    /// repository, deploy the tag to each matching `auto_deploy` stage ([`Trigger::Webhook`]) and
    /// announce it to the other matching stages, by the rules in the [module docs](self). The
    /// tag is then recorded as seen (with its digest, when the event has one), so the next poll
    /// does not act on it again. A push of a tag already seen at the same digest (a redelivery)
    /// does nothing. A repository never polled is left for the first poll to baseline.
    ///
    /// An empty report means no project watches the repository.
    pub async fn handle_push(&self, event: &PushEvent) -> skipper_core::Result<WatchReport> {
        let image = &event.image;
        let tag = image
            .tag()
            .ok_or_else(|| Error::rejected(format!("the push of {image} names no tag")))?
            .to_owned();
        let repository = image.name();
        let report = WatchReport::start();
        let projects: Vec<Project> = self
            .projects()
            .await?
            .into_iter()
            .filter(|p| ImageRef::parse(&p.image).is_ok_and(|r| r.same_repository(image)))
            .collect();
        if projects.is_empty() {
            tracing::info!(image = %image, source = %event.source, "push ignored: no project watches this repository");
            return Ok(report);
        }
        let lock = self.repository_lock(&repository);
        let _guard = lock.lock().await;
        // A poll in another process may be acting on this repository: wait for it (up to the
        // engine's lock wait) rather than deploy the same tag twice or drop the push.
        let wait = self.inner.engine.settings().lock_wait;
        let lease = self
            .inner
            .engine
            .lease(&watch_key(&repository), wait)
            .await?
            .ok_or_else(|| Error::Timeout {
                what: format!("waiting for another watcher to finish with {repository}"),
                after: wait,
            })?;
        let handled = self
            .handle_push_locked(image, tag, &repository, projects, report)
            .await;
        lease.release().await;
        handled
    }

    async fn handle_push_locked(
        &self,
        image: &ImageRef,
        tag: String,
        repository: &str,
        projects: Vec<Project>,
        mut report: WatchReport,
    ) -> skipper_core::Result<WatchReport> {
        let repository = repository.to_owned();
        let store = self.inner.engine.store();
        let seen = store.list_seen_tags(&repository).await?;
        let known = seen.iter().find(|s| s.tag == tag);
        if let (Some(k), Some(d)) = (known.and_then(|k| k.digest.as_deref()), image.digest())
            && k == d
        {
            for p in &projects {
                report.skip(
                    &p.name,
                    None,
                    Some(&tag),
                    format!("{tag} was already seen at {d}; a webhook delivered twice"),
                );
            }
            tracing::info!(image = %image, "push ignored: the tag was already seen at this digest");
            report.finished_at = Utc::now();
            return Ok(report);
        }

        let mut retry = HashSet::new();
        for project in &projects {
            for stage in promotion_order(project) {
                let matches = match stage.matches(&tag) {
                    Ok(m) => m,
                    Err(e) => {
                        report.error(&project.name, Some(&stage.name), None, &e.into());
                        continue;
                    }
                };
                if !matches {
                    tracing::debug!(project = %project.name, stage = %stage.name, tag = %tag, pattern = %stage.tag_pattern, "pushed tag does not match the stage");
                    continue;
                }
                let candidate = Candidate {
                    tag: tag.clone(),
                    digest: image.digest().map(str::to_owned),
                    change: Change::Pushed,
                };
                self.act(
                    project,
                    stage,
                    candidate,
                    Trigger::Webhook,
                    &mut report,
                    &mut retry,
                )
                .await;
            }
        }

        if !seen.is_empty()
            && !retry.contains(&tag)
            && (known.is_none() || image.digest().is_some())
        {
            let now = Utc::now();
            let record = SeenTag {
                repository: repository.clone(),
                tag: tag.clone(),
                digest: image.digest().map(str::to_owned),
                first_seen: now,
                updated_at: now,
            };
            if let Err(e) = store.put_seen_tag(&record).await {
                let e = PollError::from(e);
                for p in &projects {
                    report.error(&p.name, None, Some(&tag), &e);
                }
            }
        }
        report.finished_at = Utc::now();
        Ok(report)
    }

    /// The projects to watch.
    async fn projects(&self) -> skipper_core::Result<Vec<Project>> {
        let all = self.inner.engine.store().list_projects().await?;
        Ok(match &self.inner.settings.projects {
            Some(only) => all.into_iter().filter(|p| only.contains(&p.name)).collect(),
            None => all,
        })
    }

    fn repository_lock(&self, repository: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.inner
            .locks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(repository.to_owned())
            .or_default()
            .clone()
    }

    /// Poll one repository for its projects, recording failures in the report and backing off.
    async fn poll_repository(
        &self,
        repository: &str,
        projects: &[Project],
        report: &mut WatchReport,
    ) {
        let waiting = {
            let backoff = self
                .inner
                .backoff
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            backoff.get(repository).and_then(|b| {
                let left = b.until.saturating_duration_since(Instant::now());
                (!left.is_zero()).then(|| (b.failures, left, b.last_error.clone()))
            })
        };
        if let Some((failures, left, last_error)) = waiting {
            tracing::info!(
                repository,
                failures,
                wait_secs = left.as_secs(),
                "backing off; not polling this round"
            );
            for p in projects {
                report.skip(
                    &p.name,
                    None,
                    None,
                    format!(
                        "backing off after {failures} failed poll(s) of {repository}: next try in {}s; last error: {last_error}",
                        left.as_secs().max(1)
                    ),
                );
            }
            return;
        }

        let lock = self.repository_lock(repository);
        let _guard = lock.lock().await;
        // Across processes: a second `skipper watch` on the same store leaves this repository to
        // the one already polling it, instead of acting on the same new tag twice.
        let lease = match self
            .inner
            .engine
            .lease(&watch_key(repository), Duration::ZERO)
            .await
        {
            Ok(Some(lease)) => lease,
            Ok(None) => {
                for p in projects {
                    report.skip(
                        &p.name,
                        None,
                        None,
                        format!("another watcher is polling {repository}; left to it this round"),
                    );
                }
                return;
            }
            Err(e) => {
                for p in projects {
                    report.skip(
                        &p.name,
                        None,
                        None,
                        format!("cannot take the watch lease of {repository}: {}", e.chain()),
                    );
                }
                return;
            }
        };
        let polled = self.poll_locked(repository, projects, report).await;
        lease.release().await;
        match polled {
            Ok(()) => {
                self.inner
                    .backoff
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(repository);
            }
            Err(e) => {
                let wait = self.note_failure(repository, &e);
                tracing::warn!(repository, error = %e.error.chain(), kind = %e.error.kind(), retry_in_secs = wait.as_secs(), "poll failed; backing off");
                for p in projects {
                    report.error(&p.name, None, None, &e);
                }
            }
        }
    }

    /// Remember a failed poll; returns the wait before the next one.
    fn note_failure(&self, repository: &str, e: &PollError) -> Duration {
        let s = &self.inner.settings;
        let mut backoff = self
            .inner
            .backoff
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let entry = backoff.entry(repository.to_owned()).or_insert(Backoff {
            failures: 0,
            until: Instant::now(),
            last_error: String::new(),
        });
        entry.failures = entry.failures.saturating_add(1);
        let exponent = entry.failures.saturating_sub(1).min(20);
        let wait = s
            .backoff
            .saturating_mul(1u32 << exponent)
            .min(s.max_backoff)
            .max(e.retry_after.unwrap_or_default());
        entry.until = Instant::now() + wait;
        entry.last_error = e.error.chain();
        wait
    }

    async fn poll_locked(
        &self,
        repository: &str,
        projects: &[Project],
        report: &mut WatchReport,
    ) -> Result<(), PollError> {
        let s = &self.inner.settings;
        let repo = ImageRef::parse(repository)?;
        let client = self.inner.registries.client(repo.registry()).await?;
        let tags = client.tags(&repo).await?;
        let store = self.inner.engine.store();
        let seen = store.list_seen_tags(repository).await?;
        let baseline = seen.is_empty();
        let seen_tags: HashSet<&str> = seen.iter().map(|t| t.tag.as_str()).collect();

        // Which tags to resolve: the newest few of each stage, then every new matching tag.
        let patterns: Vec<TagPattern> = projects
            .iter()
            .flat_map(|p| p.stages.values())
            .filter_map(|stage| TagPattern::new(&stage.tag_pattern).ok())
            .collect();
        let mut wanted: Vec<&str> = Vec::new();
        let mut chosen = HashSet::new();
        for pattern in &patterns {
            for tag in select::select_tags(&tags, pattern)
                .into_iter()
                .take(s.digests_per_stage)
            {
                if chosen.insert(tag) {
                    wanted.push(tag);
                }
            }
        }
        if !baseline {
            for tag in &tags {
                if !seen_tags.contains(tag.as_str())
                    && patterns.iter().any(|p| p.matches(tag))
                    && chosen.insert(tag.as_str())
                {
                    wanted.push(tag);
                }
            }
        }
        if wanted.len() > s.max_digests {
            tracing::debug!(
                repository,
                wanted = wanted.len(),
                max = s.max_digests,
                "resolving only some digests this round"
            );
            wanted.truncate(s.max_digests);
        }
        let mut digests = HashMap::new();
        for tag in wanted {
            match client.digest(&repo.with_tag(tag)?).await {
                Ok(d) => {
                    digests.insert(tag.to_owned(), d);
                }
                // Deleted between the listing and now: nothing to compare.
                Err(e) if e.error.kind() == ErrorKind::NotFound => {
                    tracing::debug!(
                        repository,
                        tag,
                        "tag vanished before its digest was resolved"
                    );
                }
                Err(e) => return Err(e),
            }
        }

        let observed: Vec<ObservedTag> = tags
            .iter()
            .map(|t| ObservedTag::new(t.clone(), digests.get(t).cloned()))
            .collect();
        let diff = select::diff_tags(&observed, &seen);
        report.polled.push(PolledRepository {
            repository: repository.to_owned(),
            projects: projects.iter().map(|p| p.name.clone()).collect(),
            tags: tags.len(),
            digests: digests.len(),
            new: diff.new.len(),
            repushed: diff.changed.len(),
            baseline,
        });
        if baseline {
            tracing::info!(
                repository,
                tags = tags.len(),
                "first poll: recording the baseline"
            );
        } else if !diff.is_empty() {
            tracing::info!(
                repository,
                new = diff.new.len(),
                repushed = diff.changed.len(),
                "tags changed"
            );
        } else {
            tracing::debug!(repository, tags = tags.len(), "nothing new");
        }

        let round = Round {
            tags: &tags,
            digests: &digests,
            diff: &diff,
            baseline,
        };
        let mut retry = HashSet::new();
        for project in projects {
            if let Err(e) = self.poll_project(project, &round, report, &mut retry).await {
                tracing::warn!(project = %project.name, error = %e.chain(), "could not decide for the project");
                report.error(&project.name, None, None, &e.into());
            }
        }

        // Remember what was seen, except the tags whose deploy should be tried again.
        let now = Utc::now();
        let record = |tag: &str, digest: Option<&String>| SeenTag {
            repository: repository.to_owned(),
            tag: tag.to_owned(),
            digest: digest.cloned(),
            first_seen: now,
            updated_at: now,
        };
        for n in &diff.new {
            if !retry.contains(&n.tag) {
                store
                    .put_seen_tag(&record(&n.tag, n.digest.as_ref()))
                    .await?;
            }
        }
        for c in &diff.changed {
            if !retry.contains(&c.tag) {
                store
                    .put_seen_tag(&record(&c.tag, Some(&c.current)))
                    .await?;
            }
        }
        // Digests learnt for tags seen without one: the next poll can compare them.
        for s in seen.iter().filter(|s| s.digest.is_none()) {
            if let Some(d) = digests.get(&s.tag) {
                store.put_seen_tag(&record(&s.tag, Some(d))).await?;
            }
        }
        Ok(())
    }

    /// Decide for each stage of one project.
    async fn poll_project(
        &self,
        project: &Project,
        round: &Round<'_>,
        report: &mut WatchReport,
        retry: &mut HashSet<String>,
    ) -> skipper_core::Result<()> {
        if round.baseline {
            report.skip(
                &project.name,
                None,
                None,
                format!(
                    "first poll of {}: {} tag(s) recorded as the baseline; existing tags are deployed only to empty auto_deploy stages",
                    project.image,
                    round.tags.len()
                ),
            );
        }
        let new: HashSet<&str> = round.diff.new.iter().map(|n| n.tag.as_str()).collect();
        let changed: HashSet<&str> = round.diff.changed.iter().map(|c| c.tag.as_str()).collect();
        for stage in promotion_order(project) {
            let pattern = TagPattern::new(&stage.tag_pattern)?;
            let candidate = if round.baseline {
                if !stage.auto_deploy || stage.confirm {
                    continue;
                }
                let existing = self.stage_instances(project, stage).await?;
                if !existing.is_empty() {
                    tracing::info!(project = %project.name, stage = %stage.name, "first poll: the stage already has instances; not redeploying");
                    continue;
                }
                let Some(tag) = select::newest_tag(round.tags, &pattern) else {
                    tracing::info!(project = %project.name, stage = %stage.name, pattern = %stage.tag_pattern, "first poll: no tag matches the empty stage");
                    continue;
                };
                Candidate {
                    tag: tag.to_owned(),
                    digest: round.digests.get(tag).cloned(),
                    change: Change::FirstRun,
                }
            } else {
                let fresh: Vec<String> = round
                    .tags
                    .iter()
                    .filter(|t| {
                        pattern.matches(t)
                            && (new.contains(t.as_str()) || changed.contains(t.as_str()))
                    })
                    .cloned()
                    .collect();
                let Some(tag) = select::newest_tag(&fresh, &pattern) else {
                    tracing::debug!(project = %project.name, stage = %stage.name, "no new tag matches");
                    continue;
                };
                if fresh.len() > 1 {
                    tracing::info!(project = %project.name, stage = %stage.name, tag, others = fresh.len() - 1, "several new tags match; taking the newest");
                }
                Candidate {
                    tag: tag.to_owned(),
                    digest: round.digests.get(tag).cloned(),
                    change: if changed.contains(tag) {
                        Change::Repushed
                    } else {
                        Change::New
                    },
                }
            };
            self.act(project, stage, candidate, Trigger::Poll, report, retry)
                .await;
        }
        Ok(())
    }

    async fn stage_instances(
        &self,
        project: &Project,
        stage: &Stage,
    ) -> skipper_core::Result<Vec<Instance>> {
        self.inner
            .engine
            .instances(&InstanceFilter {
                project: Some(project.name.clone()),
                stage: Some(stage.name.clone()),
            })
            .await
    }

    /// Deploy, announce or skip one candidate tag for one stage.
    async fn act(
        &self,
        project: &Project,
        stage: &Stage,
        candidate: Candidate,
        trigger: Trigger,
        report: &mut WatchReport,
        retry: &mut HashSet<String>,
    ) {
        let (p, s, tag) = (&project.name, &stage.name, candidate.tag.as_str());
        let instances = match self.stage_instances(project, stage).await {
            Ok(i) => i,
            Err(e) => {
                report.error(p, Some(s), Some(tag), &e.into());
                retry.insert(candidate.tag.clone());
                return;
            }
        };
        let active = instances
            .iter()
            .find(|i| i.active && i.state == InstanceState::Running);
        let auto = stage.auto_deploy && !stage.confirm;
        if let Some(reason) = active.and_then(|a| hold_back(a, &candidate, auto)) {
            tracing::info!(project = %p, stage = %s, tag, change = %candidate.change, reason = %reason, "skipped");
            report.skip(p, Some(s), Some(tag), reason);
            return;
        }
        let image = match project.image_ref(tag) {
            Ok(i) => i,
            Err(e) => {
                report.error(p, Some(s), Some(tag), &e.into());
                return;
            }
        };

        if !auto {
            let reason = if stage.auto_deploy {
                "the stage needs an explicit confirmation (confirm: true)"
            } else {
                "the stage does not auto-deploy"
            };
            let shown = match &candidate.digest {
                Some(d) => image.with_digest(d).unwrap_or_else(|_| image.clone()),
                None => image.clone(),
            };
            tracing::info!(project = %p, stage = %s, tag, change = %candidate.change, reason, "announcing a new version");
            self.inner
                .engine
                .announce(Event {
                    kind: EventKind::NewVersionAvailable,
                    project: p.clone(),
                    stage: s.clone(),
                    image: Some(shown),
                    deployment_id: None,
                    instance_id: None,
                    url: None,
                    message: format!(
                        "{} is available for {p}/{s} ({}); deploy it with `skipper deploy {image} --project {p} --stage {s}`",
                        image.familiar(),
                        candidate.change.describe()
                    ),
                    at: Utc::now(),
                })
                .await;
            report.announced.push(Announced {
                project: p.clone(),
                stage: s.clone(),
                tag: candidate.tag,
                digest: candidate.digest,
                change: candidate.change,
                reason: reason.to_owned(),
            });
            return;
        }

        tracing::info!(project = %p, stage = %s, tag, change = %candidate.change, why = candidate.change.describe(), "deploying");
        let mut req = DeployRequest::new(p.clone(), s.clone(), image);
        req.trigger = trigger;
        match self.inner.engine.deploy(req).await {
            Ok(d) if d.status == DeployStatus::Succeeded => {
                tracing::info!(project = %p, stage = %s, tag, deployment = %d.id, "deployed");
                report.deployed.push(Deployed {
                    project: p.clone(),
                    stage: s.clone(),
                    tag: candidate.tag,
                    digest: d.digest.clone().or(candidate.digest),
                    change: candidate.change,
                    deployment_id: d.id,
                });
            }
            Ok(d) => {
                // Rolled back: a failure of the round, not a deploy. Not retried until the tag
                // moves again (the tag is recorded as seen).
                tracing::warn!(project = %p, stage = %s, tag, deployment = %d.id, "deploy failed and was rolled back; not retrying until the tag changes");
                let (kind, message) = match &d.error {
                    Some(e) => (
                        e.kind,
                        format!(
                            "deploy failed at step {} and was rolled back: {}",
                            e.step.as_str(),
                            e.message
                        ),
                    ),
                    None => (
                        ErrorKind::Internal,
                        format!("deploy ended {} without an error record", d.status.as_str()),
                    ),
                };
                report.errors.push(ProjectError {
                    project: p.clone(),
                    stage: Some(s.clone()),
                    tag: Some(candidate.tag),
                    kind,
                    message,
                    retry_after_secs: None,
                    deployment_id: Some(d.id),
                });
            }
            Err(e) => {
                let passing = matches!(e, Error::ShuttingDown)
                    || e.kind().is_retryable()
                    || e.kind() == ErrorKind::Conflict;
                if passing {
                    tracing::warn!(project = %p, stage = %s, tag, error = %e.chain(), "deploy could not start; trying again next round");
                    retry.insert(candidate.tag.clone());
                    report.error(p, Some(s), Some(tag), &e.into());
                } else if e.kind() == ErrorKind::Rejected {
                    tracing::info!(project = %p, stage = %s, tag, reason = %e.chain(), "the engine refused the deploy");
                    report.skip(
                        p,
                        Some(s),
                        Some(tag),
                        format!("the engine refused: {}", e.chain()),
                    );
                } else {
                    tracing::warn!(project = %p, stage = %s, tag, error = %e.chain(), "deploy could not start");
                    report.error(p, Some(s), Some(tag), &e.into());
                }
            }
        }
    }
}

/// Why the stage's active instance makes acting on `candidate` pointless, if it does: it runs
/// the same tag at the same digest, or (for a deploy) a higher version.
fn hold_back(active: &Instance, candidate: &Candidate, deploy: bool) -> Option<String> {
    if active.tag == candidate.tag {
        let same = match (&active.digest, &candidate.digest) {
            (Some(a), Some(b)) => a == b,
            // Unknown on one side: a tag that moved is worth acting on, a new one is not.
            _ => candidate.change != Change::Repushed,
        };
        return same.then(|| format!("{} already runs in the stage", candidate.tag));
    }
    if !deploy {
        return None;
    }
    let running = select::parse_version(&active.tag)?;
    let offered = select::parse_version(&candidate.tag)?;
    (offered.cmp_precedence(&running) == std::cmp::Ordering::Less).then(|| {
        format!(
            "{} is older than {}, which the stage runs; the watcher never downgrades",
            candidate.tag, active.tag
        )
    })
}

/// The project's stages, each after the stage it promotes from (then by name).
fn promotion_order(project: &Project) -> Vec<&Stage> {
    let mut out: Vec<&Stage> = Vec::new();
    let mut placed: HashSet<&str> = HashSet::new();
    loop {
        let before = out.len();
        for stage in project.stages.values() {
            if placed.contains(stage.name.as_str()) {
                continue;
            }
            let ready = stage
                .promote_from
                .as_deref()
                .is_none_or(|from| placed.contains(from) || !project.stages.contains_key(from));
            if ready {
                placed.insert(&stage.name);
                out.push(stage);
            }
        }
        if out.len() == before {
            break;
        }
    }
    // A promotion cycle (which validation should have refused): the rest by name.
    for stage in project.stages.values() {
        if !placed.contains(stage.name.as_str()) {
            out.push(stage);
        }
    }
    out
}

/// A number in [0, 1) that differs between calls (for jitter; not for anything secret).
fn random_fraction() -> f64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    //! The watcher against the in-memory fakes of skipper-core and a wiremock registry (one per
    //! test). Real time; nothing here waits long: health probes of the fake runtime answer at
    //! once.

    use std::collections::BTreeMap;

    use serde_json::json;
    use sha2::{Digest, Sha256};
    use skipper_core::store::MemoryStore;
    use skipper_core::testing::{Behavior, FakeProxy, FakeRuntime, RecordingNotifier};
    use skipper_core::{DeploymentFilter, Store};
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use super::*;

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
                "dev-1", "dev-2", "dev-3", "dev-4", "v1.0.0", "v1.1.0", "v1.2.0", "v1.9.0",
                "v1.10.0", "v2.0.0",
            ] {
                rt.add_image(&image(repo, tag), Behavior::Healthy);
            }
            rt.add_image(&image(repo, "dev-sick"), Behavior::Unhealthy);
        }
        let store = Arc::new(MemoryStore::new());
        let notifier = Arc::new(RecordingNotifier::new());
        let engine = Engine::builder(rt.clone(), store.clone())
            .proxy(Arc::new(FakeProxy::new()))
            .notifier(notifier.clone())
            .build();
        engine.put_project(&web()).await.unwrap();
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
        Harness {
            engine,
            store,
            rt,
            notifier,
            registry,
            registries: Arc::new(registries),
        }
    }

    impl Harness {
        fn watcher(&self) -> Watcher {
            Watcher::new(self.engine.clone(), self.registries.clone())
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
            .build();
        let restarted = Watcher::new(engine, h.registries.clone());
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

    #[test]
    fn backoff_doubles_and_is_capped() {
        let settings = WatchSettings {
            backoff: Duration::from_secs(10),
            max_backoff: Duration::from_secs(60),
            ..WatchSettings::default()
        };
        let rt = Arc::new(FakeRuntime::new());
        let engine = Engine::builder(rt, Arc::new(MemoryStore::new())).build();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let w = Watcher::with_settings(engine, Arc::new(Registries::new()), settings);
        let err = |retry_after| PollError {
            error: Error::backend("registry", ErrorKind::Transient, "down"),
            retry_after,
        };
        let waits: Vec<u64> = (0..5)
            .map(|_| w.note_failure("r", &err(None)).as_secs())
            .collect();
        assert_eq!(waits, vec![10, 20, 40, 60, 60]);
        assert_eq!(
            w.note_failure("r", &err(Some(Duration::from_secs(3600)))),
            Duration::from_secs(3600)
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
            .build();
        let report = Watcher::new(engine, h.registries.clone())
            .run_once()
            .await
            .unwrap();
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
    fn registry_entries_become_client_configs() {
        let settings =
            |kind, url: &str, user: Option<&str>, token: Option<&str>| RegistrySettings {
                name: "r".into(),
                url: url.parse().unwrap(),
                kind,
                username: user.map(str::to_owned),
                token: token.map(|t| t.to_owned().into()),
            };
        let (name, c) = registry_config(&settings(
            RegistryType::Gitea,
            "https://git.example.com:3000",
            Some("ci"),
            Some("t0ken"),
        ));
        assert_eq!(name, "git.example.com:3000");
        assert_eq!(c.kind, RegistryKind::Gitea);
        assert_eq!(c.url.unwrap().as_str(), "https://git.example.com:3000/");
        assert_eq!(c.credentials.unwrap().username, "ci");
        let (name, c) = registry_config(&settings(
            RegistryType::Dockerhub,
            "https://hub.docker.com",
            Some("me"),
            None,
        ));
        assert_eq!(name, "docker.io");
        assert!(c.url.is_none() && c.credentials.is_none());
        let (name, _) =
            registry_config(&settings(RegistryType::Ghcr, "https://ghcr.io", None, None));
        assert_eq!(name, "ghcr.io");

        let bad = settings(
            RegistryType::Distribution,
            "http://registry.example.com",
            None,
            None,
        );
        let e = Registries::from_settings([&bad]).unwrap_err().to_string();
        assert!(e.contains("registries.r"), "{e}");
    }

    #[test]
    fn stages_follow_the_stage_they_promote_from() {
        let mut p = Project::new("p", "registry.test/x").unwrap();
        for (name, from) in [("a", Some("z")), ("m", None), ("z", Some("m"))] {
            let mut s = Stage::new(name);
            s.promote_from = from.map(str::to_owned);
            p = p.with_stage(s);
        }
        let order: Vec<&str> = promotion_order(&p)
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(order, vec!["m", "z", "a"]);
    }

    #[test]
    fn the_report_serialises() {
        let mut r = WatchReport::start();
        r.deployed.push(Deployed {
            project: "web".into(),
            stage: "dev".into(),
            tag: "dev-2".into(),
            digest: None,
            change: Change::Repushed,
            deployment_id: "abc".into(),
        });
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["deployed"][0]["change"], "repushed");
        assert_eq!(
            r.summary(),
            "0 repositories polled, 1 deployed, 0 announced, 0 skipped, 0 errors"
        );
        let back: WatchReport = serde_json::from_value(v).unwrap();
        assert_eq!(back, r);
    }
}
