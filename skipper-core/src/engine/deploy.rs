//! One deploy, as a saga: every step that changes the world pushes its compensating action;
//! a failure anywhere runs them in reverse, leaving the previous version running and routed.

use chrono::Utc;

use super::health::Gate;
use super::{DeployRequest, Engine, PullPolicy, UpstreamTarget, timed};
use crate::backend::{ContainerInfo, ContainerSpec, InstanceFilter, Route};
use crate::error::{Error, Result};
use crate::model::{
    DeployError, DeployStatus, Deployment, Event, EventKind, Instance, InstanceState, Project,
    Stage, Step, StepStatus, Trigger, Upstream, labels, new_id,
};
use crate::pattern::TagPattern;

/// A compensating action.
#[derive(Debug)]
enum Undo {
    /// Remove a container this deploy created.
    RemoveContainer(String),
    /// Delete an instance record this deploy created.
    DeleteInstance(String),
    /// Put a route back as it was (`None`: remove it).
    RestoreRoute {
        domain: String,
        previous: Option<Route>,
    },
    /// Start a container this deploy stopped.
    StartContainer(String),
    /// Write back an instance record this deploy changed.
    RestoreInstance(Box<Instance>),
}

/// The state of a deploy in progress.
struct Saga {
    project: Project,
    stage: Stage,
    deployment: Deployment,
    undo: Vec<(Step, Undo)>,
    /// Instances retired by this deploy (stopped; removed after the record).
    retired: Vec<Instance>,
}

/// A step's failure.
struct Failed {
    step: Step,
    error: Error,
}

trait AtStep<T> {
    fn at(self, step: Step) -> std::result::Result<T, Failed>;
}

impl<T> AtStep<T> for Result<T> {
    fn at(self, step: Step) -> std::result::Result<T, Failed> {
        self.map_err(|error| Failed { step, error })
    }
}

