//! The agent protocol's signatures, shared by `skipper serve` and `skippy`.
//!
//! Every request an agent sends, and every order or token the server sends back, is signed with
//! the node's token: `X-Agent-Signature` is the hex HMAC-SHA256 over
//!
//! ```text
//! METHOD \n PATH?QUERY \n X-Timestamp \n X-Request-Id \n hex(SHA-256(body))
//! ```
//!
//! so a captured request cannot be replayed with another request id, time, path or body. The
//! receiver checks the signature in constant time, refuses a timestamp more than
//! [`WINDOW`] away from its clock, and refuses a request id it has seen inside that window.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// How far a timestamp may be from the receiver's clock, and how long request ids are kept.
pub(crate) const WINDOW: Duration = Duration::from_secs(300);

/// The headers.
pub(crate) const AGENT_ID: &str = "x-agent-id";
pub(crate) const TIMESTAMP: &str = "x-timestamp";
pub(crate) const REQUEST_ID: &str = "x-request-id";
pub(crate) const SIGNATURE: &str = "x-agent-signature";

/// The text that is signed.
pub(crate) fn canonical(
    method: &str,
    path_and_query: &str,
    timestamp: i64,
    request_id: &str,
    body: &[u8],
) -> String {
    format!(
        "{}\n{}\n{}\n{}\n{}",
        method.to_ascii_uppercase(),
        path_and_query,
        timestamp,
        request_id,
        hex::encode(Sha256::digest(body))
    )
}

/// The signature of a request under `token`.
pub(crate) fn sign(
    token: &str,
    method: &str,
    path_and_query: &str,
    timestamp: i64,
    request_id: &str,
    body: &[u8],
) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(token.as_bytes()).expect("HMAC takes any key");
    mac.update(canonical(method, path_and_query, timestamp, request_id, body).as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Why a signed request was refused (logged by the receiver, never sent back).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    Missing(&'static str),
    BadSignature,
    StaleTimestamp { skew_secs: i64 },
    Replayed,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Missing(h) => write!(f, "header {h} is missing or malformed"),
            Refusal::BadSignature => f.write_str(
                "the signature does not match (wrong token, or the request was altered)",
            ),
            Refusal::StaleTimestamp { skew_secs } => write!(
                f,
                "the timestamp is {skew_secs} s from this clock (at most 300 s)"
            ),
            Refusal::Replayed => f.write_str("this request id was seen before (a replay)"),
        }
    }
}

/// Request ids seen inside the window.
///
/// An id is kept until its request's own timestamp leaves the window (after that the timestamp
/// check refuses a replay anyway), as 16 bytes of its SHA-256, and the expired ones are swept
/// at most once per [`SWEEP`]: at 10,000 agents the set holds about 700,000 ids, and sweeping
/// it on every request (as a first version did, once it passed 10,000) cost more than all the
/// rest of the server's work.
#[derive(Default)]
pub(crate) struct Nonces {
    seen: Mutex<NonceSet>,
}

#[derive(Default)]
struct NonceSet {
    /// Id digest → the unix second after which its request is refused as stale anyway.
    until: HashMap<[u8; 16], i64>,
    next_sweep: i64,
}

/// How often expired request ids are swept (seconds).
const SWEEP: i64 = 10;

impl Nonces {
    /// Record `id` of a request stamped `ts` (already checked to be inside the window);
    /// false if it was seen before.
    pub(crate) fn fresh(&self, id: &str, ts: i64, now: i64) -> bool {
        let mut s = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if now >= s.next_sweep {
            s.until.retain(|_, until| *until >= now);
            s.next_sweep = now + SWEEP;
        }
        let mut key = [0u8; 16];
        key.copy_from_slice(&Sha256::digest(id.as_bytes())[..16]);
        let until = ts + WINDOW.as_secs() as i64;
        match s.until.get(&key) {
            Some(&u) if u >= now => false,
            _ => {
                s.until.insert(key, until);
                true
            }
        }
    }
}

