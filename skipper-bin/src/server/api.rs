//! The `/v1` handlers. Each one parses, calls the engine (or the store, for plain records) and
//! shapes the answer: no deploy logic lives here.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use skipper_core::backend::{DeploymentFilter, InstanceFilter};
use skipper_core::config::Config;
use skipper_core::{
    Activity, DeployRequest, DeployStatus, Engine, ImageRef, Instance, Project, Trigger,
};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::error::{ApiError, ApiResult, ErrorBody};
use super::extract::{Body, Path, Query};
use crate::output;

type Json = axum::Json<Value>;

/// `GET /v1/health`'s answer.
#[derive(serde::Serialize, ToSchema)]
pub(crate) struct Health {
    /// Always `ok` while the server answers.
    status: &'static str,
    /// The server's version.
    version: &'static str,
}

/// Liveness: no auth.
#[utoipa::path(get, path = "/v1/health", tag = "meta",
    responses((status = 200, description = "The server is up", body = Health)))]
pub(crate) async fn health() -> axum::Json<Health> {
    axum::Json(Health {
        status: "ok",
        version: env!("CARGO_PKG_VERSION"),
    })
}

// ---- projects and stages ------------------------------------------------------------------

fn project_json(p: &Project) -> Value {
    let mut v = Config::project_document(p);
    v["name"] = p.name.clone().into();
    v
}

/// Parse a project document; `name` from the path wins, a different `name` in the body is a 400.
/// `null` is "not given", for a field and for a stage's field.
fn drop_nulls(doc: &mut serde_json::Map<String, Value>) {
    doc.retain(|_, v| !v.is_null());
    for v in doc.values_mut() {
        if let Value::Object(m) = v {
            m.retain(|_, v| !v.is_null());
            for s in m.values_mut() {
                if let Value::Object(f) = s {
                    f.retain(|_, v| !v.is_null());
                }
            }
        }
    }
}

/// The document's name: the path's (a different `name` in the body is a 400), else the
/// body's `name`, which is taken out of the document.
fn take_name(obj: &mut serde_json::Map<String, Value>, path: Option<&str>) -> ApiResult<String> {
    let in_body = match obj.remove("name") {
        Some(Value::String(s)) => Some(s),
        Some(_) => return Err(ApiError::bad_request("name: must be a string")),
        None => None,
    };
    match (path, in_body) {
        (Some(p), Some(b)) if p != b => Err(ApiError::bad_request(format!(
            "name: the body says {b:?} but the path says {p:?}"
        ))),
        (Some(p), _) => Ok(p.to_owned()),
        (None, Some(b)) => Ok(b),
        (None, None) => Err(ApiError::bad_request("name: missing")),
    }
}

fn parse_project(state: &AppState, name: Option<&str>, mut doc: Value) -> ApiResult<Project> {
    let obj = doc
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("a project is a JSON object"))?;
    drop_nulls(obj);
    let name = take_name(obj, name)?;
    Ok(Config::parse_project(
        &name,
        &doc.to_string(),
        &state.config.registries,
    )?)
}

async fn get_or_404(engine: &Engine, name: &str) -> ApiResult<Project> {
    engine
        .store()
        .get_project(name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no project {name:?}")))
}

/// Every project.
#[utoipa::path(get, path = "/v1/projects", tag = "projects",
    responses((status = 200, description = "Every project, by name", body = Vec<Object>)))]
pub(crate) async fn list_projects(State(s): State<AppState>) -> ApiResult<Json> {
    let list = s.engine.store().list_projects().await?;
    Ok(axum::Json(Value::Array(
        list.iter().map(project_json).collect(),
    )))
}

/// Create a project: the fields of a project in `skipper.yaml`, plus `name`.
#[utoipa::path(post, path = "/v1/projects", tag = "projects", request_body = super::schema::ProjectDoc,
    responses((status = 201, description = "Created", body = Object),
        (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub(crate) async fn create_project(
    State(s): State<AppState>,
    Body(doc): Body<Value>,
) -> ApiResult<Response> {
    let p = parse_project(&s, None, doc)?;
    let lease = s.engine.project_lease(&p.name).await?;
    let r = async {
        if s.engine.store().get_project(&p.name).await?.is_some() {
            return Err(ApiError::conflict(format!("project {:?} exists", p.name)));
        }
        s.engine.put_project(&p).await?;
        Ok(())
    }
    .await;
    lease.release().await;
    r?;
    let location = format!("/v1/projects/{}", p.name);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        axum::Json(project_json(&p)),
    )
        .into_response())
}

