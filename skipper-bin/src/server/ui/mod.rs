//! The dashboard: server-rendered HTML at `/`, for people. Its templates (`skipper-bin/templates/`)
//! are checked at compile time and escape everything they show; its CSS and one small script
//! are compiled into the binary. Every page works with plain links and forms; the script only
//! makes it live (the event stream, forms answered without a reload).
//!
//! Routes: `/login`, `/logout`, `/` (dashboard), `/projects/{name}` (instances, deploy,
//! rollback, history), `/deploys`, `/deploys/{id}`, `/deploy` (quick deploy), `/settings`
//! (settings, webhook URL, registries), `/projects/new` and `/projects/{name}/edit` (projects
//! and stages), `/config/export` and `/config/import` (YAML), and two event
//! streams for the script (`/events`, `/deploys/{id}/events`: the `/v1` handlers, behind the
//! session instead of the token).
//!
//! **API boundary**: every handler calls the `/v1` handler functions or the engine; no deploy
//! logic lives here. Sign-in is a session cookie (`HttpOnly`, `SameSite=Strict`, `Secure`
//! behind TLS) made from the admin token; every POST carries the session's CSRF token, checked
//! in one place ([`require_session`]) before any handler runs.

pub(crate) mod config;
pub(crate) mod pages;
pub(crate) mod session;
pub(crate) mod settings;
pub(crate) mod view;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use askama::Template;
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{Next, from_fn, from_fn_with_state};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};

use super::AppState;
use super::error::ApiError;

const CSS: &str = include_str!("static/app.css");
const JS: &str = include_str!("static/app.js");

/// The largest form the dashboard takes.
const MAX_FORM: usize = 256 * 1024;

/// The dashboard's routes, to be merged into `app(state)`.
pub(crate) fn router(state: AppState) -> Router<AppState> {
    let signed_in = Router::new()
        .route("/", get(pages::dashboard))
        .route("/logout", post(pages::logout))
        .route("/projects/{project}", get(pages::project))
        .route("/projects/new", get(config::new_form).post(config::create))
        .route(
            "/projects/{project}/edit",
            get(config::edit_form).post(config::update),
        )
        .route("/projects/{project}/delete", post(config::delete))
        .route("/projects/{project}/stages", post(config::add_stage))
        .route(
            "/projects/{project}/stages/{stage}/edit",
            post(config::update_stage),
        )
        .route(
            "/projects/{project}/stages/{stage}/delete",
            post(config::delete_stage),
        )
        .route("/config/export", get(config::export))
        .route(
            "/config/import",
            get(config::import_form).post(config::import),
        )
        .route(
            "/projects/{project}/stages/{stage}/deploy",
            post(pages::deploy),
        )
        .route(
            "/projects/{project}/stages/{stage}/rollback",
            post(pages::rollback),
        )
        .route(
            "/projects/{project}/stages/{stage}/instances/{id}/{action}",
            post(pages::instance_action),
        )
        .route("/deploys", get(pages::deploys))
        .route("/nodes", get(pages::nodes))
        .route("/deploys/{id}", get(pages::deployment))
        .route("/deploys/{id}/events", get(pages::deploy_events))
        .route("/events", get(pages::all_events))
        .route("/deploy", get(pages::quick_form).post(pages::quick_deploy))
        .route("/deploy/inspect", post(pages::quick_inspect))
        .route("/settings", get(settings::show).post(settings::general))
        .route(
            "/settings/webhook/regenerate",
            post(settings::regenerate_webhook),
        )
        .route(
            "/settings/notifications/test",
            post(settings::test_notification),
        )
        .route("/settings/registries", post(settings::add_registry))
        .route("/settings/registries/{name}", post(settings::edit_registry))
        .route(
            "/settings/registries/{name}/delete",
            post(settings::delete_registry),
        )
        .route(
            "/settings/registries/{name}/test",
            post(settings::test_registry),
        )
        .route_layer(from_fn_with_state(state, require_session));
    Router::new()
        .route("/login", get(pages::login_form).post(pages::login))
        .route("/static/app.css", get(css))
        .route("/static/app.js", get(js))
        .merge(signed_in)
        .layer(from_fn(security_headers))
}

async fn css() -> Response {
    asset("text/css; charset=utf-8", CSS)
}

async fn js() -> Response {
    asset("text/javascript; charset=utf-8", JS)
}

fn asset(kind: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}

/// Every dashboard answer: no framing by other sites, scripts and styles only from here,
/// pages never cached.
async fn security_headers(req: Request, next: Next) -> Response {
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    r
}