/// The container name of an instance: unique per instance, readable in `docker ps`.
pub(crate) fn container_name(project: &str, stage: &str, instance: &str) -> String {
    format!("skipper-{project}-{stage}-{instance}")
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
        let stage = project.stage(&req.stage)?.clone();
        let tag = self.validate(&project, &stage, &req).await?;

        let lock = self.lock_stage(&project.name, &stage.name).await?;
        let result = self.deploy_locked(project, stage, tag, req).await;
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
        if !req.image.same_repository(&repo) {
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
        if !TagPattern::new(&stage.tag_pattern)?.matches(&tag) {
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

    /// Whether `tag` runs, or ran successfully, in `stage`.
    pub(crate) async fn ran_in_stage(&self, project: &str, stage: &str, tag: &str) -> Result<bool> {
        let store = &self.inner.store;
        let filter = InstanceFilter {
            project: Some(project.to_owned()),
            stage: Some(stage.to_owned()),
        };
        if store
            .list_instances(&filter)
            .await?
            .iter()
            .any(|i| i.tag == tag && i.state == InstanceState::Running)
        {
            return Ok(true);
        }
        let history = store
            .list_deployments(&crate::backend::DeploymentFilter {
                project: Some(project.to_owned()),
                stage: Some(stage.to_owned()),
                limit: None,
            })
            .await?;
        Ok(history
            .iter()
            .any(|d| d.tag == tag && d.status == DeployStatus::Succeeded))
    }

    async fn deploy_locked(
        &self,
        project: Project,
        stage: Stage,
        tag: String,
        req: DeployRequest,
    ) -> Result<Deployment> {
        // Repair whatever an earlier, interrupted operation left on this stage.
        self.reconcile_stage(&project, &stage).await?;

        let mut deployment = Deployment {
            id: new_id(),
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
        };
        deployment.log(
            Step::Validate,
            StepStatus::Done,
            format!("{} may deploy to {}", req.image, stage.name),
        );
        self.record(&deployment).await?;
        tracing::info!(deployment = %deployment.id, project = %project.name, stage = %stage.name, image = %req.image, "deploy started");

        let mut saga = Saga {
            project,
            stage,
            deployment,
            undo: Vec::new(),
            retired: Vec::new(),
        };
        match self.run_steps(&mut saga, &req).await {
            Ok(instance) => Ok(self.finish(saga, instance).await),
            Err(failed) => Ok(self.fail(saga, failed).await),
        }
    }

    async fn record(&self, d: &Deployment) -> Result<()> {
        timed(
            || "store write".into(),
            self.inner.settings.timeouts.record,
            self.inner.store.put_deployment(d),
        )
        .await
    }

    async fn put_instance(&self, i: &Instance) -> Result<()> {
        timed(
            || "store write".into(),
            self.inner.settings.timeouts.record,
            self.inner.store.put_instance(i),
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

    async fn run_steps(
        &self,
        saga: &mut Saga,
        req: &DeployRequest,
    ) -> std::result::Result<Instance, Failed> {
        let rt = self.inner.runtime.clone();
        let t = self.inner.settings.timeouts.clone();
        let image = req.image.clone();

        // 2. Pull.
        let credentials = self.credentials_for(&saga.project).await.at(Step::Pull)?;
        let present = match req.pull {
            PullPolicy::Always => false,
            PullPolicy::Missing | PullPolicy::Never => {
                timed(|| "image lookup".into(), t.call, rt.has_image(&image))
                    .await
                    .at(Step::Pull)?
            }
        };
        if present {
            saga.deployment.log(
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
            let pulled = timed(
                || format!("pull of {image}"),
                t.pull,
                rt.pull(&image, credentials, req.progress.clone()),
            )
            .await
            .at(Step::Pull)?;
            if saga.deployment.digest.is_none() {
                saga.deployment.digest = pulled.digest.clone();
            }
            saga.deployment.log(
                Step::Pull,
                StepStatus::Done,
                format!(
                    "pulled {image} ({})",
                    pulled.digest.as_deref().unwrap_or("no digest")
                ),
            );
        }
        let meta = timed(|| "image inspect".into(), t.call, rt.inspect_image(&image))
            .await
            .at(Step::Pull)?;
        if saga.deployment.digest.is_none() {
            saga.deployment.digest = meta
                .digests
                .iter()
                .find_map(|d| d.split_once('@').map(|(_, d)| d.to_owned()));
        }
        let (image_port, image_health_path) = crate::model::image_defaults(&meta);
        let port = saga.project.port.or(image_port);
        if self.inner.proxy.is_some() && port.is_none() {
            return Err(Error::rejected(format!(
                "project {:?} has no port to route to: set `port`, or EXPOSE one in the image",
                saga.project.name
            )))
            .at(Step::Pull);
        }

        // 3. Create, on the project's network, labelled.
        let network = saga
            .project
            .network
            .clone()
            .unwrap_or_else(|| self.inner.settings.network.clone());
        timed(
            || format!("network {network}"),
            t.create,
            rt.ensure_network(&network),
        )
        .await
        .at(Step::Create)?;
        let stage_filter = InstanceFilter {
            project: Some(saga.project.name.clone()),
            stage: Some(saga.stage.name.clone()),
        };
        let existing = self
            .inner
            .store
            .list_instances(&stage_filter)
            .await
            .at(Step::Create)?;
        let previous = existing.iter().find(|i| i.active).cloned();
        saga.deployment.previous_instance = previous.as_ref().map(|i| i.id.clone());

        let domains = &self.inner.settings.domains;
        let (p, s) = (&saga.project.name, &saga.stage.name);
        let tag = saga.deployment.tag.clone();
        let mut domain = domains.instance_domain(p, s, &tag, false);
        if existing.iter().any(|i| i.domain == domain && i.tag != tag) {
            // Two tags that sanitise alike (v1.0 / v1-0): keep them apart.
            domain = domains.instance_domain(p, s, &tag, true);
        }
        let id = new_id();
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
        self.put_instance(&instance).await.at(Step::Create)?;
        saga.undo
            .push((Step::Create, Undo::DeleteInstance(id.clone())));

        let mut container_labels = saga.project.labels.clone();
        container_labels.extend(self.managed_selector());
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
            publish: self.inner.settings.publish,
        };
        let container_id = timed(
            || format!("create of {}", spec.name),
            t.create,
            rt.create_container(&spec),
        )
        .await
        .at(Step::Create)?;
        saga.undo
            .push((Step::Create, Undo::RemoveContainer(container_id.clone())));
        instance.container_id = Some(container_id.clone());
        self.put_instance(&instance).await.at(Step::Create)?;
        saga.deployment.log(
            Step::Create,
            StepStatus::Done,
            format!("created {}", instance.container_name),
        );
        // Checkpoint: the record now names its instance, for reconcile after a crash.
        self.record(&saga.deployment).await.at(Step::Create)?;

        // 4. Start and health-gate.
        timed(
            || format!("start of {}", instance.container_name),
            t.start,
            rt.start_container(&container_id),
        )
        .await
        .at(Step::Start)?;
        saga.deployment.log(
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
            .wait_healthy(&instance.container_name, &container_id, &health, gate)
            .await
            .at(Step::Health)?;
        instance.address = info.published.clone();
        instance.upstream =
            port.map(|port| self.upstream_for(&instance.container_name, port, Some(&info)));
        saga.deployment.log(
            Step::Health,
            StepStatus::Done,
            format!("healthy by {}", gate.describe()),
        );
        self.record(&saga.deployment).await.at(Step::Health)?;

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
            timed(
                || format!("route {}", route.domain),
                t.route,
                proxy.ensure_route(&route),
            )
            .await
            .at(Step::Route)?;
            saga.deployment.log(
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
            saga.undo.push((
                Step::Switch,
                Undo::RestoreRoute {
                    domain: stage_domain.clone(),
                    previous: before,
                },
            ));
            timed(
                || format!("route {stage_domain}"),
                t.route,
                proxy.ensure_route(&route),
            )
            .await
            .at(Step::Switch)?;
            saga.deployment.log(
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
            saga.deployment.log(Step::Route, StepStatus::Skipped, why);
            saga.deployment.log(Step::Switch, StepStatus::Skipped, why);
        }

        // 6. Retire the oldest instances past max_instances: routes first, then stop.
        let max = saga.stage.max_instances.max(1) as usize;
        let mut others: Vec<Instance> = existing
            .into_iter()
            .filter(|i| i.state != InstanceState::Retiring)
            .collect();
        others.sort_by_key(|i| i.created_at);
        let excess = (others.len() + 1).saturating_sub(max);
        let to_retire: Vec<Instance> = others.into_iter().take(excess).collect();
        if to_retire.is_empty() {
            saga.deployment.log(
                Step::Retire,
                StepStatus::Skipped,
                format!("{max} instance(s) allowed"),
            );
        }
        if !self.inner.settings.drain.is_zero()
            && self.inner.proxy.is_some()
            && to_retire.iter().any(|i| i.active)
        {
            // Let requests already sent to the old version finish.
            tokio::time::sleep(self.inner.settings.drain).await;
        }
        for old in to_retire {
            if let Some(proxy) = self.inner.proxy.clone()
                && old.domain != instance.domain
            {
                let before = self.route_of(&old.domain, &old, &saga.project);
                saga.undo.push((
                    Step::Retire,
                    Undo::RestoreRoute {
                        domain: old.domain.clone(),
                        previous: before,
                    },
                ));
                timed(
                    || format!("route removal {}", old.domain),
                    t.route,
                    proxy.remove_route(&old.domain),
                )
                .await
                .at(Step::Retire)?;
            }
            if let Some(cid) = &old.container_id
                && old.state == InstanceState::Running
            {
                timed(
                    || format!("stop of {}", old.container_name),
                    t.retire,
                    rt.stop_container(cid, self.inner.settings.stop_grace),
                )
                .await
                .at(Step::Retire)?;
                saga.undo
                    .push((Step::Retire, Undo::StartContainer(cid.clone())));
            }
            saga.deployment.log(
                Step::Retire,
                StepStatus::Done,
                format!("stopped {} ({})", old.id, old.tag),
            );
            saga.retired.push(old);
        }

        // 7. Record. The new instance's record going active is the commit point: a process
        // killed before it is rolled back by reconcile, one killed after it is completed.
        let now = Utc::now();
        instance.state = InstanceState::Running;
        instance.active = true;
        instance.updated_at = now;
        self.put_instance(&instance).await.at(Step::Record)?;
        if let Some(prev) = &previous
            && !saga.retired.iter().any(|r| r.id == prev.id)
        {
            let mut demoted = prev.clone();
            demoted.active = false;
            demoted.updated_at = now;
            saga.undo
                .push((Step::Record, Undo::RestoreInstance(Box::new(prev.clone()))));
            self.put_instance(&demoted).await.at(Step::Record)?;
        }
        for old in &saga.retired {
            let mut r = old.clone();
            r.state = InstanceState::Retiring;
            r.active = false;
            r.updated_at = now;
            saga.undo
                .push((Step::Record, Undo::RestoreInstance(Box::new(old.clone()))));
            self.put_instance(&r).await.at(Step::Record)?;
        }
        saga.deployment.replaced = saga.retired.iter().map(|i| i.id.clone()).collect();
        saga.deployment.status = DeployStatus::Succeeded;
        saga.deployment.log(
            Step::Record,
            StepStatus::Done,
            format!("{} is live", instance.id),
        );
        saga.deployment.finished_at = Some(Utc::now());
        if let Err(e) = self.record(&saga.deployment).await {
            saga.deployment.status = DeployStatus::InProgress;
            saga.deployment.finished_at = None;
            return Err(Failed {
                step: Step::Record,
                error: e,
            });
        }
        Ok(instance)
    }

    /// The route a live instance has for `domain`, rebuilt from its record.
    fn route_of(&self, domain: &str, instance: &Instance, project: &Project) -> Option<Route> {
        instance.upstream.clone().map(|upstream| Route {
            domain: domain.to_owned(),
            upstream,
            options: project.route.clone(),
        })
    }

    /// After the record: remove retired containers (best effort; reconcile finishes the job),
    /// notify.
    async fn finish(&self, saga: Saga, instance: Instance) -> Deployment {
        let rt = &self.inner.runtime;
        let call = self.inner.settings.timeouts.call;
        for old in &saga.retired {
            let removed = match &old.container_id {
                Some(cid) => {
                    timed(
                        || "container removal".into(),
                        call,
                        rt.remove_container(cid),
                    )
                    .await
                }
                None => Ok(()),
            };
            match removed {
                Ok(()) => {
                    if let Err(e) = self.inner.store.delete_instance(&old.id).await {
                        tracing::warn!(instance = %old.id, error = %e, "retired instance record left; reconcile removes it");
                    }
                }
                Err(e) => {
                    tracing::warn!(instance = %old.id, error = %e, "retired container left stopped; reconcile removes it")
                }
            }
        }
        let d = saga.deployment;
        tracing::info!(deployment = %d.id, instance = %instance.id, replaced = ?d.replaced, "deploy succeeded");
        let url = self.url_of(&saga.project, &saga.stage, &instance);
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
    async fn fail(&self, mut saga: Saga, failed: Failed) -> Deployment {
        let Failed { step, error } = failed;
        tracing::warn!(deployment = %saga.deployment.id, %step, error = %error.chain(), "deploy failed; rolling back");
        saga.deployment.log(step, StepStatus::Failed, error.chain());
        self.compensate(&mut saga).await;
        let d = &mut saga.deployment;
        d.status = DeployStatus::Failed;
        d.finished_at = Some(Utc::now());
        d.error = Some(DeployError {
            step,
            kind: error.kind(),
            message: error.chain(),
            logs: error.logs().to_vec(),
        });
        if let Err(e) = self.record(d).await {
            tracing::error!(deployment = %d.id, error = %e, "could not record the failed deployment; reconcile marks it");
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

    async fn compensate(&self, saga: &mut Saga) {
        let rt = &self.inner.runtime;
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
                Undo::StartContainer(id) => (
                    format!("start container {id} again"),
                    timed(|| "container start".into(), t.start, rt.start_container(id)).await,
                ),
                Undo::RestoreInstance(i) => (
                    format!("restore instance record {}", i.id),
                    self.put_instance(i).await,
                ),
            };
            match r {
                Ok(()) => saga.deployment.log(step, StepStatus::Undone, what),
                Err(e) => {
                    tracing::error!(action = %what, error = %e.chain(), "rollback action failed; reconcile will repair");
                    saga.deployment.log(
                        step,
                        StepStatus::Failed,
                        format!("rollback: {what} failed: {}", e.chain()),
                    );
                }
            }
        }
    }
}
