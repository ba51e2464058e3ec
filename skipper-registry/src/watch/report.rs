//! What a polling round (or a push) did: [`WatchReport`] and its rows.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use skipper_core::{Error, ErrorKind};

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

    pub(super) fn describe(self) -> &'static str {
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
    pub(super) fn start() -> Self {
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

    pub(super) fn error(
        &mut self,
        project: &str,
        stage: Option<&str>,
        tag: Option<&str>,
        e: &Error,
    ) {
        self.errors.push(ProjectError {
            project: project.to_owned(),
            stage: stage.map(str::to_owned),
            tag: tag.map(str::to_owned),
            kind: e.kind(),
            message: e.chain(),
            retry_after_secs: e.retry_after().map(|d| d.as_secs().max(1)),
            deployment_id: None,
        });
    }

    pub(super) fn skip(
        &mut self,
        project: &str,
        stage: Option<&str>,
        tag: Option<&str>,
        reason: String,
    ) {
        self.skipped.push(Skipped {
            project: project.to_owned(),
            stage: stage.map(str::to_owned),
            tag: tag.map(str::to_owned),
            reason,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn a_rate_limit_keeps_its_wait_in_the_report() {
        let mut r = WatchReport::start();
        let e = Error::rate_limited("registry", "429", Some(std::time::Duration::from_millis(1)));
        r.error("web", None, None, &e);
        assert_eq!(r.errors[0].kind, ErrorKind::RateLimited);
        assert_eq!(r.errors[0].retry_after_secs, Some(1));
        assert!(
            !r.deploy_failed(),
            "a registry error is not a deploy failure"
        );
    }
}