/// Check a signed request: the signature under any of `tokens` (a rotation keeps the old one
/// for a while), the time, then the request id. Returns which token matched.
#[allow(clippy::too_many_arguments, reason = "the parts of one signed request")]
pub(crate) fn verify(
    tokens: &[&str],
    method: &str,
    path_and_query: &str,
    timestamp: Option<&str>,
    request_id: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now: i64,
    nonces: &Nonces,
) -> Result<usize, Refusal> {
    use subtle::ConstantTimeEq;
    let ts: i64 = timestamp
        .and_then(|t| t.trim().parse().ok())
        .ok_or(Refusal::Missing(TIMESTAMP))?;
    let id = request_id
        .filter(|r| !r.is_empty() && r.len() <= 128)
        .ok_or(Refusal::Missing(REQUEST_ID))?;
    let given = signature
        .and_then(|s| hex::decode(s.trim()).ok())
        .ok_or(Refusal::Missing(SIGNATURE))?;
    let mut matched = None;
    for (i, token) in tokens.iter().enumerate() {
        let want =
            hex::decode(sign(token, method, path_and_query, ts, id, body)).unwrap_or_default();
        if bool::from(want.ct_eq(&given)) && matched.is_none() {
            matched = Some(i);
        }
    }
    let matched = matched.ok_or(Refusal::BadSignature)?;
    let skew = (now - ts).abs();
    if skew > WINDOW.as_secs() as i64 {
        return Err(Refusal::StaleTimestamp {
            skew_secs: now - ts,
        });
    }
    if !nonces.fresh(id, ts, now) {
        return Err(Refusal::Replayed);
    }
    Ok(matched)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed(token: &str, body: &[u8], ts: i64, id: &str) -> String {
        sign(token, "POST", "/v1/work-orders/w1/result?x=1", ts, id, body)
    }

    #[test]
    fn a_signed_request_verifies_once_and_every_alteration_is_refused() {
        let n = Nonces::default();
        let now = 1_800_000_000;
        let sig = signed("tok", b"{}", now, "r1");
        let ok = |m: &str, p: &str, ts: i64, id: &str, body: &[u8], n: &Nonces| {
            verify(
                &["tok"],
                m,
                p,
                Some(&ts.to_string()),
                Some(id),
                Some(&sig),
                body,
                now,
                n,
            )
        };
        let p = "/v1/work-orders/w1/result?x=1";
        // Each alteration on a fresh nonce set, so only the alteration decides.
        assert_eq!(
            ok("GET", p, now, "r1", b"{}", &Nonces::default()),
            Err(Refusal::BadSignature)
        );
        assert_eq!(
            ok(
                "POST",
                "/v1/work-orders/w2/result?x=1",
                now,
                "r1",
                b"{}",
                &Nonces::default()
            ),
            Err(Refusal::BadSignature)
        );
        assert_eq!(
            ok("POST", p, now + 1, "r1", b"{}", &Nonces::default()),
            Err(Refusal::BadSignature)
        );
        assert_eq!(
            ok("POST", p, now, "r2", b"{}", &Nonces::default()),
            Err(Refusal::BadSignature),
            "the request id is signed"
        );
        assert_eq!(
            ok("POST", p, now, "r1", b"{ }", &Nonces::default()),
            Err(Refusal::BadSignature)
        );
        assert_eq!(ok("POST", p, now, "r1", b"{}", &n), Ok(0));
        assert_eq!(ok("POST", p, now, "r1", b"{}", &n), Err(Refusal::Replayed));
        let wrong = verify(
            &["other"],
            "POST",
            p,
            Some(&now.to_string()),
            Some("r9"),
            Some(&signed("tok", b"{}", now, "r9")),
            b"{}",
            now,
            &n,
        );
        assert_eq!(wrong, Err(Refusal::BadSignature));
        // An old token still accepted during a rotation reports which one matched.
        let rotated = verify(
            &["new", "tok"],
            "POST",
            p,
            Some(&now.to_string()),
            Some("r8"),
            Some(&signed("tok", b"{}", now, "r8")),
            b"{}",
            now,
            &n,
        );
        assert_eq!(rotated, Ok(1));
    }

    #[test]
    fn a_request_id_is_kept_while_its_timestamp_is_inside_the_window() {
        let n = Nonces::default();
        let now = 1_800_000_000;
        // Stamped 200 s ahead (a fast clock): replayable until ts + 300, so kept that long.
        assert!(n.fresh("a", now + 200, now));
        assert!(n.fresh("b", now, now));
        assert!(
            !n.fresh("b", now, now + 300),
            "swept, yet still inside its window"
        );
        // Past its window the timestamp check refuses it; the set may forget it.
        assert!(n.fresh("b", now, now + 301));
        assert!(!n.fresh("a", now + 200, now + 499));
        assert_eq!(n.seen.lock().unwrap().until.len(), 1, "b was swept at +499");
    }

    #[test]
    fn a_stale_timestamp_and_missing_headers_are_refused() {
        let n = Nonces::default();
        let now = 1_800_000_000;
        let old = now - 301;
        let sig = signed("tok", b"", old, "r1");
        let p = "/v1/work-orders/w1/result?x=1";
        assert!(matches!(
            verify(
                &["tok"],
                "POST",
                p,
                Some(&old.to_string()),
                Some("r1"),
                Some(&sig),
                b"",
                now,
                &n
            ),
            Err(Refusal::StaleTimestamp { .. })
        ));
        assert_eq!(
            verify(
                &["tok"],
                "POST",
                p,
                None,
                Some("r1"),
                Some(&sig),
                b"",
                now,
                &n
            ),
            Err(Refusal::Missing(TIMESTAMP))
        );
        assert_eq!(
            verify(
                &["tok"],
                "POST",
                p,
                Some("1"),
                None,
                Some(&sig),
                b"",
                now,
                &n
            ),
            Err(Refusal::Missing(REQUEST_ID))
        );
        assert_eq!(
            verify(
                &["tok"],
                "POST",
                p,
                Some("1"),
                Some("r"),
                Some("zz"),
                b"",
                now,
                &n
            ),
            Err(Refusal::Missing(SIGNATURE))
        );
    }
}
