//! Leases: one operation per stage (or per any key) at a time, across processes.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::Engine;
use crate::backend::Store;
use crate::error::{Error, Result};

/// A held lease, renewed in the background until released or dropped. Dropping it releases it
/// in the background; a process that dies simply stops renewing, and the lease expires.
pub struct Lease {
    store: Arc<dyn Store>,
    key: String,
    holder: String,
    renew: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("key", &self.key)
            .field("holder", &self.holder)
            .finish_non_exhaustive()
    }
}

impl Lease {
    /// Release the lease now.
    pub async fn release(mut self) {
        if let Some(h) = self.renew.take() {
            h.abort();
        }
        if let Err(e) = self.store.unlock(&self.key, &self.holder).await {
            tracing::warn!(key = %self.key, error = %e, "could not release a lease; it expires by itself");
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(h) = self.renew.take() {
            h.abort();
            // Not released explicitly (an early return): release in the background.
            let (store, key, holder) = (self.store.clone(), self.key.clone(), self.holder.clone());
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = store.unlock(&key, &holder).await;
                });
            }
        }
    }
}

/// The lease key of a stage.
pub(crate) fn stage_key(project: &str, stage: &str) -> String {
    format!("stage/{project}/{stage}")
}

impl Engine {
    /// Take the stage's lease, waiting up to `lock_wait` for another holder.
    pub(crate) async fn lock_stage(&self, project: &str, stage: &str) -> Result<Lease> {
        let wait = self.inner.settings.lock_wait;
        self.acquire_stage(project, stage, wait).await?.ok_or_else(|| Error::Timeout {
            what: format!(
                "waiting for another operation on stage {stage:?} of project {project:?} to finish"
            ),
            after: wait,
        })
    }

    /// Take the stage's lease, waiting up to `wait`; `None` if it stayed busy.
    pub(crate) async fn acquire_stage(
        &self,
        project: &str,
        stage: &str,
        wait: Duration,
    ) -> Result<Option<Lease>> {
        self.lease(&stage_key(project, stage), wait).await
    }

    /// Take the lease `key` in the store, waiting up to `wait` for another holder (in this
    /// process or another); `None` if it stayed busy. The lease is renewed in the background
    /// (every third of the engine's `lock_ttl`) until it is released or dropped.
    ///
    /// Deploys take `stage/<project>/<stage>`; embedders may use other keys for their own
    /// cross-process exclusion (the registry watcher takes `watch/<repository>`).
    pub async fn lease(&self, key: &str, wait: Duration) -> Result<Option<Lease>> {
        let s = &self.inner.settings;
        let store = self.inner.store.clone();
        let key = key.to_owned();
        // A holder per acquisition: two operations in one process exclude each other too.
        let holder = format!("{}/{}", self.inner.holder, crate::model::new_id());
        let deadline = Instant::now() + wait;
        let mut delay = Duration::from_millis(25);
        loop {
            if store.try_lock(&key, &holder, s.lock_ttl).await? {
                break;
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            tracing::debug!(%key, "lease is busy; waiting");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(500));
        }
        let renew = {
            let (store, key, holder, ttl) =
                (store.clone(), key.clone(), holder.clone(), s.lock_ttl);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(ttl / 3).await;
                    match store.try_lock(&key, &holder, ttl).await {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::error!(%key, "lost a lease (it expired and was taken)");
                            return;
                        }
                        Err(e) => tracing::warn!(%key, error = %e, "could not renew a lease"),
                    }
                }
            })
        };
        Ok(Some(Lease {
            store,
            key,
            holder,
            renew: Some(renew),
        }))
    }
}
