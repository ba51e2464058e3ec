//! `skipper serve`: the control plane. A thin layer: it wires the engine, the store, the
//! registry watcher and the backends into axum, and runs the background loops (periodic
//! reconcile, the watcher, metrics). No deploy logic lives here; every route calls the engine.
//!
//! [`app`] builds the whole router from an [`AppState`], so tests drive every route with
//! `oneshot` and no socket; the OpenAPI document is generated from the same handlers.

pub(crate) mod agents;
pub(crate) mod api;
pub(crate) mod auth;
pub(crate) mod error;
pub(crate) mod events;
pub(crate) mod extract;
pub(crate) mod idempotency;
pub(crate) mod metrics;
pub(crate) mod nodes;
pub(crate) mod outbox;
pub(crate) mod registries;
pub(crate) mod remote_runtime;
pub(crate) mod schema;
pub(crate) mod tenants;
pub(crate) mod ui;
pub(crate) mod webhook;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use secrecy::SecretString;
use skipper_core::Engine;
use skipper_core::config::Config;
use skipper_registry::Watcher;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use self::error::{ApiError, IsErrorEnvelope};

/// The store setting that turns `auto_create` on or off (over `global.auto_create`).
pub(crate) const AUTO_CREATE_SETTING: &str = "server.auto_create";
/// The store setting recording that the config file seeded this store.
const IMPORTED_SETTING: &str = "server.config_imported";
/// The largest request body.
const MAX_BODY: usize = 1 << 20;

/// Everything a handler needs. Cheap to clone.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) engine: Engine,
    pub(crate) config: Arc<Config>,
    pub(crate) watcher: Option<Watcher>,
    pub(crate) auth: Arc<auth::Auth>,
    pub(crate) idempotency: Arc<idempotency::Idempotency>,
    pub(crate) metrics: Arc<metrics::Metrics>,
    /// Cancelled when the server stops: event streams end.
    pub(crate) shutdown: CancellationToken,
    pub(crate) auto_create: Arc<AtomicBool>,
    pub(crate) reconcile_interval: Duration,
    /// The URL clients reach the server at (`--public-url`), for the webhook URL.
    pub(crate) public_url: Option<String>,
    /// Nodes and their work orders.
    pub(crate) nodes: Arc<nodes::Nodes>,
    /// Request ids of signed agent requests seen inside the window (replays are refused).
    pub(crate) nonces: Arc<crate::proto::Nonces>,
    /// The dashboard's signed-in sessions (in memory: a restart signs everyone out).
    pub(crate) sessions: Arc<ui::session::Sessions>,
}

impl AppState {
    pub(crate) fn auto_create(&self) -> bool {
        self.auto_create.load(Ordering::SeqCst)
    }

    /// `--public-url`, else `http://<Host header>`.
    pub(crate) fn base_url(&self, headers: &HeaderMap) -> String {
        if let Some(u) = &self.public_url {
            return u.trim_end_matches('/').to_owned();
        }
        let host = headers
            .get(axum::http::header::HOST)
            .and_then(|v| v.to_str().ok())
            .filter(|h| {
                h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c))
            })
            .unwrap_or("127.0.0.1:8080");
        format!("http://{host}")
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Skipper",
        description = "The Skipper control plane: projects, stages, deploys, events and webhooks. \
                       Every route but /v1/health, /v1/openapi.json and /v1/webhook/{secret} needs \
                       the admin token (`Authorization: Bearer <token>` or `x-admin-token`). \
                       Errors are `{\"error\":{\"code\",\"message\",\"request_id\"}}`."
    ),
    components(schemas(error::ErrorBody, error::ErrorDetail)),
    modifiers(&Security)
)]
struct ApiDoc;

struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

fn error_response(what: &str) -> utoipa::openapi::RefOr<utoipa::openapi::Response> {
    use utoipa::openapi::{RefOr, ResponseBuilder, content::Content};
    RefOr::T(
        ResponseBuilder::new()
            .description(what)
            .content(
                "application/json",
                Content::new(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                    "ErrorBody",
                )))),
            )
            .build(),
    )
}

