//! Tenants and their compose stacks (seeds 000, 002, 003): a tenant is a node, a set of named
//! stacks (a `docker-compose.yml` each, with its `.env`) and env shared by them. `PUT` keeps
//! the desired state (its generation goes up when it changes); `POST /v1/deployments/{tenant}/
//! apply` queues one `compose` order per stack on the tenant's node (and a `down` for a stack
//! no longer desired), recorded as the last applied generation; the current state is what the
//! agent answered for each stack. Env values are write-only: the API shows them as `••••`.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::extract::{Body, Path};
use super::nodes::{NodeError, Nodes, now_ms, rfc3339};
use crate::compose::{Action, ComposeOrder, check_env, check_name};

/// How long a stack's order may wait for its node and run.
const DEADLINE: Duration = Duration::from_secs(30 * 60);

/// A tenant's desired state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct TenantSpec {
    /// The node its stacks run on.
    node: String,
    /// Env for every stack (a stack's own wins).
    #[serde(default)]
    env: BTreeMap<String, String>,
    /// Stacks by name.
    #[serde(default)]
    stacks: BTreeMap<String, StackSpec>,
}

/// One stack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct StackSpec {
    /// The `docker-compose.yml` text.
    compose: String,
    /// The stack's `.env` entries.
    #[serde(default)]
    env: BTreeMap<String, String>,
}

/// What was last applied.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Applied {
    generation: i64,
    at: String,
    action: String,
    /// The order of each stack.
    orders: BTreeMap<String, String>,
}

struct Row {
    spec: TenantSpec,
    generation: i64,
    applied: Option<Applied>,
    updated_ms: i64,
}

fn invalid(m: String) -> ApiError {
    ApiError::bad_request(m)
}

impl TenantSpec {
    fn check(&self, nodes: &Nodes) -> ApiResult<()> {
        match nodes.get(&self.node) {
            Ok(_) => {}
            Err(NodeError::NotFound) => {
                return Err(ApiError::not_found(format!(
                    "node {:?} (register it first: POST /v1/nodes)",
                    self.node
                )));
            }
            Err(e) => return Err(e.into()),
        }
        for (k, v) in &self.env {
            check_env(k, v).map_err(invalid)?;
        }
        for (name, stack) in &self.stacks {
            check_name("stack", name).map_err(invalid)?;
            for (k, v) in &stack.env {
                check_env(k, v).map_err(invalid)?;
            }
            let doc: Value = serde_saphyr::from_str(&stack.compose).map_err(|e| {
                invalid(format!(
                    "stacks.{name}.compose: not YAML ({})",
                    e.to_string().lines().next().unwrap_or("invalid")
                ))
            })?;
            if !doc.get("services").is_some_and(Value::is_object) {
                return Err(invalid(format!(
                    "stacks.{name}.compose: a compose file needs a `services:` mapping"
                )));
            }
        }
        Ok(())
    }

    /// The spec as the API shows it: env values hidden.
    fn public(&self) -> Value {
        let hide = |env: &BTreeMap<String, String>| -> Value {
            env.keys().map(|k| (k.clone(), json!("••••"))).collect()
        };
        json!({
            "node": self.node,
            "env": hide(&self.env),
            "stacks": self.stacks.iter().map(|(n, s)| (n.clone(), json!({
                "compose": s.compose,
                "env": hide(&s.env),
            }))).collect::<serde_json::Map<_, _>>(),
        })
    }
}

