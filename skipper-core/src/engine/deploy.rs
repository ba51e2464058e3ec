//! One deploy, as a saga with one commit point.
//!
//! Before the commit point every step that changes the world first pushes its compensating
//! action (a call that failed or timed out may still have acted), and a failure runs them in
//! reverse, leaving the previous version running and routed. The commit point is
//! [`Step::Commit`]: right after the stage's domain switched to the new, healthy instance, one
//! fenced store write records the new instance active and the replaced ones retiring. After it
//! nothing is compensated: retiring the old version is roll-forward work, retried by reconcile
//! after a failure or a crash.

use std::sync::Arc;

use chrono::Utc;

use super::health::Gate;
use super::{DeployRequest, Engine, Guard, Lease, PullPolicy, UpstreamTarget, timed};
use crate::backend::{ContainerInfo, ContainerSpec, Fence, InstanceFilter, Route, Runtime};
use crate::error::{Error, Result};
use crate::model::{
    DeployError, DeployStatus, Deployment, Event, EventKind, Instance, InstanceState, Project,
    RunSettings, Stage, Step, StepStatus, Trigger, Upstream, labels, new_id,
};
use crate::pattern::TagPattern;
use crate::reference::ImageRef;

/// A compensating action (only steps before the commit point have one).
#[derive(Debug)]
enum Undo {
    /// Remove a container this deploy created (by name: pushed before the create answered).
    RemoveContainer(String),
    /// Delete an instance record this deploy created.
    DeleteInstance(String),
    /// Put a route back as it was (`None`: remove it).
    RestoreRoute {
        domain: String,
        previous: Option<Route>,
    },
}

/// The state of a deploy in progress.
struct Saga {
    project: Project,
    stage: Stage,
    /// The runtime of the stage's node (the engine's own when it names none).
    rt: Arc<dyn Runtime>,
    /// The stage's node was offline at the start: the deploy waits for it (and reconciles the
    /// stage then) before its first step.
    waits_for: Option<String>,
    deployment: Deployment,
    undo: Vec<(Step, Undo)>,
    fence: Fence,
    /// Settings to keep as the project's once the deploy succeeded.
    keep: Option<RunSettings>,
    /// The repository to keep as the project's once the deploy succeeded.
    keep_image: Option<String>,
    /// The engine's activity feed: every logged step goes there too.
    activity: tokio::sync::broadcast::Sender<super::Activity>,
}

impl Saga {
    /// Log a step in the deployment and tell the activity feed.
    fn log(&mut self, step: Step, status: StepStatus, message: impl Into<String>) {
        self.deployment.log(step, status, message);
        if self.activity.receiver_count() > 0 {
            let _ = self
                .activity
                .send(super::Activity::Step(Box::new(self.deployment.clone())));
        }
    }
}

/// What the commit decided: the new instance serves; these are retired.
struct Committed {
    instance: Instance,
    retire: Vec<Instance>,
    /// Instances of the stage that stay (the new one included), for shared domains.
    survivors: Vec<Instance>,
}

/// A step's failure.
struct Failed {
    step: Step,
    error: Error,
    /// Whether the failure left the outcome unknown (the commit write failed and could not be
    /// read back): then nothing is compensated and reconcile decides.
    unknown: bool,
}

trait AtStep<T> {
    fn at(self, step: Step) -> std::result::Result<T, Failed>;
}

impl<T> AtStep<T> for Result<T> {
    fn at(self, step: Step) -> std::result::Result<T, Failed> {
        self.map_err(|error| Failed {
            step,
            error,
            unknown: false,
        })
    }
}

/// The container name of an instance: unique per instance, readable in `docker ps`.
pub(crate) fn container_name(project: &str, stage: &str, instance: &str) -> String {
    format!("skipper-{project}-{stage}-{instance}")
}

/// A stage's instances split for a new deploy: the oldest past `max_instances` (counting the
/// new one), which it retires, and those that stay beside it (oldest first). Instances already
/// retiring are in neither.
fn split_retiring(existing: &[Instance], max_instances: u32) -> (Vec<Instance>, Vec<Instance>) {
    let mut live: Vec<Instance> = existing
        .iter()
        .filter(|i| i.state != InstanceState::Retiring)
        .cloned()
        .collect();
    live.sort_by_key(|i| i.created_at);
    let excess = (live.len() + 1).saturating_sub(max_instances.max(1) as usize);
    let staying = live.split_off(excess.min(live.len()));
    (live, staying)
}

/// The digest of `image`'s own repository among an image's `RepoDigests` (`repo@sha256:…`). An
/// image also pushed elsewhere carries other repositories' digests, which are no use to pull
/// this one by.
pub(crate) fn digest_for(image: &ImageRef, repo_digests: &[String]) -> Option<String> {
    repo_digests.iter().find_map(|d| {
        let (repo, digest) = d.split_once('@')?;
        let repo = ImageRef::parse(repo).ok()?;
        repo.same_repository(image).then(|| digest.to_owned())
    })
}

impl Engine {
    /// Deploy an image to a stage.
    ///
    /// Returns the deployment record: `Succeeded`, or `Failed` with the step and cause after a
    /// rollback. An `Err` means nothing was attempted: the request was refused (pattern,
    /// confirmation, promotion), the project is unknown, or the stage stayed busy.
    pub async fn deploy(&self, req: DeployRequest) -> Result<Deployment> {
        let this = self.clone();
        self.tracked(async move { this.deploy_inner(req).await })
            .await
    }

