//! Nodes and work orders over HTTP: the people's routes (behind the admin token) and the
//! agent's routes (signed with the node's token, see [`crate::proto`]).

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::{Body, Path, Query};
use crate::proto;

/// An order as people see it: a compose stack's `.env` values hidden (only the agent gets
/// them, over its signed channel).
fn public(mut o: super::nodes::WorkOrder) -> Value {
    if o.kind == "compose" {
        crate::compose::redact(&mut o.payload);
    }
    serde_json::to_value(o).unwrap_or_default()
}

/// How long an agent's long-poll waits for an order at most.
const LONG_POLL: Duration = Duration::from_secs(25);
/// An order's lease: the agent renews it while working.
const LEASE: Duration = Duration::from_secs(60);

/// A node to register.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NodeBody {
    /// The node's id.
    #[schema(pattern = "^[a-z0-9][a-z0-9_-]{0,62}$")]
    id: String,
    /// Its role (default `worker`).
    #[schema(pattern = "^[a-z0-9][a-z0-9_-]{0,62}$")]
    role: Option<String>,
    /// Its region.
    region: Option<String>,
    /// A token to use instead of a generated one (at least 16 characters).
    #[schema(min_length = 16)]
    token: Option<String>,
}

/// Register a node: `201` with its token, shown this once (the server keeps only its hash).
#[utoipa::path(post, path = "/v1/nodes", tag = "nodes", request_body = NodeBody,
    responses((status = 201, body = Object)))]
pub(crate) async fn register(
    State(s): State<AppState>,
    Body(b): Body<NodeBody>,
) -> ApiResult<Response> {
    let role = b.role.unwrap_or_else(|| "worker".into());
    let (node, token) = s
        .nodes
        .register(&b.id, &role, b.region.as_deref(), b.token)?;
    let mut v = serde_json::to_value(&node).unwrap_or_default();
    v["token"] = token.into();
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, format!("/v1/nodes/{}", node.id))],
        axum::Json(v),
    )
        .into_response())
}

/// Every node, with `status` (`online` while heartbeats arrive) and `last_heartbeat`.
#[utoipa::path(get, path = "/v1/nodes", tag = "nodes", responses((status = 200, body = Vec<Object>)))]
pub(crate) async fn list(State(s): State<AppState>) -> ApiResult<axum::Json<Value>> {
    Ok(axum::Json(
        serde_json::to_value(s.nodes.list()?).unwrap_or_default(),
    ))
}

/// One node.
#[utoipa::path(get, path = "/v1/nodes/{id}", tag = "nodes", params(("id" = String, Path)),
    responses((status = 200, body = Object)))]
pub(crate) async fn get(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    Ok(axum::Json(
        serde_json::to_value(s.nodes.get(&id)?).unwrap_or_default(),
    ))
}

/// Delete a node: its token stops working at once, its queued orders are cancelled.
#[utoipa::path(delete, path = "/v1/nodes/{id}", tag = "nodes", params(("id" = String, Path)),
    responses((status = 204, description = "Deleted")))]
pub(crate) async fn delete(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    s.nodes.delete(&id)?;
    Ok(StatusCode::NO_CONTENT)
}

/// A new token for the node (shown this once). The agent fetches it over its signed channel
/// and switches; the old one works until then, or for 10 minutes.
#[utoipa::path(post, path = "/v1/nodes/{id}/rotate-token", tag = "nodes", params(("id" = String, Path)),
    responses((status = 200, body = Object)))]
pub(crate) async fn rotate(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    let token = s.nodes.rotate(&id)?;
    Ok(axum::Json(
        json!({ "id": id, "token": token, "old_token_valid_for_secs": super::nodes::OVERLAP.as_secs() }),
    ))
}

/// An order to queue.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct OrderBody {
    /// What to do: `ping` (the agent answers with its identity) or `runtime` (one call of the
    /// engine's `Runtime` on the node's Docker engine: `{"call": "list_containers", …}`).
    #[schema(pattern = "^(ping|runtime)$")]
    kind: String,
    /// Its parameters.
    #[serde(default)]
    payload: Value,
    /// `low`, `normal` (default), `high` or `critical`.
    #[schema(pattern = "^(low|normal|high|critical)$")]
    priority: Option<String>,
    /// Seconds until it expires (default 600).
    #[schema(minimum = 1, maximum = 86400)]
    deadline_secs: Option<u64>,
}

/// Queue an order for a node.
#[utoipa::path(post, path = "/v1/nodes/{id}/work-orders", tag = "nodes", params(("id" = String, Path)),
    request_body = OrderBody, responses((status = 201, body = Object)))]