/// The error statuses any operation may answer with, in the envelope: the status says the
/// kind of error (see `ApiError::from_kind`).
const ERROR_STATUSES: [(&str, &str); 9] = [
    (
        "400",
        "A malformed body, parameter or field (named in the message)",
    ),
    ("404", "Something named does not exist"),
    (
        "409",
        "A conflict with what exists, or an idempotent request still running",
    ),
    ("413", "The body is over 1 MiB"),
    ("415", "The body is not of the documented content type"),
    (
        "422",
        "Refused by a rule (a stage's pattern, confirmation, promotion), or an idempotency key reused with another body",
    ),
    ("429", "A backend asked to slow down"),
    (
        "502",
        "A backend (Docker, a registry, the proxy) failed or refused Skipper's credentials",
    ),
    ("504", "A backend did not answer in time"),
];

/// Document the error envelope on every operation of `doc`, and, when `bearer`, the admin
/// token with its 401.
fn document_errors(doc: &mut utoipa::openapi::OpenApi, bearer: bool) {
    use utoipa::openapi::security::SecurityRequirement;
    for (path, item) in doc.paths.paths.iter_mut() {
        if path == "/v1/health" {
            continue;
        }
        for op in [
            &mut item.get,
            &mut item.post,
            &mut item.put,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        {
            let r = &mut op.responses.responses;
            for (code, what) in ERROR_STATUSES {
                r.entry(code.into()).or_insert_with(|| error_response(what));
            }
            if bearer {
                op.security = Some(vec![SecurityRequirement::new(
                    "bearer",
                    Vec::<String>::new(),
                )]);
                r.entry("401".into())
                    .or_insert_with(|| error_response("No valid admin token"));
            }
        }
    }
}

/// The routes that need no token, with their OpenAPI.
fn public_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(api::health))
        .routes(routes!(webhook::receive))
        .routes(routes!(agents::heartbeat))
        .routes(routes!(agents::next))
        .routes(routes!(agents::result))
        .routes(routes!(agents::renew))
}

/// The routes behind the admin token, with their OpenAPI.
fn protected_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(api::list_projects, api::create_project))
        .routes(routes!(
            api::get_project,
            api::put_project,
            api::delete_project
        ))
        .routes(routes!(api::create_stage))
        .routes(routes!(api::put_stage, api::delete_stage))
        .routes(routes!(api::list_instances, api::deploy))
        .routes(routes!(api::stop_instance))
        .routes(routes!(api::start_instance))
        .routes(routes!(api::restart_instance))
        .routes(routes!(api::remove_instance))
        .routes(routes!(api::rollback))
        .routes(routes!(api::tags))
        .routes(routes!(api::inspect))
        .routes(routes!(api::quick))
        .routes(routes!(api::list_deploys))
        .routes(routes!(api::get_deploy))
        .routes(routes!(events::deploy_events))
        .routes(routes!(events::all_events))
        .routes(routes!(api::reconcile))
        .routes(routes!(api::export_config))
        .routes(routes!(api::import_config))
        .routes(routes!(api::get_settings, api::put_settings))
        .routes(routes!(api::webhook_url))
        .routes(routes!(api::test_notification))
        .routes(routes!(api::regenerate_webhook_url))
        .routes(routes!(registries::list, registries::create))
        .routes(routes!(registries::replace, registries::delete))
        .routes(routes!(registries::test))
        .routes(routes!(agents::list, agents::register))
        .routes(routes!(agents::get, agents::delete))
        .routes(routes!(agents::rotate))
        .routes(routes!(agents::enqueue))
        .routes(routes!(agents::orders))
        .routes(routes!(agents::order))
        .routes(routes!(agents::cancel))
        .routes(routes!(tenants::list))
        .routes(routes!(tenants::get, tenants::put))
        .routes(routes!(tenants::apply))
        .routes(routes!(tenants::down))
        .routes(routes!(tenants::ps))
}

/// The whole server: every route, its middleware, the OpenAPI document.
pub(crate) fn app(state: AppState) -> Router {
    let (public, mut doc) = public_routes().split_for_parts();
    document_errors(&mut doc, false);
    let (protected, mut protected_doc) = protected_routes().split_for_parts();
    document_errors(&mut protected_doc, true);
    doc.merge(protected_doc);
    let doc = Arc::new(serde_json::to_value(&doc).unwrap_or_default());
    let protected = protected
        .route("/metrics", get(metrics_text))
        .route_layer(from_fn_with_state(state.clone(), idempotency::layer))
        .route_layer(from_fn_with_state(state.clone(), auth::require_token));
    Router::new()
        .merge(public)
        .merge(protected)
        .merge(ui::router(state.clone()))
        .route(
            "/v1/openapi.json",
            get(move || {
                let doc = doc.clone();
                async move { axum::Json((*doc).clone()) }
            }),
        )
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(from_fn_with_state(state.clone(), request_context))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the server failed on this request (a bug); it keeps running",
            )
            .into_response()
        }))
        .with_state(state)
}