/// One project.
#[utoipa::path(get, path = "/v1/projects/{project}", tag = "projects",
    params(("project" = String, Path)),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody)))]
pub(crate) async fn get_project(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json> {
    Ok(axum::Json(project_json(
        &get_or_404(&s.engine, &name).await?,
    )))
}

/// Replace a project's settings (its stages included). Running instances keep running; the
/// next deploy uses the new settings.
#[utoipa::path(put, path = "/v1/projects/{project}", tag = "projects",
    params(("project" = String, Path)), request_body = super::schema::ProjectFields,
    responses((status = 200, body = Object), (status = 201, body = Object),
        (status = 400, body = ErrorBody)))]
pub(crate) async fn put_project(
    State(s): State<AppState>,
    Path(name): Path<String>,
    Body(doc): Body<Value>,
) -> ApiResult<Response> {
    let p = parse_project(&s, Some(&name), doc)?;
    let lease = s.engine.project_lease(&name).await?;
    let r = async {
        let existed = s.engine.store().get_project(&name).await?.is_some();
        s.engine.put_project(&p).await?;
        Ok::<_, ApiError>(existed)
    }
    .await;
    lease.release().await;
    let status = if r? {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, axum::Json(project_json(&p))).into_response())
}

/// Delete a project and everything it runs (routes, containers, records).
#[utoipa::path(delete, path = "/v1/projects/{project}", tag = "projects",
    params(("project" = String, Path)),
    responses((status = 204, description = "Deleted"), (status = 404, body = ErrorBody)))]
pub(crate) async fn delete_project(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    get_or_404(&s.engine, &name).await?;
    s.engine.delete_project(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Change a project's stages under its lease; the whole project is validated again.
async fn change_stages(
    s: &AppState,
    project: &str,
    change: impl FnOnce(&mut serde_json::Map<String, Value>) -> ApiResult<()>,
) -> ApiResult<Project> {
    let lease = s.engine.project_lease(project).await?;
    let r = async {
        let p = get_or_404(&s.engine, project).await?;
        let mut doc = Config::project_document(&p);
        let stages = doc["stages"].as_object_mut().ok_or_else(|| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "stages")
        })?;
        change(stages)?;
        let p = parse_project(s, Some(project), doc)?;
        s.engine.put_project(&p).await?;
        Ok(p)
    }
    .await;
    lease.release().await;
    r
}

fn stage_body(mut doc: Value, name: Option<&str>) -> ApiResult<(String, Value)> {
    let obj = doc
        .as_object_mut()
        .ok_or_else(|| ApiError::bad_request("a stage is a JSON object"))?;
    obj.retain(|_, v| !v.is_null());
    let name = take_name(obj, name)?;
    Ok((name, doc))
}

/// Add a stage: `{"name":"dev","tag_pattern":"dev-*",…}` (the fields of a stage in
/// `skipper.yaml`).
#[utoipa::path(post, path = "/v1/projects/{project}/stages", tag = "projects",
    params(("project" = String, Path)), request_body = super::schema::StageDoc,
    responses((status = 201, description = "The project with its new stage", body = Object),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub(crate) async fn create_stage(
    State(s): State<AppState>,
    Path(project): Path<String>,
    Body(doc): Body<Value>,
) -> ApiResult<Response> {
    let (name, doc) = stage_body(doc, None)?;
    let stage = name.clone();
    let p = change_stages(&s, &project, move |stages| {
        if stages.contains_key(&name) {
            return Err(ApiError::conflict(format!("stage {name:?} exists")));
        }
        stages.insert(name, doc);
        Ok(())
    })
    .await?;
    let location = format!("/v1/projects/{project}/stages/{stage}");
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        axum::Json(project_json(&p)),
    )
        .into_response())
}

