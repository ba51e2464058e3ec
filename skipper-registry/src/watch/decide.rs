//! Deciding for one stage and one candidate tag: deploy, announce or skip; and the order in
//! which a project's stages are decided.

use std::collections::HashSet;

use chrono::Utc;
use skipper_core::{
    DeployRequest, DeployStatus, Error, ErrorKind, Event, EventKind, Instance, InstanceFilter,
    InstanceState, Project, Stage, Trigger,
};

use super::Watcher;
use super::report::{Announced, Change, Deployed, ProjectError, WatchReport};
use crate::select;

/// A tag a stage may act on.
pub(super) struct Candidate {
    pub(super) tag: String,
    pub(super) digest: Option<String>,
    pub(super) change: Change,
}

impl Watcher {
    pub(super) async fn stage_instances(
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
    pub(super) async fn act(
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
                report.error(p, Some(s), Some(tag), &e);
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
                report.error(p, Some(s), Some(tag), &e);
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
                    correlation_id: None,
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
                    report.error(p, Some(s), Some(tag), &e);
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
                    report.error(p, Some(s), Some(tag), &e);
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
pub(super) fn promotion_order(project: &Project) -> Vec<&Stage> {
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
    // A promotion cycle, which `Project::validate` refuses (a project stored before it did):
    // the rest by name.
    for stage in project.stages.values() {
        if !placed.contains(stage.name.as_str()) {
            out.push(stage);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
