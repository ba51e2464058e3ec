//! Projects config: add, edit and delete projects and their stages, and the whole config as
//! YAML (export, import). Each form becomes the document the `/v1` project and stage handlers
//! take (what `skipper.yaml` holds); their validation errors are shown next to the field they
//! name (`config error at projects.web.stages.dev.tag_pattern: …`).
//!
//! The forms hold every field of `skipper.yaml`'s projects and stages; editing lays them over
//! the stored document, so anything a later version adds and the form does not show yet is
//! kept.

use std::collections::BTreeMap;

use askama::Template;
use axum::Extension;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde_json::{Map, Value, json};
use skipper_core::Project;
use skipper_core::config::Config;

use super::pages::{Chrome, Notice};
use super::{Current, Fields, PageResult, html};
use crate::server::error::ApiError;
use crate::server::{AppState, api, extract};

/// The project fields of the form, as text.
#[derive(Default, Clone)]
pub(crate) struct ProjectForm {
    pub(crate) name: String,
    pub(crate) image: String,
    pub(crate) registry: String,
    pub(crate) port: String,
    pub(crate) health_path: String,
    pub(crate) health_interval: String,
    pub(crate) health_timeout: String,
    pub(crate) health_deadline: String,
    pub(crate) health_settle: String,
    pub(crate) network: String,
    /// The node the project runs on (empty: the server's own host).
    pub(crate) node: String,
    pub(crate) route: RouteForm,
    /// `KEY=value` lines.
    pub(crate) env: String,
    /// One volume a line.
    pub(crate) volumes: String,
    /// `key=value` lines.
    pub(crate) labels: String,
}

/// The proxy route's options (`route:`), as the form has them.
#[derive(Default, Clone)]
pub(crate) struct RouteForm {
    pub(crate) websocket: bool,
    pub(crate) block_exploits: bool,
    pub(crate) http2: bool,
    pub(crate) ssl_forced: bool,
    pub(crate) adopt: bool,
    pub(crate) certificate_id: String,
    pub(crate) access_list_id: String,
    pub(crate) advanced_config: String,
}

impl RouteForm {
    fn of(r: &skipper_core::model::RouteOptions) -> Self {
        let id = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_default();
        Self {
            websocket: r.websocket,
            block_exploits: r.block_exploits,
            http2: r.http2,
            ssl_forced: r.ssl_forced,
            adopt: r.adopt,
            certificate_id: id(r.certificate_id),
            access_list_id: id(r.access_list_id),
            advanced_config: r.advanced_config.clone().unwrap_or_default(),
        }
    }

    fn from_fields(f: &Fields) -> Self {
        let t = |k: &str| f.get(k).unwrap_or_default().trim().to_owned();
        Self {
            websocket: f.checked("route_websocket"),
            block_exploits: f.checked("route_block_exploits"),
            http2: f.checked("route_http2"),
            ssl_forced: f.checked("route_ssl_forced"),
            adopt: f.checked("route_adopt"),
            certificate_id: t("route_certificate_id"),
            access_list_id: t("route_access_list_id"),
            advanced_config: f
                .get("route_advanced_config")
                .unwrap_or_default()
                .to_owned(),
        }
    }

    /// Lay the form over `route` (the document's `route:`).
    fn apply(&self, route: &mut Map<String, Value>) -> Result<(), ApiError> {
        for (k, v) in [
            ("websocket", self.websocket),
            ("block_exploits", self.block_exploits),
            ("http2", self.http2),
            ("ssl_forced", self.ssl_forced),
            ("adopt", self.adopt),
        ] {
            route.insert(k.into(), v.into());
        }
        for (k, v) in [
            ("certificate_id", &self.certificate_id),
            ("access_list_id", &self.access_list_id),
        ] {
            let id = match v.as_str() {
                "" => Value::Null,
                v => Value::from(v.parse::<u64>().map_err(|_| {
                    ApiError::bad_request(format!("route_{k}: give the proxy's numeric id"))
                })?),
            };
            route.insert(k.into(), id);
        }
        let advanced = self.advanced_config.trim();
        route.insert(
            "advanced_config".into(),
            if advanced.is_empty() {
                Value::Null
            } else {
                Value::String(self.advanced_config.clone())
            },
        );
        Ok(())
    }
}

