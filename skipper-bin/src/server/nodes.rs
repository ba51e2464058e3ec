//! Nodes (hosts running `skippy`) and their work orders, kept in `server.db`.
//!
//! A node's token is shown once, at registration or rotation; the server keeps only its
//! SHA-256, which is also the key both sides sign with ([`signing_key`]): the token itself is
//! never stored. A rotation keeps the old key valid until the agent signs with the new one, or
//! for [`OVERLAP`].
//!
//! Work orders: queued per node, handed out by priority then first in, first out, atomically
//! with a lease (`UPDATE … RETURNING` in one statement); an order whose lease lapses is handed
//! out again; past its deadline it is `expired`.
//!
//! At fleet scale every agent request touches its node: the signing keys are kept in memory
//! (read from `server.db` once; a rotation or revocation, which only this server makes, drops
//! them), and heartbeats are recorded in memory and written to `server.db` in one transaction
//! per [`Nodes::flush_heartbeats`] (every heartbeat interval), so `server.db` is never more than
//! an interval behind and a thousand heartbeats cost one commit, not a thousand.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{OptionalExtension, params};
use serde::Serialize;
use serde_json::Value;

/// How long an old token stays valid after a rotation the agent has not picked up.
pub(crate) const OVERLAP: Duration = Duration::from_secs(600);

/// A node as the API shows it (never its token).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct Node {
    pub(crate) id: String,
    pub(crate) role: String,
    pub(crate) region: Option<String>,
    pub(crate) status: &'static str,
    pub(crate) last_heartbeat: Option<String>,
    pub(crate) created_at: String,
}

/// A work order.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct WorkOrder {
    pub(crate) id: String,
    pub(crate) node: String,
    pub(crate) kind: String,
    pub(crate) payload: Value,
    pub(crate) priority: String,
    pub(crate) status: String,
    pub(crate) attempts: i64,
    pub(crate) created_at: String,
    pub(crate) deadline: String,
    pub(crate) result: Option<Value>,
}

/// Priorities, highest first.
pub(crate) const PRIORITIES: [&str; 4] = ["critical", "high", "normal", "low"];

fn rank(p: &str) -> Option<i64> {
    PRIORITIES
        .iter()
        .position(|x| *x == p)
        .map(|i| 3 - i as i64)
}

/// Nodes and orders.
pub(crate) struct Nodes {
    conn: Mutex<rusqlite::Connection>,
    /// Woken when an order is queued for a node (the long-poll answers at once).
    wake: Mutex<HashMap<String, Arc<tokio::sync::Notify>>>,
    /// Woken when an order ends (a forwarded runtime call waits on it).
    done: Mutex<HashMap<String, Arc<tokio::sync::Notify>>>,
    /// How often agents are told to send a heartbeat.
    pub(crate) heartbeat: Duration,
    /// Each node's keys as last read from `server.db` (dropped when this server changes them).
    keys: Mutex<HashMap<String, Keys>>,
    /// Heartbeats not yet written to `server.db`: node → when.
    beats: Mutex<HashMap<String, i64>>,
    /// The last heartbeat this server had from each node, written or not.
    seen: Mutex<HashMap<String, i64>>,
}

/// A node's signing keys and rotation state, as `server.db` has them.
#[derive(Clone)]
struct Keys {
    current: String,
    /// A rotated key and until when it is valid.
    old: Option<(String, i64)>,
    pending: Option<String>,
}

/// The HMAC key of a token: the hex SHA-256 of the token (what the server keeps).
pub(crate) fn signing_key(token: &str) -> String {
    hex::encode(super::auth::hash(token))
}

pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

pub(crate) fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

const SCHEMA: &str = "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;
CREATE TABLE IF NOT EXISTS nodes (
    id TEXT PRIMARY KEY, role TEXT NOT NULL, region TEXT, token TEXT NOT NULL,
    old_token TEXT, old_until_ms INTEGER, created_ms INTEGER NOT NULL, heartbeat_ms INTEGER,
    pending_token TEXT);
