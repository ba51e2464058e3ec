//! Reconcile: compare the store with what the runtime and the proxy actually have, and repair.
//!
//! Runs before every command on a stage (under its lease) and on demand for everything. It is
//! idempotent and is not told why it runs: whatever state a killed process left, the outcome is
//! the same.

use std::collections::{BTreeMap, BTreeSet};

use chrono::Utc;
use serde::Serialize;

use super::{Engine, timed};
use crate::backend::{ContainerInfo, DeploymentFilter, InstanceFilter, Route, RunState};
use crate::error::ErrorKind;
use crate::error::Result;
use crate::model::{
    DeployError, DeployStatus, Instance, InstanceState, Project, Stage, Step, StepStatus, labels,
};

/// What a reconcile found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReconcileReport {
    /// Instances recreated from labelled containers the store did not know.
    pub adopted: Vec<String>,
    /// Instances whose container is gone.
    pub missing: Vec<String>,
    /// Containers removed as orphans (names).
    pub removed_containers: Vec<String>,
    /// Deployments an interrupted process left in progress, now settled.
    pub interrupted: Vec<String>,
    /// Domains whose routes were repaired or removed.
    pub routes_repaired: Vec<String>,
    /// Containers started again because an interrupted deploy had stopped them.
    pub restarted: Vec<String>,
    /// Stages skipped because another operation holds them.
    pub busy: Vec<String>,
}

impl ReconcileReport {
    /// Whether nothing needed repair.
    pub fn is_clean(&self) -> bool {
        self.adopted.is_empty()
            && self.removed_containers.is_empty()
            && self.interrupted.is_empty()
            && self.routes_repaired.is_empty()
            && self.restarted.is_empty()
    }

    fn merge(&mut self, other: ReconcileReport) {
        self.adopted.extend(other.adopted);
        self.missing.extend(other.missing);
        self.removed_containers.extend(other.removed_containers);
        self.interrupted.extend(other.interrupted);
        self.routes_repaired.extend(other.routes_repaired);
        self.restarted.extend(other.restarted);
        self.busy.extend(other.busy);
    }
}

fn label<'a>(c: &'a ContainerInfo, key: &str) -> Option<&'a str> {
    c.labels.get(key).map(String::as_str)
}

impl Engine {
    /// Reconcile every stage of every project, and remove containers of unknown projects.
    /// Stages busy with another operation are skipped (and listed in the report).
    pub async fn reconcile(&self) -> Result<ReconcileReport> {
        let this = self.clone();
        self.tracked(async move { this.reconcile_all().await })
            .await
    }

    async fn reconcile_all(&self) -> Result<ReconcileReport> {
        let call = self.inner.settings.timeouts.call;
        let projects: BTreeMap<String, Project> = self
            .inner
            .store
            .list_projects()
            .await?
            .into_iter()
            .map(|p| (p.name.clone(), p))
            .collect();
        let containers = timed(
            || "container list".into(),
            call,
            self.inner.runtime.list_containers(&self.managed_selector()),
        )
        .await?;
        let containers = self.in_scope(containers);
        let mut stages: BTreeSet<(String, String)> = projects
            .values()
            .flat_map(|p| p.stages.keys().map(|s| (p.name.clone(), s.clone())))
            .collect();
        for c in &containers {
            if let (Some(p), Some(s)) = (label(c, labels::PROJECT), label(c, labels::STAGE)) {
                stages.insert((p.to_owned(), s.to_owned()));
            }
        }
        let mut report = ReconcileReport::default();
        for (p, s) in stages {
            let Some(lock) = self
                .acquire_stage(&p, &s, std::time::Duration::ZERO)
                .await?
            else {
                report.busy.push(format!("{p}/{s}"));
                continue;
            };
            let r = match projects
                .get(&p)
                .and_then(|proj| proj.stages.get(&s).map(|st| (proj, st)))
            {
                Some((proj, st)) => self.reconcile_stage(proj, st).await,
                None => self.remove_unowned(&containers, &p, &s).await,
            };
            lock.release().await;
            report.merge(r?);
        }
        Ok(report)
    }