/// Replace a stage's settings.
#[utoipa::path(put, path = "/v1/projects/{project}/stages/{stage}", tag = "projects",
    params(("project" = String, Path), ("stage" = String, Path)), request_body = super::schema::StageFields,
    responses((status = 200, description = "The project", body = Object),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub(crate) async fn put_stage(
    State(s): State<AppState>,
    Path((project, stage)): Path<(String, String)>,
    Body(doc): Body<Value>,
) -> ApiResult<Json> {
    let (name, doc) = stage_body(doc, Some(&stage))?;
    let p = change_stages(&s, &project, move |stages| {
        if !stages.contains_key(&name) {
            return Err(ApiError::not_found(format!("no stage {name:?}")));
        }
        stages.insert(name, doc);
        Ok(())
    })
    .await?;
    Ok(axum::Json(project_json(&p)))
}

/// Delete a stage and everything it runs.
#[utoipa::path(delete, path = "/v1/projects/{project}/stages/{stage}", tag = "projects",
    params(("project" = String, Path), ("stage" = String, Path)),
    responses((status = 204, description = "Deleted"), (status = 404, body = ErrorBody)))]
pub(crate) async fn delete_stage(
    State(s): State<AppState>,
    Path((project, stage)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    get_or_404(&s.engine, &project).await?.stage(&stage)?;
    s.engine.delete_stage(&project, &stage).await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---- instances ----------------------------------------------------------------------------

async fn stage_of(s: &AppState, project: &str, stage: &str) -> ApiResult<Project> {
    let p = get_or_404(&s.engine, project).await?;
    p.stage(stage)?;
    Ok(p)
}

/// A stage's instances, as `skipper ps --json` shows them (drift included: `missing`,
/// `exited`).
#[utoipa::path(get, path = "/v1/projects/{project}/stages/{stage}/instances", tag = "instances",
    params(("project" = String, Path), ("stage" = String, Path)),
    responses((status = 200, body = Vec<Object>), (status = 404, body = ErrorBody)))]
pub(crate) async fn list_instances(
    State(s): State<AppState>,
    Path((project, stage)): Path<(String, String)>,
) -> ApiResult<Json> {
    stage_of(&s, &project, &stage).await?;
    let list = s
        .engine
        .observe(&InstanceFilter {
            project: Some(project),
            stage: Some(stage),
        })
        .await?;
    Ok(axum::Json(Value::Array(
        list.iter().map(output::instance_json).collect(),
    )))
}

/// A deploy's body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeployBody {
    /// The tag to deploy (in the project's repository).
    #[schema(pattern = "^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")]
    tag: String,
    /// The confirmation a `confirm: true` stage needs.
    #[serde(default)]
    confirm: bool,
    /// When to pull: `always` (default), `missing` (use the image if the engine has it),
    /// `never`.
    #[serde(default)]
    pull: PullBody,
}

/// A deploy's `pull`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum PullBody {
    #[default]
    Always,
    Missing,
    Never,
}

/// `?wait=true`: answer when the deploy ends.
#[derive(Debug, Deserialize, IntoParams)]
pub(crate) struct WaitQuery {
    /// Answer when the deploy ends (200, succeeded or failed) instead of at once (202).
    #[serde(default)]
    pub(crate) wait: bool,
}

fn correlation(headers: &HeaderMap) -> Option<String> {
    headers
        .get("x-correlation-id")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.chars().take(128).collect::<String>())
        .filter(|v| !v.is_empty())
}

/// Start a deploy and answer as `wait` asks: 202 with the deployment as soon as it is recorded
/// (the engine refused it: the refusal), or 200 when it ended.
pub(crate) async fn start_deploy(
    s: &AppState,
    mut req: DeployRequest,
    wait: bool,
) -> ApiResult<Response> {
    let id = skipper_core::model::new_id();
    req.id = Some(id.clone());
    let mut feed = s.engine.activity();
    let engine = s.engine.clone();
    // Its own task: a client that goes away does not stop the deploy.
    let mut task = tokio::spawn(async move { engine.deploy(req).await });
    let location = format!("/v1/deploys/{id}");
    let answer = |status: StatusCode, doc: Value| {
        (
            status,
            [(header::LOCATION, location.clone())],
            axum::Json(doc),
        )
            .into_response()
    };
    if !wait {
        loop {
            tokio::select! {
                done = &mut task => {
                    let d = joined(done)?;
                    return Ok(answer(StatusCode::ACCEPTED, crate::app::deployment_document(&s.engine, &d).await));
                }
                a = feed.recv() => match a {
                    Ok(Activity::Started(d)) if d.id == id => {
                        return Ok(answer(StatusCode::ACCEPTED, output::deployment_json(&d, None, None)));
                    }
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => {
                        let d = joined(task.await)?;
                        return Ok(answer(StatusCode::ACCEPTED, crate::app::deployment_document(&s.engine, &d).await));
                    }
                },
            }
        }
    }
    let d = joined(task.await)?;
    Ok(answer(
        StatusCode::OK,
        crate::app::deployment_document(&s.engine, &d).await,
    ))
}

