//! Dashboard sessions: made by signing in with the admin token at `/login`, kept in memory
//! (a restart of `skipper serve` signs everyone out), ended by signing out or after
//! [`IDLE`] without a request (at most [`LIFETIME`] in all).
//!
//! A session id and its CSRF token are 256 random bits each. The table is keyed by the
//! SHA-256 of the id, so a lookup's timing depends on nothing an attacker can steer; the
//! stored digest and every CSRF token are compared in constant time.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue, header};
use subtle::ConstantTimeEq;

/// The session cookie.
pub(crate) const COOKIE: &str = "skipper_session";
/// The cookie that carries the sign-in form's CSRF token before there is a session.
pub(crate) const LOGIN_COOKIE: &str = "skipper_login";
/// A session ends after this long without a request.
pub(crate) const IDLE: Duration = Duration::from_secs(12 * 3600);
/// A session ends after this long in any case.
pub(crate) const LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);
/// At most this many sessions at once; signing in past it ends the oldest.
const MAX_SESSIONS: usize = 1024;

/// One signed-in browser.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    /// The token every form of this session carries.
    pub(crate) csrf: String,
    digest: [u8; 32],
    created: Instant,
    seen: Instant,
}

/// The sessions of this server.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    table: Mutex<HashMap<[u8; 32], Session>>,
}

/// 256 random bits, hex.
pub(crate) fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    hex::encode(bytes)
}

/// Whether two tokens are equal, in time that depends only on their lengths.
pub(crate) fn same_token(a: &str, b: &str) -> bool {
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new session: its id (for the cookie) and CSRF token.
    pub(crate) fn create(&self) -> (String, String) {
        let id = random_token();
        let csrf = random_token();
        let digest = super::super::auth::hash(&id);
        let now = Instant::now();
        let mut t = self.lock();
        t.retain(|_, s| live(s, now));
        if t.len() >= MAX_SESSIONS
            && let Some(oldest) = t.iter().min_by_key(|(_, s)| s.created).map(|(k, _)| *k)
        {
            t.remove(&oldest);
        }
        t.insert(
            digest,
            Session {
                csrf: csrf.clone(),
                digest,
                created: now,
                seen: now,
            },
        );
        (id, csrf)
    }

    /// The live session whose id is `id` (its idle time starts again).
    pub(crate) fn get(&self, id: &str) -> Option<Session> {
        let digest = super::super::auth::hash(id);
        let now = Instant::now();
        let mut t = self.lock();
        let s = t.get_mut(&digest)?;
        if !bool::from(s.digest.ct_eq(&digest)) {
            return None;
        }
        if !live(s, now) {
            t.remove(&digest);
            return None;
        }
        s.seen = now;
        Some(s.clone())
    }

    /// End the session whose id is `id`.
    pub(crate) fn remove(&self, id: &str) {
        self.lock().remove(&super::super::auth::hash(id));
    }

    /// How many sessions are live.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        let now = Instant::now();
        self.lock().values().filter(|s| live(s, now)).count()
    }
}

fn live(s: &Session, now: Instant) -> bool {
    now.duration_since(s.seen) < IDLE && now.duration_since(s.created) < LIFETIME
}

/// The value of cookie `name` in the request, if any.
pub(crate) fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

/// Whether the browser reached us over TLS: `X-Forwarded-Proto: https` from a proxy in
/// front, or an `https://` public URL.
pub(crate) fn over_tls(headers: &HeaderMap, public_url: Option<&str>) -> bool {
    let forwarded = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"));
    forwarded || public_url.is_some_and(|u| u.starts_with("https://"))
}

/// A `Set-Cookie` value: `HttpOnly`, `SameSite=Strict`, `Path=/`, `Secure` behind TLS;
/// `max_age` 0 deletes the cookie.
pub(crate) fn set_cookie(name: &str, value: &str, max_age: Duration, secure: bool) -> HeaderValue {
    let mut v = format!(
        "{name}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        max_age.as_secs()
    );
    if secure {
        v.push_str("; Secure");
    }
    HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_found_by_its_id_only() {
        let s = Sessions::default();
        let (id, csrf) = s.create();
        assert_eq!(id.len(), 64);
        assert_ne!(id, csrf);
        assert_eq!(s.get(&id).unwrap().csrf, csrf);
        assert!(s.get(&csrf).is_none());
        assert!(s.get("").is_none());
        s.remove(&id);
        assert!(s.get(&id).is_none());
    }

    #[test]
    fn cookies_are_read_by_name() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; skipper_session=abc ; b=2"),
        );
        assert_eq!(cookie(&h, COOKIE), Some("abc"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "c"), None);
    }

    #[test]
    fn the_cookie_is_secure_behind_tls() {
        let mut h = HeaderMap::new();
        assert!(!over_tls(&h, None));
        assert!(over_tls(&h, Some("https://skipper.example")));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        assert!(over_tls(&h, None));
        let v = set_cookie(COOKIE, "x", IDLE, true);
        let v = v.to_str().unwrap();
        for part in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/"] {
            assert!(v.contains(part), "{v}");
        }
        assert!(
            !set_cookie(COOKIE, "x", IDLE, false)
                .to_str()
                .unwrap()
                .contains("Secure")
        );
    }
}