    pub(crate) async fn deploy_inner(&self, req: DeployRequest) -> Result<Deployment> {
        let project = self.project(&req.project).await?;
        project.stage(&req.stage)?;
        let lock = self
            .lock_stage_with(&project.name, &req.stage, req.cancel.as_ref())
            .await?;
        let result = async {
            // Read again under the lease: the project may have changed while we waited.
            let project = self.project(&req.project).await?;
            let stage = project.stage(&req.stage)?.clone();
            let tag = self.validate(&project, &stage, &req).await?;
            self.deploy_locked(project, stage, tag, req, &lock).await
        }
        .await;
        lock.release().await;
        result
    }

    /// Policy checks: repository, pattern, confirmation, promotion. Returns the tag.
    async fn validate(
        &self,
        project: &Project,
        stage: &Stage,
        req: &DeployRequest,
    ) -> Result<String> {
        let repo = crate::reference::ImageRef::parse(&project.image)?;
        if !req.adopt_repository && !req.image.same_repository(&repo) {
            return Err(Error::rejected(format!(
                "image {} is not in project {:?}'s repository {}",
                req.image, project.name, project.image
            )));
        }
        let Some(tag) = req.image.tag().map(str::to_owned) else {
            return Err(Error::rejected(format!(
                "image {} has no tag; stages choose versions by tag",
                req.image
            )));
        };
        if req.trigger == Trigger::Rollback {
            return Ok(tag);
        }
        if !self.tag_matches(&stage.tag_pattern, &tag)? {
            return Err(Error::rejected(format!(
                "tag {tag:?} does not match stage {:?}'s pattern {:?}",
                stage.name, stage.tag_pattern
            )));
        }
        if stage.confirm && !req.confirmed {
            return Err(Error::rejected(format!(
                "stage {:?} needs an explicit confirmation to deploy (pass --yes)",
                stage.name
            )));
        }
        if let Some(from) = &stage.promote_from
            && !self.ran_in_stage(&project.name, from, &tag).await?
        {
            return Err(Error::rejected(format!(
                "tag {tag:?} cannot be promoted to {:?}: it has not run successfully in {from:?}",
                stage.name
            )));
        }
        Ok(tag)
    }

    /// Whether `tag` matches `pattern`; compiled patterns are kept (a glob compiles slowly
    /// next to the rest of a deploy's own work).
    fn tag_matches(&self, pattern: &str, tag: &str) -> Result<bool> {
        let mut cache = self
            .inner
            .patterns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !cache.contains_key(pattern) {
            if cache.len() > 256 {
                cache.clear();
            }
            cache.insert(pattern.to_owned(), TagPattern::new(pattern)?);
        }
        Ok(cache.get(pattern).is_some_and(|p| p.matches(tag)))
    }

    /// Whether `tag` runs, or ran successfully, in `stage`.
    pub(crate) async fn ran_in_stage(&self, project: &str, stage: &str, tag: &str) -> Result<bool> {
        let filter = InstanceFilter {
            project: Some(project.to_owned()),
            stage: Some(stage.to_owned()),
        };
        if self
            .list_instances_timed(&filter)
            .await?
            .iter()
            .any(|i| i.tag == tag && i.state == InstanceState::Running)
        {
            return Ok(true);
        }
        let history = self
            .list_deployments_timed(&crate::backend::DeploymentFilter {
                project: Some(project.to_owned()),
                stage: Some(stage.to_owned()),
                limit: None,
            })
            .await?;
        Ok(history
            .iter()
            .any(|d| d.tag == tag && d.status == DeployStatus::Succeeded))
    }

    /// Run a deploy under the stage's lease `lease` (held by the caller, and released by it).
    pub(crate) async fn deploy_locked(
        &self,
        project: Project,
        stage: Stage,
        tag: String,
        req: DeployRequest,
        lease: &Lease,
    ) -> Result<Deployment> {
        let (mut project, mut stage) = (project, stage);
        // Another repository, asked for: this deploy's; the project's only if it succeeds.
        let keep_image = (req.adopt_repository
            && !crate::reference::ImageRef::parse(&project.image)
                .is_ok_and(|r| req.image.same_repository(&r)))
        .then(|| req.image.name());
        if let Some(image) = &keep_image {
            project.image = image.clone();
        }
        if let Some(settings) = &req.settings {
            // This deploy's settings; stored as the project's only if it succeeds.
            settings.apply(&mut project, &stage.name);
            project.validate()?;
            stage = project.stage(&stage.name)?.clone();
        }
        let node = project.node_of(&stage.name).map(str::to_owned);
        let rt = self.runtime_on(node.as_deref())?;
        let guard = self.guard(lease, req.cancel.clone());
        // A node that is offline: the deploy is recorded (and answered) now and waits for it.
        let waits_for = node.filter(|n| !self.reachable(Some(n)));
        if waits_for.is_none() {
            // Repair whatever an earlier, interrupted operation left on this stage.
            self.reconcile_stage(&project, &stage).await?;
            guard.check()?;
        }

        let mut deployment = Deployment {
            id: req.id.clone().unwrap_or_else(new_id),
            project: project.name.clone(),
            stage: stage.name.clone(),
            image: req.image.clone(),
            tag,
            digest: req.image.digest().map(str::to_owned),
            instance_id: None,
            previous_instance: None,
            replaced: Vec::new(),
            status: DeployStatus::InProgress,
            trigger: req.trigger,
            steps: Vec::new(),
            error: None,
            started_at: Utc::now(),
            finished_at: None,
            settings: Some(RunSettings::of(&project, &stage)),
            correlation_id: req.correlation_id.clone(),
        };
        deployment.log(
            Step::Validate,
            StepStatus::Done,
            format!("{} may deploy to {}", req.image, stage.name),
        );
        let fence = lease.fence();
        self.write(&fence, &[], Some(&deployment)).await?;
        tracing::info!(deployment = %deployment.id, project = %project.name, stage = %stage.name, image = %req.image, "deploy started");
        self.publish(super::Activity::Started(Box::new(deployment.clone())));

        let mut saga = Saga {
            project,
            stage,
            rt,
            waits_for,
            deployment,
            undo: Vec::new(),
            fence,
            keep: req.settings.clone(),
            keep_image,
            activity: self.inner.activity.clone(),
        };
        let done = match self.run_steps(&mut saga, &req, &guard).await {
            Ok(committed) => self.roll_forward(saga, committed, &guard).await,
            Err(failed) => self.fail(saga, failed, &guard).await,
        };
        self.publish(super::Activity::Finished(Box::new(done.clone())));
        Ok(done)
    }