CREATE TABLE IF NOT EXISTS work_orders (
    id TEXT PRIMARY KEY, node TEXT NOT NULL, kind TEXT NOT NULL, payload TEXT NOT NULL,
    rank INTEGER NOT NULL, seq INTEGER NOT NULL, status TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    lease_until_ms INTEGER, deadline_ms INTEGER NOT NULL, created_ms INTEGER NOT NULL, result TEXT);
CREATE INDEX IF NOT EXISTS work_orders_next ON work_orders (node, status, rank DESC, seq);
CREATE TABLE IF NOT EXISTS tenants (
    id TEXT PRIMARY KEY, spec TEXT NOT NULL, generation INTEGER NOT NULL,
    last_applied TEXT, updated_ms INTEGER NOT NULL);";

/// A node id or token refused.
#[derive(Debug)]
pub(crate) enum NodeError {
    Exists,
    NotFound,
    Invalid(String),
    Db(String),
}

impl From<rusqlite::Error> for NodeError {
    fn from(e: rusqlite::Error) -> Self {
        NodeError::Db(e.to_string())
    }
}

impl From<NodeError> for skipper_core::Error {
    fn from(e: NodeError) -> Self {
        use skipper_core::ErrorKind;
        match e {
            NodeError::Exists => skipper_core::Error::Conflict {
                what: "a node with this id exists".into(),
            },
            NodeError::NotFound => skipper_core::Error::not_found("a node with that id"),
            NodeError::Invalid(m) => skipper_core::Error::backend("nodes", ErrorKind::Invalid, m),
            NodeError::Db(m) => skipper_core::Error::backend("nodes", ErrorKind::Internal, m),
        }
    }
}

impl From<NodeError> for super::error::ApiError {
    fn from(e: NodeError) -> Self {
        use super::error::ApiError;
        match e {
            // Discloses nothing about the existing node.
            NodeError::Exists => ApiError::conflict("a node with this id exists"),
            NodeError::NotFound => ApiError::not_found("no such node or work order"),
            NodeError::Invalid(m) => ApiError::bad_request(m),
            NodeError::Db(m) => ApiError::new(
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("server.db: {m}"),
            ),
        }
    }
}

type R<T> = Result<T, NodeError>;

/// The heartbeat the server asks of its agents; a node is offline after three missed.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(5);

fn valid_id(what: &str, id: &str) -> R<()> {
    let ok = !id.is_empty()
        && id.len() <= 63
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && id.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(NodeError::Invalid(format!(
            "{what}: {id:?} must be 1-63 of a-z, 0-9, - and _, starting with a letter or digit"
        )))
    }
}

