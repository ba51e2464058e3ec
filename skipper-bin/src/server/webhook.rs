//! `POST /v1/webhook/{secret}`: registries and CI announce pushes; the secret in the URL is the
//! credential (compared in constant time; an unknown one is 404).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use secrecy::SecretString;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use skipper_core::ImageRef;
use skipper_registry::webhook as wh;
use subtle::ConstantTimeEq;

use super::AppState;
use super::error::{ApiError, ApiResult, ErrorBody};
use super::extract::Path;

/// The store setting holding the webhook secret.
pub(crate) const SECRET_SETTING: &str = "server.webhook_secret";

fn new_secret() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The webhook secret, made on first use.
pub(crate) async fn secret(s: &AppState) -> ApiResult<String> {
    let store = s.engine.store();
    if let Some(v) = store.get_setting(SECRET_SETTING).await? {
        return Ok(v);
    }
    regenerate(s).await
}

/// A new secret; the old URL stops working at once.
pub(crate) async fn regenerate(s: &AppState) -> ApiResult<String> {
    let v = new_secret();
    s.engine.store().put_setting(SECRET_SETTING, &v).await?;
    Ok(v)
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// The delivery's id, when its source gives one: a repeat of it starts nothing new.
fn delivery_id(h: &HeaderMap, body: &[u8]) -> Option<String> {
    for name in [
        "x-github-delivery",
        "x-gitea-delivery",
        "x-forgejo-delivery",
        "x-skipper-delivery",
    ] {
        if let Some(v) = header(h, name).filter(|v| !v.is_empty()) {
            return Some(format!("{name}:{v}"));
        }
    }
    // The distribution registry numbers each event; the envelope's ids name the delivery.
    let v: Value = serde_json::from_slice(body).ok()?;
    let ids: Vec<&str> = v
        .get("events")?
        .as_array()?
        .iter()
        .filter_map(|e| e.get("id").and_then(Value::as_str))
        .collect();
    (!ids.is_empty()).then(|| {
        format!(
            "distribution:{}",
            hex::encode(Sha256::digest(ids.join(",")))
        )
    })
}

fn parse(
    h: &HeaderMap,
    body: &[u8],
    secret: &SecretString,
) -> Result<Vec<wh::PushEvent>, wh::WebhookError> {
    if header(h, "x-github-event").is_some() {
        return wh::parse_github(body, header(h, wh::GITHUB_SIGNATURE_HEADER), secret);
    }
    if header(h, "x-gitea-event").is_some() || header(h, "x-forgejo-event").is_some() {
        let sig = header(h, wh::GITEA_SIGNATURE_HEADER).or(header(h, wh::FORGEJO_SIGNATURE_HEADER));
        return wh::parse_gitea(body, sig, secret);
    }
    let ct = header(h, "content-type").unwrap_or_default();
    let v: Option<Value> = serde_json::from_slice(body).ok();
    if ct.starts_with(wh::DISTRIBUTION_EVENTS_MEDIA_TYPE)
        || v.as_ref().is_some_and(|v| v.get("events").is_some())
    {
        return wh::parse_distribution(body, None);
    }
    if v.as_ref().is_some_and(|v| v.get("push_data").is_some()) {
        return wh::parse_docker_hub(body);
    }
    wh::parse_generic(body)
}

/// Announce a push: `{"image":"registry/org/app:tag"}`, a distribution registry's notification
/// envelope, Docker Hub's, GitHub's `registry_package` (signed with `X-Hub-Signature-256` under
/// the same secret) or Gitea's. 202 with what was decided; deploys run in the background (see
/// `/v1/events` and `/v1/deploys`).
#[utoipa::path(post, path = "/v1/webhook/{secret}", tag = "webhook",
    params(("secret" = String, Path, description = "The secret of `GET /v1/settings/webhook-url`")),
    request_body = Object,
    responses((status = 202, description = "What was decided", body = Object),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub(crate) async fn receive(
    State(s): State<AppState>,
    Path(given): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let expected = secret(&s).await?;
    let a = Sha256::digest(given.as_bytes());
    let b = Sha256::digest(expected.as_bytes());
    if !bool::from(a.ct_eq(&b)) {
        return Err(ApiError::not_found("no such webhook"));
    }
    s.metrics.webhook(true);
    if let Some(id) = delivery_id(&headers, &body)
        && s.idempotency.seen_delivery(&id)
    {
        return Ok((
            StatusCode::ACCEPTED,
            axum::Json(json!({ "deployments": [], "ignored": [{ "reason": "this delivery was seen before" }] })),
        )
            .into_response());
    }
    let events = parse(&headers, &body, &SecretString::from(expected)).map_err(|e| {
        if e.is_authentication() {
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string())
        } else {
            ApiError::bad_request(e.to_string())
        }
    })?;
    let projects = s.engine.store().list_projects().await?;
    let mut accepted = Vec::new();
    let mut ignored = Vec::new();
    for event in events {
        let watching: Vec<String> = projects
            .iter()
            .filter(|p| ImageRef::parse(&p.image).is_ok_and(|r| r.same_repository(&event.image)))
            .map(|p| p.name.clone())
            .collect();
        if watching.is_empty() {
            if s.auto_create() {
                let b = super::api::QuickBody::for_image(&event.image);
                match super::api::quick_request(&s, &event.image, &b).await {
                    Ok(mut req) => {
                        req.trigger = skipper_core::Trigger::Webhook;
                        let project = req.project.clone();
                        let engine = s.engine.clone();
                        tokio::spawn(async move { engine.deploy(req).await });
                        accepted.push(json!({ "image": event.image.to_string(), "projects": [project], "created": true }));
                    }
                    Err(e) => ignored
                        .push(json!({ "image": event.image.to_string(), "reason": e.message })),
                }
            } else {
                ignored.push(json!({
                    "image": event.image.to_string(),
                    "reason": "no project deploys this repository (set global.auto_create: true to quick-deploy it)",
                }));
            }
            continue;
        }
        let Some(watcher) = s.watcher.clone() else {
            ignored.push(
                json!({ "image": event.image.to_string(), "reason": "no registry watcher runs" }),
            );
            continue;
        };
        accepted.push(json!({ "image": event.image.to_string(), "projects": watching, "source": event.source.as_str() }));
        tokio::spawn(async move {
            match watcher.handle_push(&event).await {
                Ok(r) => {
                    tracing::info!(image = %event.image, summary = %r.summary(), "push handled")
                }
                Err(e) => {
                    tracing::warn!(image = %event.image, error = %e.chain(), "push not handled")
                }
            }
        });
    }
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({ "accepted": accepted, "ignored": ignored })),
    )
        .into_response())
}
