//! Every route through `app(state)` with `oneshot`, against the in-memory fakes: no socket,
//! no Docker. Time is paused, so health waits pass in virtual time.

use std::sync::Arc;

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use skipper_core::store::MemoryStore;
use skipper_core::testing::{Behavior, FakeProxy, FakeRuntime};
use skipper_core::{Engine, EngineSettings, ImageRef, Registry};
use tower::ServiceExt;

use super::*;

const TOKEN: &str = "test-admin-token";
const REPO: &str = "localhost:5000/team/web";

struct Tags;

#[async_trait]
impl Registry for Tags {
    async fn list_tags(&self, _: &ImageRef) -> skipper_core::Result<Vec<String>> {
        Ok(["v1", "v2", "v10", "dev-1"].map(String::from).to_vec())
    }
    async fn resolve_digest(&self, _: &ImageRef) -> skipper_core::Result<String> {
        Ok(format!("sha256:{}", "a".repeat(64)))
    }
}

struct T {
    app: Router,
    state: AppState,
    rt: Arc<FakeRuntime>,
}

async fn harness() -> T {
    let rt = Arc::new(FakeRuntime::new());
    for tag in ["v1", "v2", "v10", "dev-1"] {
        rt.add_image(&format!("{REPO}:{tag}"), Behavior::Healthy);
    }
    rt.add_image(&format!("{REPO}:sick"), Behavior::Unhealthy);
    let fleet = Arc::new(nodes::Nodes::in_memory(Duration::from_secs(5)));
    let engine = Engine::builder(rt.clone(), Arc::new(MemoryStore::new()))
        .proxy(Arc::new(FakeProxy::new()))
        .nodes(Arc::new(super::remote_runtime::AgentNodes(fleet.clone())))
        .registry(Arc::new(Tags))
        .settings(EngineSettings::default())
        .build();
    engine
        .store()
        .put_setting(auth::TOKEN_SETTING, &hex::encode(auth::hash(TOKEN)))
        .await
        .unwrap();
    let (state, made) = state(
        engine,
        Config::parse("").unwrap(),
        idempotency::Idempotency::in_memory().unwrap(),
        fleet,
        Duration::from_secs(30),
        Some("http://skipper.test".into()),
    )
    .await
    .unwrap();
    assert!(made.is_none(), "a stored token is kept");
    T {
        app: app(state.clone()),
        state,
        rt,
    }
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Value,
    text: String,
}

impl T {
    async fn call(&self, req: Request<Body>) -> Answer {
        let r = self.app.clone().oneshot(req).await.unwrap();
        let status = r.status();
        let headers = r.headers().clone();
        let bytes = r.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Answer {
            status,
            headers,
            body,
            text,
        }
    }

    async fn req(&self, method: &str, path: &str, body: Option<Value>) -> Answer {
        self.call(request(method, path, body, Some(TOKEN), &[]))
            .await
    }

    async fn create_web(&self) {
        let a = self
            .req(
                "POST",
                "/v1/projects",
                Some(json!({
                    "name": "web", "image": REPO, "port": 8080, "healthcheck": "/health",
                    "stages": { "dev": { "tag_pattern": "*" }, "prod": { "tag_pattern": "v*", "confirm": true } },
                })),
            )
            .await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    }
}

fn request(
    method: &str,
    path: &str,
    body: Option<Value>,
    token: Option<&str>,
    headers: &[(&str, &str)],
) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    match body {
        Some(v) => b
            .header("content-type", "application/json")
            .body(Body::from(v.to_string()))
            .unwrap(),
        None => b.body(Body::empty()).unwrap(),
    }
}

fn assert_envelope(a: &Answer, status: StatusCode, code: &str) {
    assert_eq!(a.status, status, "{}", a.text);
    assert_eq!(a.body["error"]["code"], code, "{}", a.text);
    assert!(
        a.body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{}",
        a.text
    );
    let id = a.headers["x-request-id"].to_str().unwrap();
    assert_eq!(
        a.body["error"]["request_id"], id,
        "the envelope names the request"
    );
}

#[tokio::test(start_paused = true)]
async fn health_and_openapi_need_no_token() {
    let t = harness().await;
    let a = t.call(request("GET", "/v1/health", None, None, &[])).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body["status"], "ok");
    assert_eq!(a.body["version"], env!("CARGO_PKG_VERSION"));
    let a = t
        .call(request("GET", "/v1/openapi.json", None, None, &[]))
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(
        a.body["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        a.body["openapi"]
    );
    let paths = a.body["paths"].as_object().unwrap();
    for p in [
        "/v1/health",
        "/v1/projects",
        "/v1/projects/{project}",
        "/v1/projects/{project}/stages",
        "/v1/projects/{project}/stages/{stage}",
        "/v1/projects/{project}/stages/{stage}/instances",
        "/v1/projects/{project}/stages/{stage}/instances/{id}/stop",
        "/v1/projects/{project}/stages/{stage}/rollback",
        "/v1/projects/{project}/tags",
        "/v1/deploy/inspect",
        "/v1/deploy/quick",
        "/v1/deploys",
        "/v1/deploys/{id}",
        "/v1/deploys/{id}/events",
        "/v1/events",
        "/v1/webhook/{secret}",
        "/v1/settings",
        "/v1/settings/webhook-url",
        "/v1/settings/webhook-url/regenerate",
        "/v1/config/import",
        "/v1/config/export",
    ] {
        assert!(paths.contains_key(p), "the OpenAPI document has {p}");
    }
}

