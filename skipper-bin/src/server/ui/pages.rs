//! The dashboard's handlers. Each one reads through [`view`] or calls a `/v1` handler function
//! (the same documents the API takes, the same refusals), then renders a template or
//! redirects: a form answered with a redirect to the page that shows its outcome.

use std::time::Duration;

use askama::Template;
use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use skipper_core::DeployStatus;
use skipper_core::backend::DeploymentFilter;

use super::view::{self, DeployRow, ProjectView};
use super::{Current, Fields, PageResult, api_message, html, session};
use crate::server::error::ApiError;
use crate::server::{AppState, api, events, extract};

/// How long a page waits for the registry's tags before it shows the deploy form without them.
const TAGS_WAIT: Duration = Duration::from_secs(5);

/// A document the `/v1` handlers take, from JSON (their own validation applies).
pub(crate) fn doc<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, ApiError> {
    serde_json::from_value(v).map_err(|e| ApiError::bad_request(e.to_string()))
}

fn no_wait() -> extract::Query<api::WaitQuery> {
    extract::Query(api::WaitQuery { wait: false })
}

/// The dashboard path of a deployment, from a `/v1` answer's `Location` header.
fn deploy_page_of(r: &Response) -> Option<String> {
    let loc = r.headers().get(header::LOCATION)?.to_str().ok()?;
    let id = loc.strip_prefix("/v1/deploys/")?;
    Some(format!("/deploys/{id}"))
}

/// What every page's frame needs: the CSRF token for its forms and which tab is open.
pub(crate) struct Chrome {
    pub(crate) csrf: String,
    pub(crate) tab: &'static str,
}

impl Chrome {
    pub(crate) fn new(c: &Current, tab: &'static str) -> Self {
        Self {
            csrf: c.csrf.clone(),
            tab,
        }
    }
}

/// A message at the top of a page.
pub(crate) struct Notice {
    pub(crate) error: bool,
    pub(crate) text: String,
}

// ---- sign in ------------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    csrf: String,
    next: String,
    error: Option<String>,
}

#[derive(Deserialize)]
pub(crate) struct NextQuery {
    next: Option<String>,
}

/// Only a path on this server (never `//host` or `https://…`): no open redirect.
fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n.to_owned(),
        _ => "/".to_owned(),
    }
}

fn login_page(
    s: &AppState,
    headers: &HeaderMap,
    status: StatusCode,
    next: String,
    error: Option<String>,
) -> Response {
    let csrf = session::random_token();
    let secure = session::over_tls(headers, s.public_url.as_deref());
    let mut r = html(
        status,
        &LoginPage {
            csrf: csrf.clone(),
            next,
            error,
        },
    );
    r.headers_mut().append(
        header::SET_COOKIE,
        session::set_cookie(
            session::LOGIN_COOKIE,
            &csrf,
            Duration::from_secs(3600),
            secure,
        ),
    );
    r
}

/// The sign-in form (a signed-in browser goes on to the dashboard).
pub(crate) async fn login_form(
    State(s): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<NextQuery>,
) -> Response {
    let next = safe_next(q.next.as_deref());
    if session::cookie(&headers, session::COOKIE).is_some_and(|id| s.sessions.get(id).is_some()) {
        return Redirect::to(&next).into_response();
    }
    login_page(&s, &headers, StatusCode::OK, next, None)
}

/// Sign in with the admin token (field `token`): a session cookie, then the page asked for.
pub(crate) async fn login(State(s): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let f = Fields::parse(&body);
    let next = safe_next(f.get("next"));
    let csrf_ok = match (
        session::cookie(&headers, session::LOGIN_COOKIE),
        f.0.get("csrf"),
    ) {
        (Some(c), Some(t)) => session::same_token(c, t),
        _ => false,
    };
    if !csrf_ok {
        return login_page(
            &s,
            &headers,
            StatusCode::FORBIDDEN,
            next,
            Some("The sign-in form expired or did not come from this dashboard: try again.".into()),
        );
    }
    let ok = match f.get("token") {
        Some(t) => s.auth.verify(t).await,
        None => false,
    };
    if !ok {
        return login_page(
            &s,
            &headers,
            StatusCode::UNAUTHORIZED,
            next,
            Some("That is not the admin token.".into()),
        );
    }
    let (id, _) = s.sessions.create();
    let secure = session::over_tls(&headers, s.public_url.as_deref());
    let mut r = Redirect::to(&next).into_response();
    let h = r.headers_mut();
    h.append(
        header::SET_COOKIE,
        session::set_cookie(session::COOKIE, &id, session::LIFETIME, secure),
    );
    h.append(
        header::SET_COOKIE,
        session::set_cookie(session::LOGIN_COOKIE, "", Duration::ZERO, secure),
    );
    r
}

