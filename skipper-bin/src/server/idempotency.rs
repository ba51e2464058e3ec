//! `Idempotency-Key` (and `x-idempotency-key`) on mutating POSTs, after the IETF httpapi draft:
//! a repeat returns the first answer (status and body) without acting again, also after a
//! restart (answers are kept 24 h in `server.db` in the data directory); the same key with
//! another body is 422; a repeat while the first is still running is 409. Keys are scoped by
//! method and path (there is one credential, the admin token).

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use rusqlite::{OptionalExtension, params};
use sha2::{Digest, Sha256};

use super::error::ApiError;

/// How long an answer is kept.
pub(crate) const KEEP: Duration = Duration::from_secs(24 * 60 * 60);
/// The largest body (request or response) an idempotent request may have.
const MAX_BODY: usize = 1 << 20;

/// Answers by key.
pub(crate) struct Idempotency {
    conn: Mutex<rusqlite::Connection>,
    running: Mutex<HashSet<String>>,
}

enum Lookup {
    New,
    Replay { status: u16, body: Vec<u8> },
    Running,
    OtherBody,
}

impl Idempotency {
    /// Keep answers in `dir/server.db`.
    pub(crate) fn open(dir: &Path) -> anyhow::Result<Self> {
        Self::with(rusqlite::Connection::open(dir.join("server.db"))?)
    }

    /// Keep answers in memory (tests).
    #[cfg(test)]
    pub(crate) fn in_memory() -> anyhow::Result<Self> {
        Self::with(rusqlite::Connection::open_in_memory()?)
    }

    fn with(conn: rusqlite::Connection) -> anyhow::Result<Self> {
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;
             CREATE TABLE IF NOT EXISTS answers (
                 key TEXT PRIMARY KEY, body_sha256 TEXT NOT NULL,
                 status INTEGER NOT NULL, body BLOB NOT NULL, at INTEGER NOT NULL);",
        )?;
        let this = Self {
            conn: Mutex::new(conn),
            running: Mutex::new(HashSet::new()),
        };
        this.prune();
        Ok(this)
    }

    /// Forget answers older than [`KEEP`].
    pub(crate) fn prune(&self) {
        let cutoff = now() - KEEP.as_secs() as i64;
        if let Ok(c) = self.conn.lock() {
            let _ = c.execute("DELETE FROM answers WHERE at < ?1", params![cutoff]);
        }
    }

    /// Whether a webhook delivery with this id was seen in the last [`KEEP`] (it is recorded
    /// now if not).
    pub(crate) fn seen_delivery(&self, id: &str) -> bool {
        let key = format!("delivery {id}");
        let Ok(c) = self.conn.lock() else {
            return false;
        };
        let inserted = c.execute(
            "INSERT OR IGNORE INTO answers (key, body_sha256, status, body, at) VALUES (?1, '', 202, x'', ?2)",
            params![key, now()],
        );
        matches!(inserted, Ok(0))
    }

    fn begin(&self, key: &str, body_sha256: &str) -> Lookup {
        let cutoff = now() - KEEP.as_secs() as i64;
        let found: Option<(String, u16, Vec<u8>)> = self.conn.lock().ok().and_then(|c| {
            c.query_row(
                "SELECT body_sha256, status, body FROM answers WHERE key = ?1 AND at >= ?2",
                params![key, cutoff],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .ok()
            .flatten()
        });
        if let Some((sha, status, body)) = found {
            return if sha == body_sha256 {
                Lookup::Replay { status, body }
            } else {
                Lookup::OtherBody
            };
        }
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if running.insert(key.to_owned()) {
            Lookup::New
        } else {
            Lookup::Running
        }
    }

    fn finish(&self, key: &str, body_sha256: &str, answer: Option<(u16, &[u8])>) {
        if let Some((status, body)) = answer
            && let Ok(c) = self.conn.lock()
        {
            let r = c.execute(
                "INSERT OR REPLACE INTO answers (key, body_sha256, status, body, at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![key, body_sha256, status, body, now()],
            );
            if let Err(e) = r {
                tracing::warn!(error = %e, "could not keep an idempotent answer; a repeat acts again");
            }
        }
        self.running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// The request's idempotency key, if any.
fn key_of(req: &Request) -> Option<String> {
    ["idempotency-key", "x-idempotency-key"]
        .iter()
        .find_map(|h| req.headers().get(*h))
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().trim_matches('"').to_owned())
        .filter(|v| !v.is_empty())
}

/// Middleware for every mutating POST.
pub(crate) async fn layer(
    State(state): State<super::AppState>,
    req: Request,
    next: Next,
) -> Response {
    if req.method() != Method::POST {
        return next.run(req).await;
    }
    let Some(key) = key_of(&req) else {
        return next.run(req).await;
    };
    if key.len() > 255 {
        return ApiError::bad_request("an Idempotency-Key is at most 255 characters")
            .into_response();
    }
    let scoped = hex::encode(Sha256::digest(
        format!("{} {} {key}", req.method(), req.uri().path()).as_bytes(),
    ));
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                "the request body is over 1 MiB",
            )
            .into_response();
        }
    };
    // The query is part of what was asked (`?wait=true`).
    let fingerprint = hex::encode(Sha256::digest(
        [parts.uri.query().unwrap_or("").as_bytes(), b"\n", &bytes].concat(),
    ));
    let idem = state.idempotency.clone();
    match idem.begin(&scoped, &fingerprint) {
        Lookup::Replay { status, body } => {
            let mut r = Response::new(Body::from(body));
            *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            let h = r.headers_mut();
            h.insert("content-type", HeaderValue::from_static("application/json"));
            h.insert("idempotent-replayed", HeaderValue::from_static("true"));
            return r;
        }
        Lookup::Running => {
            return ApiError::conflict(
                "a request with this Idempotency-Key is still running; ask again when it ends",
            )
            .into_response();
        }
        Lookup::OtherBody => {
            return ApiError::unprocessable(
                "this Idempotency-Key was used with another request body; use a new key",
            )
            .into_response();
        }
        Lookup::New => {}
    }
    // Released however the request ends, even if the client goes away mid-way.
    let guard = Finish {
        idem: idem.clone(),
        key: scoped.clone(),
        fingerprint: fingerprint.clone(),
        done: false,
    };
    let req = Request::from_parts(parts, Body::from(bytes));
    let response = next.run(req).await;
    let (parts, body) = response.into_parts();
    let body: Bytes = match body.collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let mut guard = guard;
    guard.done = true;
    let keep = parts.status != StatusCode::CONFLICT && body.len() <= MAX_BODY;
    idem.finish(
        &scoped,
        &fingerprint,
        keep.then_some((parts.status.as_u16(), &body[..])),
    );
    Response::from_parts(parts, Body::from(body))
}