/// One stage's fields, as text.
#[derive(Default, Clone)]
pub(crate) struct StageForm {
    pub(crate) name: String,
    pub(crate) tag_pattern: String,
    pub(crate) auto_deploy: bool,
    pub(crate) max_instances: String,
    pub(crate) confirm: bool,
    pub(crate) promote_from: String,
    pub(crate) subdomain: String,
    /// The node the stage runs on (empty: the project's).
    pub(crate) node: String,
}

fn lines(m: &BTreeMap<String, String>) -> String {
    m.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("\n")
}

impl ProjectForm {
    fn of(p: &Project) -> Self {
        Self {
            name: p.name.clone(),
            image: p.image.clone(),
            registry: p.registry.clone().unwrap_or_default(),
            port: p.port.map(|p| p.to_string()).unwrap_or_default(),
            health_path: p.health.path.clone().unwrap_or_default(),
            health_interval: duration(p.health.interval),
            health_timeout: duration(p.health.timeout),
            health_deadline: duration(p.health.deadline),
            health_settle: duration(p.health.settle),
            network: p.network.clone().unwrap_or_default(),
            node: p.node.clone().unwrap_or_default(),
            route: RouteForm::of(&p.route),
            env: lines(&p.env),
            volumes: p.volumes.join("\n"),
            labels: lines(&p.labels),
        }
    }

    fn from_fields(f: &Fields) -> Self {
        let t = |k: &str| f.get(k).unwrap_or_default().to_owned();
        Self {
            name: t("name"),
            image: t("image"),
            registry: t("registry"),
            port: t("port"),
            health_path: t("health_path"),
            health_interval: t("health_interval"),
            health_timeout: t("health_timeout"),
            health_deadline: t("health_deadline"),
            health_settle: t("health_settle"),
            network: t("network"),
            node: t("node"),
            route: RouteForm::from_fields(f),
            env: t("env"),
            volumes: t("volumes"),
            labels: t("labels"),
        }
    }

    /// Lay the form over `doc` (a project document).
    fn apply(&self, doc: &mut Map<String, Value>) -> Result<(), ApiError> {
        let opt = |v: &str| (!v.is_empty()).then(|| Value::String(v.to_owned()));
        doc.insert("image".into(), self.image.clone().into());
        set(doc, "registry", opt(&self.registry));
        set(doc, "network", opt(&self.network));
        set(doc, "node", opt(self.node.trim()));
        let port = match self.port.as_str() {
            "" => None,
            p => Some(Value::from(p.parse::<u16>().map_err(|_| {
                ApiError::bad_request("port: give a number from 1 to 65535")
            })?)),
        };
        set(doc, "port", port);
        let health = doc
            .entry("healthcheck")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .ok_or_else(|| ApiError::bad_request("healthcheck: not an object"))?;
        set(health, "path", opt(&self.health_path));
        for (key, text) in [
            ("interval", &self.health_interval),
            ("timeout", &self.health_timeout),
            ("deadline", &self.health_deadline),
            ("settle", &self.health_settle),
        ] {
            let text = text.trim();
            if !text.is_empty() && humantime::parse_duration(text).is_err() {
                return Err(ApiError::bad_request(format!(
                    "health_{key}: give a duration like 3s, 500ms or 1m 30s (not {text:?})"
                )));
            }
            set(health, key, opt(text));
        }
        let route = doc
            .entry("route")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .ok_or_else(|| ApiError::bad_request("route: not an object"))?;
        self.route.apply(route)?;
        doc.insert("env".into(), pairs("env", &self.env)?);
        doc.insert("labels".into(), pairs("labels", &self.labels)?);
        doc.insert(
            "volumes".into(),
            self.volumes
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(|l| Value::String(l.to_owned()))
                .collect(),
        );
        Ok(())
    }
}