/// Sign out: the session ends here and its cookie is deleted.
pub(crate) async fn logout(
    State(s): State<AppState>,
    Extension(c): Extension<Current>,
    headers: HeaderMap,
) -> Response {
    s.sessions.remove(&c.id);
    let secure = session::over_tls(&headers, s.public_url.as_deref());
    let mut r = Redirect::to("/login").into_response();
    r.headers_mut().append(
        header::SET_COOKIE,
        session::set_cookie(session::COOKIE, "", Duration::ZERO, secure),
    );
    r
}

// ---- dashboard ----------------------------------------------------------------------------

#[derive(Template)]
#[template(path = "dashboard.html")]
struct DashboardPage {
    chrome: Chrome,
    projects: Vec<ProjectView>,
    running: Vec<DeployRow>,
}

/// Every project with its stages, what runs, its state, latest activity and new versions.
pub(crate) async fn dashboard(
    State(s): State<AppState>,
    Extension(c): Extension<Current>,
) -> PageResult {
    let projects = view::projects(&s.engine, None).await?;
    let running = s
        .engine
        .deployments(&DeploymentFilter {
            project: None,
            stage: None,
            limit: Some(100),
        })
        .await?
        .iter()
        .filter(|d| d.status == DeployStatus::InProgress)
        .map(DeployRow::of)
        .collect();
    Ok(html(
        StatusCode::OK,
        &DashboardPage {
            chrome: Chrome::new(&c, "dashboard"),
            projects,
            running,
        },
    ))
}

// ---- project ------------------------------------------------------------------------------

/// The tags a stage's deploy form offers: the registry's (what `GET /v1/projects/{p}/tags?stage=`
/// answers), or why there are none.
pub(crate) struct TagChoice {
    pub(crate) stage: String,
    pub(crate) tags: Vec<String>,
    pub(crate) error: Option<String>,
    /// The tag to preselect (the "update available" link's).
    pub(crate) selected: Option<String>,
}

#[derive(Template)]
#[template(path = "project.html")]
struct ProjectPage {
    chrome: Chrome,
    p: ProjectView,
    tags: Vec<TagChoice>,
    notice: Option<Notice>,
}

impl ProjectPage {
    fn tags_of(&self, stage: &str) -> Option<&TagChoice> {
        self.tags.iter().find(|t| t.stage == stage)
    }
}

#[derive(Deserialize)]
pub(crate) struct ProjectQuery {
    /// Preselect this tag in the deploy form of `stage`.
    tag: Option<String>,
    stage: Option<String>,
}

async fn stage_tags(s: &AppState, project: &str, stage: &str) -> TagChoice {
    let q = match doc::<api::TagsQuery>(json!({ "stage": stage })) {
        Ok(q) => q,
        Err(e) => {
            return TagChoice {
                stage: stage.to_owned(),
                tags: Vec::new(),
                error: Some(e.message),
                selected: None,
            };
        }
    };
    let call = api::tags(
        State(s.clone()),
        extract::Path(project.to_owned()),
        extract::Query(q),
    );
    let (tags, error) = match tokio::time::timeout(TAGS_WAIT, call).await {
        Ok(Ok(axum::Json(t))) => (t, None),
        Ok(Err(e)) => (Vec::new(), Some(e.message)),
        Err(_) => (
            Vec::new(),
            Some(format!(
                "the registry did not answer within {}s",
                TAGS_WAIT.as_secs()
            )),
        ),
    };
    TagChoice {
        stage: stage.to_owned(),
        tags,
        error,
        selected: None,
    }
}

