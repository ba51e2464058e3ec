//! Instance operations (stop, start, restart, remove) and stage rollback.

use chrono::Utc;

use super::{DeployRequest, Engine, PullPolicy, timed};
use crate::backend::{DeploymentFilter, InstanceFilter, Route};
use crate::error::{Error, Result};
use crate::model::{
    DeployStatus, Deployment, Event, EventKind, Instance, InstanceState, Step, StepStatus, Trigger,
    new_id,
};

/// An operation on one instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum InstanceOp {
    Stop,
    Start,
    Restart,
    Remove,
}

impl Engine {
    /// Stop an instance's container (its routes stay; it can be started again).
    pub async fn stop_instance(&self, id: &str) -> Result<Instance> {
        self.instance_op(id, InstanceOp::Stop).await
    }

    /// Start a stopped instance.
    pub async fn start_instance(&self, id: &str) -> Result<Instance> {
        self.instance_op(id, InstanceOp::Start).await
    }

    /// Restart an instance.
    pub async fn restart_instance(&self, id: &str) -> Result<Instance> {
        self.instance_op(id, InstanceOp::Restart).await
    }

    /// Remove an instance: its routes first, then its container and record. If it was the
    /// stage's active instance, the stage's domain moves to the newest other running instance,
    /// or is removed when there is none.
    pub async fn remove_instance(&self, id: &str) -> Result<Instance> {
        self.instance_op(id, InstanceOp::Remove).await
    }

    /// Delete a stage and everything it runs: each instance's routes, container and record
    /// (the serving one last, so the stage's domain goes with it), then the stage itself.
    /// Returns the project as it is now. An instance that cannot be removed stops it, with the
    /// stage still there to try again.
    pub async fn delete_stage(&self, project: &str, stage: &str) -> Result<crate::model::Project> {
        let p = self.project(project).await?;
        p.stage(stage)?;
        self.remove_all(project, Some(stage)).await?;
        let lease = self.project_lease(project).await?;
        let r = async {
            let mut p = self.project(project).await?;
            p.stages.remove(stage);
            self.put_project(&p).await?;
            Ok(p)
        }
        .await;
        lease.release().await;
        r
    }

    /// Delete a project and everything it runs (every stage's instances, as
    /// [`delete_stage`](Self::delete_stage) removes them), then its record.
    pub async fn delete_project(&self, project: &str) -> Result<()> {
        self.project(project).await?;
        self.remove_all(project, None).await?;
        let lease = self.project_lease(project).await?;
        let r = self.inner.store.delete_project(project).await;
        lease.release().await;
        r
    }

    /// The lease under which a project's record is read, changed and written back (a caller
    /// that edits a project takes it, so concurrent edits never lose each other's change).
    /// Waits up to a minute for another holder.
    pub async fn project_lease(&self, project: &str) -> Result<super::Lease> {
        let wait = self
            .inner
            .settings
            .lock_wait
            .min(std::time::Duration::from_secs(60));
        self.lease(&format!("project/{project}"), wait)
            .await?
            .ok_or_else(|| Error::Timeout {
                what: format!("waiting for project {project:?} (another change holds it)"),
                after: wait,
            })
    }

