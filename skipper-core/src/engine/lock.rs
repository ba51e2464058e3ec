//! Leases: one operation per stage (or per any key) at a time, across processes.
//!
//! A lease lives in the store with a time to live, renewed in the background while held. Two
//! things make it safe to run unattended:
//! - **A dead holder on this host is taken over at once.** Every holder names its process
//!   (host, boot id, pid and the pid's start time, see [`Holder`]). A waiter that finds the lease
//!   held by a process of this host that no longer exists takes it over without waiting out the
//!   TTL; the TTL matters only for holders on other hosts.
//! - **A lost lease stops the operation.** When renewal finds the lease taken by someone else,
//!   or finds it was not renewed for a whole TTL (the holder was paused; the lease may have been
//!   taken and released meanwhile, so it is not taken back), the lease's `lost` token fires; the deploy saga checks it
//!   between steps and its store writes are fenced ([`Store::put_fenced`]), so a holder that was
//!   paused past its lease can never commit over the new holder's work.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Engine;
use crate::backend::{Fence, Store};
use crate::error::{Error, Result};

/// A held lease, renewed in the background until released or dropped. Dropping it releases it
/// in the background; a process that dies simply stops renewing, and the lease expires (or is
/// taken over at once by a process on the same host, which can tell the holder is gone).
pub struct Lease {
    tenure: Arc<Tenure>,
    renew: Option<JoinHandle<()>>,
}

/// What a holder knows of its lease, shared by the [`Lease`], its renew task and the guard of
/// the operation done under it.
pub(crate) struct Tenure {
    store: Arc<dyn Store>,
    key: String,
    holder: String,
    ttl: Duration,
    lost: CancellationToken,
    /// Until when the lease is surely this holder's: the start of its last successful take or
    /// renewal, plus the TTL.
    until: std::sync::Mutex<Instant>,
}

impl Tenure {
    /// Renew the lease now, within `limit`. [`Error::LeaseLost`] (and the `lost` token fires)
    /// when another holder has it, or when it lapsed since the last renewal: it may have been
    /// taken and released meanwhile (a holder paused past its lease, SIGSTOP), so taking a free
    /// lease back would let a stale holder go on over the other's work.
    pub(crate) async fn renew(&self, limit: Duration) -> Result<()> {
        let start = Instant::now();
        if self.lost.is_cancelled() || start >= self.until() {
            return Err(self.lose());
        }
        let r = tokio::time::timeout(
            limit,
            self.store.try_lock(&self.key, &self.holder, self.ttl),
        )
        .await;
        match r {
            Ok(Ok(true)) => {
                *self.until.lock().unwrap_or_else(|e| e.into_inner()) = later(start, self.ttl);
                Ok(())
            }
            Ok(Ok(false)) => Err(self.lose()),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Timeout {
                what: format!("renewing the lease {:?}", self.key),
                after: limit,
            }),
        }
    }

    /// [`Error::LeaseLost`] (and the `lost` token fires) if the lease is known lost or lapsed
    /// (not renewed for a whole TTL): a paused holder sees that on its first step after it
    /// resumes, before its renew task has run.
    pub(crate) fn check(&self) -> Result<()> {
        if self.lost.is_cancelled() || self.lapsed() {
            return Err(self.lose());
        }
        Ok(())
    }

    fn until(&self) -> Instant {
        *self.until.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the lease lapsed: not renewed for a whole TTL.
    fn lapsed(&self) -> bool {
        Instant::now() >= self.until()
    }

    fn lose(&self) -> Error {
        self.lost.cancel();
        Error::LeaseLost {
            key: self.key.clone(),
        }
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("key", &self.tenure.key)
            .field("holder", &self.tenure.holder)
            .field("lost", &self.tenure.lost.is_cancelled())
            .finish_non_exhaustive()
    }
}

impl Lease {
    /// Release the lease now.
    pub async fn release(mut self) {
        if let Some(h) = self.renew.take() {
            h.abort();
        }
        let t = &self.tenure;
        if let Err(e) = t.store.unlock(&t.key, &t.holder).await {
            tracing::warn!(key = %t.key, error = %e, "could not release a lease; it expires by itself");
        }
    }

    /// The lease key.
    pub fn key(&self) -> &str {
        &self.tenure.key
    }

    /// Whether the lease was lost (taken by another holder, or not renewed for a whole TTL).
    /// Work done under it must stop.
    pub fn is_lost(&self) -> bool {
        self.tenure.lost.is_cancelled()
    }

    /// A token that is cancelled when the lease is lost.
    pub fn lost_token(&self) -> CancellationToken {
        self.tenure.lost.clone()
    }

    /// The fence for writes made under this lease.
    pub fn fence(&self) -> Fence {
        Fence {
            key: self.tenure.key.clone(),
            holder: self.tenure.holder.clone(),
        }
    }

