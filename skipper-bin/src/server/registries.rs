//! `/v1/registries`: registry entries kept in the store (beside the config file's, which are
//! read-only here). Tokens are write-only: kept encrypted in the store's credentials
//! (`SKIPPER_SECRET_KEY`), answered only as `token_set`. The watcher and pulls use a stored
//! entry from the next start of `skipper serve` (the config file's entries are read at start
//! too); `POST …/{name}/test` tries one at once.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use skipper_core::Store;
use skipper_core::config::{RegistrySettings, RegistryType};
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::{Body, Path};

/// The store setting listing the stored entries (without tokens).
pub(crate) const SETTING: &str = "server.registries";

fn credential(name: &str) -> String {
    format!("registry/{name}")
}

/// A stored entry, as kept (its token is a credential of its own).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    name: String,
    url: url::Url,
    #[serde(rename = "type")]
    kind: String,
    username: Option<String>,
}

/// A registry entry to add or replace.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RegistryBody {
    /// The entry's name (a DNS label; given by the path on PUT).
    #[schema(pattern = "^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$")]
    name: Option<String>,
    /// The registry's URL (`https://git.example.com`).
    #[schema(format = "uri")]
    url: String,
    /// `dockerhub`, `ghcr`, `gitea` or `distribution`.
    #[serde(rename = "type")]
    #[schema(pattern = "^(dockerhub|ghcr|gitea|distribution)$")]
    kind: String,
    /// The user name.
    username: Option<String>,
    /// The token or password: write-only (never answered). On PUT, leaving it out keeps the
    /// stored one.
    token: Option<String>,
}

fn kind_of(s: &str) -> ApiResult<RegistryType> {
    Ok(match s {
        "dockerhub" => RegistryType::Dockerhub,
        "ghcr" => RegistryType::Ghcr,
        "gitea" => RegistryType::Gitea,
        "distribution" => RegistryType::Distribution,
        other => {
            return Err(ApiError::bad_request(format!(
                "type: {other:?} is not dockerhub, ghcr, gitea or distribution"
            )));
        }
    })
}

fn kind_name(k: RegistryType) -> &'static str {
    match k {
        RegistryType::Dockerhub => "dockerhub",
        RegistryType::Ghcr => "ghcr",
        RegistryType::Gitea => "gitea",
        RegistryType::Distribution => "distribution",
    }
}

async fn stored(store: &dyn Store) -> ApiResult<BTreeMap<String, Stored>> {
    Ok(match store.get_setting(SETTING).await? {
        Some(v) => serde_json::from_str::<Vec<Stored>>(&v)
            .map_err(|e| {
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    format!("the stored registries are unreadable: {e}"),
                )
            })?
            .into_iter()
            .map(|s| (s.name.clone(), s))
            .collect(),
        None => BTreeMap::new(),
    })
}

async fn save(store: &dyn Store, all: &BTreeMap<String, Stored>) -> ApiResult<()> {
    let list: Vec<&Stored> = all.values().collect();
    store
        .put_setting(
            SETTING,
            &serde_json::to_string(&list).unwrap_or_else(|_| "[]".into()),
        )
        .await?;
    Ok(())
}

/// The stored entries as settings (with their tokens), for the server's start.
pub(crate) async fn load(store: &dyn Store) -> skipper_core::Result<Vec<RegistrySettings>> {
    let Some(v) = store.get_setting(SETTING).await? else {
        return Ok(Vec::new());
    };
    let list: Vec<Stored> = serde_json::from_str(&v).unwrap_or_default();
    let mut out = Vec::new();
    for s in list {
        let Ok(kind) = kind_of(&s.kind) else { continue };
        let token = store.get_credential(&credential(&s.name)).await?;
        out.push(RegistrySettings {
            name: s.name,
            url: s.url,
            kind,
            username: s.username,
            token,
        });
    }
    Ok(out)
}

fn doc(
    name: &str,
    url: &url::Url,
    kind: &str,
    username: Option<&str>,
    token_set: bool,
    source: &str,
) -> Value {
    json!({
        "name": name, "url": url.as_str(), "type": kind, "username": username,
        "token_set": token_set, "source": source,
    })
}

/// Every registry entry: the config file's (`source: config`) and the stored ones
/// (`source: api`). Tokens are never answered: `token_set` says whether one is.
#[utoipa::path(get, path = "/v1/registries", tag = "registries",
    responses((status = 200, body = Vec<Object>)))]
pub(crate) async fn list(State(s): State<AppState>) -> ApiResult<axum::Json<Value>> {
    let mut out = Vec::new();
    for r in s.config.registries.values() {
        out.push(doc(
            &r.name,
            &r.url,
            kind_name(r.kind),
            r.username.as_deref(),
            r.token.is_some(),
            "config",
        ));
    }
    let creds = s.engine.store().list_credentials().await?;
    for r in stored(s.engine.store().as_ref()).await?.values() {
        let set = creds.contains(&credential(&r.name));
        out.push(doc(
            &r.name,
            &r.url,
            &r.kind,
            r.username.as_deref(),
            set,
            "api",
        ));
    }
    Ok(axum::Json(Value::Array(out)))
}