pub(crate) async fn enqueue(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Body(b): Body<OrderBody>,
) -> ApiResult<Response> {
    match b.kind.as_str() {
        "ping" => {}
        "runtime" => {
            serde_json::from_value::<crate::runtime_call::RuntimeCall>(b.payload.clone())
                .map_err(|e| ApiError::bad_request(format!("payload: not a runtime call: {e}")))?;
        }
        other => {
            return Err(ApiError::bad_request(format!(
                "kind: {other:?} is not an order kind (ping, runtime)"
            )));
        }
    }
    let deadline = Duration::from_secs(b.deadline_secs.unwrap_or(600).clamp(1, 86_400));
    let o = s.nodes.enqueue(
        &id,
        &b.kind,
        &b.payload,
        b.priority.as_deref().unwrap_or("normal"),
        deadline,
    )?;
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, format!("/v1/work-orders/{}", o.id))],
        axum::Json(public(o)),
    )
        .into_response())
}

/// `?node=`: one node's orders.
#[derive(Debug, Deserialize, IntoParams)]
pub(crate) struct OrdersQuery {
    /// Only this node's.
    node: Option<String>,
    /// At most this many (default 100).
    limit: Option<usize>,
}

/// Work orders, newest first.
#[utoipa::path(get, path = "/v1/work-orders", tag = "nodes", params(OrdersQuery),
    responses((status = 200, body = Vec<Object>)))]
pub(crate) async fn orders(
    State(s): State<AppState>,
    Query(q): Query<OrdersQuery>,
) -> ApiResult<axum::Json<Value>> {
    let list = s
        .nodes
        .orders(q.node.as_deref(), q.limit.unwrap_or(100).clamp(1, 1000))?;
    Ok(axum::Json(Value::Array(
        list.into_iter().map(public).collect(),
    )))
}

/// One work order, with its result once the agent answered.
#[utoipa::path(get, path = "/v1/work-orders/{id}", tag = "nodes", params(("id" = String, Path)),
    responses((status = 200, body = Object)))]
pub(crate) async fn order(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    Ok(axum::Json(public(s.nodes.order(&id)?)))
}

/// Cancel an order that has not finished.
#[utoipa::path(post, path = "/v1/work-orders/{id}/cancel", tag = "nodes", params(("id" = String, Path)),
    responses((status = 200, body = Object)))]
pub(crate) async fn cancel(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    Ok(axum::Json(public(s.nodes.cancel(&id)?)))
}

// ---- the agent's routes: signed, no admin token -------------------------------------------

/// Check the agent's signature; the reason of a refusal goes to the log, never the answer.
fn verify(
    s: &AppState,
    node: &str,
    method: &Method,
    uri: &Uri,
    h: &HeaderMap,
    body: &[u8],
) -> ApiResult<()> {
    let header = |n: &str| h.get(n).and_then(|v| v.to_str().ok());
    let refused = || {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the request's signature was refused",
        )
    };
    if header(proto::AGENT_ID) != Some(node) {
        tracing::warn!(
            node,
            reason = "X-Agent-Id is missing or names another node",
            "agent request refused"
        );
        return Err(refused());
    }
    let keys = match s.nodes.keys(node) {
        Ok(k) => k,
        Err(_) => {
            tracing::warn!(
                node,
                reason = "no such node (revoked?)",
                "agent request refused"
            );
            return Err(refused());
        }
    };
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let path = uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or(uri.path());
    match proto::verify(
        &refs,
        method.as_str(),
        path,
        header(proto::TIMESTAMP),
        header(proto::REQUEST_ID),
        header(proto::SIGNATURE),
        body,
        chrono::Utc::now().timestamp(),
        &s.nonces,
    ) {
        Ok(0) => {
            s.nodes.confirm_current(node);
            Ok(())
        }
        Ok(_) => Ok(()),
        Err(reason) => {
            tracing::warn!(node, %reason, "agent request refused");
            Err(refused())
        }
    }
}

/// Sign an answer to the agent with the node's current key (the agent checks it before it
/// acts): the same scheme, method `RESPONSE`, the request's path and id.
fn signed(
    s: &AppState,
    node: &str,
    request_path: &str,
    request_id: &str,
    status: StatusCode,
    body: Vec<u8>,
) -> Response {
    let ts = chrono::Utc::now().timestamp();
    // During a rotation the agent still holds the old key: sign with the key it signed with.
    let keys = s.nodes.keys(node).unwrap_or_default();
    let key = keys.last().cloned().unwrap_or_default();
    let sig = proto::sign(&key, "RESPONSE", request_path, ts, request_id, &body);
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(&ts.to_string()) {
        h.insert(proto::TIMESTAMP, v);
    }
    if let Ok(v) = HeaderValue::from_str(&sig) {
        h.insert(proto::SIGNATURE, v);
    }
    r
}