async fn project_page(
    s: &AppState,
    c: &Current,
    name: &str,
    q: Option<ProjectQuery>,
    notice: Option<Notice>,
    status: StatusCode,
) -> PageResult {
    let p = view::projects(&s.engine, Some(name))
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::not_found(format!("no project {name:?}")))?;
    let mut tags =
        futures::future::join_all(p.stages.iter().map(|st| stage_tags(s, name, &st.name))).await;
    if let Some(ProjectQuery {
        tag: Some(tag),
        stage: Some(stage),
    }) = q
        && let Some(t) = tags.iter_mut().find(|t| t.stage == stage)
    {
        t.selected = Some(tag);
    }
    Ok(html(
        status,
        &ProjectPage {
            chrome: Chrome::new(c, "dashboard"),
            p,
            tags,
            notice,
        },
    ))
}

/// A project: each stage's instances with their actions, a deploy form, rollback, history.
pub(crate) async fn project(
    State(s): State<AppState>,
    Extension(c): Extension<Current>,
    Path(name): Path<String>,
    Query(q): Query<ProjectQuery>,
) -> PageResult {
    project_page(&s, &c, &name, Some(q), None, StatusCode::OK).await
}

/// The project page again, with what was refused at the top.
async fn refused(s: &AppState, c: &Current, project: &str, e: ApiError) -> PageResult {
    if e.status == StatusCode::NOT_FOUND && s.engine.store().get_project(project).await?.is_none() {
        return Err(e.into());
    }
    project_page(
        s,
        c,
        project,
        None,
        Some(Notice {
            error: true,
            text: e.message,
        }),
        e.status,
    )
    .await
}

/// Deploy a tag to a stage (`tag`, and `confirm` for a stage that asks), then its live page.
pub(crate) async fn deploy(
    State(s): State<AppState>,
    Extension(c): Extension<Current>,
    Extension(f): Extension<Fields>,
    Path((project, stage)): Path<(String, String)>,
    headers: HeaderMap,
) -> PageResult {
    let body = match doc::<api::DeployBody>(json!({
        "tag": f.get("tag").unwrap_or_default(),
        "confirm": f.checked("confirm"),
    })) {
        Ok(b) => b,
        Err(e) => return refused(&s, &c, &project, e).await,
    };
    let r = api::deploy(
        State(s.clone()),
        extract::Path((project.clone(), stage)),
        no_wait(),
        headers,
        extract::Body(body),
    )
    .await;
    match r {
        Ok(r) if r.status().is_success() => match deploy_page_of(&r) {
            Some(to) => Ok(Redirect::to(&to).into_response()),
            None => Ok(Redirect::to(&format!("/projects/{project}")).into_response()),
        },
        Ok(r) => {
            let status = r.status();
            let text = api_message(r).await;
            refused(&s, &c, &project, ApiError::new(status, "refused", text)).await
        }
        Err(e) => refused(&s, &c, &project, e).await,
    }
}

/// Roll a stage back to its previous successful version, then that deployment's page.
pub(crate) async fn rollback(
    State(s): State<AppState>,
    Extension(c): Extension<Current>,
    Path((project, stage)): Path<(String, String)>,
) -> PageResult {
    match api::rollback(State(s.clone()), extract::Path((project.clone(), stage))).await {
        Ok(axum::Json(v)) => {
            let to = match v["deploy_id"].as_str() {
                Some(id) => format!("/deploys/{id}"),
                None => format!("/projects/{project}"),
            };
            Ok(Redirect::to(&to).into_response())
        }
        Err(e) => refused(&s, &c, &project, e).await,
    }
}

/// Stop, start, restart or remove an instance, then the project page.
pub(crate) async fn instance_action(
    State(s): State<AppState>,
    Extension(c): Extension<Current>,
    Path((project, stage, id, action)): Path<(String, String, String, String)>,
) -> PageResult {
    let st = State(s.clone());
    let path = extract::Path((project.clone(), stage.clone(), id));
    let r = match action.as_str() {
        "stop" => api::stop_instance(st, path).await,
        "start" => api::start_instance(st, path).await,
        "restart" => api::restart_instance(st, path).await,
        "remove" => api::remove_instance(st, path).await,
        other => Err(ApiError::not_found(format!(
            "no instance action {other:?} (stop, start, restart, remove)"
        ))),
    };
    match r {
        Ok(_) => Ok(Redirect::to(&format!("/projects/{project}#stage-{stage}")).into_response()),
        Err(e) => refused(&s, &c, &project, e).await,
    }
}

// ---- deploys ------------------------------------------------------------------------------