fn duration(d: std::time::Duration) -> String {
    humantime::format_duration(d).to_string()
}

fn set(doc: &mut Map<String, Value>, key: &str, v: Option<Value>) {
    match v {
        Some(v) => {
            doc.insert(key.into(), v);
        }
        None => {
            doc.remove(key);
        }
    }
}

/// `key=value` lines as a map; a line without `=` is an error naming it.
fn pairs(field: &str, text: &str) -> Result<Value, ApiError> {
    let mut m = Map::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (k, v) = line.split_once('=').ok_or_else(|| {
            ApiError::bad_request(format!(
                "{field}: line {} is not key=value: {line:?}",
                n + 1
            ))
        })?;
        m.insert(k.trim().to_owned(), v.trim().to_owned().into());
    }
    Ok(Value::Object(m))
}

impl StageForm {
    fn of(s: &skipper_core::Stage) -> Self {
        Self {
            name: s.name.clone(),
            tag_pattern: s.tag_pattern.clone(),
            auto_deploy: s.auto_deploy,
            max_instances: s.max_instances.to_string(),
            confirm: s.confirm,
            promote_from: s.promote_from.clone().unwrap_or_default(),
            subdomain: s.subdomain.clone().unwrap_or_default(),
            node: s.node.clone().unwrap_or_default(),
        }
    }

    fn new_default() -> Self {
        Self {
            name: "dev".into(),
            tag_pattern: "*".into(),
            max_instances: "1".into(),
            ..Self::default()
        }
    }

    fn from_fields(f: &Fields, prefix: &str) -> Self {
        let t = |k: &str| {
            f.get(&format!("{prefix}{k}"))
                .unwrap_or_default()
                .to_owned()
        };
        Self {
            name: t("name"),
            tag_pattern: t("tag_pattern"),
            auto_deploy: f.checked(&format!("{prefix}auto_deploy")),
            max_instances: t("max_instances"),
            confirm: f.checked(&format!("{prefix}confirm")),
            promote_from: t("promote_from"),
            subdomain: t("subdomain"),
            node: t("node").trim().to_owned(),
        }
    }

    /// The stage document (`name` left out).
    fn doc(&self) -> Result<Value, ApiError> {
        let mut v = json!({
            "tag_pattern": if self.tag_pattern.is_empty() { "*" } else { self.tag_pattern.as_str() },
            "auto_deploy": self.auto_deploy,
            "confirm": self.confirm,
        });
        if !self.max_instances.is_empty() {
            v["max_instances"] = self
                .max_instances
                .parse::<u32>()
                .map_err(|_| ApiError::bad_request("max_instances: give a whole number"))?
                .into();
        }
        if !self.promote_from.is_empty() {
            v["promote_from"] = self.promote_from.clone().into();
        }
        if !self.subdomain.is_empty() {
            v["subdomain"] = self.subdomain.clone().into();
        }
        if !self.node.is_empty() {
            v["node"] = self.node.clone().into();
        }
        Ok(v)
    }
}

/// Which form and field an error is about.
#[derive(Default)]
pub(crate) struct FieldError {
    /// `project`, `new-stage`, or a stage's name.
    pub(crate) form: String,
    pub(crate) field: String,
    pub(crate) message: String,
}

const PROJECT_FIELDS: [&str; 12] = [
    "image",
    "registry",
    "port",
    "healthcheck",
    "network",
    "node",
    "route",
    "env",
    "volumes",
    "labels",
    "name",
    "stages",
];
const STAGE_FIELDS: [&str; 7] = [
    "node",
    "tag_pattern",
    "max_instances",
    "promote_from",
    "subdomain",
    "auto_deploy",
    "confirm",
];

