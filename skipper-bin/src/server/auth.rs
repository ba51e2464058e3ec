//! The admin token: given (`SKIPPER_ADMIN_TOKEN`, `ADMIN_TOKEN`) or made on first start and
//! printed once; the store keeps only its SHA-256. Compared in constant time; never logged.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use skipper_core::Store;
use subtle::ConstantTimeEq;

use super::error::ApiError;

/// The store setting that holds the admin token's SHA-256 (hex).
pub(crate) const TOKEN_SETTING: &str = "server.admin_token_sha256";

/// Checks presented tokens.
pub(crate) struct Auth {
    store: Arc<dyn Store>,
    /// The token from the environment, which wins over the stored one.
    fixed: Option<[u8; 32]>,
    /// The stored hash, re-read when a token does not match it (`skipper token rotate` ran).
    stored: tokio::sync::RwLock<Option<[u8; 32]>>,
}

pub(crate) fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn parse_hash(hex_hash: &str) -> Option<[u8; 32]> {
    hex::decode(hex_hash.trim()).ok()?.try_into().ok()
}

/// A new random token: `skp_` and 64 hex digits (256 bits).
pub(crate) fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    format!("skp_{}", hex::encode(bytes))
}

/// Make and store a new token (its hash); the old one stops working at once. The token is
/// returned to be shown this once.
pub(crate) async fn rotate(store: &dyn Store) -> skipper_core::Result<SecretString> {
    let token = new_token();
    store
        .put_setting(TOKEN_SETTING, &hex::encode(hash(&token)))
        .await?;
    Ok(token.into())
}

impl Auth {
    /// The token from the environment if given; else the stored one; else a new one, stored,
    /// and returned to be printed once.
    pub(crate) async fn init(
        store: Arc<dyn Store>,
        from_env: Option<SecretString>,
    ) -> skipper_core::Result<(Self, Option<SecretString>)> {
        let fixed = from_env.map(|t| hash(t.expose_secret()));
        let mut made = None;
        let mut stored = match store.get_setting(TOKEN_SETTING).await? {
            Some(h) => parse_hash(&h),
            None => None,
        };
        if fixed.is_none() && stored.is_none() {
            let token = rotate(store.as_ref()).await?;
            stored = Some(hash(token.expose_secret()));
            made = Some(token);
        }
        Ok((
            Self {
                store,
                fixed,
                stored: tokio::sync::RwLock::new(stored),
            },
            made,
        ))
    }

    /// Whether `presented` is the admin token.
    pub(crate) async fn verify(&self, presented: &str) -> bool {
        let given = hash(presented);
        let eq = |h: &[u8; 32]| bool::from(h.ct_eq(&given));
        if let Some(f) = &self.fixed {
            return eq(f);
        }
        if self.stored.read().await.as_ref().is_some_and(eq) {
            return true;
        }
        // Rotated by `skipper token rotate` since we read it? Read again (a store that fails
        // to answer refuses: auth never falls open).
        match self.store.get_setting(TOKEN_SETTING).await {
            Ok(Some(h)) => {
                let h = parse_hash(&h);
                let ok = h.as_ref().is_some_and(eq);
                *self.stored.write().await = h;
                ok
            }
            _ => false,
        }
    }
}

/// The token a request presents: `Authorization: Bearer <token>` or `x-admin-token: <token>`.
pub(crate) fn presented(headers: &axum::http::HeaderMap) -> Option<&str> {
    if let Some(v) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let (scheme, token) = v.trim().split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim())
            .filter(|t| !t.is_empty());
    }
    headers
        .get("x-admin-token")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Middleware: refuse with 401 unless the request carries the admin token.
pub(crate) async fn require_token(
    State(state): State<super::AppState>,
    req: Request,
    next: Next,
) -> Response {
    let ok = match presented(req.headers()) {
        Some(t) => state.auth.verify(t).await,
        None => false,
    };
    if !ok {
        return ApiError::unauthorized().into_response();
    }
    next.run(req).await
}