    async fn remove_all(&self, project: &str, stage: Option<&str>) -> Result<()> {
        let mut list = self
            .instances(&InstanceFilter {
                project: Some(project.to_owned()),
                stage: stage.map(str::to_owned),
            })
            .await?;
        list.sort_by_key(|i| i.active);
        for i in list {
            match self.remove_instance(&i.id).await {
                Ok(_) => {}
                // Gone meanwhile (another removal); anything else (an unknown node too) stops.
                Err(e)
                    if e.kind() == crate::error::ErrorKind::NotFound
                        && self.inner.store.get_instance(&i.id).await?.is_none() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The node a stage runs on (its project's `node_of`); `None` for the engine's own host,
    /// also when the project is gone (its instances were made here or are being removed).
    pub(crate) async fn node_of_stage(&self, project: &str, stage: &str) -> Result<Option<String>> {
        Ok(self
            .stored(|| "project read", self.inner.store.get_project(project))
            .await?
            .and_then(|p| p.node_of(stage).map(str::to_owned)))
    }

    async fn instance_op(&self, id: &str, op: InstanceOp) -> Result<Instance> {
        let found = self.find_instance(id).await?;
        let this = self.clone();
        self.tracked(async move {
            let lock = this.lock_stage(&found.project, &found.stage).await?;
            let r = async {
                // Repair first: a container recreated by hand gets its real id back, so the
                // operation acts on the container that is really there.
                if let Ok(project) = this.project(&found.project).await
                    && let Ok(stage) = project.stage(&found.stage)
                {
                    this.reconcile_stage(&project, stage).await?;
                }
                this.instance_op_locked(&found.id, op, &lock.fence()).await
            }
            .await;
            lock.release().await;
            if let Ok(i) = &r {
                this.publish(super::Activity::Instance(Box::new(i.clone())));
            }
            r
        })
        .await
    }

    /// One operation on an instance, under its stage's lease: every store write is fenced by
    /// it (a holder that lost the lease writes nothing) and time-limited like a deploy's.
    async fn instance_op_locked(
        &self,
        id: &str,
        op: InstanceOp,
        fence: &crate::backend::Fence,
    ) -> Result<Instance> {
        let store = &self.inner.store;
        let t = self.inner.settings.timeouts.clone();
        let grace = self.inner.settings.stop_grace;
        let mut inst = self
            .stored(|| "instance read", store.get_instance(id))
            .await?
            .ok_or_else(|| Error::not_found(format!("instance {id:?}")))?;
        let node = self.node_of_stage(&inst.project, &inst.stage).await?;
        let rt = &self.runtime_now(node.as_deref())?;
        let cid = inst.container_id.clone();
        let need_container = || {
            cid.clone().ok_or_else(|| {
                Error::not_found(format!(
                    "a container for instance {} (it is {})",
                    inst.id, inst.state
                ))
            })
        };
        match op {
            InstanceOp::Stop => {
                let c = need_container()?;
                timed(
                    || "container stop".into(),
                    t.retire,
                    rt.stop_container(&c, grace),
                )
                .await?;
                inst.state = InstanceState::Stopped;
            }
            InstanceOp::Start => {
                let c = need_container()?;
                timed(|| "container start".into(), t.start, rt.start_container(&c)).await?;
                inst.state = InstanceState::Running;
            }
            InstanceOp::Restart => {
                let c = need_container()?;
                timed(
                    || "container restart".into(),
                    t.start,
                    rt.restart_container(&c, grace),
                )
                .await?;
                inst.state = InstanceState::Running;
            }
            InstanceOp::Remove => {
                self.unroute(&inst, fence).await?;
                if let Some(c) = &cid {
                    timed(
                        || "container removal".into(),
                        t.call,
                        rt.remove_container(c),
                    )
                    .await?;
                }
                // `remove_container` succeeds for a container that is gone: check that none
                // with this instance's label is left before saying it was removed.
                let selector = std::collections::BTreeMap::from([(
                    crate::model::labels::INSTANCE.to_owned(),
                    inst.id.clone(),
                )]);
                let left = self.containers_matching(node.as_deref(), &selector).await?;
                if let Some(c) = left.first() {
                    return Err(Error::Conflict {
                        what: format!(
                            "instance {} still has container {} ({}) after its removal; remove \
                             it with `docker rm -f {}` and run `skipper reconcile`",
                            inst.id, c.name, c.id, c.id
                        ),
                    });
                }
                self.stored(|| "instance delete", store.delete_instance(&inst.id))
                    .await?;
                tracing::info!(instance = %inst.id, "instance removed");
                self.notify(Event {
                    kind: EventKind::InstanceRemoved,
                    project: inst.project.clone(),
                    stage: inst.stage.clone(),
                    image: Some(inst.image.clone()),
                    deployment_id: None,
                    instance_id: Some(inst.id.clone()),
                    url: None,
                    message: format!("instance {} ({}) removed", inst.id, inst.tag),
                    at: Utc::now(),
                    correlation_id: None,
                })
                .await;
                return Ok(inst);
            }
        }
        inst.updated_at = Utc::now();
        self.write(fence, std::slice::from_ref(&inst), None).await?;
        Ok(inst)
    }

    /// Remove an instance's routes; if it is active, hand the stage's domain to the newest
    /// other running instance (or remove it).
    async fn unroute(&self, inst: &Instance, fence: &crate::backend::Fence) -> Result<()> {
        let project = self.project(&inst.project).await?;
        let stage = project.stage(&inst.stage)?.clone();
        let others: Vec<Instance> = self
            .list_instances_timed(&InstanceFilter {
                project: Some(inst.project.clone()),
                stage: Some(inst.stage.clone()),
            })
            .await?
            .into_iter()
            .filter(|i| i.id != inst.id)
            .collect();
        let successor = if inst.active {
            others
                .iter()
                .filter(|i| i.state == InstanceState::Running && i.upstream.is_some())
                .max_by_key(|i| i.created_at)
                .cloned()
        } else {
            None
        };
        if let Some(proxy) = &self.inner.proxy {
            let t = self.inner.settings.timeouts.route;
            if !others.iter().any(|i| i.domain == inst.domain) {
                timed(
                    || "route removal".into(),
                    t,
                    proxy.remove_route(&inst.domain),
                )
                .await?;
            }
            if inst.active {
                let stage_domain = self.inner.settings.domains.stage_domain(
                    &project.name,
                    &stage.name,
                    stage.subdomain.as_deref(),
                );
                match successor.as_ref().and_then(|s| s.upstream.clone()) {
                    Some(upstream) => {
                        let route = Route {
                            domain: stage_domain,
                            upstream,
                            options: project.route.clone(),
                        };
                        timed(|| "route".into(), t, proxy.ensure_route(&route)).await?;
                    }
                    None => {
                        timed(
                            || "route removal".into(),
                            t,
                            proxy.remove_route(&stage_domain),
                        )
                        .await?
                    }
                }
            }
        }
        if let Some(mut s) = successor {
            s.active = true;
            s.updated_at = Utc::now();
            self.write(fence, std::slice::from_ref(&s), None).await?;
        }
        Ok(())
    }

    /// Roll a stage back to its previous successful version.
    ///
    /// If that version still runs (with `max_instances > 1`), traffic switches to it at once;
    /// otherwise it is deployed again (pinned to its digest when known), health-gated as usual.
    pub async fn rollback(&self, project: &str, stage: &str) -> Result<Deployment> {
        self.rollback_with(project, stage, None).await
    }

    /// [`rollback`](Self::rollback), interrupted (and rolled back itself, like any deploy) when
    /// `cancel` is cancelled.
    pub async fn rollback_with(
        &self,
        project: &str,
        stage: &str,
        cancel: Option<tokio_util::sync::CancellationToken>,
    ) -> Result<Deployment> {
        let this = self.clone();
        let (project, stage) = (project.to_owned(), stage.to_owned());
        self.tracked(async move { this.rollback_inner(&project, &stage, cancel).await })
            .await
    }

    async fn rollback_inner(
        &self,
        project_name: &str,
        stage_name: &str,
        cancel: Option<tokio_util::sync::CancellationToken>,
    ) -> Result<Deployment> {
        let project = self.project(project_name).await?;
        let stage = project.stage(stage_name)?.clone();
        // The lease is held from choosing the target to the end of the redeploy or switch, so
        // no other deploy slips in between.
        let lock = self
            .lock_stage_with(&project.name, &stage.name, cancel.as_ref())
            .await?;
        let r = self.rollback_locked(project, stage, &lock, cancel).await;
        lock.release().await;
        r
    }

    async fn rollback_locked(
        &self,
        project: crate::model::Project,
        stage: crate::model::Stage,
        lease: &super::Lease,
        cancel: Option<tokio_util::sync::CancellationToken>,
    ) -> Result<Deployment> {
        self.reconcile_stage(&project, &stage).await?;
        let filter = InstanceFilter {
            project: Some(project.name.clone()),
            stage: Some(stage.name.clone()),
        };
        let instances = self.list_instances_timed(&filter).await?;
        let current = instances.iter().find(|i| i.active).cloned();
        let history = self
            .list_deployments_timed(&DeploymentFilter {
                project: Some(project.name.clone()),
                stage: Some(stage.name.clone()),
                limit: None,
            })
            .await?;
        let current_deploy = current.as_ref().map(|c| c.deployment_id.clone());
        let current_image = current.as_ref().map(|c| (c.tag.clone(), c.digest.clone()));
        // The newest successful deployment before the current one, of a different version.
        let target = history
            .into_iter()
            .filter(|d| d.status == DeployStatus::Succeeded)
            .filter(|d| Some(&d.id) != current_deploy.as_ref())
            .find(|d| match &current_image {
                Some((tag, digest)) => {
                    &d.tag != tag || (digest.is_some() && d.digest.is_some() && &d.digest != digest)
                }
                None => true,
            })
            .ok_or_else(|| {
                Error::not_found(format!(
                    "an earlier successful version of {}/{} to roll back to",
                    project.name, stage.name
                ))
            })?;
        let running = instances
            .iter()
            .find(|i| {
                i.tag == target.tag
                    && i.state == InstanceState::Running
                    && !i.active
                    && (target.digest.is_none() || i.digest == target.digest)
            })
            .cloned();

        if let Some(to) = running {
            // Fast path: the old version still runs; switch traffic to it.
            return self
                .switch_to(
                    &project,
                    &stage,
                    current.as_ref(),
                    &to,
                    &target.image,
                    lease,
                )
                .await;
        }
        let image = match &target.digest {
            Some(d) => target.image.with_digest(d)?,
            None => target.image.clone(),
        };
        let tag = target.tag.clone();
        let mut req = DeployRequest::new(&project.name, &stage.name, image);
        req.trigger = Trigger::Rollback;
        req.pull = PullPolicy::Missing;
        req.cancel = cancel;
        // Run the target version the way it ran (its port, health check, environment).
        req.settings = target.settings.clone();
        self.deploy_locked(project, stage, tag, req, lease).await
    }

    async fn switch_to(
        &self,
        project: &crate::model::Project,
        stage: &crate::model::Stage,
        current: Option<&Instance>,
        to: &Instance,
        image: &crate::reference::ImageRef,
        lease: &super::Lease,
    ) -> Result<Deployment> {
        let store = &self.inner.store;
        let fence = lease.fence();
        let now = Utc::now();
        let mut d = Deployment {
            id: new_id(),
            project: project.name.clone(),
            stage: stage.name.clone(),
            image: image.clone(),
            tag: to.tag.clone(),
            digest: to.digest.clone(),
            instance_id: Some(to.id.clone()),
            previous_instance: current.map(|c| c.id.clone()),
            replaced: Vec::new(),
            status: DeployStatus::InProgress,
            trigger: Trigger::Rollback,
            steps: Vec::new(),
            error: None,
            started_at: now,
            finished_at: None,
            settings: Some(crate::model::RunSettings::of(project, stage)),
            correlation_id: None,
        };
        d.log(
            Step::Validate,
            StepStatus::Done,
            format!("{} still runs as {}", to.tag, to.id),
        );
        self.write(&fence, &[], Some(&d)).await?;
        self.publish(super::Activity::Started(Box::new(d.clone())));
        if let (Some(proxy), Some(upstream)) = (&self.inner.proxy, &to.upstream) {
            let domain = self.inner.settings.domains.stage_domain(
                &project.name,
                &stage.name,
                stage.subdomain.as_deref(),
            );
            let route = Route {
                domain: domain.clone(),
                upstream: upstream.clone(),
                options: project.route.clone(),
            };
            let t = self.inner.settings.timeouts.route;
            if let Err(e) = timed(|| format!("route {domain}"), t, proxy.ensure_route(&route)).await
            {
                d.status = DeployStatus::Failed;
                d.log(Step::Switch, StepStatus::Failed, e.chain());
                // The switch may have been made even so (an answer lost after the change): point
                // the domain back at the instance the store still calls active.
                if let Some(up) = current.and_then(|c| c.upstream.clone()) {
                    let back = Route {
                        domain: domain.clone(),
                        upstream: up,
                        options: project.route.clone(),
                    };
                    let what = format!("route {domain} back to {}", back.upstream);
                    match timed(|| format!("route {domain}"), t, proxy.ensure_route(&back)).await {
                        Ok(()) => d.log(Step::Switch, StepStatus::Undone, what),
                        Err(undo) => {
                            tracing::error!(action = %what, error = %undo.chain(), "rollback action failed; reconcile will repair");
                            d.log(
                                Step::Switch,
                                StepStatus::Failed,
                                format!("rollback: {what} failed: {}", undo.chain()),
                            );
                        }
                    }
                }
                d.error = Some(crate::model::DeployError {
                    step: Step::Switch,
                    kind: e.kind(),
                    message: e.chain(),
                    logs: Vec::new(),
                });
                d.finished_at = Some(Utc::now());
                self.stored(|| "deployment write", store.put_deployment(&d))
                    .await?;
                self.publish(super::Activity::Finished(Box::new(d.clone())));
                return Ok(d);
            }
            d.log(
                Step::Switch,
                StepStatus::Done,
                format!("{domain} → {upstream}"),
            );
        }
        // The commit: one fenced write, the old version active again.
        let mut promoted = to.clone();
        promoted.active = true;
        promoted.updated_at = now;
        let mut writes = vec![promoted];
        if let Some(c) = current {
            let mut demoted = c.clone();
            demoted.active = false;
            demoted.updated_at = now;
            writes.push(demoted);
        }
        d.status = DeployStatus::Succeeded;
        d.finished_at = Some(Utc::now());
        d.log(
            Step::Commit,
            StepStatus::Done,
            format!("{} is active again", to.id),
        );
        self.write(&fence, &writes, Some(&d)).await?;
        self.publish(super::Activity::Finished(Box::new(d.clone())));
        let message = format!("{}/{} rolled back to {}", project.name, stage.name, to.tag);
        let url = self.url_of(project, stage, to);
        self.notify(Event::for_deployment(EventKind::RolledBack, &d, message).with_url(url))
            .await;
        Ok(d)
    }
}