/// The field a refusal names: `config error at projects.<p>.<field>…`, `…stages.<s>.<field>`,
/// or a `<field>: …` of our own.
fn field_of(message: &str, form: &str) -> Option<FieldError> {
    let path = message
        .strip_prefix("config error at ")
        .and_then(|m| m.split([' ', ':']).next());
    let (form, field) = match path {
        Some(path) => {
            let parts: Vec<&str> = path.split('.').collect();
            match parts.as_slice() {
                ["projects", _, "stages", stage, field, ..] if STAGE_FIELDS.contains(field) => {
                    let f = if form == "new-stage" || form == "project" {
                        form.to_owned()
                    } else {
                        (*stage).to_owned()
                    };
                    (f, (*field).to_owned())
                }
                [
                    "projects",
                    _,
                    "healthcheck",
                    t @ ("interval" | "timeout" | "deadline" | "settle"),
                    ..,
                ] => ("project".into(), format!("health_{t}")),
                ["projects", _, "healthcheck", ..] => ("project".into(), "health_path".into()),
                ["projects", _, field, ..] if PROJECT_FIELDS.contains(field) => {
                    ("project".into(), (*field).to_owned())
                }
                ["projects", _] => ("project".into(), "name".into()),
                _ => return None,
            }
        }
        None => {
            let (field, _) = message.split_once(':')?;
            let field = field.trim();
            let known = PROJECT_FIELDS.contains(&field)
                || STAGE_FIELDS.contains(&field)
                || [
                    "health_path",
                    "health_interval",
                    "health_timeout",
                    "health_deadline",
                    "health_settle",
                    "route_certificate_id",
                    "route_access_list_id",
                    "stage",
                ]
                .contains(&field);
            if !known {
                return None;
            }
            (form.to_owned(), field.to_owned())
        }
    };
    Some(FieldError {
        form,
        field,
        message: message.to_owned(),
    })
}

#[derive(Template)]
#[template(path = "project_edit.html")]
struct EditPage {
    chrome: Chrome,
    /// Editing an existing project (else making one).
    existing: bool,
    p: ProjectForm,
    /// The first stage of a new project, or the new-stage form of an existing one.
    new_stage: StageForm,
    stages: Vec<StageForm>,
    notice: Option<Notice>,
    error: FieldError,
}

impl EditPage {
    fn error_for(&self, form: &str, field: &str) -> Option<&str> {
        (self.error.form == form && self.error.field == field)
            .then_some(self.error.message.as_str())
    }
}

fn edit_page(
    c: &Current,
    existing: bool,
    p: ProjectForm,
    new_stage: StageForm,
    stages: Vec<StageForm>,
    problem: Option<(StatusCode, String, &str)>,
) -> Response {
    let (status, notice, error) = match problem {
        None => (StatusCode::OK, None, FieldError::default()),
        Some((status, message, form)) => match field_of(&message, form) {
            Some(e) => (status, None, e),
            None => (
                status,
                Some(Notice {
                    error: true,
                    text: message,
                }),
                FieldError::default(),
            ),
        },
    };
    html(
        status,
        &EditPage {
            chrome: Chrome::new(c, "dashboard"),
            existing,
            p,
            new_stage,
            stages,
            notice,
            error,
        },
    )
}

/// A new project's form (with its first stage), and the YAML import.
pub(crate) async fn new_form(Extension(c): Extension<Current>) -> Response {
    edit_page(
        &c,
        false,
        {
            let d = skipper_core::model::HealthCheck::default();
            ProjectForm {
                health_interval: duration(d.interval),
                health_timeout: duration(d.timeout),
                health_deadline: duration(d.deadline),
                health_settle: duration(d.settle),
                ..ProjectForm::default()
            }
        },
        StageForm::new_default(),
        Vec::new(),
        None,
    )
}

