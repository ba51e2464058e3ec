//! The webhook entry point: [`Watcher::handle_push`].

use std::collections::HashSet;

use chrono::Utc;
use skipper_core::{Error, ImageRef, Project, SeenTag, Trigger};

use super::decide::{Candidate, promotion_order};
use super::report::{Change, WatchReport};
use super::{Watcher, watch_key};
use crate::webhook::PushEvent;

impl Watcher {
    /// Act on a push a webhook announced: for every project whose image is the pushed
    /// repository, deploy the tag to each matching `auto_deploy` stage ([`Trigger::Webhook`]) and
    /// announce it to the other matching stages, by the rules in the [module docs](crate::watch). The
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
                        report.error(&project.name, Some(&stage.name), None, &e);
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
                for p in &projects {
                    report.error(&p.name, None, Some(&tag), &e);
                }
            }
        }
        report.finished_at = Utc::now();
        Ok(report)
    }
}