fn joined(
    r: Result<skipper_core::Result<skipper_core::Deployment>, tokio::task::JoinError>,
) -> ApiResult<skipper_core::Deployment> {
    match r {
        Ok(r) => Ok(r?),
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("the deploy task failed: {e}"),
        )),
    }
}

/// Deploy a tag to the stage: 202 with the deployment and `Location: /v1/deploys/{id}`; with
/// `?wait=true`, 200 with the final deployment (succeeded or failed). A deploy the stage
/// refuses (pattern, confirmation, promotion) is a 422 that says why.
#[utoipa::path(post, path = "/v1/projects/{project}/stages/{stage}/instances", tag = "instances",
    params(("project" = String, Path), ("stage" = String, Path), WaitQuery),
    request_body = DeployBody,
    responses((status = 202, description = "Started", body = Object),
        (status = 200, description = "Ended (with ?wait=true)", body = Object),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody)))]
pub(crate) async fn deploy(
    State(s): State<AppState>,
    Path((project, stage)): Path<(String, String)>,
    Query(q): Query<WaitQuery>,
    headers: HeaderMap,
    Body(body): Body<DeployBody>,
) -> ApiResult<Response> {
    let p = stage_of(&s, &project, &stage).await?;
    let image = p
        .image_ref(&body.tag)
        .map_err(|e| ApiError::bad_request(format!("tag: {}", e.chain())))?;
    let mut req = DeployRequest::new(&project, &stage, image);
    req.confirmed = body.confirm;
    req.pull = match body.pull {
        PullBody::Always => skipper_core::PullPolicy::Always,
        PullBody::Missing => skipper_core::PullPolicy::Missing,
        PullBody::Never => skipper_core::PullPolicy::Never,
    };
    req.trigger = Trigger::Manual;
    req.correlation_id = correlation(&headers);
    start_deploy(&s, req, q.wait).await
}

async fn instance_in(s: &AppState, project: &str, stage: &str, id: &str) -> ApiResult<Instance> {
    stage_of(s, project, stage).await?;
    match s.engine.find_instance(id).await {
        Ok(i) if i.project == project && i.stage == stage => Ok(i),
        Ok(_) => Err(ApiError::not_found(format!(
            "no instance {id:?} in {project}/{stage}"
        ))),
        Err(e) => Err(e.into()),
    }
}

fn acted(i: &Instance, verb: &str) -> Json {
    let mut v = output::instance_json(i);
    v["action"] = verb.into();
    axum::Json(v)
}

macro_rules! instance_action {
    ($name:ident, $verb:literal, $past:literal, $method:ident, $doc:literal) => {
        #[doc = $doc]
        #[utoipa::path(post, path = concat!("/v1/projects/{project}/stages/{stage}/instances/{id}/", $verb),
            tag = "instances",
            params(("project" = String, Path), ("stage" = String, Path), ("id" = String, Path)),
            responses((status = 200, body = Object), (status = 404, body = ErrorBody),
                (status = 409, description = "the stage's node is offline (`node_offline`)", body = ErrorBody)))]
        pub(crate) async fn $name(
            State(s): State<AppState>,
            Path((project, stage, id)): Path<(String, String, String)>,
        ) -> ApiResult<Json> {
            let i = instance_in(&s, &project, &stage, &id).await?;
            Ok(acted(&s.engine.$method(&i.id).await?, $past))
        }
    };
}

instance_action!(
    stop_instance,
    "stop",
    "stopped",
    stop_instance,
    "Stop an instance's container."
);
instance_action!(
    start_instance,
    "start",
    "started",
    start_instance,
    "Start a stopped instance."
);
instance_action!(
    restart_instance,
    "restart",
    "restarted",
    restart_instance,
    "Restart an instance."
);

/// Remove an instance: its routes, container and record.
#[utoipa::path(delete, path = "/v1/projects/{project}/stages/{stage}/instances/{id}", tag = "instances",
    params(("project" = String, Path), ("stage" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody),
        (status = 409, description = "the stage's node is offline (`node_offline`)", body = ErrorBody)))]
pub(crate) async fn remove_instance(
    State(s): State<AppState>,
    Path((project, stage, id)): Path<(String, String, String)>,
) -> ApiResult<Json> {
    let i = instance_in(&s, &project, &stage, &id).await?;
    Ok(acted(&s.engine.remove_instance(&i.id).await?, "removed"))
}