    /// Wait (logging it) until `node` is reachable, within the node-wait limit, then repair the
    /// stage as every deploy does before its first step.
    async fn wait_for_node(&self, saga: &mut Saga, node: &str, guard: &Guard) -> Result<()> {
        let limit = self.inner.settings.timeouts.node_wait;
        saga.log(
            Step::Validate,
            StepStatus::Done,
            format!(
                "node {node} is offline: waiting for it (up to {})",
                humantime::format_duration(limit)
            ),
        );
        let until = tokio::time::Instant::now() + limit;
        while !self.reachable(Some(node)) {
            if tokio::time::Instant::now() >= until {
                return Err(Error::Timeout {
                    what: format!("waiting for node {node:?} to come back online"),
                    after: limit,
                });
            }
            guard
                .run(async {
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    Ok(())
                })
                .await?;
        }
        saga.log(
            Step::Validate,
            StepStatus::Done,
            format!("node {node} is online"),
        );
        self.reconcile_stage_with(&saga.project, &saga.stage, None, Some(&saga.deployment.id))
            .await?;
        Ok(())
    }

    /// Why this operation must stop: the lease, the request's token, shutdown.
    pub(crate) fn guard(
        &self,
        lease: &Lease,
        cancel: Option<tokio_util::sync::CancellationToken>,
    ) -> Guard {
        Guard {
            key: lease.key().to_owned(),
            lost: lease.lost_token(),
            cancel,
            shutdown: self.inner.shutdown.clone(),
            tenure: lease.tenure(),
        }
    }

    /// A fenced store write (instances, then a deployment) within the record time limit.
    pub(crate) async fn write(
        &self,
        fence: &Fence,
        instances: &[Instance],
        deployment: Option<&Deployment>,
    ) -> Result<()> {
        let deployments = deployment.map(std::slice::from_ref).unwrap_or_default();
        timed(
            || "store write".into(),
            self.inner.settings.timeouts.record,
            self.inner.store.put_fenced(fence, instances, deployments),
        )
        .await
    }

    /// The upstream the proxy should use for an instance.
    pub(crate) fn upstream_for(
        &self,
        name: &str,
        port: u16,
        info: Option<&ContainerInfo>,
    ) -> Upstream {
        match &self.inner.settings.upstream {
            UpstreamTarget::ContainerName => Upstream {
                scheme: "http".into(),
                host: name.to_owned(),
                port,
            },
            UpstreamTarget::Published { host } => {
                let published = info
                    .and_then(|i| i.published.as_deref())
                    .and_then(|p| p.rsplit_once(':'))
                    .and_then(|(_, p)| p.parse().ok());
                Upstream {
                    scheme: "http".into(),
                    host: host.clone().unwrap_or_else(|| "127.0.0.1".into()),
                    port: published.unwrap_or(port),
                }
            }
        }
    }