async fn metrics_text(State(s): State<AppState>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}

/// Per request: an `x-request-id` (the client's, else a new one) in every log line and echoed
/// back, the error envelope completed with it, a log line and a metric for the answer.
async fn request_context(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let span = tracing::info_span!("request", request_id = %id, method = %method, route = %route);
    let started = Instant::now();
    let mut response = next.run(req).instrument(span.clone()).await;
    let status = response.status();
    if response.extensions().get::<IsErrorEnvelope>().is_some() {
        response = with_request_id(response, &id).await;
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-request-id", v);
    }
    s.metrics.request(&method, &route, status.as_u16());
    span.in_scope(|| {
        tracing::info!(
            status = status.as_u16(),
            ms = started.elapsed().as_millis() as u64,
            "answered"
        );
    });
    response
}

async fn with_request_id(response: Response, id: &str) -> Response {
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
        return Response::from_parts(parts, Body::empty());
    };
    let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    v["error"]["request_id"] = id.into();
    let out = serde_json::to_vec(&v).unwrap_or_else(|_| bytes.to_vec());
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(out))
}

/// Create or replace the config's projects in the store (each under its lease); the names.
pub(crate) async fn import_projects(
    engine: &Engine,
    config: &Config,
) -> skipper_core::Result<Vec<String>> {
    let mut names = Vec::new();
    for p in config.projects.values() {
        let lease = engine.project_lease(&p.name).await?;
        let r = engine.put_project(p).await;
        lease.release().await;
        r?;
        names.push(p.name.clone());
    }
    Ok(names)
}

/// `skipper serve`'s options.
#[derive(Debug, Clone)]
pub(crate) struct ServeOptions {
    pub(crate) listen: SocketAddr,
    pub(crate) reconcile_interval: Duration,
    pub(crate) drain_timeout: Duration,
    pub(crate) public_url: Option<String>,
    pub(crate) metrics_listen: Option<SocketAddr>,
}

/// The admin token from the environment: `SKIPPER_ADMIN_TOKEN`, else `ADMIN_TOKEN`.
fn token_from_env() -> Option<SecretString> {
    crate::app::env_nonempty("SKIPPER_ADMIN_TOKEN")
        .or_else(|| crate::app::env_nonempty("ADMIN_TOKEN"))
        .map(SecretString::from)
}

/// Seed the store from the config file once: when the store has no projects and was never
/// seeded. After that the store is the truth (`skipper config import` changes it).
pub(crate) async fn seed_store(engine: &Engine, config: &Config) -> skipper_core::Result<()> {
    let store = engine.store();
    if store.get_setting(IMPORTED_SETTING).await?.is_some() {
        return Ok(());
    }
    if store.list_projects().await?.is_empty() && !config.projects.is_empty() {
        let names = import_projects(engine, config).await?;
        tracing::info!(projects = ?names, "the config file seeded the store");
    }
    store
        .put_setting(IMPORTED_SETTING, &chrono::Utc::now().to_rfc3339())
        .await
}

/// Build the state from a built engine.
pub(crate) async fn state(
    engine: Engine,
    config: Config,
    idempotency: idempotency::Idempotency,
    nodes: Arc<nodes::Nodes>,
    reconcile_interval: Duration,
    public_url: Option<String>,
) -> Result<(AppState, Option<SecretString>)> {
    let (auth, made) = auth::Auth::init(engine.store().clone(), token_from_env()).await?;
    let auto_create = match engine.store().get_setting(AUTO_CREATE_SETTING).await? {
        Some(v) => v == "true",
        None => config.global.auto_create,
    };
    let watcher = match Watcher::new(engine.clone()) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e.chain(), "no registry watcher: pushes and polls are not acted on");
            None
        }
    };
    Ok((
        AppState {
            engine,
            config: Arc::new(config),
            watcher,
            auth: Arc::new(auth),
            idempotency: Arc::new(idempotency),
            metrics: Arc::new(metrics::Metrics::new()),
            shutdown: CancellationToken::new(),
            auto_create: Arc::new(AtomicBool::new(auto_create)),
            reconcile_interval,
            public_url,
            nodes,
            nonces: Arc::new(crate::proto::Nonces::default()),
            sessions: Arc::new(ui::session::Sessions::default()),
        },
        made,
    ))
}