/// Roll the stage back to its previous successful version: 200 with the deployment.
#[utoipa::path(post, path = "/v1/projects/{project}/stages/{stage}/rollback", tag = "instances",
    params(("project" = String, Path), ("stage" = String, Path)),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody),
        (status = 422, body = ErrorBody),
        (status = 409, description = "the stage's node is offline (`node_offline`)", body = ErrorBody)))]
pub(crate) async fn rollback(
    State(s): State<AppState>,
    Path((project, stage)): Path<(String, String)>,
) -> ApiResult<Json> {
    stage_of(&s, &project, &stage).await?;
    let d = s.engine.rollback(&project, &stage).await?;
    Ok(axum::Json(
        crate::app::deployment_document(&s.engine, &d).await,
    ))
}

// ---- tags and quick deploy ----------------------------------------------------------------

/// `?stage=`: only what this stage may take.
#[derive(Debug, Deserialize, IntoParams)]
pub(crate) struct TagsQuery {
    /// Only the tags this stage may deploy (its pattern; for a `promote_from` stage, only the
    /// tags that ran there).
    stage: Option<String>,
}

/// The project's tags in its registry, newest first.
#[utoipa::path(get, path = "/v1/projects/{project}/tags", tag = "instances",
    params(("project" = String, Path), TagsQuery),
    responses((status = 200, body = Vec<String>), (status = 404, body = ErrorBody),
        (status = 502, body = ErrorBody)))]
pub(crate) async fn tags(
    State(s): State<AppState>,
    Path(project): Path<String>,
    Query(q): Query<TagsQuery>,
) -> ApiResult<axum::Json<Vec<String>>> {
    let p = get_or_404(&s.engine, &project).await?;
    let registry = s.engine.registry().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "no registry client",
        )
    })?;
    let repo = ImageRef::parse(&p.image)?;
    let all = registry.list_tags(&repo).await?;
    let pattern = match &q.stage {
        Some(st) => p.stage(st)?.tag_pattern.clone(),
        None => "*".into(),
    };
    let pattern = skipper_core::TagPattern::new(&pattern)?;
    let mut list: Vec<String> = skipper_registry::select_tags(&all, &pattern)
        .into_iter()
        .map(str::to_owned)
        .collect();
    if let Some(from) = q
        .stage
        .as_ref()
        .and_then(|st| p.stages.get(st))
        .and_then(|st| st.promote_from.clone())
    {
        let ran = s
            .engine
            .deployments(&DeploymentFilter {
                project: Some(project.clone()),
                stage: Some(from.clone()),
                limit: None,
            })
            .await?;
        let running = s
            .engine
            .instances(&InstanceFilter {
                project: Some(project.clone()),
                stage: Some(from),
            })
            .await?;
        list.retain(|t| {
            running.iter().any(|i| &i.tag == t)
                || ran
                    .iter()
                    .any(|d| &d.tag == t && d.status == DeployStatus::Succeeded)
        });
    }
    Ok(axum::Json(list))
}

/// An image to inspect.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct InspectBody {
    /// An image reference with a tag (`127.0.0.1:5000/team/app:v1`).
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = "^[a-z0-9]+([._/:-][a-z0-9]+)*:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"
    )]
    image: String,
    /// The node to pull and read it on (default: the server's own host).
    node: Option<String>,
}

async fn defaults_of(s: &AppState, image: &ImageRef, node: Option<&str>) -> ApiResult<Value> {
    let d = s
        .engine
        .quick_defaults_on(node, image, skipper_core::PullPolicy::Missing, None)
        .await?;
    Ok(json!({
        "image": image.to_string(),
        "project": d.project,
        "port": d.port,
        "health_path": d.health_path,
        "has_healthcheck": d.has_healthcheck,
        "stage": "dev",
        "subdomain": null,
        "labels": d.metadata.labels,
    }))
}

/// Pull an image and read what it says about itself (EXPOSE, HEALTHCHECK, labels): the
/// defaults a quick-deploy form shows.
#[utoipa::path(post, path = "/v1/deploy/inspect", tag = "quick deploy", request_body = InspectBody,
    responses((status = 200, body = Object), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody),
        (status = 409, description = "the node is offline (`node_offline`)", body = ErrorBody)))]