impl Nodes {
    /// The nodes in `dir/server.db`.
    pub(crate) fn open(dir: &Path, heartbeat: Duration) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)?;
        Self::with(
            rusqlite::Connection::open(dir.join("server.db"))?,
            heartbeat,
        )
    }

    #[cfg(test)]
    pub(crate) fn in_memory(heartbeat: Duration) -> Self {
        Self::with(
            rusqlite::Connection::open_in_memory().expect("SQLite"),
            heartbeat,
        )
        .expect("schema")
    }

    fn with(conn: rusqlite::Connection, heartbeat: Duration) -> anyhow::Result<Self> {
        conn.execute_batch(SCHEMA)?;
        Ok(Self {
            conn: Mutex::new(conn),
            wake: Mutex::new(HashMap::new()),
            done: Mutex::new(HashMap::new()),
            heartbeat,
            keys: Mutex::new(HashMap::new()),
            beats: Mutex::new(HashMap::new()),
            seen: Mutex::new(HashMap::new()),
        })
    }

    pub(crate) fn db(&self) -> std::sync::MutexGuard<'_, rusqlite::Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Offline after three missed heartbeats.
    fn status(&self, heartbeat_ms: Option<i64>) -> &'static str {
        match heartbeat_ms {
            Some(h) if now_ms() - h <= 3 * self.heartbeat.as_millis() as i64 => "online",
            _ => "offline",
        }
    }

    /// Register a node; its token (given, or made) is returned this once.
    pub(crate) fn register(
        &self,
        id: &str,
        role: &str,
        region: Option<&str>,
        token: Option<String>,
    ) -> R<(Node, String)> {
        valid_id("id", id)?;
        valid_id("role", role)?;
        let token = token.unwrap_or_else(super::auth::new_token);
        if token.len() < 16 {
            return Err(NodeError::Invalid("token: at least 16 characters".into()));
        }
        let c = self.db();
        let n = c.execute(
            "INSERT OR IGNORE INTO nodes (id, role, region, token, created_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![id, role, region, signing_key(&token), now_ms()],
        )?;
        if n == 0 {
            return Err(NodeError::Exists);
        }
        drop(c);
        Ok((self.get(id)?, token))
    }

    pub(crate) fn get(&self, id: &str) -> R<Node> {
        let c = self.db();
        type Row = (String, String, Option<String>, i64, Option<i64>);
        let row: Option<Row> = c
            .query_row(
                "SELECT id, role, region, created_ms, heartbeat_ms FROM nodes WHERE id = ?1",
                params![id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()?;
        drop(c);
        let (id, role, region, created, hb) = row.ok_or(NodeError::NotFound)?;
        let hb = self.latest(&id, hb);
        Ok(Node {
            id,
            role,
            region,
            status: self.status(hb),
            last_heartbeat: hb.map(rfc3339),
            created_at: rfc3339(created),
        })
    }

    /// The newer of a stored heartbeat and the last one this server had.
    fn latest(&self, id: &str, stored: Option<i64>) -> Option<i64> {
        let seen = self
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .copied();
        stored.max(seen)
    }

    /// Every node, in one read.
    pub(crate) fn list(&self) -> R<Vec<Node>> {
        type Row = (String, String, Option<String>, i64, Option<i64>);
        let (rows, seen): (Vec<Row>, HashMap<String, i64>) = {
            let c = self.db();
            let mut s = c.prepare(
                "SELECT id, role, region, created_ms, heartbeat_ms FROM nodes ORDER BY id",
            )?;
            let rows = s
                .query_map([], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })?
                .collect::<Result<_, _>>()?;
            (
                rows,
                self.seen.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            )
        };
        Ok(rows
            .into_iter()
            .map(|(id, role, region, created, hb)| {
                let hb = hb.max(seen.get(&id).copied());
                Node {
                    status: self.status(hb),
                    last_heartbeat: hb.map(rfc3339),
                    created_at: rfc3339(created),
                    id,
                    role,
                    region,
                }
            })
            .collect())
    }

    fn forget(&self, id: &str) {
        self.keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// The node's keys: from memory, else from `server.db`.
    fn keys_of(&self, id: &str) -> R<Keys> {
        if let Some(k) = self.keys.lock().unwrap_or_else(|e| e.into_inner()).get(id) {
            return Ok(k.clone());
        }
        type Row = (String, Option<String>, Option<i64>, Option<String>);
        let row: Option<Row> = self
            .db()
            .query_row(
                "SELECT token, old_token, old_until_ms, pending_token FROM nodes WHERE id = ?1",
                params![id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?;
        let (current, old, until, pending) = row.ok_or(NodeError::NotFound)?;
        let k = Keys {
            current,
            old: old.zip(until),
            pending,
        };
        self.keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_owned(), k.clone());
        Ok(k)
    }

    /// Revoke at once: the node and its queued orders go.
    pub(crate) fn delete(&self, id: &str) -> R<()> {
        let c = self.db();
        self.forget(id);
        for m in [&self.beats, &self.seen] {
            m.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
        }
        if c.execute("DELETE FROM nodes WHERE id = ?1", params![id])? == 0 {
            return Err(NodeError::NotFound);
        }
        c.execute(
            "UPDATE work_orders SET status = 'cancelled' WHERE node = ?1 AND status IN ('queued', 'leased')",
            params![id],
        )?;
        Ok(())
    }

    /// A new token; the old one stays valid until the agent uses the new one or for [`OVERLAP`].
    /// The new token waits (in `pending_token`) until the agent has fetched it over its signed
    /// channel and signed with it; then only its hash remains.
    pub(crate) fn rotate(&self, id: &str) -> R<String> {
        let token = super::auth::new_token();
        let c = self.db();
        let n = c.execute(
            "UPDATE nodes SET old_token = token, old_until_ms = ?2, token = ?3, pending_token = ?4 WHERE id = ?1",
            params![id, now_ms() + OVERLAP.as_millis() as i64, signing_key(&token), token],
        )?;
        self.forget(id);
        if n == 0 {
            return Err(NodeError::NotFound);
        }
        Ok(token)
    }

    /// The keys a node may sign with now: the current one, then a rotated one still valid.
    pub(crate) fn keys(&self, id: &str) -> R<Vec<String>> {
        let k = self.keys_of(id)?;
        let mut out = vec![k.current];
        if let Some((old, until)) = k.old
            && until > now_ms()
        {
            out.push(old);
        }
        Ok(out)
    }

    /// The agent signed with its current token: a rotated old one is retired now (nothing to
    /// write when there is none).
    pub(crate) fn confirm_current(&self, id: &str) {
        match self.keys_of(id) {
            Ok(k) if k.old.is_none() && k.pending.is_none() => return,
            Err(_) => return,
            Ok(_) => {}
        }
        let c = self.db();
        let _ = c.execute(
            "UPDATE nodes SET old_token = NULL, old_until_ms = NULL, pending_token = NULL WHERE id = ?1",
            params![id],
        );
        self.forget(id);
    }

    /// A rotated token the agent has not switched to yet.
    pub(crate) fn pending_token(&self, id: &str) -> Option<String> {
        self.keys_of(id).ok().and_then(|k| k.pending)
    }

    /// Record a heartbeat (in memory; [`flush_heartbeats`](Self::flush_heartbeats) writes it);
    /// whether the node was offline before (it is online now). A node that comes online is
    /// written at once.
    pub(crate) fn heartbeat(&self, id: &str) -> R<bool> {
        let now = now_ms();
        let last = self
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .copied();
        let was_online = match last {
            // A recent heartbeat this server had says it all.
            Some(last) if self.status(Some(last)) == "online" => true,
            _ => self.get(id)?.status == "online",
        };
        if !was_online {
            // Coming online is written at once.
            let n = self.db().execute(
                "UPDATE nodes SET heartbeat_ms = ?2 WHERE id = ?1",
                params![id, now],
            )?;
            if n == 0 {
                return Err(NodeError::NotFound);
            }
        } else {
            self.beats
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(id.to_owned(), now);
        }
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_owned(), now);
        Ok(!was_online)
    }

    /// Write the heartbeats kept in memory to `server.db`, in one transaction; how many.
    pub(crate) fn flush_heartbeats(&self) -> R<usize> {
        let beats = std::mem::take(&mut *self.beats.lock().unwrap_or_else(|e| e.into_inner()));
        if beats.is_empty() {
            return Ok(0);
        }
        let mut c = self.db();
        let r = (|| {
            let tx = c.transaction()?;
            {
                let mut st = tx.prepare_cached(
                    "UPDATE nodes SET heartbeat_ms = MAX(COALESCE(heartbeat_ms, 0), ?2) WHERE id = ?1",
                )?;
                for (id, at) in &beats {
                    st.execute(params![id, at])?;
                }
            }
            tx.commit()
        })();
        if let Err(e) = r {
            // Kept for the next flush (a newer heartbeat meanwhile wins).
            drop(c);
            let mut now = self.beats.lock().unwrap_or_else(|e| e.into_inner());
            for (id, at) in beats {
                let e = now.entry(id).or_insert(at);
                *e = (*e).max(at);
            }
            return Err(e.into());
        }
        Ok(beats.len())
    }

    fn notify_for(&self, node: &str) -> Arc<tokio::sync::Notify> {
        self.wake
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(node.to_owned())
            .or_default()
            .clone()
    }

    /// Queue an order for a node.
    pub(crate) fn enqueue(
        &self,
        node: &str,
        kind: &str,
        payload: &Value,
        priority: &str,
        deadline: Duration,
    ) -> R<WorkOrder> {
        let rank = rank(priority).ok_or_else(|| {
            NodeError::Invalid(format!(
                "priority: {priority:?} is not low, normal, high or critical"
            ))
        })?;
        self.get(node)?;
        let id = uuid::Uuid::new_v4().simple().to_string()[..16].to_owned();
        let now = now_ms();
        {
            let c = self.db();
            let seq: i64 = c.query_row(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM work_orders",
                [],
                |r| r.get(0),
            )?;
            c.execute(
                "INSERT INTO work_orders (id, node, kind, payload, rank, seq, status, deadline_ms, created_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'queued', ?7, ?8)",
                params![id, node, kind, payload.to_string(), rank, seq, now + deadline.as_millis() as i64, now],
            )?;
        }
        self.notify_for(node).notify_waiters();
        self.order(&id)
    }

    pub(crate) fn order(&self, id: &str) -> R<WorkOrder> {
        let c = self.db();
        c.query_row(
            "SELECT id, node, kind, payload, rank, status, attempts, created_ms, deadline_ms, result FROM work_orders WHERE id = ?1",
            params![id],
            row_order,
        )
        .optional()?
        .ok_or(NodeError::NotFound)
    }

    pub(crate) fn orders(&self, node: Option<&str>, limit: usize) -> R<Vec<WorkOrder>> {
        let c = self.db();
        let mut s = c.prepare(
            "SELECT id, node, kind, payload, rank, status, attempts, created_ms, deadline_ms, result FROM work_orders
             WHERE (?1 IS NULL OR node = ?1) ORDER BY seq DESC LIMIT ?2",
        )?;
        let rows = s
            .query_map(params![node, limit as i64], row_order)?
            .collect::<Result<_, _>>()?;
        Ok(rows)
    }

    /// Mark orders past their deadline expired.
    pub(crate) fn expire(&self) -> usize {
        self.db()
            .execute(
                "UPDATE work_orders SET status = 'expired' WHERE status IN ('queued', 'leased') AND deadline_ms < ?1",
                params![now_ms()],
            )
            .unwrap_or(0)
    }

    /// Hand out the node's next order with a lease, atomically: one statement picks and
    /// leases it, so two pollers never get the same order.
    pub(crate) fn take(&self, node: &str, lease: Duration) -> R<Option<WorkOrder>> {
        self.expire();
        let now = now_ms();
        let c = self.db();
        let id: Option<String> = c
            .query_row(
                "UPDATE work_orders SET status = 'leased', lease_until_ms = ?2, attempts = attempts + 1
                 WHERE id = (SELECT id FROM work_orders WHERE node = ?1
                     AND (status = 'queued' OR (status = 'leased' AND lease_until_ms < ?3))
                     ORDER BY rank DESC, seq LIMIT 1)
                 RETURNING id",
                params![node, now + lease.as_millis() as i64, now],
                |r| r.get(0),
            )
            .optional()?;
        drop(c);
        id.map(|i| self.order(&i)).transpose()
    }

    /// Wait up to `wait` for an order for `node`.
    pub(crate) async fn next(
        &self,
        node: &str,
        lease: Duration,
        wait: Duration,
        stop: &tokio_util::sync::CancellationToken,
    ) -> R<Option<WorkOrder>> {
        let notify = self.notify_for(node);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = notify.notified();
            if let Some(o) = self.take(node, lease)? {
                return Ok(Some(o));
            }
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep_until(deadline) => return Ok(None),
                () = stop.cancelled() => return Ok(None),
            }
        }
    }

    #[cfg_attr(not(test), allow(dead_code, reason = "used by RemoteRuntime"))]
    fn done_notify(&self, id: &str) -> Arc<tokio::sync::Notify> {
        self.done
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(id.to_owned())
            .or_default()
            .clone()
    }

    fn ended(&self, id: &str) {
        let n = self
            .done
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
        if let Some(n) = n {
            n.notify_waiters();
        }
    }

    /// Wait up to `timeout` for an order to end; `None` if it has not.
    #[cfg_attr(not(test), allow(dead_code, reason = "used by RemoteRuntime"))]
    pub(crate) async fn wait_done(&self, id: &str, timeout: Duration) -> R<Option<WorkOrder>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let n = self.done_notify(id);
            let notified = n.notified();
            let o = self.order(id)?;
            if !matches!(o.status.as_str(), "queued" | "leased") {
                self.done
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(id);
                return Ok(Some(o));
            }
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep_until(deadline) => return Ok(None),
            }
        }
    }

    /// Renew an order's lease while the agent works on it.
    pub(crate) fn renew(&self, node: &str, id: &str, lease: Duration) -> R<()> {
        let n = self.db().execute(
            "UPDATE work_orders SET lease_until_ms = ?3 WHERE id = ?1 AND node = ?2 AND status = 'leased'",
            params![id, node, now_ms() + lease.as_millis() as i64],
        )?;
        if n == 0 {
            Err(NodeError::NotFound)
        } else {
            Ok(())
        }
    }

    /// The agent's answer. Only the node the order is for may answer, and only once (a repeat
    /// of the same answer is accepted and changes nothing).
    pub(crate) fn finish(&self, node: &str, id: &str, ok: bool, result: &Value) -> R<WorkOrder> {
        let status = if ok { "succeeded" } else { "failed" };
        let n = self.db().execute(
            "UPDATE work_orders SET status = ?3, result = ?4, lease_until_ms = NULL
             WHERE id = ?1 AND node = ?2 AND status IN ('queued', 'leased')",
            params![id, node, status, result.to_string()],
        )?;
        let o = self.order(id)?;
        if n == 0 && o.node != node {
            return Err(NodeError::NotFound);
        }
        self.ended(id);
        Ok(o)
    }

    pub(crate) fn cancel(&self, id: &str) -> R<WorkOrder> {
        self.db().execute(
            "UPDATE work_orders SET status = 'cancelled' WHERE id = ?1 AND status IN ('queued', 'leased')",
            params![id],
        )?;
        self.ended(id);
        self.order(id)
    }
}

