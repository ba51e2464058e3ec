//! Per-repository backoff after failed polls.
//!
//! The wait doubles with each failure in a row, from [`WatchSettings::backoff`] up to
//! [`WatchSettings::max_backoff`]. A [`RateLimited`](ErrorKind::RateLimited) error waits at
//! least as long as the registry asked ([`Error::retry_after`]), even past the cap: asking again
//! sooner only spends the quota. Nothing here retries: the next round that finds the wait over
//! is the retry.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use skipper_core::{Error, ErrorKind};
use tokio::time::Instant;

use super::WatchSettings;

/// The wait after the `failures`-th failure in a row (1-based) that ended with `error`.
pub(super) fn wait_after(failures: u32, error: &Error, settings: &WatchSettings) -> Duration {
    let exponent = failures.saturating_sub(1).min(20);
    let doubled = settings
        .backoff
        .saturating_mul(1u32 << exponent)
        .min(settings.max_backoff);
    match error.kind() {
        ErrorKind::RateLimited => doubled.max(error.retry_after().unwrap_or_default()),
        _ => doubled,
    }
}

/// A repository that is being left alone.
pub(super) struct Waiting {
    /// Failed polls in a row.
    pub(super) failures: u32,
    /// Until the next try.
    pub(super) left: Duration,
    /// The last failure, with its causes.
    pub(super) last_error: String,
}

struct Entry {
    failures: u32,
    until: Instant,
    last_error: String,
}

/// The backoff state of every repository (shared by a watcher's clones).
#[derive(Default)]
pub(super) struct Backoffs {
    entries: Mutex<HashMap<String, Entry>>,
}

impl Backoffs {
    /// Whether `repository` is still to be left alone, and for how long.
    pub(super) fn waiting(&self, repository: &str) -> Option<Waiting> {
        let entries = self.lock();
        let e = entries.get(repository)?;
        let left = e.until.saturating_duration_since(Instant::now());
        (!left.is_zero()).then(|| Waiting {
            failures: e.failures,
            left,
            last_error: e.last_error.clone(),
        })
    }

    /// Remember a failed poll; returns the wait before the next one.
    pub(super) fn failed(
        &self,
        repository: &str,
        error: &Error,
        settings: &WatchSettings,
    ) -> Duration {
        let mut entries = self.lock();
        let entry = entries.entry(repository.to_owned()).or_insert(Entry {
            failures: 0,
            until: Instant::now(),
            last_error: String::new(),
        });
        entry.failures = entry.failures.saturating_add(1);
        let wait = wait_after(entry.failures, error, settings);
        entry.until = Instant::now() + wait;
        entry.last_error = error.chain();
        wait
    }

    /// A poll of `repository` succeeded: no more waiting.
    pub(super) fn succeeded(&self, repository: &str) {
        self.lock().remove(repository);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> WatchSettings {
        WatchSettings {
            backoff: Duration::from_secs(10),
            max_backoff: Duration::from_secs(60),
            ..WatchSettings::default()
        }
    }

    #[test]
    fn the_wait_doubles_and_is_capped() {
        let down = Error::backend("registry", ErrorKind::Transient, "down");
        let waits: Vec<u64> = (1..=5)
            .map(|n| wait_after(n, &down, &settings()).as_secs())
            .collect();
        assert_eq!(waits, vec![10, 20, 40, 60, 60]);
    }

    #[test]
    fn a_rate_limit_waits_as_long_as_the_registry_asks() {
        let s = settings();
        let asked = |secs| Error::rate_limited("registry", "429", Some(Duration::from_secs(secs)));
        assert_eq!(wait_after(1, &asked(3600), &s), Duration::from_secs(3600));
        // Asking for less than the backoff does not shorten it.
        assert_eq!(wait_after(2, &asked(5), &s), Duration::from_secs(20));
        // A 429 that says nothing backs off like any failure.
        let silent = Error::rate_limited("registry", "429", None);
        assert_eq!(wait_after(1, &silent, &s), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_repository_waits_until_its_backoff_is_over() {
        let b = Backoffs::default();
        let s = settings();
        let down = Error::backend("registry", ErrorKind::Transient, "down");
        assert!(b.waiting("r").is_none());
        assert_eq!(b.failed("r", &down, &s), Duration::from_secs(10));
        assert_eq!(b.failed("r", &down, &s), Duration::from_secs(20));
        let w = b.waiting("r").unwrap();
        assert_eq!((w.failures, w.last_error.as_str()), (2, "registry: down"));
        assert!(b.waiting("other").is_none());
        tokio::time::advance(Duration::from_secs(20)).await;
        assert!(b.waiting("r").is_none(), "the wait is over");
        b.failed("r", &down, &s);
        b.succeeded("r");
        assert!(b.waiting("r").is_none());
        assert_eq!(
            b.failed("r", &down, &s),
            Duration::from_secs(10),
            "counting restarts"
        );
    }
}