/// Generated from the OpenAPI document: every operation but the public ones answers 401 with
/// the envelope without a token, and with a wrong one.
#[tokio::test(start_paused = true)]
async fn every_operation_needs_the_token() {
    let t = harness().await;
    let doc = t
        .call(request("GET", "/v1/openapi.json", None, None, &[]))
        .await
        .body;
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in ["get", "post", "put", "delete", "patch"] {
            let Some(op) = item.get(method) else { continue };
            // The agent's routes are signed with the node's token instead (tested below).
            let agent = path.ends_with("/heartbeat")
                || path.ends_with("/work-orders/next")
                || path.ends_with("/result")
                || path.ends_with("/renew");
            let public = path == "/v1/health" || path.starts_with("/v1/webhook/") || agent;
            assert_eq!(op.get("security").is_some(), !public, "{method} {path}");
            if public {
                continue;
            }
            let concrete = path
                .replace("{project}", "web")
                .replace("{stage}", "dev")
                .replace("{id}", "x");
            for token in [None, Some("wrong")] {
                let a = t
                    .call(request(
                        &method.to_uppercase(),
                        &concrete,
                        Some(json!({})),
                        token,
                        &[],
                    ))
                    .await;
                assert_envelope(&a, StatusCode::UNAUTHORIZED, "unauthorized");
            }
            checked += 1;
        }
    }
    assert!(checked >= 25, "checked {checked} operations");
    let a = t.call(request("GET", "/metrics", None, None, &[])).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let a = t
        .call(request(
            "GET",
            "/v1/projects",
            None,
            None,
            &[("x-admin-token", TOKEN)],
        ))
        .await;
    assert_eq!(a.status, StatusCode::OK, "x-admin-token works too");
}

