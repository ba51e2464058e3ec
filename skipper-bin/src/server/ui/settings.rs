//! `/settings`: the settings in force (and `auto_create`, which can change), the webhook URL
//! with Copy and Regenerate, and the registry entries (add, edit, delete, test connection;
//! a token is shown as `••••`, only ever replaced, never read back). Every form calls the
//! `/v1` handler that does the same.

use askama::Template;
use axum::Extension;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use serde_json::{Value, json};

use super::pages::{Chrome, Notice, doc};
use super::{Current, Fields, PageResult, html};
use crate::server::error::ApiError;
use crate::server::{AppState, api, extract, registries};

/// One registry entry as listed.
pub(crate) struct RegistryRow {
    pub(crate) name: String,
    pub(crate) url: String,
    pub(crate) kind: String,
    pub(crate) username: String,
    pub(crate) token_set: bool,
    /// From `skipper.yaml` (read-only here), else stored through the API.
    pub(crate) from_config: bool,
}

/// What the add-registry form had, to show it again with its error.
#[derive(Default)]
pub(crate) struct RegistryDraft {
    pub(crate) name: String,
    pub(crate) url: String,
    pub(crate) kind: String,
    pub(crate) username: String,
}

#[derive(Template)]
#[template(path = "settings.html")]
struct SettingsPage {
    chrome: Chrome,
    settings: Vec<(&'static str, String)>,
    auto_create: bool,
    notifications: bool,
    /// Each notification target: format, host, events.
    targets: Vec<(String, String, String)>,
    webhook_url: String,
    registries: Vec<RegistryRow>,
    notice: Option<Notice>,
    /// The registry form the notice is about (`new`, or an entry's name), and its field.
    form: Option<String>,
    field: Option<String>,
    draft: RegistryDraft,
}

impl SettingsPage {
    fn error_for(&self, form: &str, field: &str) -> Option<&str> {
        match (&self.form, &self.field, &self.notice) {
            (Some(fo), Some(fi), Some(n)) if fo == form && fi == field && n.error => {
                Some(n.text.as_str())
            }
            _ => None,
        }
    }

    /// The notice, unless it is shown next to a field.
    fn general(&self) -> Option<&Notice> {
        match (&self.field, &self.notice) {
            (None, Some(n)) => Some(n),
            _ => None,
        }
    }
}

const KINDS: [&str; 4] = ["distribution", "dockerhub", "ghcr", "gitea"];

async fn page(
    s: &AppState,
    c: &Current,
    headers: &HeaderMap,
    notice: Option<Notice>,
    form: Option<String>,
    draft: RegistryDraft,
    status: StatusCode,
) -> PageResult {
    let axum::Json(v) = api::get_settings(State(s.clone())).await;
    let text = |k: &str| match &v[k] {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    };
    let settings = vec![
        ("Domain", text("domain")),
        ("Docker network", text("network")),
        ("Subdomain pattern", text("subdomain_pattern")),
        ("Registry poll interval", text("poll_interval")),
        ("Reconcile interval", text("reconcile_interval")),
    ];
    let axum::Json(url) = api::webhook_url(State(s.clone()), headers.clone()).await?;
    let axum::Json(list) = registries::list(State(s.clone())).await?;
    let registries = list
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|r| {
            let t = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
            RegistryRow {
                name: t("name"),
                url: t("url"),
                kind: t("type"),
                username: t("username"),
                token_set: r["token_set"].as_bool().unwrap_or(false),
                from_config: r["source"] == "config",
            }
        })
        .collect();
    let field = notice.as_ref().filter(|n| n.error).and_then(|n| {
        let f = n.text.split_once(':')?.0.trim();
        ["name", "url", "type", "username", "token"]
            .contains(&f)
            .then(|| f.to_owned())
    });
    let field = if form.is_some() { field } else { None };
    Ok(html(
        status,
        &SettingsPage {
            chrome: Chrome::new(c, "settings"),
            settings,
            auto_create: v["auto_create"].as_bool().unwrap_or(false),
            notifications: v["notification_url_set"].as_bool().unwrap_or(false),
            targets: api::notification_targets(s)
                .iter()
                .map(|t| {
                    let events = t["events"].as_array().filter(|e| !e.is_empty()).map_or(
                        "all events".to_owned(),
                        |e| {
                            e.iter()
                                .filter_map(Value::as_str)
                                .collect::<Vec<_>>()
                                .join(", ")
                        },
                    );
                    (
                        t["format"].as_str().unwrap_or_default().to_owned(),
                        t["host"].as_str().unwrap_or_default().to_owned(),
                        events,
                    )
                })
                .collect(),
            webhook_url: url["url"].as_str().unwrap_or_default().to_owned(),
            registries,
            notice,
            form,
            field,
            draft,
        },
    ))
}

/// The settings page.
pub(crate) async fn show(
    State(s): State<AppState>,
    Extension(c): Extension<Current>,
    headers: HeaderMap,
) -> PageResult {
    page(
        &s,
        &c,
        &headers,
        None,
        None,
        RegistryDraft::default(),
        StatusCode::OK,
    )
    .await
}

async fn failed(
    s: &AppState,
    c: &Current,
    headers: &HeaderMap,
    e: ApiError,
    form: Option<String>,
    draft: RegistryDraft,
) -> PageResult {
    let status = e.status;
    page(
        s,
        c,
        headers,
        Some(Notice {
            error: true,
            text: e.message,
        }),
        form,
        draft,
        status,
    )
    .await
}