/// The node a signed request says it comes from (checked by [`verify`]).
fn agent_id(h: &HeaderMap) -> String {
    h.get(proto::AGENT_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

fn request_id(h: &HeaderMap) -> String {
    h.get(proto::REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// The agent's heartbeat: `{"heartbeat_interval_ms", "token"?}`; `token` is a rotated token to
/// switch to (the answer is signed with the key the agent holds).
#[utoipa::path(post, path = "/v1/nodes/{id}/heartbeat", tag = "agent", params(("id" = String, Path)),
    responses((status = 200, body = Object), (status = 401, body = super::error::ErrorBody)))]
pub(crate) async fn heartbeat(
    State(s): State<AppState>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    verify(&s, &id, &method, &uri, &headers, &body)?;
    if s.nodes.heartbeat(&id)? {
        tracing::info!(node = %id, "node online");
    }
    let mut v = json!({ "heartbeat_interval_ms": s.nodes.heartbeat.as_millis() as u64 });
    if let Some(t) = s.nodes.pending_token(&id) {
        v["token"] = t.into();
    }
    Ok(signed(
        &s,
        &id,
        uri.path(),
        &request_id(&headers),
        StatusCode::OK,
        v.to_string().into_bytes(),
    ))
}

/// `?wait=`: seconds to wait for an order (default and at most 25).
#[derive(Debug, Deserialize, IntoParams)]
pub(crate) struct NextQuery {
    /// Seconds to wait (long-poll), 0-25.
    wait: Option<u64>,
}

/// The agent's long-poll: the node's next order (200, leased to it), answered the moment one is
/// queued; 204 when none came within `wait`.
#[utoipa::path(get, path = "/v1/nodes/{id}/work-orders/next", tag = "agent",
    params(("id" = String, Path), NextQuery),
    responses((status = 200, body = Object), (status = 204, description = "Nothing to do"),
        (status = 401, body = super::error::ErrorBody)))]
pub(crate) async fn next(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<NextQuery>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> ApiResult<Response> {
    verify(&s, &id, &method, &uri, &headers, b"")?;
    let _ = s.nodes.heartbeat(&id);
    let wait = Duration::from_secs(q.wait.unwrap_or(25)).min(LONG_POLL);
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_default();
    match s.nodes.next(&id, LEASE, wait, &s.shutdown).await? {
        Some(o) => {
            let body = serde_json::to_vec(&o).unwrap_or_default();
            Ok(signed(
                &s,
                &id,
                &path,
                &request_id(&headers),
                StatusCode::OK,
                body,
            ))
        }
        None => Ok(signed(
            &s,
            &id,
            &path,
            &request_id(&headers),
            StatusCode::NO_CONTENT,
            Vec::new(),
        )),
    }
}

/// An order's result.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ResultBody {
    /// Whether it succeeded.
    ok: bool,
    /// What it produced (and its logs).
    #[serde(default)]
    result: Value,
}

/// The agent's answer to an order (signed by the node the order is for).
#[utoipa::path(post, path = "/v1/work-orders/{id}/result", tag = "agent", params(("id" = String, Path)),
    request_body = ResultBody,
    responses((status = 200, body = Object), (status = 401, body = super::error::ErrorBody)))]
pub(crate) async fn result(
    State(s): State<AppState>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let node = agent_id(&headers);
    verify(&s, &node, &method, &uri, &headers, &body)?;
    let b: ResultBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the result: {e}")))?;
    let o = s.nodes.finish(&node, &id, b.ok, &b.result)?;
    Ok(signed(
        &s,
        &node,
        uri.path(),
        &request_id(&headers),
        StatusCode::OK,
        serde_json::to_vec(&o).unwrap_or_default(),
    ))
}

/// The agent renews an order's lease while it works.
#[utoipa::path(post, path = "/v1/work-orders/{id}/renew", tag = "agent", params(("id" = String, Path)),
    responses((status = 200, body = Object), (status = 401, body = super::error::ErrorBody)))]
pub(crate) async fn renew(
    State(s): State<AppState>,
    Path(id): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let node = agent_id(&headers);
    verify(&s, &node, &method, &uri, &headers, &body)?;
    s.nodes.renew(&node, &id, LEASE)?;
    Ok(signed(
        &s,
        &node,
        uri.path(),
        &request_id(&headers),
        StatusCode::OK,
        b"{\"renewed\":true}".to_vec(),
    ))
}