struct Finish {
    idem: Arc<Idempotency>,
    key: String,
    fingerprint: String,
    done: bool,
}

impl Drop for Finish {
    fn drop(&mut self) {
        if !self.done {
            self.idem.finish(&self.key, &self.fingerprint, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An answer outlives a restart; a key still running is refused; another body is refused.
    #[test]
    fn answers_survive_a_restart_and_a_running_key_is_busy() {
        let dir = tempfile::tempdir().unwrap();
        let first = Idempotency::open(dir.path()).unwrap();
        assert!(matches!(first.begin("k", "body-1"), Lookup::New));
        assert!(matches!(first.begin("k", "body-1"), Lookup::Running));
        first.finish("k", "body-1", Some((202, b"{\"deploy_id\":\"d1\"}")));
        drop(first);
        let again = Idempotency::open(dir.path()).unwrap();
        match again.begin("k", "body-1") {
            Lookup::Replay { status, body } => {
                assert_eq!(status, 202);
                assert_eq!(body, b"{\"deploy_id\":\"d1\"}");
            }
            _ => panic!("the answer is replayed after a restart"),
        }
        assert!(matches!(again.begin("k", "body-2"), Lookup::OtherBody));
        // A request that ended without an answer (the client went away) frees its key.
        assert!(matches!(again.begin("j", "b"), Lookup::New));
        again.finish("j", "b", None);
        assert!(matches!(again.begin("j", "b"), Lookup::New));
        assert!(!again.seen_delivery("github:1"));
        assert!(again.seen_delivery("github:1"));
    }
}