    /// The steps up to and including the commit point.
    async fn run_steps(
        &self,
        saga: &mut Saga,
        req: &DeployRequest,
        guard: &Guard,
    ) -> std::result::Result<Committed, Failed> {
        let rt = saga.rt.clone();
        let t = self.inner.settings.timeouts.clone();
        let image = req.image.clone();

        if let Some(node) = saga.waits_for.clone() {
            self.wait_for_node(saga, &node, guard)
                .await
                .at(Step::Validate)?;
        }

        // 2. Pull.
        let credentials = guard
            .run(self.credentials_for(&saga.project))
            .await
            .at(Step::Pull)?;
        let present = match req.pull {
            PullPolicy::Always => false,
            PullPolicy::Missing | PullPolicy::Never => guard
                .run(timed(
                    || "image lookup".into(),
                    t.call,
                    rt.has_image(&image),
                ))
                .await
                .at(Step::Pull)?,
        };
        if present {
            saga.log(
                Step::Pull,
                StepStatus::Skipped,
                format!("{image} is present"),
            );
        } else if req.pull == PullPolicy::Never {
            return Err(Error::not_found(format!(
                "image {image} locally (pull policy is never)"
            )))
            .at(Step::Pull);
        } else {
            let pulled = guard
                .run(timed(
                    || format!("pull of {image}"),
                    t.pull,
                    rt.pull(&image, credentials, req.progress.clone()),
                ))
                .await
                .at(Step::Pull)?;
            if saga.deployment.digest.is_none() {
                saga.deployment.digest = pulled.digest.clone();
            }
            saga.log(
                Step::Pull,
                StepStatus::Done,
                format!(
                    "pulled {image} ({})",
                    pulled.digest.as_deref().unwrap_or("no digest")
                ),
            );
        }
        let meta = guard
            .run(timed(
                || "image inspect".into(),
                t.call,
                rt.inspect_image(&image),
            ))
            .await
            .at(Step::Pull)?;
        if saga.deployment.digest.is_none() {
            saga.deployment.digest = digest_for(&image, &meta.digests);
        }
        let (image_port, image_health_path) = crate::model::image_defaults(&meta);
        let port = saga.project.port.or(image_port);
        if port.is_none() {
            if self.inner.proxy.is_some() {
                return Err(Error::rejected(format!(
                    "project {:?} has no port to route to: the image EXPOSEs none; pass --port \
                     (or set `port`)",
                    saga.project.name
                )))
                .at(Step::Pull);
            }
            if let Some(path) = &saga.project.health.path {
                return Err(Error::rejected(format!(
                    "project {:?} probes {path} but has no port to probe: the image EXPOSEs \
                     none; pass --port (or set `port`)",
                    saga.project.name
                )))
                .at(Step::Pull);
            }
        }

        // 3. Create, on the project's network, labelled.
        let network = saga
            .project
            .network
            .clone()
            .unwrap_or_else(|| self.inner.settings.network.clone());
        let stage_filter = InstanceFilter {
            project: Some(saga.project.name.clone()),
            stage: Some(saga.stage.name.clone()),
        };
        let existing = self
            .list_instances_timed(&stage_filter)
            .await
            .at(Step::Create)?;
        // The first deploy of a stage may be the first on its network, and concurrent first
        // deploys would race to create it: they take turns. Later deploys find it made.
        let lease = if existing.is_empty() {
            self.lease(&format!("network/{network}"), t.create)
                .await
                .at(Step::Create)?
        } else {
            None
        };
        let made = guard
            .whole(timed(
                || format!("network {network}"),
                t.create,
                rt.ensure_network(&network),
            ))
            .await;
        if let Some(lease) = lease {
            lease.release().await;
        }
        made.at(Step::Create)?;
        let previous = existing.iter().find(|i| i.active).cloned();
        saga.deployment.previous_instance = previous.as_ref().map(|i| i.id.clone());

        let domains = &self.inner.settings.domains;
        let (p, s) = (saga.project.name.clone(), saga.stage.name.clone());
        let (p, s) = (&p, &s);
        let tag = saga.deployment.tag.clone();
        let id = new_id();
        // Only the instances that stay beside the new one keep their domains: one that this
        // deploy retires (max_instances 1, the same tag again) hands its domain over in place.
        let (retire, mut others) = split_retiring(&existing, saga.stage.max_instances);
        let taken = |d: &str| others.iter().any(|i| i.domain == d);
        let mut domain = domains.instance_domain(p, s, &tag, false);
        if taken(&domain) {
            // Two tags that sanitise alike (v1.0 / v1-0) get a hash; the same tag twice (with
            // max_instances ≥ 2) gets the instance's id: every instance has its own domain.
            domain = domains.instance_domain(p, s, &tag, true);
            if taken(&domain) {
                domain = domains.instance_domain(p, s, &format!("{tag}-{}", &id[..6]), false);
            }
        }
        if self.inner.proxy.is_some() {
            self.refuse_shared_domains(&saga.project, &saga.stage, &domain)
                .await
                .at(Step::Create)?;
        }
        let now = Utc::now();
        let mut instance = Instance {
            id: id.clone(),
            project: p.clone(),
            stage: s.clone(),
            image: image.clone(),
            tag: tag.clone(),
            digest: saga.deployment.digest.clone(),
            container_name: container_name(p, s, &id),
            container_id: None,
            address: None,
            upstream: None,
            domain,
            state: InstanceState::Starting,
            active: false,
            deployment_id: saga.deployment.id.clone(),
            created_at: now,
            updated_at: now,
        };
        saga.deployment.instance_id = Some(id.clone());
        saga.undo
            .push((Step::Create, Undo::DeleteInstance(id.clone())));
        self.write(&saga.fence, std::slice::from_ref(&instance), None)
            .await
            .at(Step::Create)?;

        let mut container_labels = saga.project.labels.clone();
        container_labels.extend(self.managed_selector(saga.project.node_of(s)));
        container_labels.insert(
            labels::STORE.into(),
            self.store_id().await.at(Step::Create)?,
        );
        container_labels.insert(labels::PROJECT.into(), p.clone());
        container_labels.insert(labels::STAGE.into(), s.clone());
        container_labels.insert(labels::TAG.into(), tag.clone());
        container_labels.insert(labels::INSTANCE.into(), id.clone());
        container_labels.insert(labels::DEPLOYMENT.into(), saga.deployment.id.clone());
        let spec = ContainerSpec {
            name: instance.container_name.clone(),
            image: image.clone(),
            env: saga.project.env.clone(),
            labels: container_labels,
            volumes: saga.project.volumes.clone(),
            network: Some(network),
            port,
            // Nothing to publish without a port: the gate is then "still up after settle".
            publish: self.inner.settings.publish && port.is_some(),
        };
        // Pushed before the call: a create whose answer was lost still made the container.
        saga.undo
            .push((Step::Create, Undo::RemoveContainer(spec.name.clone())));
        let container_id = guard
            .whole(timed(
                || format!("create of {}", spec.name),
                t.create,
                rt.create_container(&spec),
            ))
            .await
            .at(Step::Create)?;
        instance.container_id = Some(container_id.clone());
        saga.log(
            Step::Create,
            StepStatus::Done,
            format!("created {}", instance.container_name),
        );
        // Checkpoint: the records now name the container, for reconcile after a crash.
        self.write(
            &saga.fence,
            std::slice::from_ref(&instance),
            Some(&saga.deployment),
        )
        .await
        .at(Step::Create)?;

        // 4. Start and health-gate.
        guard
            .whole(timed(
                || format!("start of {}", instance.container_name),
                t.start,
                rt.start_container(&container_id),
            ))
            .await
            .at(Step::Start)?;
        saga.log(
            Step::Start,
            StepStatus::Done,
            format!("started {}", instance.container_name),
        );

        let mut health = saga.project.health.clone();
        if health.path.is_none() {
            health.path = image_health_path;
        }
        let gate = match (&health.path, port) {
            (Some(path), Some(port)) => Gate::Http { port, path },
            _ if meta.healthcheck.is_some() => Gate::Docker,
            _ => Gate::Settle,
        };
        let info = self
            .wait_healthy(
                &rt,
                &instance.container_name,
                &container_id,
                &health,
                gate,
                guard,
            )
            .await
            .at(Step::Health)?;
        instance.address = info.published.clone();
        instance.upstream =
            port.map(|port| self.upstream_for(&instance.container_name, port, Some(&info)));
        saga.log(
            Step::Health,
            StepStatus::Done,
            format!("healthy by {}", gate.describe()),
        );
        self.write(&saga.fence, &[], Some(&saga.deployment))
            .await
            .at(Step::Health)?;

        // 5. Route: the instance's own domain, then switch the stage's domain (blue-green).
        if let (Some(proxy), Some(upstream)) = (self.inner.proxy.clone(), instance.upstream.clone())
        {
            let options = saga.project.route.clone();
            let shared = existing.iter().find(|i| i.domain == instance.domain);
            let before = shared.and_then(|i| self.route_of(&i.domain, i, &saga.project));
            let route = Route {
                domain: instance.domain.clone(),
                upstream: upstream.clone(),
                options: options.clone(),
            };
            // Each route's compensation is pushed before its call: a call that fails or times out
            // may still have made the change (a create whose answer was lost, a switch NPM
            // applied before its 500), and putting a route back as it was is idempotent.
            saga.undo.push((
                Step::Route,
                Undo::RestoreRoute {
                    domain: route.domain.clone(),
                    previous: before,
                },
            ));
            guard
                .whole(timed(
                    || format!("route {}", route.domain),
                    t.route,
                    proxy.ensure_route(&route),
                ))
                .await
                .at(Step::Route)?;
            saga.log(
                Step::Route,
                StepStatus::Done,
                format!("{} → {upstream}", route.domain),
            );

            let stage_domain = domains.stage_domain(p, s, saga.stage.subdomain.as_deref());
            let before = previous
                .as_ref()
                .and_then(|i| self.route_of(&stage_domain, i, &saga.project));
            let route = Route {
                domain: stage_domain.clone(),
                upstream: upstream.clone(),
                options,
            };
            // The commit point is next: the stage domain is switched only by a holder the store
            // says holds the lease now (the renew task may not have run since a takeover).
            guard.renew(t.record).await.at(Step::Switch)?;
            saga.undo.push((
                Step::Switch,
                Undo::RestoreRoute {
                    domain: stage_domain.clone(),
                    previous: before,
                },
            ));
            guard
                .whole(timed(
                    || format!("route {stage_domain}"),
                    t.route,
                    proxy.ensure_route(&route),
                ))
                .await
                .at(Step::Switch)?;
            saga.log(
                Step::Switch,
                StepStatus::Done,
                format!("{stage_domain} → {upstream}"),
            );
        } else {
            let why = if self.inner.proxy.is_none() {
                "no proxy configured"
            } else {
                "no port to route"
            };
            saga.log(Step::Route, StepStatus::Skipped, why);
            saga.log(Step::Switch, StepStatus::Skipped, why);
        }

        // 6. Commit: the new instance is active, the oldest past max_instances retire. One
        // fenced write: a holder that lost its lease cannot commit.
        guard.check().at(Step::Commit)?;
        let now = Utc::now();
        instance.state = InstanceState::Running;
        instance.active = true;
        instance.updated_at = now;
        let mut writes = vec![instance.clone()];
        for other in &mut others {
            if other.active {
                other.active = false;
                other.updated_at = now;
                writes.push(other.clone());
            }
        }
        for old in &retire {
            let mut r = old.clone();
            r.state = InstanceState::Retiring;
            r.active = false;
            r.updated_at = now;
            writes.push(r);
        }
        saga.deployment.replaced = retire.iter().map(|i| i.id.clone()).collect();
        saga.log(
            Step::Commit,
            StepStatus::Done,
            format!("{} is active", instance.id),
        );
        if let Err(error) = self
            .write(&saga.fence, &writes, Some(&saga.deployment))
            .await
        {
            saga.deployment.steps.pop();
            // The write may have landed even so (an answer lost after the commit): read it back.
            return match self.landed(&instance).await {
                Ok(true) => {
                    tracing::warn!(deployment = %saga.deployment.id, error = %error.chain(), "the commit landed although its write reported an error");
                    saga.log(
                        Step::Commit,
                        StepStatus::Done,
                        format!(
                            "{} is active (the write reported {}, but landed)",
                            instance.id,
                            error.chain()
                        ),
                    );
                    Ok(self.committed(instance, retire, others))
                }
                Ok(false) => Err(error).at(Step::Commit),
                Err(_) => Err(Failed {
                    step: Step::Commit,
                    error,
                    unknown: true,
                }),
            };
        }
        saga.undo.clear();
        Ok(self.committed(instance, retire, others))
    }