#[derive(Deserialize)]
pub(crate) struct DeploysQuery {
    project: Option<String>,
    stage: Option<String>,
    status: Option<String>,
    offset: Option<usize>,
}

#[derive(Template)]
#[template(path = "deploys.html")]
struct DeploysPage {
    chrome: Chrome,
    running: Vec<DeployRow>,
    rows: Vec<DeployRow>,
    projects: Vec<String>,
    project: String,
    stage: String,
    status: String,
    /// The next page's query string, when there may be one.
    more: Option<String>,
}

const PAGE: usize = 100;

/// Every deployment, newest first, what runs now on top; filtered by project, stage, outcome.
pub(crate) async fn deploys(
    State(s): State<AppState>,
    Extension(c): Extension<Current>,
    Query(q): Query<DeploysQuery>,
) -> PageResult {
    let nonempty = |v: Option<String>| v.filter(|v| !v.trim().is_empty());
    let (project, stage, status) = (nonempty(q.project), nonempty(q.stage), nonempty(q.status));
    let wanted = match status.as_deref() {
        None => None,
        Some("in_progress") => Some(DeployStatus::InProgress),
        Some("succeeded") => Some(DeployStatus::Succeeded),
        Some("failed") => Some(DeployStatus::Failed),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "status: {other:?} is not in_progress, succeeded or failed"
            ))
            .into());
        }
    };
    let offset = q.offset.unwrap_or(0).min(100_000);
    let all = s
        .engine
        .deployments(&DeploymentFilter {
            project: project.clone(),
            stage: stage.clone(),
            limit: wanted.is_none().then_some(offset + PAGE + 1),
        })
        .await?;
    let running: Vec<DeployRow> = if offset == 0 && wanted.is_none() {
        all.iter()
            .filter(|d| d.status == DeployStatus::InProgress)
            .map(DeployRow::of)
            .collect()
    } else {
        Vec::new()
    };
    let mut rows: Vec<DeployRow> = all
        .iter()
        .filter(|d| wanted.is_none_or(|w| d.status == w))
        .filter(|d| wanted.is_some() || d.status != DeployStatus::InProgress || offset > 0)
        .skip(offset)
        .take(PAGE + 1)
        .map(DeployRow::of)
        .collect();
    let more = (rows.len() > PAGE).then(|| {
        let mut qs = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("project", &project),
            ("stage", &stage),
            ("status", &status),
        ] {
            if let Some(v) = v {
                qs.append_pair(k, v);
            }
        }
        qs.append_pair("offset", &(offset + PAGE).to_string());
        qs.finish()
    });
    rows.truncate(PAGE);
    let projects = s
        .engine
        .store()
        .list_projects()
        .await?
        .into_iter()
        .map(|p| p.name)
        .collect();
    Ok(html(
        StatusCode::OK,
        &DeploysPage {
            chrome: Chrome::new(&c, "deploys"),
            running,
            rows,
            projects,
            project: project.unwrap_or_default(),
            stage: stage.unwrap_or_default(),
            status: status.unwrap_or_default(),
            more,
        },
    ))
}

/// One step as the deploy page lists it.
pub(crate) struct StepView {
    pub(crate) n: usize,
    pub(crate) step: &'static str,
    pub(crate) status: String,
    pub(crate) message: String,
    pub(crate) at: String,
}

#[derive(Template)]
#[template(path = "deploy.html")]
struct DeployPage {
    chrome: Chrome,
    d: DeployRow,
    steps: Vec<StepView>,
    failed_step: Option<String>,
    cause: Option<String>,
    kind: Option<String>,
    logs: Vec<String>,
    instance: Option<String>,
    url: Option<String>,
    digest: Option<String>,
    live: bool,
    /// Another instance served the stage when the deploy began.
    had_previous: bool,
}