/// The nodes whose status changed since `before` (which is updated): `(id, online)`. A node
/// seen for the first time is not a change.
pub(crate) fn transitions(
    before: &mut HashMap<String, &'static str>,
    now: &[Node],
) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    for n in now {
        if let Some(old) = before.insert(n.id.clone(), n.status)
            && old != n.status
        {
            out.push((n.id.clone(), n.status == "online"));
        }
    }
    // A set, not a scan of `now` per entry: at 10,000 nodes that was 10^8 comparisons per pass.
    let present: std::collections::HashSet<&str> = now.iter().map(|n| n.id.as_str()).collect();
    before.retain(|id, _| present.contains(id.as_str()));
    out
}

fn row_order(r: &rusqlite::Row<'_>) -> rusqlite::Result<WorkOrder> {
    let payload: String = r.get(3)?;
    let rank: i64 = r.get(4)?;
    let result: Option<String> = r.get(9)?;
    Ok(WorkOrder {
        id: r.get(0)?,
        node: r.get(1)?,
        kind: r.get(2)?,
        payload: serde_json::from_str(&payload).unwrap_or(Value::Null),
        priority: PRIORITIES[(3 - rank.clamp(0, 3)) as usize].to_owned(),
        status: r.get(5)?,
        attempts: r.get(6)?,
        created_at: rfc3339(r.get(7)?),
        deadline: rfc3339(r.get(8)?),
        result: result.and_then(|s| serde_json::from_str(&s).ok()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn registration_rotation_and_revocation() {
        let n = Nodes::in_memory(Duration::from_secs(5));
        let (node, token) = n
            .register("host-1", "worker", Some("se-sto-1"), None)
            .unwrap();
        assert_eq!(node.status, "offline");
        assert!(token.starts_with("skp_"));
        assert!(matches!(
            n.register("host-1", "worker", None, None),
            Err(NodeError::Exists)
        ));
        assert!(matches!(
            n.register("../x", "worker", None, None),
            Err(NodeError::Invalid(_))
        ));
        assert!(n.heartbeat("host-1").unwrap(), "it was offline");
        assert_eq!(n.get("host-1").unwrap().status, "online");
        let new = n.rotate("host-1").unwrap();
        assert_eq!(
            n.keys("host-1").unwrap(),
            vec![signing_key(&new), signing_key(&token)],
            "both, during the overlap"
        );
        let stored: String = n
            .db()
            .query_row("SELECT token FROM nodes", [], |r| r.get(0))
            .unwrap();
        assert_ne!(stored, new, "the token itself is never stored");
        n.confirm_current("host-1");
        assert_eq!(n.keys("host-1").unwrap(), vec![signing_key(&new)]);
        n.delete("host-1").unwrap();
        assert!(matches!(n.keys("host-1"), Err(NodeError::NotFound)));
    }

    #[test]
    fn heartbeats_are_written_in_one_batch_and_seen_before_they_are() {
        let n = Nodes::in_memory(Duration::from_secs(5));
        for id in ["a", "b"] {
            n.register(id, "worker", None, None).unwrap();
        }
        let stored = |id: &str| -> Option<i64> {
            n.db()
                .query_row("SELECT heartbeat_ms FROM nodes WHERE id = ?1", [id], |r| {
                    r.get(0)
                })
                .unwrap()
        };
        // Coming online is written at once (a restart, or the CLI, sees it).
        assert!(n.heartbeat("a").unwrap());
        assert!(stored("a").is_some(), "written");
        // (As if it came a second ago.)
        n.db()
            .execute("UPDATE nodes SET heartbeat_ms = heartbeat_ms - 1000", [])
            .unwrap();
        let first = stored("a").unwrap();
        // Then in memory: the API sees it now, server.db after the flush.
        assert!(!n.heartbeat("a").unwrap());
        assert!(n.heartbeat("b").unwrap());
        assert_eq!(stored("a"), Some(first), "not written yet");
        let later = n.get("a").unwrap().last_heartbeat;
        assert_ne!(later, Some(rfc3339(first)), "the newer one is shown");
        assert_eq!(
            n.list()
                .unwrap()
                .iter()
                .filter(|x| x.status == "online")
                .count(),
            2
        );
        assert_eq!(n.flush_heartbeats().unwrap(), 1);
        assert!(stored("a").unwrap() > first);
        assert_eq!(n.flush_heartbeats().unwrap(), 0, "nothing left");
        assert!(matches!(n.heartbeat("nope"), Err(NodeError::NotFound)));
        // A revoked node's heartbeat kept in memory goes with it.
        n.heartbeat("b").unwrap();
        n.delete("b").unwrap();
        assert_eq!(n.flush_heartbeats().unwrap(), 0);
        assert!(
            matches!(n.keys("b"), Err(NodeError::NotFound)),
            "its keys went too"
        );
        n.register("b", "worker", None, None).unwrap();
        assert_eq!(n.get("b").unwrap().status, "offline");
        assert!(
            n.list()
                .unwrap()
                .iter()
                .all(|x| x.id != "b" || x.status == "offline"),
            "a node registered again starts with no heartbeat"
        );
    }

    #[test]
    fn orders_go_by_priority_then_age_once_each_and_come_back_when_the_lease_lapses() {
        let n = Nodes::in_memory(Duration::from_secs(5));
        n.register("h", "worker", None, None).unwrap();
        let day = Duration::from_secs(86_400);
        let low = n
            .enqueue("h", "ping", &json!({"n": 1}), "low", day)
            .unwrap();
        let first = n
            .enqueue("h", "ping", &json!({"n": 2}), "normal", day)
            .unwrap();
        let second = n
            .enqueue("h", "ping", &json!({"n": 3}), "normal", day)
            .unwrap();
        let crit = n
            .enqueue("h", "ping", &json!({"n": 4}), "critical", day)
            .unwrap();
        assert!(n.enqueue("h", "ping", &json!({}), "urgent", day).is_err());
        let lease = Duration::from_secs(30);
        let order: Vec<String> = (0..4)
            .map(|_| n.take("h", lease).unwrap().unwrap().id)
            .collect();
        assert_eq!(order, vec![crit.id.clone(), first.id, second.id, low.id]);
        assert!(
            n.take("h", lease).unwrap().is_none(),
            "each handed out once"
        );
        // A lapsed lease: handed out again.
        n.db()
            .execute(
                "UPDATE work_orders SET lease_until_ms = 0 WHERE id = ?1",
                params![crit.id],
            )
            .unwrap();
        let again = n.take("h", lease).unwrap().unwrap();
        assert_eq!(again.id, crit.id);
        assert_eq!(again.attempts, 2);
        let done = n
            .finish("h", &crit.id, true, &json!({"pong": true}))
            .unwrap();
        assert_eq!(done.status, "succeeded");
        assert!(
            n.finish("other", &crit.id, true, &json!({})).is_err(),
            "only its node answers"
        );
        // Past its deadline: expired, never handed out.
        let late = n.enqueue("h", "ping", &json!({}), "high", day).unwrap();
        n.db()
            .execute(
                "UPDATE work_orders SET deadline_ms = 0 WHERE id = ?1",
                params![late.id],
            )
            .unwrap();
        assert!(n.take("h", lease).unwrap().is_none());
        assert_eq!(n.order(&late.id).unwrap().status, "expired");
    }

    #[test]
    fn status_changes_are_transitions_and_a_new_node_is_not_one() {
        let node = |id: &str, status: &'static str| Node {
            id: id.into(),
            role: "worker".into(),
            region: None,
            status,
            last_heartbeat: None,
            created_at: String::new(),
        };
        let mut seen = HashMap::new();
        assert!(transitions(&mut seen, &[node("a", "offline")]).is_empty());
        assert!(transitions(&mut seen, &[node("a", "offline")]).is_empty());
        assert_eq!(
            transitions(&mut seen, &[node("a", "online")]),
            vec![("a".into(), true)]
        );
        assert_eq!(
            transitions(&mut seen, &[node("a", "offline"), node("b", "online")]),
            vec![("a".into(), false)]
        );
        assert!(transitions(&mut seen, &[]).is_empty());
        assert!(seen.is_empty(), "a deleted node is forgotten");
    }

    #[tokio::test]
    async fn a_long_poll_answers_the_moment_an_order_is_queued() {
        let n = Arc::new(Nodes::in_memory(Duration::from_secs(5)));
        n.register("h", "worker", None, None).unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let waiter = {
            let n = n.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                n.next("h", Duration::from_secs(30), Duration::from_secs(60), &stop)
                    .await
            })
        };
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let o = n
            .enqueue("h", "ping", &json!({}), "normal", Duration::from_secs(60))
            .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(got.map(|g| g.id), Some(o.id));
    }
}
