//! One repository's part of a polling round: list, resolve digests, diff, decide, remember.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::Utc;
use skipper_core::{ErrorKind, ImageRef, Project, SeenTag, TagPattern, Trigger};

use super::backoff::Waiting;
use super::decide::{Candidate, promotion_order};
use super::report::{Change, PolledRepository, WatchReport};
use super::{Watcher, watch_key};
use crate::select::{self, ObservedTag, TagDiff};

/// What one repository's poll found.
struct Round<'a> {
    tags: &'a [String],
    digests: &'a HashMap<String, String>,
    diff: &'a TagDiff,
    baseline: bool,
}

impl Watcher {
    /// Poll one repository for its projects, recording failures in the report and backing off.
    pub(super) async fn poll_repository(
        &self,
        repository: &str,
        projects: &[Project],
        report: &mut WatchReport,
    ) {
        if let Some(Waiting {
            failures,
            left,
            last_error,
        }) = self.inner.backoff.waiting(repository)
        {
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
            Ok(()) => self.inner.backoff.succeeded(repository),
            Err(e) => {
                let wait = self
                    .inner
                    .backoff
                    .failed(repository, &e, &self.inner.settings);
                tracing::warn!(repository, error = %e.chain(), kind = %e.kind(), retry_in_secs = wait.as_secs(), "poll failed; backing off");
                for p in projects {
                    report.error(&p.name, None, None, &e);
                }
            }
        }
    }

    async fn poll_locked(
        &self,
        repository: &str,
        projects: &[Project],
        report: &mut WatchReport,
    ) -> skipper_core::Result<()> {
        let s = &self.inner.settings;
        let repo = ImageRef::parse(repository)?;
        let registry = &self.inner.registry;
        let tags = registry.list_tags(&repo).await?;
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
            match registry.resolve_digest(&repo.with_tag(tag)?).await {
                Ok(d) => {
                    digests.insert(tag.to_owned(), d);
                }
                // Deleted between the listing and now: nothing to compare.
                Err(e) if e.kind() == ErrorKind::NotFound => {
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
                report.error(&project.name, None, None, &e);
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
}