/// One deployment: its steps (live while it runs), then the outcome; a failure shows the step,
/// the cause (what the health probe saw is part of it) and the container's last log lines.
pub(crate) async fn deployment(
    State(s): State<AppState>,
    Extension(c): Extension<Current>,
    Path(id): Path<String>,
) -> PageResult {
    let d = s
        .engine
        .store()
        .get_deployment(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no deployment {id:?}")))?;
    let (instance, url) = crate::app::deployment_parts(&s.engine, &d)
        .await
        .unwrap_or((None, None));
    let steps = d
        .steps
        .iter()
        .enumerate()
        .map(|(n, r)| StepView {
            n,
            step: r.step.as_str(),
            status: serde_json::to_value(r.status)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            message: r.message.clone(),
            at: r.at.format("%H:%M:%S").to_string(),
        })
        .collect();
    Ok(html(
        StatusCode::OK,
        &DeployPage {
            chrome: Chrome::new(&c, "deploys"),
            d: DeployRow::of(&d),
            steps,
            failed_step: d.error.as_ref().map(|e| e.step.as_str().to_owned()),
            cause: d.error.as_ref().map(|e| e.message.clone()),
            kind: d.error.as_ref().map(|e| e.kind.as_str().to_owned()),
            logs: d.error.as_ref().map(|e| e.logs.clone()).unwrap_or_default(),
            instance: instance.map(|i| i.id),
            url,
            digest: d.digest.clone(),
            live: d.status == DeployStatus::InProgress,
            had_previous: d.previous_instance.is_some(),
        },
    ))
}

/// `GET /v1/deploys/{id}/events`, for the deploy page's script.
pub(crate) async fn deploy_events(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    events::deploy_events(State(s), extract::Path(id), headers).await
}

/// `GET /v1/events`, for the pages' script.
pub(crate) async fn all_events(State(s): State<AppState>) -> Response {
    events::all_events(State(s)).await
}

// ---- quick deploy -------------------------------------------------------------------------

/// The quick-deploy form: an image first; after inspecting it, its defaults to change.
#[derive(Template)]
#[template(path = "quick.html")]
struct QuickPage {
    chrome: Chrome,
    image: String,
    /// The image was inspected: show the second form.
    inspected: bool,
    project: String,
    stage: String,
    port: String,
    health_path: String,
    subdomain: String,
    has_healthcheck: bool,
    labels: Vec<(String, String)>,
    error: Option<String>,
    /// The field the error is about, when it names one.
    field: Option<String>,
}

impl QuickPage {
    fn new(c: &Current) -> Self {
        Self {
            chrome: Chrome::new(c, "quick"),
            image: String::new(),
            inspected: false,
            project: String::new(),
            stage: "dev".into(),
            port: String::new(),
            health_path: String::new(),
            subdomain: String::new(),
            has_healthcheck: false,
            labels: Vec::new(),
            error: None,
            field: None,
        }
    }

    fn failed(mut self, message: String) -> Self {
        let field = message
            .split_once(':')
            .map(|(f, _)| f.trim().to_owned())
            .filter(|f| {
                [
                    "image",
                    "project",
                    "stage",
                    "port",
                    "health_path",
                    "subdomain",
                ]
                .contains(&f.as_str())
            });
        self.field = field;
        self.error = Some(message);
        self
    }

    fn error_for(&self, field: &str) -> Option<&str> {
        match (&self.field, &self.error) {
            (Some(f), Some(e)) if f == field => Some(e),
            _ => None,
        }
    }

    fn general_error(&self) -> Option<&str> {
        match (&self.field, &self.error) {
            (None, Some(e)) => Some(e),
            _ => None,
        }
    }
}

#[derive(Deserialize)]
pub(crate) struct ImageQuery {
    image: Option<String>,
}

/// Step 1: paste an image reference.
pub(crate) async fn quick_form(
    Extension(c): Extension<Current>,
    Query(q): Query<ImageQuery>,
) -> Response {
    let mut page = QuickPage::new(&c);
    page.image = q.image.unwrap_or_default();
    html(StatusCode::OK, &page)
}

/// Step 2: pull and inspect the image (`POST /v1/deploy/inspect`), then the form pre-filled
/// with what it says about itself.
pub(crate) async fn quick_inspect(
    State(s): State<AppState>,
    Extension(c): Extension<Current>,
    Extension(f): Extension<Fields>,
) -> Response {
    let mut page = QuickPage::new(&c);
    page.image = f.get("image").unwrap_or_default().to_owned();
    let r = match doc::<api::InspectBody>(json!({ "image": page.image })) {
        Ok(b) => api::inspect(State(s), extract::Body(b)).await,
        Err(e) => Err(e),
    };
    match r {
        Ok(axum::Json(v)) => {
            let text = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
            page.inspected = true;
            page.image = text("image");
            page.project = text("project");
            page.stage = text("stage");
            page.port = v["port"]
                .as_u64()
                .map(|p| p.to_string())
                .unwrap_or_default();
            page.health_path = text("health_path");
            page.has_healthcheck = v["has_healthcheck"].as_bool().unwrap_or(false);
            page.labels = v["labels"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                        .collect()
                })
                .unwrap_or_default();
            html(StatusCode::OK, &page)
        }
        Err(e) => {
            let status = e.status;
            let message = if e.message.starts_with("image") {
                e.message
            } else {
                format!("image: {}", e.message)
            };
            html(status, &page.failed(message))
        }
    }
}