async fn put_entry(s: &AppState, name: String, b: RegistryBody, create: bool) -> ApiResult<Value> {
    skipper_core::model::validate_name("registry name", &name)
        .map_err(|e| ApiError::bad_request(format!("name: {e}")))?;
    if s.config.registries.contains_key(&name) {
        return Err(ApiError::conflict(format!(
            "registry {name:?} is defined in skipper.yaml; change it there"
        )));
    }
    let kind = kind_of(&b.kind)?;
    let url: url::Url = b
        .url
        .parse()
        .ok()
        .filter(|u: &url::Url| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
        .ok_or_else(|| ApiError::bad_request(format!("url: {:?} is not an http(s) URL", b.url)))?;
    let store = s.engine.store();
    let lease = s.engine.project_lease("registries").await?;
    let r = async {
        let mut all = stored(store.as_ref()).await?;
        match (create, all.contains_key(&name)) {
            (true, true) => return Err(ApiError::conflict(format!("registry {name:?} exists"))),
            (false, false) => {
                return Err(ApiError::not_found(format!(
                    "no registry {name:?} (POST /v1/registries adds one)"
                )));
            }
            _ => {}
        }
        if let Some(t) = b.token.filter(|t| !t.is_empty()) {
            store
                .put_credential(&credential(&name), &SecretString::from(t))
                .await?;
        }
        all.insert(
            name.clone(),
            Stored {
                name: name.clone(),
                url: url.clone(),
                kind: kind_name(kind).into(),
                username: b.username.clone(),
            },
        );
        save(store.as_ref(), &all).await?;
        let set = store.list_credentials().await?.contains(&credential(&name));
        Ok(doc(
            &name,
            &url,
            kind_name(kind),
            b.username.as_deref(),
            set,
            "api",
        ))
    }
    .await;
    lease.release().await;
    let mut v = r?;
    v["applies"] =
        "at the next start of skipper serve (test it now with POST /v1/registries/{name}/test)"
            .into();
    Ok(v)
}

/// Add a registry entry. Its token is stored encrypted (`SKIPPER_SECRET_KEY` must be set).
#[utoipa::path(post, path = "/v1/registries", tag = "registries", request_body = RegistryBody,
    responses((status = 201, body = Object)))]
pub(crate) async fn create(
    State(s): State<AppState>,
    Body(b): Body<RegistryBody>,
) -> ApiResult<Response> {
    let name = b
        .name
        .clone()
        .ok_or_else(|| ApiError::bad_request("name: missing"))?;
    let v = put_entry(&s, name.clone(), b, true).await?;
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, format!("/v1/registries/{name}"))],
        axum::Json(v),
    )
        .into_response())
}

/// Replace a stored registry entry (a token left out is kept).
#[utoipa::path(put, path = "/v1/registries/{name}", tag = "registries",
    params(("name" = String, Path)), request_body = RegistryBody,
    responses((status = 200, body = Object)))]
pub(crate) async fn replace(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Body(b): Body<RegistryBody>,
) -> ApiResult<axum::Json<Value>> {
    if b.name.as_ref().is_some_and(|n| n != &name) {
        return Err(ApiError::bad_request(
            "name: the body and the path name different registries",
        ));
    }
    Ok(axum::Json(put_entry(&s, name, b, false).await?))
}

/// Delete a stored registry entry and its token.
#[utoipa::path(delete, path = "/v1/registries/{name}", tag = "registries",
    params(("name" = String, Path)),
    responses((status = 204, description = "Deleted")))]
pub(crate) async fn delete(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    if s.config.registries.contains_key(&name) {
        return Err(ApiError::conflict(format!(
            "registry {name:?} is defined in skipper.yaml; remove it there"
        )));
    }
    let store = s.engine.store();
    let lease = s.engine.project_lease("registries").await?;
    let r = async {
        let mut all = stored(store.as_ref()).await?;
        if all.remove(&name).is_none() {
            return Err(ApiError::not_found(format!("no registry {name:?}")));
        }
        save(store.as_ref(), &all).await?;
        store.delete_credential(&credential(&name)).await?;
        Ok(())
    }
    .await;
    lease.release().await;
    r?;
    Ok(StatusCode::NO_CONTENT)
}

/// Try an entry now: reach the registry and sign in with its credentials.
#[utoipa::path(post, path = "/v1/registries/{name}/test", tag = "registries",
    params(("name" = String, Path)),
    responses((status = 200, description = "Reached and signed in", body = Object)))]
pub(crate) async fn test(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    let settings = match s.config.registries.get(&name) {
        Some(r) => r.clone(),
        None => load(s.engine.store().as_ref())
            .await?
            .into_iter()
            .find(|r| r.name == name)
            .ok_or_else(|| ApiError::not_found(format!("no registry {name:?}")))?,
    };
    let (registry, config) = skipper_registry::watch::registry_config(&settings);
    let client = skipper_registry::RegistryClient::new(config)
        .map_err(|e| ApiError::from(skipper_core::Error::from(e)))?;
    client
        .ping()
        .await
        .map_err(|e| ApiError::from(skipper_core::Error::from(e)))?;
    Ok(axum::Json(
        json!({ "name": name, "registry": registry, "ok": true }),
    ))
}