#[tokio::test(start_paused = true)]
async fn projects_and_stages_round_trip_and_refuse_bad_input() {
    let t = harness().await;
    t.create_web().await;
    let a = t.req("GET", "/v1/projects/web", None).await;
    assert_eq!(a.body["name"], "web");
    assert_eq!(a.body["stages"]["prod"]["confirm"], true);
    assert_eq!(a.body["healthcheck"]["path"], "/health");

    let again = t
        .req(
            "POST",
            "/v1/projects",
            Some(json!({"name": "web", "image": REPO})),
        )
        .await;
    assert_envelope(&again, StatusCode::CONFLICT, "conflict");

    let bad = t
        .req(
            "POST",
            "/v1/projects",
            Some(json!({"name": "api", "image": REPO, "port": 0})),
        )
        .await;
    assert_envelope(&bad, StatusCode::BAD_REQUEST, "invalid");
    assert!(bad.text.contains("projects.api.port"), "{}", bad.text);

    let garbage = t
        .call(
            Request::builder()
                .method("POST")
                .uri("/v1/projects")
                .header("authorization", format!("Bearer {TOKEN}"))
                .header("content-type", "application/json")
                .body(Body::from("{not json"))
                .unwrap(),
        )
        .await;
    assert_envelope(&garbage, StatusCode::BAD_REQUEST, "invalid");

    let a = t
        .req(
            "POST",
            "/v1/projects/web/stages",
            Some(json!({"name": "rel", "tag_pattern": "v*", "max_instances": 2})),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    assert_eq!(a.body["stages"]["rel"]["max_instances"], 2);
    let a = t
        .req(
            "PUT",
            "/v1/projects/web/stages/rel",
            Some(json!({"tag_pattern": "rc-*"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.body["stages"]["rel"]["tag_pattern"], "rc-*");
    let a = t
        .req(
            "PUT",
            "/v1/projects/web/stages/rel",
            Some(json!({"tag_pattern": "["})),
        )
        .await;
    assert_envelope(&a, StatusCode::BAD_REQUEST, "invalid");
    let a = t.req("DELETE", "/v1/projects/web/stages/rel", None).await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    let a = t.req("DELETE", "/v1/projects/web/stages/rel", None).await;
    assert_envelope(&a, StatusCode::NOT_FOUND, "not_found");

    let a = t
        .req(
            "PUT",
            "/v1/projects/web",
            Some(json!({"image": REPO, "port": 9090, "stages": {"dev": {"tag_pattern": "*"}}})),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.body["port"], 9090);
    let a = t.req("GET", "/v1/projects", None).await;
    assert_eq!(a.body.as_array().unwrap().len(), 1);
    let a = t.req("DELETE", "/v1/projects/web", None).await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    let a = t.req("GET", "/v1/projects/web", None).await;
    assert_envelope(&a, StatusCode::NOT_FOUND, "not_found");
    let a = t.req("GET", "/v1/nowhere", None).await;
    assert_envelope(&a, StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test(start_paused = true)]
async fn a_deploy_answers_202_then_the_record_and_its_events_tell_the_end() {
    let t = harness().await;
    t.create_web().await;
    let a = t
        .call(request(
            "POST",
            "/v1/projects/web/stages/dev/instances",
            Some(json!({"tag": "v1"})),
            Some(TOKEN),
            &[("x-correlation-id", "ci-42")],
        ))
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    let id = a.body["deploy_id"].as_str().unwrap().to_owned();
    assert_eq!(a.headers["location"], format!("/v1/deploys/{id}").as_str());

    // ?wait=true answers at the end: the second deploy waits for the first (the stage's lease).
    let b = t
        .req(
            "POST",
            "/v1/projects/web/stages/dev/instances?wait=true",
            Some(json!({"tag": "v2"})),
        )
        .await;
    assert_eq!(b.status, StatusCode::OK, "{}", b.text);
    assert_eq!(b.body["status"], "succeeded");
    assert_eq!(b.body["tag"], "v2");
    assert!(b.body["instance"]["id"].is_string(), "{}", b.text);

    let first = t.req("GET", &format!("/v1/deploys/{id}"), None).await;
    assert_eq!(first.body["status"], "succeeded", "{}", first.text);
    let stored = t
        .state
        .engine
        .store()
        .get_deployment(&id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.correlation_id.as_deref(), Some("ci-42"));

    let list = t
        .req("GET", "/v1/projects/web/stages/dev/instances", None)
        .await;
    let list = list.body.as_array().unwrap().clone();
    assert_eq!(list.len(), 1, "v1 retired: {list:?}");
    assert_eq!(list[0]["tag"], "v2");
    assert_eq!(list[0]["active"], true);

    // A finished deploy's events: every step replayed, then `done` with the deployment.
    let ev = t
        .req("GET", &format!("/v1/deploys/{id}/events"), None)
        .await;
    assert_eq!(ev.status, StatusCode::OK);
    let steps = ev.text.matches("event: step").count();
    assert_eq!(steps, stored.steps.len(), "{}", ev.text);
    assert!(ev.text.contains("event: done"), "{}", ev.text);
    assert!(ev.text.contains("\"status\":\"succeeded\""), "{}", ev.text);

    let all = t
        .req(
            "GET",
            "/v1/deploys?project=web&status=succeeded&limit=1",
            None,
        )
        .await;
    assert_eq!(all.body.as_array().unwrap().len(), 1);
    assert_eq!(all.body[0]["tag"], "v2", "newest first");
    let bad = t.req("GET", "/v1/deploys?status=bogus", None).await;
    assert_envelope(&bad, StatusCode::BAD_REQUEST, "invalid");

    // A failed deploy with ?wait=true is a 200 with status failed; v2 keeps serving.
    let sick = t
        .req(
            "POST",
            "/v1/projects/web/stages/dev/instances?wait=true",
            Some(json!({"tag": "sick"})),
        )
        .await;
    assert_eq!(sick.status, StatusCode::OK, "{}", sick.text);
    assert_eq!(sick.body["status"], "failed");
    assert_eq!(sick.body["error"]["step"], "health");
    assert_eq!(t.rt.running().len(), 1);

    // Refusals before anything starts are 4xx with the envelope.
    let a = t
        .req(
            "POST",
            "/v1/projects/web/stages/prod/instances",
            Some(json!({"tag": "v2"})),
        )
        .await;
    assert_envelope(&a, StatusCode::UNPROCESSABLE_ENTITY, "rejected");
    let a = t
        .req(
            "POST",
            "/v1/projects/web/stages/prod/instances",
            Some(json!({"tag": "dev-1", "confirm": true})),
        )
        .await;
    assert_envelope(&a, StatusCode::UNPROCESSABLE_ENTITY, "rejected");
    let a = t
        .req(
            "POST",
            "/v1/projects/web/stages/dev/instances",
            Some(json!({"tag": "v1", "bogus": 1})),
        )
        .await;
    assert_envelope(&a, StatusCode::BAD_REQUEST, "invalid");
    assert!(a.text.contains("bogus"), "names the field: {}", a.text);
    let a = t
        .req(
            "POST",
            "/v1/projects/web/stages/dev/instances",
            Some(json!({"tag": "bad tag!"})),
        )
        .await;
    assert_envelope(&a, StatusCode::BAD_REQUEST, "invalid");
    let a = t
        .req(
            "POST",
            "/v1/projects/web/stages/nope/instances",
            Some(json!({"tag": "v1"})),
        )
        .await;
    assert_envelope(&a, StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test(start_paused = true)]
async fn a_stage_on_an_offline_node_refuses_what_cannot_wait_with_409() {
    let t = harness().await;
    t.create_web().await;
    let a = t
        .req("POST", "/v1/nodes", Some(json!({"id": "host-1"})))
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let a = t
        .req(
            "POST",
            "/v1/projects/web/stages",
            Some(json!({"name": "edge", "tag_pattern": "*", "node": "host-1"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    // host-1 never sent a heartbeat: a rollback is refused at once, never queued behind it
    // (in paused time a wait would end in the 30 s call limit, a 504).
    let r = t
        .req("POST", "/v1/projects/web/stages/edge/rollback", None)
        .await;
    assert_envelope(&r, StatusCode::CONFLICT, "node_offline");
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("host-1"),
        "{}",
        r.text
    );
    // A deploy is accepted and waits for the node instead.
    let d = t
        .req(
            "POST",
            "/v1/projects/web/stages/edge/instances",
            Some(json!({"tag": "v1"})),
        )
        .await;
    assert_eq!(d.status, StatusCode::ACCEPTED, "{}", d.text);
}

#[tokio::test(start_paused = true)]
async fn instance_actions_and_rollback() {
    let t = harness().await;
    t.create_web().await;
    let base = "/v1/projects/web/stages/dev";
    t.req(
        "POST",
        &format!("{base}/instances?wait=true"),
        Some(json!({"tag": "v1"})),
    )
    .await;
    let d2 = t
        .req(
            "POST",
            &format!("{base}/instances?wait=true"),
            Some(json!({"tag": "v2"})),
        )
        .await;
    let id = d2.body["instance"]["id"].as_str().unwrap().to_owned();
    let a = t
        .req("POST", &format!("{base}/instances/{id}/stop"), None)
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.body["action"], "stopped");
    assert_eq!(a.body["state"], "stopped");
    let a = t
        .req("POST", &format!("{base}/instances/{id}/start"), None)
        .await;
    assert_eq!(a.body["state"], "running");
    let a = t
        .req("POST", &format!("{base}/instances/{id}/restart"), None)
        .await;
    assert_eq!(a.body["action"], "restarted");
    let a = t
        .req(
            "POST",
            "/v1/projects/web/stages/prod/instances/{id}/stop"
                .replace("{id}", &id)
                .as_str(),
            None,
        )
        .await;
    assert_envelope(&a, StatusCode::NOT_FOUND, "not_found");

    let r = t.req("POST", &format!("{base}/rollback"), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status"], "succeeded");
    assert_eq!(r.body["tag"], "v1");
    let list = t.req("GET", &format!("{base}/instances"), None).await;
    let active: Vec<&Value> = list
        .body
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["active"] == true)
        .collect();
    assert_eq!(active.len(), 1);
    assert_eq!(active[0]["tag"], "v1");
    let rid = active[0]["id"].as_str().unwrap();
    let a = t
        .req("DELETE", &format!("{base}/instances/{rid}"), None)
        .await;
    assert_eq!(a.body["action"], "removed");
    assert!(t.rt.containers().iter().all(|c| !c.name.contains(rid)));
}

#[tokio::test(start_paused = true)]
async fn an_idempotency_key_replays_the_first_answer_and_refuses_another_body() {
    let t = harness().await;
    t.create_web().await;
    let path = "/v1/projects/web/stages/dev/instances?wait=true";
    let key = [("idempotency-key", "k-1")];
    let first = t
        .call(request(
            "POST",
            path,
            Some(json!({"tag": "v1"})),
            Some(TOKEN),
            &key,
        ))
        .await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    let again = t
        .call(request(
            "POST",
            path,
            Some(json!({"tag": "v1"})),
            Some(TOKEN),
            &key,
        ))
        .await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.body, first.body, "the same answer");
    assert_eq!(again.headers["idempotent-replayed"], "true");
    let deploys = t.req("GET", "/v1/deploys", None).await;
    assert_eq!(deploys.body.as_array().unwrap().len(), 1, "deployed once");
    let other = t
        .call(request(
            "POST",
            path,
            Some(json!({"tag": "v2"})),
            Some(TOKEN),
            &key,
        ))
        .await;
    assert_envelope(&other, StatusCode::UNPROCESSABLE_ENTITY, "unprocessable");
    let seed = [("x-idempotency-key", "k-1")];
    let same_seed = t
        .call(request(
            "POST",
            path,
            Some(json!({"tag": "v1"})),
            Some(TOKEN),
            &seed,
        ))
        .await;
    assert_eq!(
        same_seed.body, first.body,
        "the seed's header name is the same key"
    );
    // Another path with the same key is another request.
    let p = t
        .call(request(
            "POST",
            "/v1/projects",
            Some(json!({"name": "api", "image": REPO})),
            Some(TOKEN),
            &key,
        ))
        .await;
    assert_eq!(p.status, StatusCode::CREATED, "{}", p.text);
}

#[tokio::test(start_paused = true)]
async fn the_webhook_takes_a_push_by_secret_and_ignores_a_redelivery() {
    let t = harness().await;
    let a = t
        .req(
            "POST",
            "/v1/projects",
            Some(json!({"name": "web", "image": REPO, "port": 8080, "stages": {"dev": {"tag_pattern": "v*", "auto_deploy": true}}})),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED);
    let url = t.req("GET", "/v1/settings/webhook-url", None).await;
    let url = url.body["url"].as_str().unwrap().to_owned();
    assert!(url.starts_with("http://skipper.test/v1/webhook/"), "{url}");
    let path = url.trim_start_matches("http://skipper.test");

    let wrong = t
        .call(request(
            "POST",
            "/v1/webhook/not-the-secret",
            Some(json!({"image": format!("{REPO}:v2")})),
            None,
            &[],
        ))
        .await;
    assert_envelope(&wrong, StatusCode::NOT_FOUND, "not_found");

    let delivery = [("x-skipper-delivery", "d-1")];
    let a = t
        .call(request(
            "POST",
            path,
            Some(json!({"image": format!("{REPO}:v2")})),
            None,
            &delivery,
        ))
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    assert_eq!(a.body["accepted"][0]["projects"][0], "web", "{}", a.text);
    let again = t
        .call(request(
            "POST",
            path,
            Some(json!({"image": format!("{REPO}:v2")})),
            None,
            &delivery,
        ))
        .await;
    assert_eq!(again.status, StatusCode::ACCEPTED);
    assert!(again.text.contains("seen before"), "{}", again.text);

    let unknown = t
        .call(request(
            "POST",
            path,
            Some(json!({"image": "localhost:5000/other/app:v1"})),
            None,
            &[],
        ))
        .await;
    assert!(
        unknown.text.contains("no project deploys this repository"),
        "{}",
        unknown.text
    );
    let bad = t
        .call(request(
            "POST",
            path,
            Some(json!({"nothing": 1})),
            None,
            &[],
        ))
        .await;
    assert_envelope(&bad, StatusCode::BAD_REQUEST, "invalid");

    let old = path.to_owned();
    let new = t
        .req("POST", "/v1/settings/webhook-url/regenerate", None)
        .await;
    assert_ne!(new.body["url"].as_str().unwrap(), url);
    let a = t
        .call(request(
            "POST",
            &old,
            Some(json!({"image": format!("{REPO}:v2")})),
            None,
            &[],
        ))
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND, "the old URL stops working");
}

#[tokio::test(start_paused = true)]
async fn config_export_and_import_round_trip() {
    let t = harness().await;
    t.create_web().await;
    let a = t.req("GET", "/v1/config/export", None).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(
        a.text.contains("projects:") && a.text.contains("web:"),
        "{}",
        a.text
    );
    t.req("DELETE", "/v1/projects/web", None).await;
    let imported = t
        .call(
            Request::builder()
                .method("POST")
                .uri("/v1/config/import")
                .header("authorization", format!("Bearer {TOKEN}"))
                .body(Body::from(a.text.clone()))
                .unwrap(),
        )
        .await;
    assert_eq!(imported.status, StatusCode::OK, "{}", imported.text);
    assert_eq!(imported.body["imported"], json!(["web"]));
    let p = t.req("GET", "/v1/projects/web", None).await;
    assert_eq!(p.body["stages"]["prod"]["tag_pattern"], "v*");
    let bad = t
        .call(
            Request::builder()
                .method("POST")
                .uri("/v1/config/import")
                .header("authorization", format!("Bearer {TOKEN}"))
                .body(Body::from("projects: [oops"))
                .unwrap(),
        )
        .await;
    assert_envelope(&bad, StatusCode::BAD_REQUEST, "invalid");
}

#[tokio::test(start_paused = true)]
async fn tags_settings_and_metrics() {
    let t = harness().await;
    t.create_web().await;
    let a = t.req("GET", "/v1/projects/web/tags", None).await;
    assert_eq!(a.body, json!(["v10", "v2", "v1", "dev-1"]), "newest first");
    let a = t.req("GET", "/v1/projects/web/tags?stage=prod", None).await;
    assert_eq!(a.body, json!(["v10", "v2", "v1"]), "the stage's pattern");
    let a = t.req("GET", "/v1/settings", None).await;
    assert_eq!(a.body["auto_create"], false);
    let a = t
        .req("PUT", "/v1/settings", Some(json!({"auto_create": true})))
        .await;
    assert_eq!(a.body["auto_create"], true);
    assert!(t.state.auto_create());
    let a = t
        .req("PUT", "/v1/settings", Some(json!({"domain": "x"})))
        .await;
    assert_envelope(&a, StatusCode::BAD_REQUEST, "invalid");
    t.req(
        "POST",
        "/v1/projects/web/stages/dev/instances?wait=true",
        Some(json!({"tag": "v1"})),
    )
    .await;
    let m = t.req("GET", "/metrics", None).await;
    assert_eq!(m.status, StatusCode::OK);
    assert!(m.text.contains("skipper_api_requests_total"), "{}", m.text);
}

#[tokio::test(start_paused = true)]
async fn no_input_makes_the_server_answer_5xx() {
    let t = harness().await;
    t.create_web().await;
    let bodies = [
        json!(null),
        json!([]),
        json!("x"),
        json!({"tag": null}),
        json!({"tag": 1}),
        json!({"name": 1, "image": 2}),
        json!({"name": "../etc", "image": REPO}),
        json!({"name": "<script>", "image": REPO}),
        json!({"image": "UPPER/Case:tag"}),
        json!({"image": ""}),
    ];
    let paths = [
        ("POST", "/v1/projects"),
        ("PUT", "/v1/projects/web"),
        ("POST", "/v1/projects/web/stages"),
        ("PUT", "/v1/projects/web/stages/dev"),
        ("POST", "/v1/projects/web/stages/dev/instances"),
        ("POST", "/v1/deploy/inspect"),
        ("POST", "/v1/deploy/quick"),
        ("PUT", "/v1/settings"),
    ];
    for (m, p) in paths {
        for b in &bodies {
            let a = t.req(m, p, Some(b.clone())).await;
            assert!(
                a.status.is_client_error(),
                "{m} {p} {b}: {} {}",
                a.status,
                a.text
            );
            assert!(
                a.body["error"]["code"].is_string(),
                "{m} {p} {b}: {}",
                a.text
            );
        }
    }
    for p in [
        "/v1/projects/%ZZ",
        "/v1/projects/a%00b",
        "/v1/deploys/..%2F..",
        "/v1/projects/web/stages/dev/instances/%FF/stop",
    ] {
        let a = t.req("GET", p, None).await;
        assert!(a.status.is_client_error(), "{p}: {}", a.status);
    }
}

#[tokio::test(start_paused = true)]
async fn a_deploy_can_use_an_image_the_engine_has_without_pulling() {
    use skipper_core::testing::Op;
    let t = harness().await;
    t.create_web().await;
    let path = "/v1/projects/web/stages/dev/instances?wait=true";
    let deploy = |body: Value| t.req("POST", path, Some(body));
    let a = deploy(json!({"tag": "v1"})).await;
    assert_eq!(a.body["status"], "succeeded", "{}", a.text);
    assert_eq!(t.rt.calls(Op::Pull), 1, "always, by default");
    let b = deploy(json!({"tag": "v2", "pull": "never"})).await;
    assert_eq!(b.body["status"], "failed", "{}", b.text);
    assert_eq!(b.body["error"]["step"], "pull", "{}", b.text);
    let c = deploy(json!({"tag": "v1", "pull": "missing"})).await;
    assert_eq!(c.body["status"], "succeeded", "{}", c.text);
    assert_eq!(t.rt.calls(Op::Pull), 1, "v1 is present: no second pull");
    let bad = deploy(json!({"tag": "v1", "pull": "sometimes"})).await;
    assert_envelope(&bad, StatusCode::BAD_REQUEST, "invalid");
}

#[tokio::test]
async fn registries_are_kept_with_write_only_tokens_and_can_be_tested() {
    let t = harness().await;
    let registry = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::method("GET"))
        .and(wiremock::matchers::path("/v2/"))
        .respond_with(wiremock::ResponseTemplate::new(200))
        .mount(&registry)
        .await;
    let a = t
        .req(
            "POST",
            "/v1/registries",
            Some(json!({"name": "gitea", "url": registry.uri(), "type": "distribution", "username": "ci", "token": "tok-SECRET"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    assert_eq!(a.body["token_set"], true);
    assert!(!a.text.contains("tok-SECRET"), "{}", a.text);
    let again = t
        .req(
            "POST",
            "/v1/registries",
            Some(json!({"name": "gitea", "url": registry.uri(), "type": "distribution"})),
        )
        .await;
    assert_envelope(&again, StatusCode::CONFLICT, "conflict");
    let bad = t
        .req(
            "POST",
            "/v1/registries",
            Some(json!({"name": "x", "url": "ftp://x", "type": "distribution"})),
        )
        .await;
    assert_envelope(&bad, StatusCode::BAD_REQUEST, "invalid");
    let bad = t
        .req(
            "POST",
            "/v1/registries",
            Some(json!({"name": "x", "url": "http://x", "type": "nope"})),
        )
        .await;
    assert_envelope(&bad, StatusCode::BAD_REQUEST, "invalid");

    let a = t
        .req(
            "PUT",
            "/v1/registries/gitea",
            Some(json!({"url": registry.uri(), "type": "distribution", "username": "ci2"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.body["username"], "ci2");
    assert_eq!(a.body["token_set"], true, "a token left out is kept");
    let list = t.req("GET", "/v1/registries", None).await;
    assert_eq!(list.body.as_array().unwrap().len(), 1);
    assert!(!list.text.contains("tok-SECRET"));
    let stored = super::registries::load(t.state.engine.store().as_ref())
        .await
        .unwrap();
    assert_eq!(stored.len(), 1, "the server's next start uses it");

    let ok = t.req("POST", "/v1/registries/gitea/test", None).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
    assert_eq!(ok.body["ok"], true);
    let missing = t.req("POST", "/v1/registries/none/test", None).await;
    assert_envelope(&missing, StatusCode::NOT_FOUND, "not_found");

    let d = t.req("DELETE", "/v1/registries/gitea", None).await;
    assert_eq!(d.status, StatusCode::NO_CONTENT);
    let d = t.req("DELETE", "/v1/registries/gitea", None).await;
    assert_envelope(&d, StatusCode::NOT_FOUND, "not_found");
    assert!(
        t.state
            .engine
            .store()
            .list_credentials()
            .await
            .unwrap()
            .is_empty(),
        "the token went too"
    );
}

/// A signed agent request, as `skippy` sends it.
fn agent_request(
    node: &str,
    token: &str,
    method: &str,
    path: &str,
    body: &[u8],
    ts: i64,
    id: &str,
) -> Request<Body> {
    let key = nodes::signing_key(token);
    let sig = crate::proto::sign(&key, method, path, ts, id, body);
    Request::builder()
        .method(method)
        .uri(path)
        .header(crate::proto::AGENT_ID, node)
        .header(crate::proto::TIMESTAMP, ts.to_string())
        .header(crate::proto::REQUEST_ID, id)
        .header(crate::proto::SIGNATURE, sig)
        .header("content-type", "application/json")
        .body(Body::from(body.to_vec()))
        .unwrap()
}

#[tokio::test]
async fn an_agent_signs_every_request_and_forgeries_replays_and_stale_times_are_refused() {
    let t = harness().await;
    let a = t
        .req(
            "POST",
            "/v1/nodes",
            Some(json!({"id": "host-1", "region": "se-sto-1"})),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let token = a.body["token"].as_str().unwrap().to_owned();
    let again = t
        .req("POST", "/v1/nodes", Some(json!({"id": "host-1"})))
        .await;
    assert_envelope(&again, StatusCode::CONFLICT, "conflict");
    assert!(
        !again.text.contains(&token),
        "a second registration discloses nothing"
    );
    let now = chrono::Utc::now().timestamp();
    let hb = "/v1/nodes/host-1/heartbeat";

    let ok = t
        .call(agent_request(
            "host-1", &token, "POST", hb, b"{}", now, "r1",
        ))
        .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text);
    // The answer is signed too, and the agent can check it.
    let sig = ok.headers[crate::proto::SIGNATURE].to_str().unwrap();
    let ts = ok.headers[crate::proto::TIMESTAMP]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        sig,
        crate::proto::sign(
            &nodes::signing_key(&token),
            "RESPONSE",
            hb,
            ts,
            "r1",
            ok.text.as_bytes()
        )
    );
    assert_eq!(
        t.req("GET", "/v1/nodes/host-1", None).await.body["status"],
        "online"
    );

    for (what, req) in [
        (
            "a replay",
            agent_request("host-1", &token, "POST", hb, b"{}", now, "r1"),
        ),
        (
            "a forged signature",
            agent_request(
                "host-1",
                "not-the-token-at-all",
                "POST",
                hb,
                b"{}",
                now,
                "r2",
            ),
        ),
        (
            "a stale timestamp",
            agent_request("host-1", &token, "POST", hb, b"{}", now - 301, "r3"),
        ),
        (
            "another node's id",
            agent_request(
                "host-2",
                &token,
                "POST",
                "/v1/nodes/host-2/heartbeat",
                b"{}",
                now,
                "r4",
            ),
        ),
    ] {
        let a = t.call(req).await;
        assert_envelope(&a, StatusCode::UNAUTHORIZED, "unauthorized");
        assert!(
            !a.text.contains("replay") && !a.text.contains("stale"),
            "{what}: the reason stays in the log: {}",
            a.text
        );
    }

    // An order: queued, handed to the agent by its long-poll, answered once.
    let o = t
        .req(
            "POST",
            "/v1/nodes/host-1/work-orders",
            Some(json!({"kind": "ping", "priority": "high"})),
        )
        .await;
    assert_eq!(o.status, StatusCode::CREATED, "{}", o.text);
    let oid = o.body["id"].as_str().unwrap().to_owned();
    let next = t
        .call(agent_request(
            "host-1",
            &token,
            "GET",
            "/v1/nodes/host-1/work-orders/next?wait=0",
            b"",
            now,
            "r5",
        ))
        .await;
    assert_eq!(next.status, StatusCode::OK, "{}", next.text);
    assert_eq!(next.body["id"], oid.as_str());
    assert_eq!(next.body["status"], "leased");
    let path = format!("/v1/work-orders/{oid}/result");
    let body = br#"{"ok":true,"result":{"pong":true}}"#;
    let r = t
        .call(agent_request(
            "host-1", &token, "POST", &path, body, now, "r6",
        ))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let got = t.req("GET", &format!("/v1/work-orders/{oid}"), None).await;
    assert_eq!(got.body["status"], "succeeded");
    assert_eq!(got.body["result"]["pong"], true);
    let none = t
        .call(agent_request(
            "host-1",
            &token,
            "GET",
            "/v1/nodes/host-1/work-orders/next?wait=0",
            b"",
            now,
            "r7",
        ))
        .await;
    assert_eq!(none.status, StatusCode::NO_CONTENT);

    // Rotation: the old token works until the agent signs with the new one, which it gets from
    // its heartbeat's signed answer.
    let rot = t.req("POST", "/v1/nodes/host-1/rotate-token", None).await;
    let new = rot.body["token"].as_str().unwrap().to_owned();
    let hb_old = t
        .call(agent_request(
            "host-1", &token, "POST", hb, b"{}", now, "r8",
        ))
        .await;
    assert_eq!(hb_old.status, StatusCode::OK);
    assert_eq!(hb_old.body["token"], new.as_str());
    let hb_new = t
        .call(agent_request("host-1", &new, "POST", hb, b"{}", now, "r9"))
        .await;
    assert_eq!(hb_new.status, StatusCode::OK);
    assert!(
        hb_new.body.get("token").is_none(),
        "delivered: {}",
        hb_new.text
    );
    let stale = t
        .call(agent_request(
            "host-1", &token, "POST", hb, b"{}", now, "r10",
        ))
        .await;
    assert_eq!(
        stale.status,
        StatusCode::UNAUTHORIZED,
        "the old token retired once the new one was used"
    );

    // Revoked: at once.
    assert_eq!(
        t.req("DELETE", "/v1/nodes/host-1", None).await.status,
        StatusCode::NO_CONTENT
    );
    let gone = t
        .call(agent_request("host-1", &new, "POST", hb, b"{}", now, "r11"))
        .await;
    assert_eq!(gone.status, StatusCode::UNAUTHORIZED);
}

/// Tenants: desired state with write-only env, generations, apply queues one compose order per
/// stack on the tenant's node (a removed stack gets a `down`), and the orders hide the env.
#[tokio::test]
async fn tenants_keep_desired_state_and_apply_queues_compose_orders() {
    let t = harness().await;
    let stack = "services:\n  web:\n    image: skipper-test/app:v1\n";
    let spec = |stacks: Value| json!({"node": "host-1", "env": {"SHARED": "s"}, "stacks": stacks});
    let one = spec(json!({"web": {"compose": stack, "env": {"SECRET": "hunter2"}}}));
    // Refusals: unknown node, bad names, not a compose file.
    let a = t.req("PUT", "/v1/tenants/acme", Some(one.clone())).await;
    assert_envelope(&a, StatusCode::NOT_FOUND, "not_found");
    assert_eq!(
        t.req("POST", "/v1/nodes", Some(json!({"id": "host-1"})))
            .await
            .status,
        StatusCode::CREATED
    );
    for (path, body) in [
        ("/v1/tenants/..", one.clone()),
        ("/v1/tenants/Acme", one.clone()),
        (
            "/v1/tenants/acme",
            spec(json!({"../x": {"compose": stack}})),
        ),
        (
            "/v1/tenants/acme",
            spec(json!({"web": {"compose": "services: [1"}})),
        ),
        (
            "/v1/tenants/acme",
            spec(json!({"web": {"compose": "version: '3'\n"}})),
        ),
        (
            "/v1/tenants/acme",
            spec(json!({"web": {"compose": stack, "env": {"A": "1\nB=2"}}})),
        ),
    ] {
        let a = t.req("PUT", path, Some(body)).await;
        assert!(
            a.status == StatusCode::BAD_REQUEST || a.status == StatusCode::NOT_FOUND,
            "{path}: {} {}",
            a.status,
            a.text
        );
    }
    assert_eq!(
        t.req("GET", "/v1/tenants/acme", None).await.status,
        StatusCode::NOT_FOUND
    );

    let a = t.req("PUT", "/v1/tenants/acme", Some(one.clone())).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    assert_eq!(a.body["generation"], 1);
    assert_eq!(a.body["desired"]["stacks"]["web"]["env"]["SECRET"], "••••");
    assert!(!a.text.contains("hunter2"), "{}", a.text);
    assert_eq!(a.body["in_sync"], false);
    // The same spec again keeps its generation; a change makes the next.
    let a = t.req("PUT", "/v1/tenants/acme", Some(one.clone())).await;
    assert_eq!(
        (a.status, &a.body["generation"]),
        (StatusCode::OK, &json!(1))
    );

    let a = t.req("POST", "/v1/deployments/acme/apply", None).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    let web = a.body["orders"]["web"].as_str().unwrap().to_owned();
    let o = t.req("GET", &format!("/v1/work-orders/{web}"), None).await;
    assert_eq!(o.body["kind"], "compose");
    assert_eq!(o.body["payload"]["action"], "up");
    assert_eq!(o.body["payload"]["env"]["SECRET"], "••••", "{}", o.text);
    assert_eq!(o.body["payload"]["env"]["SHARED"], "••••");
    assert!(!o.text.contains("hunter2"));
    let list = t.req("GET", "/v1/work-orders?node=host-1", None).await;
    assert!(!list.text.contains("hunter2"), "{}", list.text);
    // The agent gets the real values (its own signed channel).
    let order = t.state.nodes.order(&web).unwrap();
    assert_eq!(order.payload["env"]["SECRET"], "hunter2");
    let doc = t.req("GET", "/v1/tenants/acme", None).await;
    assert_eq!(doc.body["last_applied"]["generation"], 1);
    assert_eq!(doc.body["current"]["web"]["status"], "queued");

    // The stack goes from the desired state: the next apply takes it down.
    let a = t
        .req(
            "PUT",
            "/v1/tenants/acme",
            Some(spec(json!({"api": {"compose": stack}}))),
        )
        .await;
    assert_eq!(a.body["generation"], 2, "{}", a.text);
    let a = t.req("POST", "/v1/deployments/acme/apply", None).await;
    let down = a.body["orders"]["web"].as_str().unwrap();
    let o = t.state.nodes.order(down).unwrap();
    assert_eq!(o.payload["action"], "down");
    assert_eq!(o.payload["stack"], "web");
    assert!(a.body["orders"]["api"].is_string());
    assert_eq!(
        t.req("POST", "/v1/deployments/nobody/apply", None)
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}