/// The signed-in session of a request (an extension set by [`require_session`]).
#[derive(Debug, Clone)]
pub(crate) struct Current {
    /// The CSRF token every form of the page carries.
    pub(crate) csrf: String,
    /// The session id (to sign out).
    pub(crate) id: String,
}

/// A POSTed form's fields (an extension set by [`require_session`], which already read and
/// checked it). A repeated field keeps its last value.
#[derive(Debug, Clone, Default)]
pub(crate) struct Fields(pub(crate) BTreeMap<String, String>);

impl Fields {
    pub(crate) fn parse(body: &[u8]) -> Self {
        Self(url::form_urlencoded::parse(body).into_owned().collect())
    }

    /// A field, trimmed; `None` when absent or empty.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(|v| v.trim()).filter(|v| !v.is_empty())
    }

    /// A checkbox.
    pub(crate) fn checked(&self, name: &str) -> bool {
        matches!(self.get(name), Some("on" | "true" | "1" | "yes"))
    }
}

/// Where to send a request that has no session: `/login`, remembering a GET's page.
fn to_login(req: &Request) -> Response {
    let next = match *req.method() {
        Method::GET | Method::HEAD => req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .filter(|p| p != "/"),
        _ => None,
    };
    let to = match next {
        Some(n) => format!(
            "/login?next={}",
            url::form_urlencoded::byte_serialize(n.as_bytes()).collect::<String>()
        ),
        None => "/login".to_owned(),
    };
    Redirect::to(&to).into_response()
}

/// Middleware: a live session, else a redirect to `/login`; for a POST, also a form whose
/// `csrf` field is the session's token (403 otherwise). The form's fields go on to the
/// handler as [`Fields`].
pub(crate) async fn require_session(
    State(s): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let found = session::cookie(req.headers(), session::COOKIE)
        .and_then(|id| s.sessions.get(id).map(|sess| (id.to_owned(), sess)));
    let Some((id, sess)) = found else {
        return to_login(&req);
    };
    let current = Current {
        csrf: sess.csrf.clone(),
        id,
    };
    let (mut parts, body) = req.into_parts();
    if parts.method == Method::POST {
        let is_form = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        if !is_form {
            return error_page(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "This address takes a form (application/x-www-form-urlencoded).",
            );
        }
        let bytes = match axum::body::to_bytes(body, MAX_FORM).await {
            Ok(b) => b,
            Err(_) => return error_page(StatusCode::PAYLOAD_TOO_LARGE, "The form is too large."),
        };
        let fields = Fields::parse(&bytes);
        let ok = fields
            .0
            .get("csrf")
            .is_some_and(|t| session::same_token(t, &sess.csrf));
        if !ok {
            return error_page(
                StatusCode::FORBIDDEN,
                "This form is out of date or did not come from this dashboard (its CSRF token \
                 does not match your session). Reload the page and try again.",
            );
        }
        parts.extensions.insert(fields);
        parts.extensions.insert(current);
        return next
            .run(Request::from_parts(parts, Body::from(bytes)))
            .await;
    }
    parts.extensions.insert(current);
    next.run(Request::from_parts(parts, body)).await
}

/// Render a template as an HTML answer.
pub(crate) fn html(status: StatusCode, t: &impl Template) -> Response {
    match t.render() {
        Ok(body) => (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            body,
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "a dashboard template failed to render");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                "the page failed to render (a bug); the server keeps running",
            )
                .into_response()
        }
    }
}

/// A page that says what went wrong.
#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    status: u16,
    reason: &'a str,
    message: &'a str,
}

pub(crate) fn error_page(status: StatusCode, message: &str) -> Response {
    html(
        status,
        &ErrorPage {
            status: status.as_u16(),
            reason: status.canonical_reason().unwrap_or("Error"),
            message,
        },
    )
}

/// An API failure as a page (the same status as the API would answer).
pub(crate) struct PageError(pub(crate) ApiError);

impl From<ApiError> for PageError {
    fn from(e: ApiError) -> Self {
        Self(e)
    }
}

impl From<skipper_core::Error> for PageError {
    fn from(e: skipper_core::Error) -> Self {
        Self(e.into())
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        if self.0.status.is_server_error() {
            tracing::warn!(status = %self.0.status, message = %self.0.message, "a dashboard page failed");
        }
        error_page(self.0.status, &self.0.message)
    }
}

pub(crate) type PageResult = Result<Response, PageError>;

/// The message of an API answer that failed (its envelope), else a generic one.
pub(crate) async fn api_message(r: Response) -> String {
    let bytes = axum::body::to_bytes(r.into_body(), 1 << 20)
        .await
        .unwrap_or_default();
    serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "the request failed".into())
}