    fn committed(
        &self,
        instance: Instance,
        retire: Vec<Instance>,
        others: Vec<Instance>,
    ) -> Committed {
        let mut survivors = others;
        survivors.push(instance.clone());
        Committed {
            instance,
            retire,
            survivors,
        }
    }

    /// Whether the commit of `instance` is in the store.
    async fn landed(&self, instance: &Instance) -> Result<bool> {
        let stored = timed(
            || "store read".into(),
            self.inner.settings.timeouts.record,
            self.inner.store.get_instance(&instance.id),
        )
        .await?;
        Ok(stored.is_some_and(|i| i.active && i.deployment_id == instance.deployment_id))
    }

    /// The route a live instance has for `domain`, rebuilt from its record.
    fn route_of(&self, domain: &str, instance: &Instance, project: &Project) -> Option<Route> {
        instance.upstream.clone().map(|upstream| Route {
            domain: domain.to_owned(),
            upstream,
            options: project.route.clone(),
        })
    }

    /// After the commit: retire the replaced instances (routes first, then stop, then remove),
    /// record the success, notify. Nothing here is compensated: a failure is logged and left
    /// for reconcile, which finishes retiring.
    async fn roll_forward(&self, mut saga: Saga, c: Committed, guard: &Guard) -> Deployment {
        let rt = saga.rt.clone();
        let t = self.inner.settings.timeouts.clone();
        if c.retire.is_empty() {
            saga.log(
                Step::Retire,
                StepStatus::Skipped,
                format!("{} instance(s) allowed", saga.stage.max_instances.max(1)),
            );
        }
        if !self.inner.settings.drain.is_zero()
            && self.inner.proxy.is_some()
            && c.retire.iter().any(|i| i.active)
        {
            // Let requests already sent to the old version finish.
            tokio::time::sleep(self.inner.settings.drain).await;
        }
        let mut removable = Vec::new();
        for old in &c.retire {
            if guard.lease_lost() {
                saga.log(
                    Step::Retire,
                    StepStatus::Failed,
                    format!(
                        "lease lost: retiring {} is left to the stage's next operation",
                        old.id
                    ),
                );
                break;
            }
            let mut problem = None;
            // A domain another remaining instance shares (the same tag twice) stays routed.
            if let Some(proxy) = self.inner.proxy.clone()
                && !c.survivors.iter().any(|i| i.domain == old.domain)
                && let Err(e) = timed(
                    || format!("route removal {}", old.domain),
                    t.route,
                    proxy.remove_route(&old.domain),
                )
                .await
            {
                problem = Some(e);
            }
            if problem.is_none()
                && let Some(cid) = &old.container_id
                && let Err(e) = timed(
                    || format!("stop of {}", old.container_name),
                    t.retire,
                    rt.stop_container(cid, self.inner.settings.stop_grace),
                )
                .await
                // A container already gone needs no stopping.
                && e.kind() != crate::error::ErrorKind::NotFound
            {
                problem = Some(e);
            }
            match problem {
                None => {
                    saga.log(
                        Step::Retire,
                        StepStatus::Done,
                        format!("stopped {} ({})", old.id, old.tag),
                    );
                    removable.push(old.clone());
                }
                Some(e) => {
                    tracing::warn!(instance = %old.id, error = %e.chain(), "retiring failed; reconcile finishes it");
                    saga.log(
                        Step::Retire,
                        StepStatus::Failed,
                        format!(
                            "retiring {} failed ({}); reconcile finishes it",
                            old.id,
                            e.chain()
                        ),
                    );
                }
            }
        }

        // 8. Record.
        saga.deployment.status = DeployStatus::Succeeded;
        saga.log(
            Step::Record,
            StepStatus::Done,
            format!("{} is live", c.instance.id),
        );
        let d = &mut saga.deployment;
        d.finished_at = Some(Utc::now());
        if let Err(e) = self.write(&saga.fence, &[], Some(d)).await {
            tracing::warn!(deployment = %d.id, error = %e.chain(), "could not record the deploy's success; reconcile completes the record");
            d.log(
                Step::Record,
                StepStatus::Failed,
                format!(
                    "the record write failed ({}); the deploy is live and reconcile completes \
                     its record",
                    e.chain()
                ),
            );
        }

        // The deploy's settings become the project's, now that it succeeded.
        if (saga.keep.is_some() || saga.keep_image.is_some())
            && let Err(e) = self
                .keep_settings(
                    &saga.project.name,
                    &saga.stage.name,
                    saga.keep.as_ref(),
                    saga.keep_image.as_deref(),
                )
                .await
        {
            tracing::warn!(project = %saga.project.name, error = %e.chain(), "could not save the deploy's settings to the project");
        }

        // Remove retired containers (best effort; reconcile finishes the job).
        for old in &removable {
            let removed = match &old.container_id {
                Some(cid) => {
                    timed(
                        || "container removal".into(),
                        t.call,
                        rt.remove_container(cid),
                    )
                    .await
                }
                None => Ok(()),
            };
            match removed {
                Ok(()) => {
                    let deleted = timed(
                        || "store write".into(),
                        t.record,
                        self.inner.store.delete_instance(&old.id),
                    )
                    .await;
                    if let Err(e) = deleted {
                        tracing::warn!(instance = %old.id, error = %e, "retired instance record left; reconcile removes it");
                    }
                }
                Err(e) => {
                    tracing::warn!(instance = %old.id, error = %e, "retired container left stopped; reconcile removes it")
                }
            }
        }
        let d = saga.deployment;
        tracing::info!(deployment = %d.id, instance = %c.instance.id, replaced = ?d.replaced, "deploy succeeded");
        let url = self.url_of(&saga.project, &saga.stage, &c.instance);
        let message = format!(
            "{} is live in {}/{}",
            d.image.familiar(),
            d.project,
            d.stage
        );
        self.notify(Event::for_deployment(EventKind::DeploySucceeded, &d, message).with_url(url))
            .await;
        d
    }