pub(crate) async fn inspect(
    State(s): State<AppState>,
    Body(b): Body<InspectBody>,
) -> ApiResult<Json> {
    let image =
        ImageRef::parse(&b.image).map_err(|e| ApiError::bad_request(format!("image: {e}")))?;
    Ok(axum::Json(
        defaults_of(&s, &image, b.node.as_deref()).await?,
    ))
}

/// A quick deploy: an image and what to change of its defaults.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct QuickBody {
    /// An image reference with a tag.
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = "^[a-z0-9]+([._/:-][a-z0-9]+)*:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"
    )]
    image: String,
    /// The project (default: from the repository's name).
    project: Option<String>,
    /// The stage (default `dev`).
    stage: Option<String>,
    /// The app port (default: the image's EXPOSE).
    #[schema(minimum = 1, maximum = 65535)]
    port: Option<u16>,
    /// The health path (default: the image's `dev.skipper.health-path` label).
    health_path: Option<String>,
    /// The stage's subdomain label.
    subdomain: Option<String>,
    /// The node the stage runs on (default: the project's, else the server's own host).
    node: Option<String>,
}

impl QuickBody {
    /// A quick deploy of `image` with its defaults.
    pub(crate) fn for_image(image: &ImageRef) -> Self {
        Self {
            image: image.to_string(),
            project: None,
            stage: None,
            port: None,
            health_path: None,
            subdomain: None,
            node: None,
        }
    }
}

/// Create the project from the image's defaults plus overrides (or add the stage to an
/// existing one), and deploy: answers as a deploy does (202, or 200 with `?wait=true`).
#[utoipa::path(post, path = "/v1/deploy/quick", tag = "quick deploy",
    params(WaitQuery), request_body = QuickBody,
    responses((status = 202, body = Object), (status = 200, body = Object),
        (status = 400, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 409, description = "the node is offline (`node_offline`)", body = ErrorBody)))]
pub(crate) async fn quick(
    State(s): State<AppState>,
    Query(q): Query<WaitQuery>,
    headers: HeaderMap,
    Body(b): Body<QuickBody>,
) -> ApiResult<Response> {
    let image =
        ImageRef::parse(&b.image).map_err(|e| ApiError::bad_request(format!("image: {e}")))?;
    if image.tag().is_none() {
        return Err(ApiError::bad_request("image: give a tag (`app:v1`)"));
    }
    let req = quick_request(&s, &image, &b).await?;
    let mut req = req;
    req.correlation_id = correlation(&headers);
    start_deploy(&s, req, q.wait).await
}

/// The deploy request of a quick deploy, its project made or extended first (under the
/// project's lease).
pub(crate) async fn quick_request(
    s: &AppState,
    image: &ImageRef,
    b: &QuickBody,
) -> ApiResult<DeployRequest> {
    let stage = b.stage.clone().unwrap_or_else(|| "dev".into());
    // The image is pulled and read where it will run.
    let named = match &b.project {
        Some(name) => s.engine.store().get_project(name).await?,
        None => None,
    };
    let node = b.node.clone().or_else(|| {
        named
            .as_ref()
            .and_then(|p| p.node_of(&stage).map(str::to_owned))
    });
    let d = s
        .engine
        .quick_defaults_on(
            node.as_deref(),
            image,
            skipper_core::PullPolicy::Missing,
            None,
        )
        .await?;
    let name = b.project.clone().unwrap_or(d.project);
    let lease = s.engine.project_lease(&name).await?;
    let r = async {
        let mut p = match s.engine.store().get_project(&name).await? {
            Some(p) => {
                if !ImageRef::parse(&p.image)?.same_repository(image) {
                    return Err(ApiError::conflict(format!(
                        "project {name:?} deploys {}, not {}",
                        p.image,
                        image.name()
                    )));
                }
                p
            }
            None => Project::new(&name, &image.name())?,
        };
        if let Some(port) = b
            .port
            .or(d.port)
            .filter(|_| p.port.is_none() || b.port.is_some())
        {
            p.port = Some(port);
        }
        if let Some(path) = b.health_path.clone().or(d.health_path) {
            p.health.path = Some(path);
        }
        let st = p
            .stages
            .entry(stage.clone())
            .or_insert_with(|| skipper_core::Stage::new(stage.clone()));
        if b.subdomain.is_some() {
            st.subdomain = b.subdomain.clone();
        }
        if let Some(n) = &b.node
            && p.node_of(&stage) != Some(n.as_str())
        {
            // The stage moves there (refused while it has instances elsewhere).
            if let Some(st) = p.stages.get_mut(&stage) {
                st.node = Some(n.clone());
            }
        }
        p.validate()?;
        s.engine.put_project(&p).await?;
        Ok(p)
    }
    .await;
    lease.release().await;
    let p = r?;
    let mut req = DeployRequest::new(&p.name, &stage, image.clone());
    req.pull = skipper_core::PullPolicy::Missing;
    Ok(req)
}

