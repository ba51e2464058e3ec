//! Stage leases: one operation per stage at a time, across processes.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::Engine;
use crate::backend::Store;
use crate::error::{Error, Result};

/// A held stage lease, renewed in the background until released or dropped.
pub(crate) struct StageLock {
    store: Arc<dyn Store>,
    key: String,
    holder: String,
    renew: Option<JoinHandle<()>>,
}

impl StageLock {
    /// Release the lease now.
    pub(crate) async fn release(mut self) {
        if let Some(h) = self.renew.take() {
            h.abort();
        }
        if let Err(e) = self.store.unlock(&self.key, &self.holder).await {
            tracing::warn!(key = %self.key, error = %e, "could not release a stage lock; it expires by itself");
        }
    }
}

impl Drop for StageLock {
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
    pub(crate) async fn lock_stage(&self, project: &str, stage: &str) -> Result<StageLock> {
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
    ) -> Result<Option<StageLock>> {
        let s = &self.inner.settings;
        let store = self.inner.store.clone();
        let key = stage_key(project, stage);
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
            tracing::debug!(%key, "stage is busy; waiting");
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
                            tracing::error!(%key, "lost a stage lock (it expired and was taken)");
                            return;
                        }
                        Err(e) => tracing::warn!(%key, error = %e, "could not renew a stage lock"),
                    }
                }
            })
        };
        Ok(Some(StageLock {
            store,
            key,
            holder,
            renew: Some(renew),
        }))
    }
}
