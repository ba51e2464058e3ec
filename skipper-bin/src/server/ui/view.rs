//! What the pages show, read from the engine and the store: plain values for the templates.
//! Nothing here decides anything about deploys; it only summarises records.

use chrono::{DateTime, Utc};
use skipper_core::backend::{DeploymentFilter, InstanceFilter};
use skipper_core::{DeployStatus, Deployment, Engine, ImageRef, Instance, InstanceState, Project};

use crate::server::error::ApiResult;

/// A stage's or project's state at a glance. A project's is its stages' highest, in this
/// order: one failing stage makes the project failing; a stage never deployed does not make
/// it stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Health {
    /// Nothing runs (stopped, or never deployed).
    Stopped,
    /// The serving instance runs.
    Healthy,
    /// A deploy is under way.
    Deploying,
    /// The serving instance is gone or exited, or the last deploy failed with nothing running.
    Failing,
}

impl Health {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Stopped => "stopped",
            Self::Deploying => "deploying",
            Self::Failing => "failing",
        }
    }
}

/// "3m ago"-style age of `t`.
pub(crate) fn ago(t: DateTime<Utc>) -> String {
    format!("{} ago", span(Utc::now() - t))
}

/// A duration in its largest two units: `45s`, `3m 20s`, `2h 5m`, `4d 3h`.
pub(crate) fn span(d: chrono::TimeDelta) -> String {
    let s = d.num_seconds().max(0);
    let (d_, h, m, sec) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    if d_ > 0 {
        format!("{d_}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else if m > 0 {
        format!("{m}m {sec}s")
    } else {
        format!("{sec}s")
    }
}

/// One deployment as a row.
#[derive(Debug, Clone)]
pub(crate) struct DeployRow {
    pub(crate) id: String,
    pub(crate) project: String,
    pub(crate) stage: String,
    pub(crate) tag: String,
    pub(crate) image: String,
    pub(crate) status: &'static str,
    pub(crate) trigger: String,
    pub(crate) started: String,
    pub(crate) started_at: String,
    /// How long it took (or has been running).
    pub(crate) took: String,
    /// The failed step and the first line of its cause.
    pub(crate) cause: Option<String>,
}

impl DeployRow {
    pub(crate) fn of(d: &Deployment) -> Self {
        let end = d.finished_at.unwrap_or_else(Utc::now);
        Self {
            id: d.id.clone(),
            project: d.project.clone(),
            stage: d.stage.clone(),
            tag: d.tag.clone(),
            image: d.image.familiar(),
            status: d.status.as_str(),
            trigger: serde_json::to_value(d.trigger)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            started: ago(d.started_at),
            started_at: d.started_at.to_rfc3339(),
            took: span(end - d.started_at),
            cause: d.error.as_ref().map(|e| {
                let first = e.message.lines().next().unwrap_or_default();
                format!("{}: {first}", e.step)
            }),
        }
    }

    pub(crate) fn running(&self) -> bool {
        self.status == DeployStatus::InProgress.as_str()
    }
}

/// One instance as a row.
#[derive(Debug, Clone)]
pub(crate) struct InstanceRow {
    pub(crate) id: String,
    pub(crate) short_id: String,
    pub(crate) tag: String,
    pub(crate) state: &'static str,
    /// The stage's domain routes here.
    pub(crate) active: bool,
    pub(crate) url: Option<String>,
    pub(crate) domain: String,
    pub(crate) uptime: String,
    pub(crate) container: String,
    pub(crate) deployment_id: String,
    pub(crate) can_start: bool,
    pub(crate) can_stop: bool,
}

impl InstanceRow {
    fn of(i: &Instance, proxied: bool) -> Self {
        let running = i.state == InstanceState::Running;
        Self {
            id: i.id.clone(),
            short_id: i.id.chars().take(12).collect(),
            tag: i.tag.clone(),
            state: i.state.as_str(),
            active: i.active,
            url: if proxied {
                Some(format!("http://{}", i.domain))
            } else {
                i.address.as_ref().map(|a| format!("http://{a}"))
            },
            domain: i.domain.clone(),
            uptime: if running {
                span(Utc::now() - i.updated_at)
            } else {
                "-".into()
            },
            container: i.container_name.clone(),
            deployment_id: i.deployment_id.clone(),
            can_start: matches!(i.state, InstanceState::Stopped | InstanceState::Exited),
            can_stop: running,
        }
    }
}

/// One stage at a glance.
#[derive(Debug, Clone)]
pub(crate) struct StageView {
    pub(crate) name: String,
    pub(crate) state: &'static str,
    pub(crate) health: Health,
    pub(crate) running: usize,
    pub(crate) tag_pattern: String,
    pub(crate) auto_deploy: bool,
    pub(crate) confirm: bool,
    pub(crate) promote_from: Option<String>,
    pub(crate) max_instances: u32,
    /// The tag the stage's domain serves.
    pub(crate) serving: Option<String>,
    /// The stage's own URL (its domain behind the proxy, else the serving instance's address).
    pub(crate) url: Option<String>,
    /// A newer tag the watcher saw that matches the stage and does not run there.
    pub(crate) update: Option<String>,
    pub(crate) instances: Vec<InstanceRow>,
    pub(crate) latest: Option<DeployRow>,
    pub(crate) history: Vec<DeployRow>,
}

/// One project at a glance.
#[derive(Debug, Clone)]
pub(crate) struct ProjectView {
    pub(crate) name: String,
    pub(crate) image: String,
    pub(crate) state: &'static str,
    pub(crate) running: usize,
    pub(crate) stages: Vec<StageView>,
    pub(crate) latest: Option<DeployRow>,
    pub(crate) updates: usize,
    pub(crate) labels: Vec<(String, String)>,
    pub(crate) port: Option<u16>,
    pub(crate) health_path: Option<String>,
}

/// Everything the dashboard and the project pages show, read in one pass: the projects, every
/// instance as the runtime shows it now, the recent deployments and the tags the watcher saw.
pub(crate) async fn projects(engine: &Engine, only: Option<&str>) -> ApiResult<Vec<ProjectView>> {
    let store = engine.store();
    let list: Vec<Project> = match only {
        Some(name) => store.get_project(name).await?.into_iter().collect(),
        None => store.list_projects().await?,
    };
    let instances = engine
        .observe(&InstanceFilter {
            project: only.map(str::to_owned),
            stage: None,
        })
        .await?;
    let deploys = engine
        .deployments(&DeploymentFilter {
            project: only.map(str::to_owned),
            stage: None,
            limit: Some(if only.is_some() { 200 } else { 500 }),
        })
        .await?;
    let proxied = engine.has_proxy();
    let domains = &engine.settings().domains;
    let mut out = Vec::with_capacity(list.len());
    for p in &list {
        let seen: Vec<String> = match ImageRef::parse(&p.image) {
            Ok(r) => store
                .list_seen_tags(&r.name())
                .await
                .unwrap_or_default()
                .into_iter()
                .map(|t| t.tag)
                .collect(),
            Err(_) => Vec::new(),
        };
        let mut stages = Vec::new();
        for st in p.stages.values() {
            let mine: Vec<&Instance> = instances
                .iter()
                .filter(|i| i.project == p.name && i.stage == st.name)
                .collect();
            let history: Vec<DeployRow> = deploys
                .iter()
                .filter(|d| d.project == p.name && d.stage == st.name)
                .take(20)
                .map(DeployRow::of)
                .collect();
            let running = mine
                .iter()
                .filter(|i| i.state == InstanceState::Running)
                .count();
            let active = mine.iter().find(|i| i.active);
            let latest = history.first().cloned();
            let health = if latest.as_ref().is_some_and(DeployRow::running) {
                Health::Deploying
            } else {
                match active {
                    Some(a) if a.state == InstanceState::Running => Health::Healthy,
                    Some(a) if a.state == InstanceState::Stopped => Health::Stopped,
                    Some(_) => Health::Failing,
                    None if latest.as_ref().is_some_and(|d| d.status == "failed") => {
                        Health::Failing
                    }
                    None if running > 0 => Health::Healthy,
                    None => Health::Stopped,
                }
            };
            let url = match active {
                Some(_) if proxied => Some(format!(
                    "http://{}",
                    domains.stage_domain(&p.name, &st.name, st.subdomain.as_deref())
                )),
                Some(a) => a.address.as_ref().map(|x| format!("http://{x}")),
                None => None,
            };
            let update = skipper_core::TagPattern::new(&st.tag_pattern)
                .ok()
                .and_then(|pat| {
                    let newest = skipper_registry::select_tags(&seen, &pat)
                        .into_iter()
                        .next()?
                        .to_owned();
                    let runs = mine.iter().any(|i| i.tag == newest);
                    let newer = match active {
                        Some(a) => {
                            let mut both = vec![a.tag.clone(), newest.clone()];
                            both.dedup();
                            skipper_registry::select_tags(&both, &pat).first().copied()
                                == Some(newest.as_str())
                        }
                        None => false,
                    };
                    (!runs && newer).then_some(newest)
                });
            stages.push(StageView {
                name: st.name.clone(),
                state: health.as_str(),
                health,
                running,
                tag_pattern: st.tag_pattern.clone(),
                auto_deploy: st.auto_deploy,
                confirm: st.confirm,
                promote_from: st.promote_from.clone(),
                max_instances: st.max_instances,
                serving: active.map(|a| a.tag.clone()),
                url,
                update,
                instances: mine.iter().map(|i| InstanceRow::of(i, proxied)).collect(),
                latest,
                history,
            });
        }
        let health = stages
            .iter()
            .map(|s| s.health)
            .max()
            .unwrap_or(Health::Stopped);
        out.push(ProjectView {
            name: p.name.clone(),
            image: p.image.clone(),
            state: health.as_str(),
            running: stages.iter().map(|s| s.running).sum(),
            latest: deploys
                .iter()
                .find(|d| d.project == p.name)
                .map(DeployRow::of),
            updates: stages.iter().filter(|s| s.update.is_some()).count(),
            stages,
            labels: p
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            port: p.port,
            health_path: p.health.path.clone(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_read_in_two_units() {
        let s = |n| span(chrono::TimeDelta::seconds(n));
        assert_eq!(s(5), "5s");
        assert_eq!(s(200), "3m 20s");
        assert_eq!(s(7500), "2h 5m");
        assert_eq!(s(3 * 86_400 + 7200), "3d 2h");
        assert_eq!(s(-4), "0s");
    }
}