/// Step 3: deploy (`POST /v1/deploy/quick`), then the live deploy page.
pub(crate) async fn quick_deploy(
    State(s): State<AppState>,
    Extension(c): Extension<Current>,
    Extension(f): Extension<Fields>,
    headers: HeaderMap,
) -> Response {
    let mut page = QuickPage::new(&c);
    page.inspected = true;
    let field = |k: &str| f.get(k).unwrap_or_default().to_owned();
    page.image = field("image");
    page.project = field("project");
    page.stage = field("stage");
    page.port = field("port");
    page.health_path = field("health_path");
    page.subdomain = field("subdomain");
    let port = match f.get("port").map(str::parse::<u16>) {
        None => None,
        Some(Ok(p)) if p > 0 => Some(p),
        Some(_) => {
            return html(
                StatusCode::BAD_REQUEST,
                &page.failed("port: give a number from 1 to 65535".into()),
            );
        }
    };
    let body = json!({
        "image": page.image,
        "project": f.get("project"),
        "stage": f.get("stage"),
        "port": port,
        "health_path": f.get("health_path"),
        "subdomain": f.get("subdomain"),
    });
    let r = match doc::<api::QuickBody>(body) {
        Ok(b) => api::quick(State(s), no_wait(), headers, extract::Body(b)).await,
        Err(e) => Err(e),
    };
    match r {
        Ok(r) if r.status().is_success() => match deploy_page_of(&r) {
            Some(to) => Redirect::to(&to).into_response(),
            None => Redirect::to("/deploys").into_response(),
        },
        Ok(r) => {
            let status = r.status();
            let text = api_message(r).await;
            html(status, &page.failed(text))
        }
        Err(e) => html(e.status, &page.failed(e.message)),
    }
}

impl TagChoice {
    pub(crate) fn is_selected(&self, tag: &str) -> bool {
        self.selected.as_deref() == Some(tag)
    }
}

/// One node as the Nodes page shows it.
struct NodeRow {
    id: String,
    role: String,
    region: Option<String>,
    status: &'static str,
    online: bool,
    last_heartbeat: Option<String>,
    /// The (project, stage) pairs that run there.
    stages: Vec<(String, String)>,
    /// The tenants whose stacks run there.
    tenants: Vec<String>,
}

#[derive(Template)]
#[template(path = "nodes.html")]
struct NodesPage {
    chrome: Chrome,
    nodes: Vec<NodeRow>,
}

/// Every node: online or offline, its last heartbeat, and what runs there.
pub(crate) async fn nodes(
    State(s): State<AppState>,
    Extension(c): Extension<Current>,
) -> PageResult {
    let projects = s.engine.store().list_projects().await?;
    let tenants = crate::server::tenants::nodes_of(&s.nodes)?;
    let nodes = s
        .nodes
        .list()
        .map_err(ApiError::from)?
        .into_iter()
        .map(|n| NodeRow {
            stages: projects
                .iter()
                .flat_map(|p| {
                    p.stages
                        .keys()
                        .filter(|st| p.node_of(st) == Some(n.id.as_str()))
                        .map(|st| (p.name.clone(), st.clone()))
                })
                .collect(),
            tenants: tenants
                .iter()
                .filter(|(_, node)| *node == n.id)
                .map(|(t, _)| t.clone())
                .collect(),
            online: n.status == "online",
            id: n.id,
            role: n.role,
            region: n.region,
            status: n.status,
            last_heartbeat: n.last_heartbeat,
        })
        .collect();
    Ok(html(
        StatusCode::OK,
        &NodesPage {
            chrome: Chrome::new(&c, "nodes"),
            nodes,
        },
    ))
}