    /// Refuse a deploy whose stage domain or new instance domain another project's or stage's
    /// domain already is (`stage-{stage}-{project}` is not injective once names hold `-`:
    /// project `a-b` stage `c` and project `b` stage `c-a` both make `stage-c-a-b`). One
    /// project's domain never serves another's app.
    async fn refuse_shared_domains(
        &self,
        project: &Project,
        stage: &Stage,
        instance_domain: &str,
    ) -> Result<()> {
        let domains = &self.inner.settings.domains;
        let stage_domain =
            domains.stage_domain(&project.name, &stage.name, stage.subdomain.as_deref());
        let mine = |p: &str, s: &str| p == project.name && s == stage.name;
        let clash = |d: &str| d == stage_domain || d == instance_domain;
        let refuse = |d: &str, owner: String| {
            let which = if d == stage_domain {
                format!("the stage domain {d} of {}/{}", project.name, stage.name)
            } else {
                format!(
                    "the new instance domain {d} of {}/{}",
                    project.name, stage.name
                )
            };
            Err(Error::Conflict {
                what: format!(
                    "{which} is already {owner}'s; give one of the two stages its own \
                     `subdomain`, or rename a project or stage"
                ),
            })
        };
        let instances = self
            .list_instances_timed(&InstanceFilter::default())
            .await?;
        // A stage's domain is taken once the stage serves (has an instance): the first stage
        // to deploy keeps it.
        for p in self
            .stored(|| "project list", self.inner.store.list_projects())
            .await?
        {
            for s in p.stages.values().filter(|s| !mine(&p.name, &s.name)) {
                let serves = instances
                    .iter()
                    .any(|i| i.project == p.name && i.stage == s.name);
                let d = domains.stage_domain(&p.name, &s.name, s.subdomain.as_deref());
                if serves && clash(&d) {
                    return refuse(&d, format!("stage {}/{}", p.name, s.name));
                }
            }
        }
        for i in instances {
            if !mine(&i.project, &i.stage) && clash(&i.domain) {
                return refuse(
                    &i.domain,
                    format!("instance {} ({}) of {}/{}", i.id, i.tag, i.project, i.stage),
                );
            }
        }
        Ok(())
    }