fn load(nodes: &Nodes, id: &str) -> ApiResult<Option<Row>> {
    let row: Option<(String, i64, Option<String>, i64)> = nodes
        .db()
        .query_row(
            "SELECT spec, generation, last_applied, updated_ms FROM tenants WHERE id = ?1",
            params![id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()
        .map_err(NodeError::from)?;
    let Some((spec, generation, applied, updated_ms)) = row else {
        return Ok(None);
    };
    let bad = |e: serde_json::Error| NodeError::Db(format!("tenant {id}: {e}"));
    Ok(Some(Row {
        spec: serde_json::from_str(&spec).map_err(bad)?,
        generation,
        applied: applied
            .map(|a| serde_json::from_str(&a))
            .transpose()
            .map_err(bad)?,
        updated_ms,
    }))
}

/// Every tenant's id and node (for the dashboard's Nodes page).
pub(crate) fn nodes_of(nodes: &Nodes) -> ApiResult<Vec<(String, String)>> {
    let rows: Vec<(String, String)> = {
        let c = nodes.db();
        let mut q = c
            .prepare("SELECT id, spec FROM tenants ORDER BY id")
            .map_err(NodeError::from)?;
        q.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(NodeError::from)?
            .collect::<Result<_, _>>()
            .map_err(NodeError::from)?
    };
    Ok(rows
        .into_iter()
        .filter_map(|(id, spec)| {
            serde_json::from_str::<TenantSpec>(&spec)
                .ok()
                .map(|s| (id, s.node))
        })
        .collect())
}

fn checked_id(id: &str) -> ApiResult<()> {
    check_name("tenant", id).map_err(invalid)
}

/// The tenant document: desired, last applied, current (each stack's last answer), in sync.
fn document(nodes: &Nodes, id: &str, row: &Row) -> Value {
    let mut current = serde_json::Map::new();
    let mut settled = true;
    if let Some(a) = &row.applied {
        for (stack, order) in &a.orders {
            let v = match nodes.order(order) {
                Ok(o) => {
                    if !matches!(o.status.as_str(), "succeeded") {
                        settled = false;
                    }
                    json!({
                        "order": o.id,
                        "status": o.status,
                        "services": o.result.as_ref().map(|r| r["services"].clone()).unwrap_or(json!([])),
                        "logs": o.result.as_ref().map(|r| r["logs"].clone()).unwrap_or(json!([])),
                        "message": o.result.as_ref().map(|r| r["message"].clone()).unwrap_or(Value::Null),
                    })
                }
                Err(_) => {
                    settled = false;
                    json!({ "order": order, "status": "unknown" })
                }
            };
            current.insert(stack.clone(), v);
        }
    }
    let applied_generation = row.applied.as_ref().map(|a| a.generation);
    json!({
        "id": id,
        "node": row.spec.node,
        "generation": row.generation,
        "desired": row.spec.public(),
        "last_applied": row.applied.as_ref().map(|a| json!({
            "generation": a.generation, "at": a.at, "action": a.action, "orders": a.orders,
        })),
        "current": current,
        "in_sync": settled && applied_generation == Some(row.generation)
            && row.applied.as_ref().is_some_and(|a| a.action == "up"),
        "updated_at": rfc3339(row.updated_ms),
    })
}

/// Every tenant.
#[utoipa::path(get, path = "/v1/tenants", tag = "tenants",
    responses((status = 200, body = Vec<Object>)))]
pub(crate) async fn list(State(s): State<AppState>) -> ApiResult<axum::Json<Value>> {
    let ids: Vec<String> = {
        let c = s.nodes.db();
        let mut q = c
            .prepare("SELECT id FROM tenants ORDER BY id")
            .map_err(NodeError::from)?;
        q.query_map([], |r| r.get(0))
            .map_err(NodeError::from)?
            .collect::<Result<_, _>>()
            .map_err(NodeError::from)?
    };
    let mut all = Vec::new();
    for id in ids {
        if let Some(row) = load(&s.nodes, &id)? {
            all.push(document(&s.nodes, &id, &row));
        }
    }
    Ok(axum::Json(Value::Array(all)))
}

/// One tenant: its desired state, what was last applied and what runs now.
#[utoipa::path(get, path = "/v1/tenants/{id}", tag = "tenants", params(("id" = String, Path)),
    responses((status = 200, body = Object), (status = 404, body = super::error::ErrorBody)))]
pub(crate) async fn get(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<Value>> {
    checked_id(&id)?;
    let row = load(&s.nodes, &id)?.ok_or_else(|| ApiError::not_found("no such tenant"))?;
    Ok(axum::Json(document(&s.nodes, &id, &row)))
}

/// Create or replace a tenant's desired state (`201` when new). Nothing runs until `apply`.
#[utoipa::path(put, path = "/v1/tenants/{id}", tag = "tenants", params(("id" = String, Path)),
    request_body = TenantSpec,
    responses((status = 200, body = Object), (status = 201, body = Object),
        (status = 400, body = super::error::ErrorBody), (status = 404, body = super::error::ErrorBody)))]
pub(crate) async fn put(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Body(spec): Body<TenantSpec>,
) -> ApiResult<Response> {
    checked_id(&id)?;
    spec.check(&s.nodes)?;
    let old = load(&s.nodes, &id)?;
    let generation = match &old {
        Some(r) if r.spec == spec => r.generation,
        Some(r) => r.generation + 1,
        None => 1,
    };
    let text = serde_json::to_string(&spec).map_err(|e| NodeError::Db(e.to_string()))?;
    s.nodes
        .db()
        .execute(
            "INSERT INTO tenants (id, spec, generation, updated_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (id) DO UPDATE SET spec = excluded.spec,
                 generation = excluded.generation, updated_ms = excluded.updated_ms",
            params![id, text, generation, now_ms()],
        )
        .map_err(NodeError::from)?;
    let row = load(&s.nodes, &id)?.ok_or_else(|| ApiError::not_found("no such tenant"))?;
    let status = if old.is_some() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, axum::Json(document(&s.nodes, &id, &row))).into_response())
}

