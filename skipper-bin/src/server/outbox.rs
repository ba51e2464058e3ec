//! The notification outbox: the engine's notifier under `skipper serve`. `notify` only writes
//! the event to the `outbox` table of `server.db` (fast and durable: a restart loses no event,
//! and a slow receiver never delays a deploy); a dispatcher delivers each row to its target,
//! retrying with exponential backoff (1 s doubling up to 5 min) for up to 24 h.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::params;
use skipper_core::config::NotificationTarget;
use skipper_core::notify::WebhookNotifier;
use skipper_core::{Event, Notifier};
use tokio_util::sync::CancellationToken;

/// How long a delivery is retried.
const GIVE_UP: Duration = Duration::from_secs(24 * 60 * 60);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// The outbox and its targets.
pub(crate) struct Outbox {
    conn: Mutex<rusqlite::Connection>,
    targets: Vec<(NotificationTarget, Arc<dyn Notifier>)>,
    wake: tokio::sync::Notify,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Outbox {
    /// The outbox in `dir/server.db`, delivering to `targets`.
    pub(crate) fn open(dir: &Path, targets: &[NotificationTarget]) -> anyhow::Result<Arc<Self>> {
        std::fs::create_dir_all(dir)?;
        let conn = rusqlite::Connection::open(dir.join("server.db"))?;
        Self::with(conn, targets)
    }

    #[cfg(test)]
    pub(crate) fn in_memory(targets: Vec<(NotificationTarget, Arc<dyn Notifier>)>) -> Arc<Self> {
        let conn = rusqlite::Connection::open_in_memory().expect("in-memory SQLite");
        conn.execute_batch(SCHEMA).expect("schema");
        Arc::new(Self {
            conn: Mutex::new(conn),
            targets,
            wake: tokio::sync::Notify::new(),
        })
    }

    fn with(
        conn: rusqlite::Connection,
        targets: &[NotificationTarget],
    ) -> anyhow::Result<Arc<Self>> {
        conn.execute_batch(SCHEMA)?;
        let mut list: Vec<(NotificationTarget, Arc<dyn Notifier>)> = Vec::new();
        for t in targets {
            list.push((t.clone(), Arc::new(WebhookNotifier::for_target(t)?)));
        }
        Ok(Arc::new(Self {
            conn: Mutex::new(conn),
            targets: list,
            wake: tokio::sync::Notify::new(),
        }))
    }

    /// Rows waiting for delivery.
    #[cfg(test)]
    pub(crate) fn pending(&self) -> usize {
        self.conn
            .lock()
            .ok()
            .and_then(|c| {
                c.query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get::<_, i64>(0))
                    .ok()
            })
            .unwrap_or(0) as usize
    }

    /// Deliver what is due; returns how many were delivered. One pass: the next activation is
    /// the retry.
    pub(crate) async fn deliver_due(&self) -> usize {
        let due: Vec<(i64, usize, String, i64, i64)> = match self.conn.lock() {
            Ok(c) => {
                let mut stmt = match c.prepare(
                    "SELECT id, target, event, attempts, created_ms FROM outbox WHERE next_ms <= ?1 ORDER BY id LIMIT 100",
                ) {
                    Ok(s) => s,
                    Err(_) => return 0,
                };
                stmt.query_map(params![now_ms()], |r| {
                    Ok((
                        r.get(0)?,
                        r.get::<_, i64>(1)? as usize,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                    ))
                })
                .map(|rows| rows.flatten().collect())
                .unwrap_or_default()
            }
            Err(_) => return 0,
        };
        let mut delivered = 0;
        for (id, target, event, attempts, created) in due {
            let Some((_, notifier)) = self.targets.get(target) else {
                self.delete(id);
                continue;
            };
            let Ok(e) = serde_json::from_str::<Event>(&event) else {
                self.delete(id);
                continue;
            };
            match notifier.notify(&e).await {
                Ok(()) => {
                    self.delete(id);
                    delivered += 1;
                }
                Err(err) => {
                    let age = Duration::from_millis((now_ms() - created).max(0) as u64);
                    if age > GIVE_UP {
                        tracing::error!(target, kind = ?e.kind, error = %err.chain(), "notification given up after 24 h");
                        self.delete(id);
                        continue;
                    }
                    let backoff = Duration::from_secs(1 << attempts.clamp(0, 9)).min(MAX_BACKOFF);
                    tracing::warn!(target, kind = ?e.kind, attempt = attempts + 1, retry_in = ?backoff, error = %err.chain(), "notification not delivered; retrying");
                    if let Ok(c) = self.conn.lock() {
                        let _ = c.execute(
                            "UPDATE outbox SET attempts = attempts + 1, next_ms = ?2 WHERE id = ?1",
                            params![id, now_ms() + backoff.as_millis() as i64],
                        );
                    }
                }
            }
        }
        delivered
    }