// ---- history ------------------------------------------------------------------------------

/// Filters and paging of `GET /v1/deploys`.
#[derive(Debug, Deserialize, IntoParams)]
pub(crate) struct DeploysQuery {
    /// Only this project.
    project: Option<String>,
    /// Only this stage.
    stage: Option<String>,
    /// Only this outcome: `in_progress`, `succeeded`, `failed`.
    status: Option<String>,
    /// At most this many (default 50, at most 500).
    limit: Option<usize>,
    /// Skip this many (paging).
    offset: Option<usize>,
}

/// Deployments, newest first.
#[utoipa::path(get, path = "/v1/deploys", tag = "history", params(DeploysQuery),
    responses((status = 200, body = Vec<Object>), (status = 400, body = ErrorBody)))]
pub(crate) async fn list_deploys(
    State(s): State<AppState>,
    Query(q): Query<DeploysQuery>,
) -> ApiResult<Json> {
    let limit = q.limit.unwrap_or(50).clamp(1, 500);
    let offset = q.offset.unwrap_or(0).min(100_000);
    let status = match q.status.as_deref() {
        None => None,
        Some("in_progress") => Some(DeployStatus::InProgress),
        Some("succeeded") => Some(DeployStatus::Succeeded),
        Some("failed") => Some(DeployStatus::Failed),
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "status: {other:?} is not in_progress, succeeded or failed"
            )));
        }
    };
    let list = s
        .engine
        .deployments(&DeploymentFilter {
            project: q.project,
            stage: q.stage,
            limit: status.is_none().then_some(limit + offset),
        })
        .await?;
    let v: Vec<Value> = list
        .iter()
        .filter(|d| status.is_none_or(|st| d.status == st))
        .skip(offset)
        .take(limit)
        .map(|d| output::deployment_json(d, None, None))
        .collect();
    Ok(axum::Json(Value::Array(v)))
}

/// One deployment.
#[utoipa::path(get, path = "/v1/deploys/{id}", tag = "history", params(("id" = String, Path)),
    responses((status = 200, body = Object), (status = 404, body = ErrorBody)))]
pub(crate) async fn get_deploy(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json> {
    let d = s
        .engine
        .store()
        .get_deployment(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no deployment {id:?}")))?;
    Ok(axum::Json(
        crate::app::deployment_document(&s.engine, &d).await,
    ))
}

/// Repair the store against Docker and the proxy now (the server also does this on a timer).
#[utoipa::path(post, path = "/v1/reconcile", tag = "meta",
    responses((status = 200, description = "What was repaired", body = Object)))]
pub(crate) async fn reconcile(State(s): State<AppState>) -> ApiResult<Json> {
    let report = s.engine.reconcile().await?;
    Ok(axum::Json(
        serde_json::to_value(&report).unwrap_or(Value::Null),
    ))
}

// ---- config and settings ------------------------------------------------------------------

/// Every project as `skipper.yaml`'s `projects:` section (registries and secrets are not
/// exported).
#[utoipa::path(get, path = "/v1/config/export", tag = "config",
    responses((status = 200, description = "YAML", content_type = "application/yaml", body = super::schema::ConfigDoc)))]
pub(crate) async fn export_config(State(s): State<AppState>) -> ApiResult<Response> {
    let list = s.engine.store().list_projects().await?;
    Ok((
        [(header::CONTENT_TYPE, "application/yaml")],
        Config::export_projects(&list),
    )
        .into_response())
}

/// Import a `skipper.yaml` (its projects are created or replaced; others are left alone).
#[utoipa::path(post, path = "/v1/config/import", tag = "config",
    request_body(content = super::schema::ConfigDoc, content_type = "application/yaml"),
    responses((status = 200, description = "The projects imported", body = Object),
        (status = 400, body = ErrorBody)))]