/// Queue `action` for every stack of the tenant (and a `down` for stacks applied before but no
/// longer desired, on `up`), and record it as the last applied generation.
fn queue(s: &AppState, id: &str, action: Action) -> ApiResult<Response> {
    checked_id(id)?;
    let row = load(&s.nodes, id)?.ok_or_else(|| ApiError::not_found("no such tenant"))?;
    let mut orders = BTreeMap::new();
    let mut enqueue = |stack: &str, action: Action, spec: Option<&StackSpec>| -> ApiResult<()> {
        let mut env = row.spec.env.clone();
        if let Some(sp) = spec {
            env.extend(sp.env.clone());
        }
        let order = ComposeOrder {
            action,
            tenant: id.to_owned(),
            stack: stack.to_owned(),
            compose: spec
                .filter(|_| action == Action::Up)
                .map(|sp| sp.compose.clone()),
            env: if action == Action::Up {
                env
            } else {
                BTreeMap::new()
            },
        };
        order.check().map_err(invalid)?;
        let payload = serde_json::to_value(&order).map_err(|e| NodeError::Db(e.to_string()))?;
        let o = s
            .nodes
            .enqueue(&row.spec.node, "compose", &payload, "normal", DEADLINE)?;
        orders.insert(stack.to_owned(), o.id);
        Ok(())
    };
    for (name, stack) in &row.spec.stacks {
        enqueue(name, action, Some(stack))?;
    }
    if action == Action::Up
        && let Some(a) = &row.applied
    {
        for gone in a
            .orders
            .keys()
            .filter(|k| !row.spec.stacks.contains_key(*k))
        {
            enqueue(gone, Action::Down, None)?;
        }
    }
    let action_name = match action {
        Action::Up => "up",
        Action::Down => "down",
        Action::Ps => "ps",
    };
    let applied = Applied {
        generation: row.generation,
        at: rfc3339(now_ms()),
        action: action_name.into(),
        orders: orders.clone(),
    };
    if action != Action::Ps {
        let text = serde_json::to_string(&applied).map_err(|e| NodeError::Db(e.to_string()))?;
        s.nodes
            .db()
            .execute(
                "UPDATE tenants SET last_applied = ?2 WHERE id = ?1",
                params![id, text],
            )
            .map_err(NodeError::from)?;
    }
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({
            "tenant": id,
            "node": row.spec.node,
            "generation": row.generation,
            "action": action_name,
            "orders": orders,
        })),
    )
        .into_response())
}

/// Apply the tenant's desired state on its node: `docker compose up -d` for each stack (`202`
/// with the orders; follow them at `GET /v1/tenants/{id}` or `/v1/work-orders/{id}`).
#[utoipa::path(post, path = "/v1/deployments/{tenant}/apply", tag = "tenants",
    params(("tenant" = String, Path)),
    responses((status = 202, body = Object), (status = 404, body = super::error::ErrorBody)))]
pub(crate) async fn apply(
    State(s): State<AppState>,
    Path(tenant): Path<String>,
) -> ApiResult<Response> {
    queue(&s, &tenant, Action::Up)
}

/// Take every stack of the tenant down on its node (`docker compose down`).
#[utoipa::path(post, path = "/v1/deployments/{tenant}/down", tag = "tenants",
    params(("tenant" = String, Path)),
    responses((status = 202, body = Object), (status = 404, body = super::error::ErrorBody)))]
pub(crate) async fn down(
    State(s): State<AppState>,
    Path(tenant): Path<String>,
) -> ApiResult<Response> {
    queue(&s, &tenant, Action::Down)
}

/// Ask the node for the state of the tenant's services (the orders' results hold them).
#[utoipa::path(post, path = "/v1/deployments/{tenant}/ps", tag = "tenants",
    params(("tenant" = String, Path)),
    responses((status = 202, body = Object), (status = 404, body = super::error::ErrorBody)))]
pub(crate) async fn ps(
    State(s): State<AppState>,
    Path(tenant): Path<String>,
) -> ApiResult<Response> {
    queue(&s, &tenant, Action::Ps)
}