    /// Store `settings` (for `stage`) and `image` as the project's, under the project's lease,
    /// reading the project again so a concurrent change to another stage is kept. Never without
    /// the lease: if it stays busy, nothing is written and the error says so.
    async fn keep_settings(
        &self,
        project: &str,
        stage: &str,
        settings: Option<&RunSettings>,
        image: Option<&str>,
    ) -> Result<()> {
        let wait = self.inner.settings.timeouts.record;
        let key = format!("project/{project}");
        let Some(lease) = self.lease(&key, wait).await? else {
            return Err(Error::Timeout {
                what: format!("waiting for the lease {key:?} to save the deploy's settings"),
                after: wait,
            });
        };
        let r = async {
            let mut p = self.project(project).await?;
            if let Some(settings) = settings {
                settings.apply(&mut p, stage);
            }
            if let Some(image) = image {
                p.image = image.to_owned();
            }
            p.validate()?;
            self.stored(|| "project write", self.inner.store.put_project(&p))
                .await
        }
        .await;
        lease.release().await;
        r
    }

    /// Where users reach the stage: its domain with a proxy, else the published address.
    pub(crate) fn url_of(
        &self,
        project: &Project,
        stage: &Stage,
        instance: &Instance,
    ) -> Option<String> {
        if self.inner.proxy.is_some() {
            let d = self.inner.settings.domains.stage_domain(
                &project.name,
                &stage.name,
                stage.subdomain.as_deref(),
            );
            Some(format!("http://{d}"))
        } else {
            instance.address.as_ref().map(|a| format!("http://{a}"))
        }
    }