    fn delete(&self, id: i64) {
        if let Ok(c) = self.conn.lock() {
            let _ = c.execute("DELETE FROM outbox WHERE id = ?1", params![id]);
        }
    }

    /// The dispatcher: on a timer (1 s) and whenever an event is written.
    pub(crate) async fn run(self: Arc<Self>, stop: CancellationToken) {
        loop {
            self.deliver_due().await;
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}

const SCHEMA: &str = "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, target INTEGER NOT NULL, event TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, next_ms INTEGER NOT NULL, created_ms INTEGER NOT NULL);";

#[async_trait]
impl Notifier for Outbox {
    /// Write the event for each target that wants it; never waits for a receiver.
    async fn notify(&self, event: &Event) -> skipper_core::Result<()> {
        let json = serde_json::to_string(event).map_err(|e| {
            skipper_core::Error::backend("outbox", skipper_core::ErrorKind::Internal, e.to_string())
        })?;
        {
            let c = self.conn.lock().map_err(|_| {
                skipper_core::Error::backend(
                    "outbox",
                    skipper_core::ErrorKind::Internal,
                    "the outbox lock is poisoned",
                )
            })?;
            for (i, (t, _)) in self.targets.iter().enumerate() {
                if t.wants(event) {
                    c.execute(
                        "INSERT INTO outbox (target, event, next_ms, created_ms) VALUES (?1, ?2, ?3, ?3)",
                        params![i as i64, json, now_ms()],
                    )
                    .map_err(|e| {
                        skipper_core::Error::backend("outbox", skipper_core::ErrorKind::Transient, e.to_string())
                    })?;
                }
            }
        }
        self.wake.notify_one();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skipper_core::testing::RecordingNotifier;
    use skipper_core::{ErrorKind, EventKind};

    struct Failing(std::sync::atomic::AtomicUsize);

    #[async_trait]
    impl Notifier for Failing {
        async fn notify(&self, _: &Event) -> skipper_core::Result<()> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Err(skipper_core::Error::backend(
                "test",
                ErrorKind::Transient,
                "down",
            ))
        }
    }

    fn target(events: Vec<EventKind>) -> NotificationTarget {
        NotificationTarget {
            url: skipper_core::config::SecretUrl::new("http://127.0.0.1:9/x".parse().unwrap()),
            format: Default::default(),
            secret: None,
            events,
            projects: vec![],
        }
    }

    fn event(kind: EventKind) -> Event {
        Event {
            kind,
            project: "web".into(),
            stage: "dev".into(),
            image: None,
            deployment_id: None,
            instance_id: None,
            url: None,
            message: "m".into(),
            at: chrono::Utc::now(),
            correlation_id: None,
        }
    }

    #[tokio::test]
    async fn events_wait_in_the_outbox_until_delivered_and_a_failure_is_retried_later() {
        let ok = Arc::new(RecordingNotifier::new());
        let down = Arc::new(Failing(Default::default()));
        let outbox = Outbox::in_memory(vec![
            (target(vec![EventKind::DeployFailed]), ok.clone()),
            (target(vec![]), down.clone()),
        ]);
        outbox
            .notify(&event(EventKind::DeploySucceeded))
            .await
            .unwrap();
        outbox
            .notify(&event(EventKind::DeployFailed))
            .await
            .unwrap();
        assert_eq!(
            outbox.pending(),
            3,
            "the first target takes only deploy_failed"
        );
        assert_eq!(outbox.deliver_due().await, 1);
        assert_eq!(ok.events().len(), 1);
        assert_eq!(ok.events()[0].kind, EventKind::DeployFailed);
        assert_eq!(outbox.pending(), 2, "the failed ones stay");
        assert_eq!(down.0.load(std::sync::atomic::Ordering::SeqCst), 2);
        // Backed off: not due again at once.
        assert_eq!(outbox.deliver_due().await, 0);
        assert_eq!(down.0.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn the_outbox_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let t = target(vec![]);
        let first = Outbox::open(dir.path(), std::slice::from_ref(&t)).unwrap();
        first
            .notify(&event(EventKind::DeploySucceeded))
            .await
            .unwrap();
        drop(first);
        let again = Outbox::open(dir.path(), &[t]).unwrap();
        assert_eq!(again.pending(), 1, "the event waits for the next start");
    }
}