    /// Containers of a project or stage the store does not know: orphans.
    async fn remove_unowned(
        &self,
        containers: &[ContainerInfo],
        project: &str,
        stage: &str,
    ) -> Result<ReconcileReport> {
        let mut report = ReconcileReport::default();
        for c in containers {
            if label(c, labels::PROJECT) == Some(project) && label(c, labels::STAGE) == Some(stage)
            {
                self.remove_container_quietly(&c.id).await?;
                report.removed_containers.push(c.name.clone());
            }
        }
        Ok(report)
    }

    async fn remove_container_quietly(&self, id: &str) -> Result<()> {
        timed(
            || "container removal".into(),
            self.inner.settings.timeouts.call,
            self.inner.runtime.remove_container(id),
        )
        .await
    }

    /// Reconcile one stage. The caller holds the stage's lease, so any deployment still marked
    /// in progress belongs to a process that died.
    pub(crate) async fn reconcile_stage(
        &self,
        project: &Project,
        stage: &Stage,
    ) -> Result<ReconcileReport> {
        let store = &self.inner.store;
        let rt = &self.inner.runtime;
        let call = self.inner.settings.timeouts.call;
        let mut report = ReconcileReport::default();

        let mut selector = self.managed_selector();
        selector.insert(labels::PROJECT.into(), project.name.clone());
        selector.insert(labels::STAGE.into(), stage.name.clone());
        let containers = timed(
            || "container list".into(),
            call,
            rt.list_containers(&selector),
        )
        .await?;
        let containers = self.in_scope(containers);
        let filter = InstanceFilter {
            project: Some(project.name.clone()),
            stage: Some(stage.name.clone()),
        };
        let mut instances = store.list_instances(&filter).await?;

        // 1. Settle deployments a dead process left in progress.
        let history = store
            .list_deployments(&DeploymentFilter {
                project: Some(project.name.clone()),
                stage: Some(stage.name.clone()),
                limit: Some(50),
            })
            .await?;
        let mut failed_deploys: BTreeSet<String> = history
            .iter()
            .filter(|d| d.status == DeployStatus::Failed)
            .map(|d| d.id.clone())
            .collect();
        let mut restart_stopped = false;
        for mut d in history
            .into_iter()
            .filter(|d| d.status == DeployStatus::InProgress)
        {
            let committed = d
                .instance_id
                .as_ref()
                .and_then(|id| instances.iter().find(|i| &i.id == id))
                .is_some_and(|i| i.active);
            let last = d.steps.last().map_or(Step::Validate, |s| s.step);
            if committed {
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
                        store.put_instance(i).await?;
                    }
                }
            } else {
                d.status = DeployStatus::Failed;
                d.error = Some(DeployError {
                    step: last,
                    kind: ErrorKind::Internal,
                    message: format!(
                        "interrupted: the process stopped during step {last}; rolled back by reconcile"
                    ),
                    logs: Vec::new(),
                });
                failed_deploys.insert(d.id.clone());
                restart_stopped = true;
            }
            d.finished_at = Some(Utc::now());
            store.put_deployment(&d).await?;
            tracing::warn!(deployment = %d.id, status = d.status.as_str(), "settled an interrupted deployment");
            report.interrupted.push(d.id.clone());
        }

        // 2. Instances against containers.
        let by_id: BTreeMap<&str, &ContainerInfo> =
            containers.iter().map(|c| (c.id.as_str(), c)).collect();
        let by_instance: BTreeMap<&str, &ContainerInfo> = containers
            .iter()
            .filter_map(|c| label(c, labels::INSTANCE).map(|i| (i, c)))
            .collect();
        let mut known_containers = BTreeSet::new();
        let mut kept = Vec::new();
        for mut inst in instances {
            let container = inst
                .container_id
                .as_deref()
                .and_then(|id| by_id.get(id))
                .or_else(|| by_instance.get(inst.id.as_str()))
                .copied();
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
                    self.remove_container_quietly(&c.id).await?;
                    report.removed_containers.push(c.name.clone());
                }
                store.delete_instance(&inst.id).await?;
                continue;
            }
            let before = (inst.state, inst.address.clone());
            match container {
                None => {
                    if inst.state != InstanceState::Missing {
                        report.missing.push(inst.id.clone());
                    }
                    inst.state = InstanceState::Missing;
                }
                Some(c) => {
                    let running = c.state == RunState::Running || c.state == RunState::Restarting;
                    if !running && restart_stopped && inst.state == InstanceState::Running {
                        // An interrupted deploy stopped it while retiring: bring it back.
                        timed(|| "container start".into(), call, rt.start_container(&c.id)).await?;
                        report.restarted.push(inst.id.clone());
                        inst.state = InstanceState::Running;
                    } else if running {
                        inst.state = InstanceState::Running;
                    } else if inst.state != InstanceState::Stopped {
                        inst.state = InstanceState::Exited;
                    }
                    if c.published.is_some() {
                        inst.address = c.published.clone();
                    }
                    if inst.container_id.is_none() {
                        inst.container_id = Some(c.id.clone());
                    }
                }
            }
            if before != (inst.state, inst.address.clone()) {
                inst.updated_at = Utc::now();
                store.put_instance(&inst).await?;
            }
            kept.push(inst);
        }

        // 3. Containers no instance claims: orphans of failed deploys, or adoptable.
        for c in containers
            .iter()
            .filter(|c| !known_containers.contains(&c.id))
        {
            let deployment = label(c, labels::DEPLOYMENT).unwrap_or_default();
            let known = match store.get_deployment(deployment).await? {
                Some(d) => Some(d.status),
                None => None,
            };
            let adoptable = matches!(known, Some(DeployStatus::Succeeded) | None)
                && !failed_deploys.contains(deployment)
                && label(c, labels::INSTANCE).is_some()
                && label(c, labels::TAG).is_some();
            if !adoptable {
                self.remove_container_quietly(&c.id).await?;
                report.removed_containers.push(c.name.clone());
                continue;
            }
            let inst = self.adopt(project, stage, c, kept.iter().any(|i| i.active))?;
            store.put_instance(&inst).await?;
            report.adopted.push(inst.id.clone());
            kept.push(inst);
        }

        // 4. Routes: the stage's domain goes to the active instance; instance domains to their
        // instances; domains of this stage that no instance owns are removed.
        if let Some(proxy) = &self.inner.proxy {
            let t = self.inner.settings.timeouts.route;
            match timed(|| "route list".into(), t, proxy.list_routes()).await {
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
                    let foreign = self.foreign_domains(project, stage).await?;
                    for (domain, want) in &desired {
                        if current.get(domain.as_str()).map(|r| &r.upstream) != Some(&want.upstream)
                        {
                            timed(|| format!("route {domain}"), t, proxy.ensure_route(want))
                                .await?;
                            report.routes_repaired.push(domain.clone());
                        }
                    }
                    for r in &routes {
                        let ours = r.domain == stage_domain
                            || (r.domain.starts_with(&prefix) && r.domain.ends_with(&suffix));
                        let owned_elsewhere = kept.iter().any(|i| i.domain == r.domain)
                            || foreign.contains(&r.domain);
                        if ours && !desired.contains_key(&r.domain) && !owned_elsewhere {
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
        if !report.is_clean() {
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
        for p in store.list_projects().await? {
            for s in p.stages.values().filter(|s| !mine(&p.name, &s.name)) {
                foreign.insert(domains.stage_domain(&p.name, &s.name, s.subdomain.as_deref()));
            }
        }
        for i in store.list_instances(&InstanceFilter::default()).await? {
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