    /// The holder's view of the lease, for a guard to renew it on the spot.
    pub(crate) fn tenure(&self) -> Arc<Tenure> {
        self.tenure.clone()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(h) = self.renew.take() {
            h.abort();
            // Not released explicitly (an early return): release in the background.
            let t = self.tenure.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = t.store.unlock(&t.key, &t.holder).await;
                });
            }
        }
    }
}

/// `at + ttl`, or a far future for absurd TTLs (`Duration::MAX`).
fn later(at: Instant, ttl: Duration) -> Instant {
    at.checked_add(ttl)
        .unwrap_or_else(|| at + Duration::from_secs(100 * 365 * 24 * 3600))
}

/// The lease key of a stage.
pub(crate) fn stage_key(project: &str, stage: &str) -> String {
    format!("stage/{project}/{stage}")
}

/// Who holds a lease: `proc:<host>:<boot id>:<pid>:<start time>/<engine>/<acquisition>`, so a
/// process on the same host can tell whether the holder still exists. On systems without
/// `/proc` the process part is `host:<host>:<pid>`, and only the TTL frees a dead holder's lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Holder {
    host: String,
    boot: Option<String>,
    pid: u32,
    start: Option<String>,
}

impl Holder {
    /// This process.
    pub(crate) fn this_process() -> Self {
        let pid = std::process::id();
        Self {
            host: hostname(),
            boot: read_trimmed("/proc/sys/kernel/random/boot_id"),
            pid,
            start: process_start(pid),
        }
    }

    /// The process part of a holder string.
    pub(crate) fn encode(&self) -> String {
        match (&self.boot, &self.start) {
            (Some(boot), Some(start)) => {
                format!("proc:{}:{boot}:{}:{start}", self.host, self.pid)
            }
            _ => format!("host:{}:{}", self.host, self.pid),
        }
    }

    /// Parse the process part of a holder string (`None` for holders that name no process).
    pub(crate) fn decode(holder: &str) -> Option<Self> {
        let process = holder.split('/').next()?;
        let mut parts = process.split(':');
        match parts.next()? {
            "proc" => {
                let host = parts.next()?.to_owned();
                let boot = parts.next()?.to_owned();
                let pid = parts.next()?.parse().ok()?;
                let start = parts.next()?.to_owned();
                Some(Self {
                    host,
                    boot: Some(boot),
                    pid,
                    start: Some(start),
                })
            }
            _ => None,
        }
    }

    /// Whether this holder is a process of this host that no longer exists. `false` when it
    /// cannot be told (another host, no `/proc`): then only the TTL frees its lease.
    pub(crate) fn is_dead_here(&self) -> bool {
        let me = Self::this_process();
        let (Some(my_boot), Some(boot)) = (&me.boot, &self.boot) else {
            return false;
        };
        if self.host != me.host {
            return false;
        }
        if boot != my_boot {
            // The same host, booted since: every process of the old boot is gone.
            return true;
        }
        match process_start(self.pid) {
            None => true,
            // A pid reused by another process since.
            Some(start) => Some(start) != self.start,
        }
    }
}

fn hostname() -> String {
    read_trimmed("/proc/sys/kernel/hostname")
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "host".into())
        .replace([':', '/'], "_")
}

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

/// A process's start time (clock ticks since boot, field 22 of `/proc/<pid>/stat`): with the
/// pid, it names one process for the life of the boot.
fn process_start(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19).map(str::to_owned)
}

impl Engine {
    /// Take the stage's lease, waiting up to `lock_wait` for another holder.
    pub(crate) async fn lock_stage(&self, project: &str, stage: &str) -> Result<Lease> {
        self.lock_stage_with(project, stage, None).await
    }