fn back(anchor: &str) -> Response {
    Redirect::to(&format!("/settings#{anchor}")).into_response()
}

/// Change `auto_create` (`PUT /v1/settings`).
pub(crate) async fn general(
    State(s): State<AppState>,
    Extension(c): Extension<Current>,
    Extension(f): Extension<Fields>,
    headers: HeaderMap,
) -> PageResult {
    let r = match doc::<api::SettingsBody>(json!({ "auto_create": f.checked("auto_create") })) {
        Ok(b) => api::put_settings(State(s.clone()), extract::Body(b))
            .await
            .map(|_| ()),
        Err(e) => Err(e),
    };
    match r {
        Ok(()) => Ok(back("general")),
        Err(e) => failed(&s, &c, &headers, e, None, RegistryDraft::default()).await,
    }
}

/// Send a test event to every notification target.
pub(crate) async fn test_notification(
    State(s): State<AppState>,
    Extension(c): Extension<Current>,
    headers: HeaderMap,
) -> PageResult {
    let n = api::notification_targets(&s).len();
    match api::test_notification(State(s.clone())).await {
        Ok(_) => {
            page(
                &s,
                &c,
                &headers,
                Some(Notice {
                    error: false,
                    text: format!(
                        "A test event is on its way to {n} target{} (delivered and retried like any event).",
                        if n == 1 { "" } else { "s" }
                    ),
                }),
                None,
                RegistryDraft::default(),
                StatusCode::OK,
            )
            .await
        }
        Err(e) => failed(&s, &c, &headers, e, None, RegistryDraft::default()).await,
    }
}

/// A new webhook URL; the old one stops working at once.
pub(crate) async fn regenerate_webhook(
    State(s): State<AppState>,
    Extension(c): Extension<Current>,
    headers: HeaderMap,
) -> PageResult {
    match api::regenerate_webhook_url(State(s.clone()), headers.clone()).await {
        Ok(_) => Ok(back("webhook")),
        Err(e) => failed(&s, &c, &headers, e, None, RegistryDraft::default()).await,
    }
}

fn registry_doc(f: &Fields, name: Option<&str>) -> Value {
    json!({
        "name": name,
        "url": f.get("url").unwrap_or_default(),
        "type": f.get("type").unwrap_or_default(),
        "username": f.get("username"),
        "token": f.get("token"),
    })
}

fn draft_of(f: &Fields) -> RegistryDraft {
    let t = |k: &str| f.get(k).unwrap_or_default().to_owned();
    RegistryDraft {
        name: t("name"),
        url: t("url"),
        kind: t("type"),
        username: t("username"),
    }
}

/// Add a registry entry (`POST /v1/registries`).
pub(crate) async fn add_registry(
    State(s): State<AppState>,
    Extension(c): Extension<Current>,
    Extension(f): Extension<Fields>,
    headers: HeaderMap,
) -> PageResult {
    let name = f.get("name").unwrap_or_default();
    let r = match doc::<registries::RegistryBody>(registry_doc(&f, Some(name))) {
        Ok(b) => registries::create(State(s.clone()), extract::Body(b))
            .await
            .map(|_| ()),
        Err(e) => Err(e),
    };
    match r {
        Ok(()) => Ok(back("registries")),
        Err(e) => failed(&s, &c, &headers, e, Some("new".into()), draft_of(&f)).await,
    }
}

/// Replace a registry entry (`PUT /v1/registries/{name}`; an empty token keeps the stored one).
pub(crate) async fn edit_registry(
    State(s): State<AppState>,
    Extension(c): Extension<Current>,
    Extension(f): Extension<Fields>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> PageResult {
    let r = match doc::<registries::RegistryBody>(registry_doc(&f, None)) {
        Ok(b) => registries::replace(
            State(s.clone()),
            extract::Path(name.clone()),
            extract::Body(b),
        )
        .await
        .map(|_| ()),
        Err(e) => Err(e),
    };
    match r {
        Ok(()) => Ok(back("registries")),
        Err(e) => failed(&s, &c, &headers, e, Some(name), RegistryDraft::default()).await,
    }
}

/// Delete a registry entry and its token.
pub(crate) async fn delete_registry(
    State(s): State<AppState>,
    Extension(c): Extension<Current>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> PageResult {
    match registries::delete(State(s.clone()), extract::Path(name)).await {
        Ok(_) => Ok(back("registries")),
        Err(e) => failed(&s, &c, &headers, e, None, RegistryDraft::default()).await,
    }
}

/// Reach a registry and sign in with its credentials, now; the outcome at the top.
pub(crate) async fn test_registry(
    State(s): State<AppState>,
    Extension(c): Extension<Current>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> PageResult {
    match registries::test(State(s.clone()), extract::Path(name.clone())).await {
        Ok(_) => {
            page(
                &s,
                &c,
                &headers,
                Some(Notice {
                    error: false,
                    text: format!("{name}: reached, and signed in."),
                }),
                None,
                RegistryDraft::default(),
                StatusCode::OK,
            )
            .await
        }
        Err(e) => {
            let e = ApiError::new(e.status, e.code, format!("{name}: {}", e.message));
            failed(&s, &c, &headers, e, None, RegistryDraft::default()).await
        }
    }
}

impl RegistryRow {
    pub(crate) fn kinds(&self) -> &'static [&'static str] {
        &KINDS
    }
}

impl RegistryDraft {
    pub(crate) fn kinds(&self) -> &'static [&'static str] {
        &KINDS
    }
}