/// Make a project (`POST /v1/projects`), then its page.
pub(crate) async fn create(
    State(s): State<AppState>,
    Extension(c): Extension<Current>,
    Extension(f): Extension<Fields>,
) -> Response {
    let p = ProjectForm::from_fields(&f);
    let stage = StageForm::from_fields(&f, "stage_");
    let r = async {
        let mut doc = Map::new();
        p.apply(&mut doc)?;
        doc.insert("name".into(), p.name.clone().into());
        let mut stages = Map::new();
        if !stage.name.is_empty() {
            stages.insert(stage.name.clone(), stage.doc()?);
        }
        doc.insert("stages".into(), Value::Object(stages));
        api::create_project(State(s.clone()), extract::Body(Value::Object(doc))).await
    }
    .await;
    match r {
        Ok(_) => Redirect::to(&format!("/projects/{}", p.name)).into_response(),
        Err(e) => edit_page(
            &c,
            false,
            p,
            stage,
            Vec::new(),
            Some((e.status, e.message, "project")),
        ),
    }
}

async fn stored(s: &AppState, name: &str) -> Result<Project, ApiError> {
    s.engine
        .store()
        .get_project(name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no project {name:?}")))
}

fn stages_of(p: &Project) -> Vec<StageForm> {
    p.stages.values().map(StageForm::of).collect()
}

/// An existing project's form: its fields, each stage's, a new stage's, delete buttons.
pub(crate) async fn edit_form(
    State(s): State<AppState>,
    Extension(c): Extension<Current>,
    Path(name): Path<String>,
) -> PageResult {
    let p = stored(&s, &name).await?;
    Ok(edit_page(
        &c,
        true,
        ProjectForm::of(&p),
        StageForm {
            name: String::new(),
            ..StageForm::new_default()
        },
        stages_of(&p),
        None,
    ))
}

/// The edit page again with a refusal, the rest as stored.
async fn refused(
    s: &AppState,
    c: &Current,
    name: &str,
    form: ProjectForm,
    new_stage: StageForm,
    e: ApiError,
    which: &str,
) -> PageResult {
    let p = stored(s, name).await?;
    Ok(edit_page(
        c,
        true,
        form,
        new_stage,
        stages_of(&p),
        Some((e.status, e.message, which)),
    ))
}

/// Save a project's fields (`PUT /v1/projects/{name}`; its stages are kept).
pub(crate) async fn update(
    State(s): State<AppState>,
    Extension(c): Extension<Current>,
    Extension(f): Extension<Fields>,
    Path(name): Path<String>,
) -> PageResult {
    let current = stored(&s, &name).await?;
    let mut form = ProjectForm::from_fields(&f);
    form.name = name.clone();
    let r = async {
        let mut doc = Config::project_document(&current);
        let obj = doc
            .as_object_mut()
            .ok_or_else(|| ApiError::bad_request("not an object"))?;
        form.apply(obj)?;
        api::put_project(
            State(s.clone()),
            extract::Path(name.clone()),
            extract::Body(doc),
        )
        .await
    }
    .await;
    match r {
        Ok(_) => Ok(Redirect::to(&format!("/projects/{name}")).into_response()),
        Err(e) => {
            let blank = StageForm {
                name: String::new(),
                ..StageForm::new_default()
            };
            refused(&s, &c, &name, form, blank, e, "project").await
        }
    }
}

/// Add a stage (`POST /v1/projects/{name}/stages`).
pub(crate) async fn add_stage(
    State(s): State<AppState>,
    Extension(c): Extension<Current>,
    Extension(f): Extension<Fields>,
    Path(name): Path<String>,
) -> PageResult {
    let current = stored(&s, &name).await?;
    let stage = StageForm::from_fields(&f, "stage_");
    let r = async {
        let mut doc = stage.doc()?;
        doc["name"] = stage.name.clone().into();
        api::create_stage(
            State(s.clone()),
            extract::Path(name.clone()),
            extract::Body(doc),
        )
        .await
    }
    .await;
    match r {
        Ok(_) => Ok(Redirect::to(&format!("/projects/{name}/edit")).into_response()),
        Err(e) => {
            refused(
                &s,
                &c,
                &name,
                ProjectForm::of(&current),
                stage,
                e,
                "new-stage",
            )
            .await
        }
    }
}

/// Save a stage (`PUT /v1/projects/{name}/stages/{stage}`).
pub(crate) async fn update_stage(
    State(s): State<AppState>,
    Extension(c): Extension<Current>,
    Extension(f): Extension<Fields>,
    Path((name, stage)): Path<(String, String)>,
) -> PageResult {
    let current = stored(&s, &name).await?;
    let form = StageForm::from_fields(&f, "stage_");
    let r = async {
        let doc = form.doc()?;
        api::put_stage(
            State(s.clone()),
            extract::Path((name.clone(), stage.clone())),
            extract::Body(doc),
        )
        .await
    }
    .await;
    match r {
        Ok(_) => Ok(Redirect::to(&format!("/projects/{name}/edit#stage-{stage}")).into_response()),
        Err(e) => {
            let blank = StageForm {
                name: String::new(),
                ..StageForm::new_default()
            };
            refused(&s, &c, &name, ProjectForm::of(&current), blank, e, &stage).await
        }
    }
}

/// Delete a stage and what it runs.
pub(crate) async fn delete_stage(
    State(s): State<AppState>,
    Path((name, stage)): Path<(String, String)>,
) -> PageResult {
    api::delete_stage(State(s), extract::Path((name.clone(), stage))).await?;
    Ok(Redirect::to(&format!("/projects/{name}/edit")).into_response())
}

/// Delete a project and what it runs.
pub(crate) async fn delete(State(s): State<AppState>, Path(name): Path<String>) -> PageResult {
    api::delete_project(State(s), extract::Path(name)).await?;
    Ok(Redirect::to("/").into_response())
}

/// Every project as `skipper.yaml` (`GET /v1/config/export`), as a download.
pub(crate) async fn export(State(s): State<AppState>) -> PageResult {
    let mut r = api::export_config(State(s)).await?;
    r.headers_mut().insert(
        header::CONTENT_DISPOSITION,
        axum::http::HeaderValue::from_static("attachment; filename=\"skipper.yaml\""),
    );
    Ok(r)
}

#[derive(Template)]
#[template(path = "import.html")]
struct ImportPage {
    chrome: Chrome,
    yaml: String,
    notice: Option<Notice>,
}

/// Import a `skipper.yaml` pasted into the form (`POST /v1/config/import`).
pub(crate) async fn import(
    State(s): State<AppState>,
    Extension(c): Extension<Current>,
    Extension(f): Extension<Fields>,
) -> Response {
    let yaml = f.0.get("yaml").cloned().unwrap_or_default();
    let (status, notice) = match api::import_config(State(s), yaml.clone()).await {
        Ok(axum::Json(v)) => {
            let names: Vec<String> = v["imported"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .filter_map(|n| n.as_str().map(str::to_owned))
                .collect();
            (
                StatusCode::OK,
                Notice {
                    error: false,
                    text: if names.is_empty() {
                        "The document has no projects: nothing changed.".into()
                    } else {
                        format!("Imported {}.", names.join(", "))
                    },
                },
            )
        }
        Err(e) => (
            e.status,
            Notice {
                error: true,
                text: e.message,
            },
        ),
    };
    html(
        status,
        &ImportPage {
            chrome: Chrome::new(&c, "dashboard"),
            yaml: if notice.error { yaml } else { String::new() },
            notice: Some(notice),
        },
    )
}

/// The import form.
pub(crate) async fn import_form(Extension(c): Extension<Current>) -> Response {
    html(
        StatusCode::OK,
        &ImportPage {
            chrome: Chrome::new(&c, "dashboard"),
            yaml: String::new(),
            notice: None,
        },
    )
}