    /// [`lock_stage`](Self::lock_stage), given up with [`Error::Interrupted`] as soon as
    /// `cancel` is cancelled while it waits (a signal during a wait for another deploy).
    pub(crate) async fn lock_stage_with(
        &self,
        project: &str,
        stage: &str,
        cancel: Option<&CancellationToken>,
    ) -> Result<Lease> {
        let wait = self.inner.settings.lock_wait;
        self.lease_with(&stage_key(project, stage), wait, cancel)
            .await?
            .ok_or_else(|| Error::Timeout {
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

    /// Whether the holder of lease `key` (if any) is alive, as far as this host can tell:
    /// `false` when the lease is free or its holder is a process of this host that is gone.
    pub(crate) async fn lease_is_live(&self, key: &str) -> Result<bool> {
        let holder = super::timed(
            || "lease lookup".into(),
            self.inner.settings.timeouts.record,
            self.inner.store.lease_holder(key),
        )
        .await?;
        Ok(holder.is_some_and(|h| !Holder::decode(&h).is_some_and(|p| p.is_dead_here())))
    }

    /// Take the lease `key` in the store, waiting up to `wait` for another holder (in this
    /// process or another); `None` if it stayed busy. A lease held by a process of this host
    /// that no longer exists (killed with `kill -9`, say) is taken over at once. The lease is
    /// renewed in the background (every third of the engine's `lock_ttl`) until it is released
    /// or dropped; if renewal finds it taken, or finds it was not renewed for a whole TTL (the
    /// process was paused, say), [`Lease::is_lost`] turns true and stays true.
    ///
    /// Deploys take `stage/<project>/<stage>`; embedders may use other keys for their own
    /// cross-process exclusion (the registry watcher takes `watch/<repository>`).
    pub async fn lease(&self, key: &str, wait: Duration) -> Result<Option<Lease>> {
        self.lease_with(key, wait, None).await
    }

    /// [`lease`](Self::lease), given up between attempts (never with a store call in flight)
    /// when `cancel` is cancelled.
    pub(crate) async fn lease_with(
        &self,
        key: &str,
        wait: Duration,
        cancel: Option<&CancellationToken>,
    ) -> Result<Option<Lease>> {
        let s = &self.inner.settings;
        let limit = s.timeouts.record;
        let store = self.inner.store.clone();
        let key = key.to_owned();
        // A holder per acquisition: two operations in one process exclude each other too.
        let holder = format!("{}/{}", self.inner.holder, crate::model::new_id());
        let deadline = Instant::now() + wait;
        let mut delay = Duration::from_millis(25);
        let taken_at = loop {
            let start = Instant::now();
            let taken = super::timed(
                || format!("lease {key}"),
                limit,
                store.try_lock(&key, &holder, s.lock_ttl),
            )
            .await?;
            if taken {
                break start;
            }
            let current =
                super::timed(|| format!("lease {key}"), limit, store.lease_holder(&key)).await?;
            if let Some(dead) =
                current.filter(|h| Holder::decode(h).is_some_and(|p| p.is_dead_here()))
            {
                let took = super::timed(
                    || format!("lease {key}"),
                    limit,
                    store.take_over_lock(&key, &dead, &holder, s.lock_ttl),
                )
                .await?;
                if took {
                    tracing::warn!(%key, previous = %dead, "took over a lease whose holder process is gone");
                    break start;
                }
                continue;
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            tracing::debug!(%key, "lease is busy; waiting");
            match cancel {
                Some(c) => tokio::select! {
                    () = c.cancelled() => {
                        return Err(Error::Interrupted {
                            reason: format!("cancelled while waiting for {key}, held by another operation; nothing was done"),
                        });
                    }
                    () = tokio::time::sleep(delay) => {}
                },
                None => tokio::time::sleep(delay).await,
            }
            delay = (delay * 2).min(Duration::from_millis(500));
        };
        let tenure = Arc::new(Tenure {
            store,
            key,
            holder,
            ttl: s.lock_ttl,
            lost: CancellationToken::new(),
            until: std::sync::Mutex::new(later(taken_at, s.lock_ttl)),
        });
        let renew = {
            let t = tenure.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(t.ttl / 3).await;
                    match t.renew(t.ttl / 3).await {
                        Ok(()) => {}
                        Err(Error::LeaseLost { .. }) => {
                            tracing::error!(key = %t.key, "lost a lease (taken by another holder, or not renewed for a whole ttl); stopping the operation");
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(key = %t.key, error = %e, "could not renew a lease");
                            if t.lapsed() {
                                tracing::error!(key = %t.key, "could not renew a lease for a whole ttl; stopping the operation");
                                t.lose();
                                return;
                            }
                        }
                    }
                }
            })
        };
        Ok(Some(Lease {
            tenure,
            renew: Some(renew),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_round_trips() {
        let me = Holder::this_process();
        let holder = format!("{}/engine/acq", me.encode());
        let back = Holder::decode(&holder).expect("decodes");
        assert_eq!(back, me);
        assert!(!back.is_dead_here(), "this process is alive");
    }

    #[test]
    fn a_process_that_exited_is_dead_and_others_cannot_be_told() {
        let mut child = std::process::Command::new("true").spawn().expect("spawn");
        let pid = child.id();
        child.wait().expect("wait");
        let me = Holder::this_process();
        let gone = Holder { pid, ..me.clone() };
        assert!(gone.is_dead_here(), "{gone:?}");
        // Our own pid with another start time: the pid was reused, the holder is gone.
        let reused = Holder {
            start: Some("1".into()),
            ..me.clone()
        };
        assert!(reused.is_dead_here());
        // Another host, or an old boot of another host: cannot tell.
        let elsewhere = Holder {
            host: "elsewhere".into(),
            pid,
            ..me.clone()
        };
        assert!(!elsewhere.is_dead_here());
        // No process part at all (an embedder's holder): cannot tell.
        assert!(Holder::decode("someone-else").is_none());
    }
}