/// The periodic reconcile: on a timer and on `wake`; never retries inside (the next pass is
/// the retry); each pass's outcome is logged and counted.
async fn reconcile_loop(s: AppState, wake: Arc<tokio::sync::Notify>) {
    let interval = s.reconcile_interval.max(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = s.shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
            () = wake.notified() => {}
        }
        match s.engine.reconcile().await {
            Ok(r) => {
                s.metrics.reconcile(true);
                if r.is_clean() {
                    tracing::debug!("periodic reconcile: nothing to repair");
                } else {
                    tracing::info!(report = ?r, "periodic reconcile repaired drift");
                }
            }
            Err(e) => {
                s.metrics.reconcile(false);
                tracing::warn!(error = %e.chain(), "periodic reconcile failed; the next pass tries again");
            }
        }
    }
}

/// Listen on `addr` with a deep accept queue: a fleet of agents reconnecting at once (a
/// server restart, a network back) must not overflow it (tokio's `bind` asks for 1,024; each
/// connection the kernel drops waits a second for its SYN to be sent again). The kernel caps
/// the depth at `net.core.somaxconn`.
fn listen(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    const BACKLOG: u32 = 8192;
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Run `skipper serve` until SIGINT/SIGTERM.
pub(crate) async fn run(
    built: crate::app::App,
    data_dir: &std::path::Path,
    opts: ServeOptions,
) -> Result<ExitCode> {
    let engine = built.engine.clone();
    seed_store(&engine, &built.config).await?;
    let idem = {
        let dir = data_dir.to_owned();
        tokio::task::spawn_blocking(move || idempotency::Idempotency::open(&dir))
            .await
            .context("opening server.db")??
    };
    let poll_interval = built.config.global.poll_interval;
    let nodes = match &built.nodes {
        Some(n) => n.clone(),
        None => {
            let dir = data_dir.to_owned();
            Arc::new(
                tokio::task::spawn_blocking(move || nodes::Nodes::open(&dir, nodes::HEARTBEAT))
                    .await
                    .context("opening server.db")??,
            )
        }
    };
    let (state, made) = state(
        engine.clone(),
        built.config,
        idem,
        nodes,
        opts.reconcile_interval,
        opts.public_url.clone(),
    )
    .await?;
    if let Some(token) = made {
        use secrecy::ExposeSecret;
        crate::output::errln!(
            "skipper: a new admin token was made (shown this once; the store keeps only its hash):\n\n    {}\n\nUse it as `Authorization: Bearer <token>` (or SKIPPER_TOKEN for the CLI). `skipper token rotate` makes another.",
            token.expose_secret()
        );
    }
    let wake = Arc::new(tokio::sync::Notify::new());
    let mut tasks = tokio::task::JoinSet::new();
    // The startup reconcile runs beside the listener, not before it: a node's agent answers the
    // reconcile's calls through this server, so waiting for them first would wait on ourselves.
    // (Every operation on a stage reconciles that stage first anyway.)
    {
        let engine = engine.clone();
        tasks.spawn(async move {
            match engine.reconcile().await {
                Ok(r) if !r.is_clean() => {
                    tracing::info!(report = ?r, "startup reconcile repaired drift")
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e.chain(), "startup reconcile failed; the periodic one tries again")
                }
            }
        });
    }
    if let Some(outbox) = built.outbox.clone() {
        tasks.spawn(outbox.run(state.shutdown.clone()));
    }
    tasks.spawn(reconcile_loop(state.clone(), wake.clone()));
    {
        let s = state.clone();
        let outbox = built.outbox.clone();
        let mut feed = engine.activity();
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    () = s.shutdown.cancelled() => return,
                    a = feed.recv() => match a {
                        Ok(a) => {
                            s.metrics.activity(&a);
                            // "Deploy started" goes out through the outbox (the engine itself
                            // notifies only when a deploy ends, so nothing waits at its start).
                            if let (skipper_core::Activity::Started(d), Some(outbox)) = (&a, &outbox) {
                                let message = format!(
                                    "deploying {} to {}/{}",
                                    d.image.familiar(),
                                    d.project,
                                    d.stage
                                );
                                let e = skipper_core::Event::for_deployment(
                                    skipper_core::EventKind::DeployStarted,
                                    d,
                                    message,
                                );
                                use skipper_core::Notifier as _;
                                let _ = outbox.notify(&e).await;
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(_) => return,
                    },
                }
            }
        });
    }
    if let Some(w) = state.watcher.clone() {
        let s = state.clone();
        tasks.spawn(async move {
            let stop = s.shutdown.clone();
            w.run_with(
                poll_interval,
                poll_interval / 10,
                stop.cancelled_owned(),
                |r| {
                    s.metrics.poll(r.errors.len());
                },
            )
            .await;
        });
    }
    {
        let s = state.clone();
        tasks.spawn(async move {
            loop {
                tokio::select! {
                    () = s.shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(3600)) => s.idempotency.prune(),
                }
            }
        });
    }
    // Node status: `node.online` / `node.offline` events when heartbeats start or stop.
    {
        let s = state.clone();
        tasks.spawn(async move {
            let mut seen = std::collections::HashMap::new();
            loop {
                // The heartbeats since the last pass, in one commit.
                if let Err(e) = s.nodes.flush_heartbeats() {
                    tracing::warn!(error = ?e, "cannot write heartbeats to server.db; kept for the next pass");
                }
                if let Ok(list) = s.nodes.list() {
                    for (id, online) in nodes::transitions(&mut seen, &list) {
                        let (kind, message) = if online {
                            (
                                skipper_core::EventKind::NodeOnline,
                                format!("node {id} is online"),
                            )
                        } else {
                            (
                                skipper_core::EventKind::NodeOffline,
                                format!("node {id} is offline: no heartbeat for three intervals"),
                            )
                        };
                        tracing::info!(node = %id, online, "node status changed");
                        s.engine
                            .announce(skipper_core::Event {
                                kind,
                                project: String::new(),
                                stage: String::new(),
                                image: None,
                                deployment_id: None,
                                instance_id: None,
                                url: None,
                                message,
                                at: chrono::Utc::now(),
                                correlation_id: None,
                            })
                            .await;
                    }
                }
                tokio::select! {
                    () = s.shutdown.cancelled() => {
                        let _ = s.nodes.flush_heartbeats();
                        return;
                    }
                    () = tokio::time::sleep(s.nodes.heartbeat) => {}
                }
            }
        });
    }

    let router = app(state.clone());
    let listener = listen(opts.listen).with_context(|| {
        format!(
            "cannot listen on {} (is another server there? set --listen or SKIPPER_LISTEN)",
            opts.listen
        )
    })?;
    if let Some(addr) = opts.metrics_listen {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} for metrics (--metrics-listen)"))?;
        let s = state.clone();
        let r = Router::new()
            .route("/metrics", get(metrics_text))
            .with_state(s.clone());
        tasks.spawn(async move {
            let _ = axum::serve(l, r)
                .with_graceful_shutdown(s.shutdown.clone().cancelled_owned())
                .await;
        });
    }
    let local = listener.local_addr().unwrap_or(opts.listen);
    tracing::info!(listen = %local, version = env!("CARGO_PKG_VERSION"), "skipper serve is ready");
    crate::output::errln!("skipper serve: listening on http://{local}");

    let shutdown = state.shutdown.clone();
    let signalled = {
        let shutdown = shutdown.clone();
        async move {
            crate::signals::wait_for_signal().await;
            tracing::info!("stopping: no new requests; in-flight deploys finish or roll back");
            shutdown.cancel();
        }
    };
    let server =
        axum::serve(listener, router.into_make_service()).with_graceful_shutdown(signalled);
    let served = server.await;
    // Stop the engine: new work is refused, health waits end, deploys finish or roll back.
    let drained = tokio::time::timeout(opts.drain_timeout, engine.shutdown()).await;
    if drained.is_err() {
        tracing::warn!(after = ?opts.drain_timeout, "drain timeout: some deploys had not ended; the next start's reconcile settles them");
    }
    shutdown.cancel();
    tasks.abort_all();
    served.context("the server failed")?;
    tracing::info!("skipper serve stopped");
    Ok(ExitCode::SUCCESS)
}