    /// Roll back: run the compensations in reverse, record the failure, notify.
    async fn fail(&self, mut saga: Saga, failed: Failed, guard: &Guard) -> Deployment {
        let Failed {
            step,
            error,
            unknown,
        } = failed;
        tracing::warn!(deployment = %saga.deployment.id, %step, error = %error.chain(), "deploy failed; rolling back");
        saga.log(step, StepStatus::Failed, error.chain());
        if unknown {
            // The commit may or may not have landed: undoing either way could take down what
            // serves. Leave both versions as they are; reconcile reads the store and decides.
            saga.log(
                step,
                StepStatus::Failed,
                "the commit's outcome is unknown: nothing rolled back; the stage's next \
                 operation settles it",
            );
        } else {
            // With the lease lost, routes are the new holder's to decide: undo only what this
            // deploy made (its container and record). Lost means the renew task saw it, the
            // failure itself was a lost lease (the fenced commit refused), or the store says so
            // now: a route put back without the lease could overwrite the new holder's.
            let lease_lost = guard.lease_lost()
                || matches!(error, Error::LeaseLost { .. })
                || (saga
                    .undo
                    .iter()
                    .any(|(_, u)| matches!(u, Undo::RestoreRoute { .. }))
                    && matches!(
                        guard.renew(self.inner.settings.timeouts.record).await,
                        Err(Error::LeaseLost { .. })
                    ));
            self.compensate(&mut saga, lease_lost).await;
        }
        let d = &mut saga.deployment;
        d.status = DeployStatus::Failed;
        d.finished_at = Some(Utc::now());
        d.error = Some(DeployError {
            step,
            kind: error.kind(),
            message: error.chain(),
            logs: error.logs().to_vec(),
        });
        if !unknown {
            // Our own record: written even after losing the lease (the new holder may have
            // marked it interrupted; this says what really happened).
            let r = timed(
                || "store write".into(),
                self.inner.settings.timeouts.record,
                self.inner.store.put_deployment(d),
            )
            .await;
            if let Err(e) = r {
                tracing::error!(deployment = %d.id, error = %e, "could not record the failed deployment; reconcile marks it");
            }
        }
        let message = format!(
            "deploy of {} to {}/{} failed at {step}: {}; the previous version keeps serving",
            d.image.familiar(),
            d.project,
            d.stage,
            error.chain()
        );
        self.notify(Event::for_deployment(EventKind::DeployFailed, d, message))
            .await;
        saga.deployment
    }

    async fn compensate(&self, saga: &mut Saga, lease_lost: bool) {
        let rt = saga.rt.clone();
        let t = &self.inner.settings.timeouts;
        while let Some((step, undo)) = saga.undo.pop() {
            let (what, r) = match &undo {
                Undo::RemoveContainer(id) => (
                    format!("remove container {id}"),
                    timed(
                        || "container removal".into(),
                        t.call,
                        rt.remove_container(id),
                    )
                    .await,
                ),
                Undo::DeleteInstance(id) => (
                    format!("delete instance record {id}"),
                    timed(
                        || "store write".into(),
                        t.record,
                        self.inner.store.delete_instance(id),
                    )
                    .await,
                ),
                Undo::RestoreRoute { domain, .. } if lease_lost => {
                    saga.log(
                        step,
                        StepStatus::Skipped,
                        format!("route {domain} left to the stage's next operation (lease lost)"),
                    );
                    continue;
                }
                Undo::RestoreRoute { domain, previous } => {
                    let r = match (&self.inner.proxy, previous) {
                        (Some(p), Some(route)) => {
                            timed(|| "route".into(), t.route, p.ensure_route(route)).await
                        }
                        (Some(p), None) => {
                            timed(|| "route".into(), t.route, p.remove_route(domain)).await
                        }
                        (None, _) => Ok(()),
                    };
                    let what = match previous {
                        Some(r) => format!("route {domain} back to {}", r.upstream),
                        None => format!("remove route {domain}"),
                    };
                    (what, r)
                }
            };
            match r {
                Ok(()) => saga.log(step, StepStatus::Undone, what),
                Err(e) => {
                    tracing::error!(action = %what, error = %e.chain(), "rollback action failed; reconcile will repair");
                    saga.log(
                        step,
                        StepStatus::Failed,
                        format!("rollback: {what} failed: {}", e.chain()),
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_of_the_deployed_repository_is_chosen() {
        let image = ImageRef::parse("skipper-test/app:v1").unwrap();
        let digests = vec![
            "127.0.0.1:5055/team/app@sha256:aaaa".to_owned(),
            "skipper-test/app@sha256:bbbb".to_owned(),
        ];
        assert_eq!(digest_for(&image, &digests).as_deref(), Some("sha256:bbbb"));
        let pushed = ImageRef::parse("127.0.0.1:5055/team/app:v1").unwrap();
        assert_eq!(
            digest_for(&pushed, &digests).as_deref(),
            Some("sha256:aaaa")
        );
        let local = ImageRef::parse("app:v1").unwrap();
        assert_eq!(
            digest_for(&local, &digests),
            None,
            "another repository's digest is no use"
        );
    }
}