pub(crate) async fn import_config(State(s): State<AppState>, body: String) -> ApiResult<Json> {
    if body.trim().is_empty() {
        return Err(ApiError::bad_request(
            "the body is empty: send a skipper.yaml",
        ));
    }
    let config = Config::parse(&body)?;
    let names = crate::server::import_projects(&s.engine, &config).await?;
    Ok(axum::Json(json!({ "imported": names })))
}

/// The settings in force.
#[utoipa::path(get, path = "/v1/settings", tag = "config",
    responses((status = 200, body = Object)))]
pub(crate) async fn get_settings(State(s): State<AppState>) -> Json {
    axum::Json(settings_json(&s))
}

fn settings_json(s: &AppState) -> Value {
    let g = &s.config.global;
    json!({
        "domain": g.domain,
        "network": g.network,
        "subdomain_pattern": g.subdomain_pattern,
        "poll_interval": humantime::format_duration(g.poll_interval).to_string(),
        "auto_create": s.auto_create(),
        "notification_url_set": g.notification_url.is_some(),
        "reconcile_interval": humantime::format_duration(s.reconcile_interval).to_string(),
    })
}

/// Settings that can change while the server runs.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SettingsBody {
    /// Quick-deploy pushed images of no known project.
    auto_create: Option<bool>,
}

/// Change settings (today: `auto_create`; the rest comes from `skipper.yaml` and the
/// environment at start).
#[utoipa::path(put, path = "/v1/settings", tag = "config", request_body = SettingsBody,
    responses((status = 200, body = Object), (status = 400, body = ErrorBody)))]
pub(crate) async fn put_settings(
    State(s): State<AppState>,
    Body(b): Body<SettingsBody>,
) -> ApiResult<Json> {
    if let Some(a) = b.auto_create {
        s.engine
            .store()
            .put_setting(super::AUTO_CREATE_SETTING, if a { "true" } else { "false" })
            .await?;
        s.auto_create.store(a, std::sync::atomic::Ordering::SeqCst);
    }
    Ok(axum::Json(settings_json(&s)))
}

/// Where notifications go: each target's format and host (a URL is a secret: never shown).
pub(crate) fn notification_targets(s: &AppState) -> Vec<Value> {
    let g = &s.config.global;
    let mut list: Vec<Value> = g
        .notification_url
        .iter()
        .map(|u| json!({"format": "webhook", "host": u.host(), "events": []}))
        .collect();
    list.extend(s.config.notifications.iter().map(|t| {
        json!({
            "format": format!("{:?}", t.format).to_lowercase(),
            "host": t.url.host(),
            "events": t.events,
        })
    }));
    list
}

/// Send a test event to every notification target (whatever their filters): `202` with the
/// targets it goes to; deliveries follow through the outbox, retried like any other.
#[utoipa::path(post, path = "/v1/notifications/test", tag = "config",
    responses((status = 202, body = Object)))]
pub(crate) async fn test_notification(State(s): State<AppState>) -> ApiResult<Response> {
    let targets = notification_targets(&s);
    s.engine
        .announce(skipper_core::Event {
            kind: skipper_core::EventKind::Test,
            project: String::new(),
            stage: String::new(),
            image: None,
            deployment_id: None,
            instance_id: None,
            url: None,
            message: "a test event from Skipper: notifications reach this target".into(),
            at: chrono::Utc::now(),
            correlation_id: None,
        })
        .await;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({ "sent_to": targets.len(), "targets": targets })),
    )
        .into_response())
}

/// The webhook URL for registries and CI.
#[utoipa::path(get, path = "/v1/settings/webhook-url", tag = "config",
    responses((status = 200, body = Object)))]
pub(crate) async fn webhook_url(State(s): State<AppState>, headers: HeaderMap) -> ApiResult<Json> {
    let secret = super::webhook::secret(&s).await?;
    Ok(axum::Json(
        json!({ "url": format!("{}/v1/webhook/{secret}", s.base_url(&headers)) }),
    ))
}

/// Make a new webhook URL; the old one stops working at once.
#[utoipa::path(post, path = "/v1/settings/webhook-url/regenerate", tag = "config",
    responses((status = 200, body = Object)))]
pub(crate) async fn regenerate_webhook_url(
    State(s): State<AppState>,
    headers: HeaderMap,
) -> ApiResult<Json> {
    let secret = super::webhook::regenerate(&s).await?;
    Ok(axum::Json(
        json!({ "url": format!("{}/v1/webhook/{secret}", s.base_url(&headers)) }),
    ))
}
