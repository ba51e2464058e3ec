//! Watching registries for new images: polling rounds, and push notifications.
//!
//! A [`Watcher`] is a controller of the engine: it holds an [`Engine`] and talks to registries
//! only through the engine's [`Registry`] ([`EngineBuilder::registry`], usually
//! [`Registries`], which picks the client by registry name). It is activated on a timer
//! ([`run`](Watcher::run)) and on a signal ([`handle_push`](Watcher::handle_push), from a
//! webhook), is not told why it runs beyond that, and never retries inside an activation: the
//! next round is the retry. Each polling round
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
//! A deploy that failed is an error of the round ([`WatchReport::errors`], with its
//! [`deployment_id`](ProjectError::deployment_id)), never counted as deployed.
//!
//! Errors are per repository: a registry that fails (unreachable, 401, 429) is reported for its
//! projects, backs off exponentially from [`backoff`](WatchSettings::backoff) up to
//! [`max_backoff`](WatchSettings::max_backoff) — or longer when a
//! [`RateLimited`](skipper_core::ErrorKind::RateLimited) error carries the registry's
//! `Retry-After` ([`Error::retry_after`]) — and never stops the other repositories of the round.
//!
//! The code, by concern: `registries` (the per-registry lookup), `poll` (one repository's part
//! of a round), `push` (webhooks), `decide` (deploy, announce or skip, and the stage order),
//! `backoff`, `report`.
//!
//! Deploys run one after the other, so a long health gate delays the rest of the round; the next
//! round starts [`run`](Watcher::run)'s interval after the previous one ended.
//!
//! Ordering caveat (see [`select`]): tags that are not versions are ordered by the registry's
//! listing, which is lexical on the common registries; name such tags so they sort by time
//! (`dev-20240611-1532`, `build-000123`) or rely on webhooks.
//!
//! [`EngineBuilder::registry`]: skipper_core::EngineBuilder::registry
//! [`select`]: crate::select
//! [`select::diff_tags`]: crate::select::diff_tags
//! [`select::select_tags`]: crate::select::select_tags
//! [`Trigger::Poll`]: skipper_core::Trigger::Poll
//! [`Trigger::Webhook`]: skipper_core::Trigger::Webhook
//! [`EventKind::NewVersionAvailable`]: skipper_core::EventKind::NewVersionAvailable
mod backoff;
mod decide;
mod poll;
mod push;
mod registries;
mod report;
#[cfg(test)]
mod tests;

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::Utc;
use skipper_core::{Engine, Error, ImageRef, Project, Registry};

use backoff::Backoffs;
pub use registries::{Registries, registry_config};
pub use report::{
    Announced, Change, Deployed, PolledRepository, ProjectError, Skipped, WatchReport,
};

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

struct Inner {
    engine: Engine,
    registry: Arc<dyn Registry>,
    settings: WatchSettings,
    backoff: Backoffs,
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
/// use skipper_core::Engine;
/// use skipper_registry::watch::{Registries, Watcher};
/// # async fn run(
/// #     runtime: Arc<dyn skipper_core::Runtime>,
/// #     store: Arc<dyn skipper_core::Store>,
/// # ) -> skipper_core::Result<()> {
/// let engine = Engine::builder(runtime, store)
///     .registry(Arc::new(Registries::new()))
///     .build();
/// let watcher = Watcher::new(engine)?;
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
            .field("engine", &self.inner.engine)
            .field("settings", &self.inner.settings)
            .finish_non_exhaustive()
    }
}

impl Watcher {
    /// A watcher with the default [`WatchSettings`], polling through the engine's registry.
    pub fn new(engine: Engine) -> skipper_core::Result<Self> {
        Self::with_settings(engine, WatchSettings::default())
    }

    /// A watcher with these settings, polling through the engine's registry
    /// ([`EngineBuilder::registry`](skipper_core::EngineBuilder::registry); [`Registries`]
    /// serves every registry). `Rejected` when the engine was built without one.
    pub fn with_settings(engine: Engine, settings: WatchSettings) -> skipper_core::Result<Self> {
        let registry = engine.registry().cloned().ok_or_else(|| {
            Error::rejected(
                "the watcher needs a registry: build the engine with EngineBuilder::registry \
                 (skipper_registry::Registries serves every registry)",
            )
        })?;
        Ok(Self {
            inner: Arc::new(Inner {
                engine,
                registry,
                settings,
                backoff: Backoffs::default(),
                locks: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The engine deploys go through.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// The registry polls go through (the engine's).
    pub fn registry(&self) -> &Arc<dyn Registry> {
        &self.inner.registry
    }

    /// The settings.
    pub fn settings(&self) -> &WatchSettings {
        &self.inner.settings
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
                Err(e) => report.error(&project.name, None, None, &e),
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

    /// The projects to watch.
    pub(super) async fn projects(&self) -> skipper_core::Result<Vec<Project>> {
        let all = self.inner.engine.store().list_projects().await?;
        Ok(match &self.inner.settings.projects {
            Some(only) => all.into_iter().filter(|p| only.contains(&p.name)).collect(),
            None => all,
        })
    }

    /// The in-process lock of `repository` (the store lease excludes other processes).
    pub(super) fn repository_lock(&self, repository: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.inner
            .locks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(repository.to_owned())
            .or_default()
            .clone()
    }
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
