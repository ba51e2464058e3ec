//! `CaddyClient` against wiremock: the exact requests it sends to Caddy's admin API (methods,
//! paths, `If-Match`, bodies) for each situation. One mock server per test; every mock that
//! changes something says how often it must be hit, checked when the server drops. The real
//! Caddy tests are `tests/caddy_real.rs` at the workspace root.

use std::time::Duration;

use serde_json::{Value, json};
use skipper_caddy::{CaddyClient, CaddyConfig};
use skipper_core::{ErrorKind, ProxyManager, Route, RouteOptions, Upstream};
use wiremock::matchers::{body_json, header, method, path};
use wiremock::{Mock, MockServer, ResponseTemplate};

const DOMAIN: &str = "stage-dev-app.localhost";
const SERVER: &str = "/config/apps/http/servers/srv0";
const ROUTES: &str = "/config/apps/http/servers/srv0/routes";

fn route(port: u16) -> Route {
    Route {
        domain: DOMAIN.into(),
        upstream: Upstream {
            scheme: "http".into(),
            host: "127.0.0.1".into(),
            port,
        },
        options: RouteOptions::default(),
    }
}

fn adopting(port: u16) -> Route {
    let mut r = route(port);
    r.options.adopt = true;
    r
}

/// Skipper's route for DOMAIN to 127.0.0.1:`port`, as Skipper writes it.
fn skippers(port: u16) -> Value {
    json!({
        "@id": format!("skipper-route-{DOMAIN}"),
        "match": [{"host": [DOMAIN]}],
        "handle": [
            {
                "handler": "subroute",
                "routes": [{
                    "match": [{"vars": {"{http.shutting_down}": ["true"]}}],
                    "handle": [{"handler": "headers", "response": {"set": {"Connection": ["close"]}}}],
                }],
            },
            {
                "@id": format!("skipper-proxy-{DOMAIN}"),
                "handler": "reverse_proxy",
                "upstreams": [{"dial": format!("127.0.0.1:{port}")}],
            },
        ],
        "terminal": true,
    })
}

/// Skipper's route as an earlier Skipper wrote it (no `Connection: close` while shutting down).
fn skippers_before_close(port: u16) -> Value {
    let mut r = skippers(port);
    r["handle"] = json!([r["handle"][1].clone()]);
    r
}

fn by_hand(host: &str) -> Value {
    json!({"match": [{"host": [host]}], "handle": [{"handler": "static_response", "body": "hand"}]})
}

/// Caddy's answer body for a GET: compact JSON and a newline (Go's json.Encoder).
fn encoded(v: &Value) -> String {
    format!("{}\n", serde_json::to_string(v).unwrap())
}

fn server_with(routes: Value) -> Value {
    json!({"listen": ["127.0.0.1:8080"], "routes": routes})
}

/// Caddy 2.6's ETag of a GET of `path` answering `body` (FNV-1a 32 of the body).
fn etag(path: &str, body: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in body.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("\"{path} {h:08x}\"")
}

fn client(server: &MockServer) -> CaddyClient {
    CaddyClient::new(
        CaddyConfig::new(server.uri().parse().unwrap())
            .with_listen("127.0.0.1:8080")
            .with_timeout(Duration::from_millis(500)),
    )
    .unwrap()
}

/// Serve `value` on GET `p` (every time), returning the ETag a client derives from it.
async fn serve(server: &MockServer, p: &str, value: &Value) -> String {
    let body = encoded(value);
    Mock::given(method("GET"))
        .and(path(p.to_owned()))
        .respond_with(ResponseTemplate::new(200).set_body_raw(body.clone(), "application/json"))
        .mount(server)
        .await;
    etag(p, &body)
}

/// Serve `first` on the first GET of `p`, `then` afterwards; the ETags of both.
async fn serve_twice(
    server: &MockServer,
    p: &str,
    first: &Value,
    then: &Value,
) -> (String, String) {
    let (a, b) = (encoded(first), encoded(then));
    Mock::given(method("GET"))
        .and(path(p.to_owned()))
        .respond_with(ResponseTemplate::new(200).set_body_raw(a.clone(), "application/json"))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(server)
        .await;
    Mock::given(method("GET"))
        .and(path(p.to_owned()))
        .respond_with(ResponseTemplate::new(200).set_body_raw(b.clone(), "application/json"))
        .mount(server)
        .await;
    (etag(p, &a), etag(p, &b))
}

/// Every request but GETs, as `METHOD path`.
async fn changes(server: &MockServer) -> Vec<String> {
    server
        .received_requests()
        .await
        .unwrap_or_default()
        .iter()
        .filter(|r| r.method.as_str() != "GET")
        .map(|r| format!("{} {}", r.method, r.url.path()))
        .collect()
}

#[tokio::test]
async fn an_empty_config_gets_the_server_then_the_route() {
    let caddy = MockServer::start().await;
    // Caddy 2.6 answers a path through a missing `apps` with 400 "invalid traversal path".
    Mock::given(method("GET"))
        .and(path(SERVER))
        .respond_with(
            ResponseTemplate::new(400)
                .set_body_json(json!({"error": "invalid traversal path at: config/apps/http"})),
        )
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&caddy)
        .await;
    let created = server_with(json!([]));
    let mut created_with_https_off = created.clone();
    created_with_https_off["automatic_https"] = json!({"disable": true});
    let server_tag = serve(&caddy, SERVER, &created_with_https_off).await;
    let root_tag = serve(
        &caddy,
        "/config/",
        &json!({"admin": {"listen": "127.0.0.1:2019"}}),
    )
    .await;
    Mock::given(method("PUT"))
        .and(path("/config/apps"))
        .and(header("if-match", root_tag.as_str()))
        .and(body_json(json!({"http": {
            "grace_period": "10000ms",
            "shutdown_delay": "300ms",
            "servers": {"srv0": created_with_https_off},
        }})))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&caddy)
        .await;
    Mock::given(method("POST"))
        .and(path(ROUTES))
        .and(header("if-match", server_tag.as_str()))
        .and(body_json(skippers(32768)))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&caddy)
        .await;

    client(&caddy).ensure_route(&route(32768)).await.unwrap();
    assert_eq!(
        changes(&caddy).await,
        ["PUT /config/apps", &format!("POST {ROUTES}")]
    );
}

#[tokio::test]
async fn a_switch_is_one_patch_of_the_handlers_upstreams() {
    let caddy = MockServer::start().await;
    let tag = serve(&caddy, SERVER, &server_with(json!([skippers(1)]))).await;
    Mock::given(method("PATCH"))
        .and(path(format!("/id/skipper-proxy-{DOMAIN}/upstreams")))
        .and(header("if-match", tag.as_str()))
        .and(body_json(json!([{"dial": "127.0.0.1:2"}])))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&caddy)
        .await;
    client(&caddy).ensure_route(&route(2)).await.unwrap();
    assert_eq!(changes(&caddy).await.len(), 1);
}

#[tokio::test]
async fn an_equal_route_changes_nothing() {
    let caddy = MockServer::start().await;
    serve(&caddy, SERVER, &server_with(json!([skippers(1)]))).await;
    client(&caddy).ensure_route(&route(1)).await.unwrap();
    assert!(changes(&caddy).await.is_empty());
}

#[tokio::test]
async fn a_route_that_differs_in_more_is_replaced_in_place_by_id() {
    let caddy = MockServer::start().await;
    let mut edited = skippers(1);
    edited["terminal"] = json!(false);
    let tag = serve(&caddy, SERVER, &server_with(json!([edited]))).await;
    Mock::given(method("PATCH"))
        .and(path(format!("/id/skipper-route-{DOMAIN}")))
        .and(header("if-match", tag.as_str()))
        .and(body_json(skippers(1)))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&caddy)
        .await;
    client(&caddy).ensure_route(&route(1)).await.unwrap();
}

#[tokio::test]
async fn a_route_of_an_earlier_skipper_gets_the_close_handler_with_its_switch() {
    // One PATCH of the whole route: the switch and the new shape in one config change.
    let caddy = MockServer::start().await;
    let tag = serve(
        &caddy,
        SERVER,
        &server_with(json!([skippers_before_close(1)])),
    )
    .await;
    Mock::given(method("PATCH"))
        .and(path(format!("/id/skipper-route-{DOMAIN}")))
        .and(header("if-match", tag.as_str()))
        .and(body_json(skippers(2)))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&caddy)
        .await;
    client(&caddy).ensure_route(&route(2)).await.unwrap();
    assert_eq!(changes(&caddy).await.len(), 1);
}

#[tokio::test]
async fn new_routes_go_before_routes_made_by_hand() {
    let caddy = MockServer::start().await;
    let other =
        json!({"@id": "skipper-route-other.localhost", "match": [{"host": ["other.localhost"]}]});
    let catch_all = json!({"handle": [{"handler": "static_response", "body": "hi"}]});
    let tag = serve(&caddy, SERVER, &server_with(json!([other, catch_all]))).await;
    Mock::given(method("PUT"))
        .and(path(format!("{ROUTES}/1")))
        .and(header("if-match", tag.as_str()))
        .and(body_json(skippers(5)))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&caddy)
        .await;
    client(&caddy).ensure_route(&route(5)).await.unwrap();
}

#[tokio::test]
async fn a_route_made_by_hand_is_refused_unless_adopting() {
    let caddy = MockServer::start().await;
    let tag = serve(&caddy, SERVER, &server_with(json!([by_hand(DOMAIN)]))).await;
    let err = client(&caddy).ensure_route(&route(5)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert!(err.to_string().contains("adopt"), "{err}");
    assert!(changes(&caddy).await.is_empty());

    // `route.adopt`: the route is replaced where it stands (conditional on the same read).
    Mock::given(method("PATCH"))
        .and(path(format!("{ROUTES}/0")))
        .and(header("if-match", tag.as_str()))
        .and(body_json(skippers(5)))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&caddy)
        .await;
    client(&caddy).ensure_route(&adopting(5)).await.unwrap();
}

#[tokio::test]
async fn a_route_made_by_hand_for_several_hosts_is_not_adopted() {
    let caddy = MockServer::start().await;
    let shared = json!({"match": [{"host": [DOMAIN, "other.localhost"]}]});
    serve(&caddy, SERVER, &server_with(json!([shared]))).await;
    let err = client(&caddy).ensure_route(&adopting(5)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert!(changes(&caddy).await.is_empty());
}

#[tokio::test]
async fn a_create_whose_answer_is_lost_is_read_back_and_adopted_not_resent() {
    let caddy = MockServer::start().await;
    serve_twice(
        &caddy,
        SERVER,
        &server_with(json!([])),
        &server_with(json!([skippers(7)])),
    )
    .await;
    Mock::given(method("POST"))
        .and(path(ROUTES))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(2)))
        .expect(1)
        .mount(&caddy)
        .await;
    client(&caddy).ensure_route(&route(7)).await.unwrap();
}

#[tokio::test]
async fn a_lost_create_that_made_nothing_fails_and_is_not_resent() {
    let caddy = MockServer::start().await;
    serve(&caddy, SERVER, &server_with(json!([]))).await;
    Mock::given(method("POST"))
        .and(path(ROUTES))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(2)))
        .expect(1)
        .mount(&caddy)
        .await;
    let err = client(&caddy).ensure_route(&route(7)).await.unwrap_err();
    assert!(err.kind().is_retryable(), "{err:?}");
}

#[tokio::test]
async fn a_concurrent_edit_is_a_conflict() {
    let caddy = MockServer::start().await;
    serve(&caddy, SERVER, &server_with(json!([skippers(1)]))).await;
    Mock::given(method("PATCH"))
        .and(path(format!("/id/skipper-proxy-{DOMAIN}/upstreams")))
        .respond_with(
            ResponseTemplate::new(412).set_body_json(
                json!({"error": "If-Match header did not match current config hash"}),
            ),
        )
        .expect(1)
        .mount(&caddy)
        .await;
    let err = client(&caddy).ensure_route(&route(2)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert!(err.to_string().contains("412"), "{err}");
}

#[tokio::test]
async fn an_etag_header_is_used_as_it_is() {
    let caddy = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(SERVER))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("etag", "\"/config/apps/http/servers/srv0 abc123\"")
                .set_body_json(server_with(json!([skippers(1)]))),
        )
        .mount(&caddy)
        .await;
    Mock::given(method("PATCH"))
        .and(header(
            "if-match",
            "\"/config/apps/http/servers/srv0 abc123\"",
        ))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&caddy)
        .await;
    client(&caddy).ensure_route(&route(2)).await.unwrap();
}

#[tokio::test]
async fn remove_deletes_skippers_route_by_id_only() {
    let caddy = MockServer::start().await;
    let tag = serve(
        &caddy,
        SERVER,
        &server_with(json!([skippers(1), by_hand("hand.localhost")])),
    )
    .await;
    Mock::given(method("DELETE"))
        .and(path(format!("/id/skipper-route-{DOMAIN}")))
        .and(header("if-match", tag.as_str()))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&caddy)
        .await;
    let c = client(&caddy);
    c.remove_route(DOMAIN).await.unwrap();
    // A domain only a route made by hand serves, and one nothing serves: nothing to do.
    c.remove_route("hand.localhost").await.unwrap();
    c.remove_route("gone.localhost").await.unwrap();
    assert_eq!(changes(&caddy).await.len(), 1);
}

#[tokio::test]
async fn a_removal_whose_answer_is_lost_is_read_back() {
    let caddy = MockServer::start().await;
    serve_twice(
        &caddy,
        SERVER,
        &server_with(json!([skippers(1)])),
        &server_with(json!([])),
    )
    .await;
    Mock::given(method("DELETE"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(2)))
        .expect(1)
        .mount(&caddy)
        .await;
    client(&caddy).remove_route(DOMAIN).await.unwrap();
}

#[tokio::test]
async fn list_routes_returns_only_skippers() {
    let caddy = MockServer::start().await;
    serve(
        &caddy,
        SERVER,
        &server_with(json!([by_hand("hand.localhost"), skippers(9)])),
    )
    .await;
    let routes = client(&caddy).list_routes().await.unwrap();
    assert_eq!(routes, [route(9)]);

    // No server at all (Caddy restarted with an empty config): no routes, no error.
    let empty = MockServer::start().await;
    serve(&empty, SERVER, &Value::Null).await;
    assert!(client(&empty).list_routes().await.unwrap().is_empty());
}

#[tokio::test]
async fn an_unreachable_caddy_is_transient() {
    // A port nobody listens on (wiremock keeps its servers alive in a pool).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let uri = format!("http://127.0.0.1:{port}");
    let c = CaddyClient::new(CaddyConfig::new(uri.parse().unwrap())).unwrap();
    let err = c.list_routes().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transient, "{err:?}");
}

#[tokio::test]
async fn a_server_without_routes_gets_its_first_route_put() {
    let caddy = MockServer::start().await;
    let tag = serve(&caddy, SERVER, &json!({"listen": [":80"]})).await;
    Mock::given(method("PUT"))
        .and(path(ROUTES))
        .and(header("if-match", tag.as_str()))
        .and(body_json(json!([skippers(3)])))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&caddy)
        .await;
    client(&caddy).ensure_route(&route(3)).await.unwrap();
}

#[tokio::test]
async fn a_caddy_with_no_config_at_all_gets_the_app_posted_at_the_root() {
    let caddy = MockServer::start().await;
    let listening = server_with(json!([]));
    Mock::given(method("GET"))
        .and(path(SERVER))
        .respond_with(ResponseTemplate::new(200).set_body_raw("null\n", "application/json"))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&caddy)
        .await;
    serve(&caddy, SERVER, &listening).await;
    let root_tag = serve(&caddy, "/config/", &Value::Null).await;
    // Where Caddy listens by default (`:80`, not loopback): automatic HTTPS is left as it is.
    let c = CaddyClient::new(CaddyConfig::new(caddy.uri().parse().unwrap())).unwrap();
    Mock::given(method("POST"))
        .and(path("/config/"))
        .and(header("if-match", root_tag.as_str()))
        .and(body_json(json!({"apps": {"http": {
            "grace_period": "10000ms",
            "shutdown_delay": "300ms",
            "servers": {"srv0": {"listen": [":80"], "routes": []}},
        }}})))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&caddy)
        .await;
    Mock::given(method("POST"))
        .and(path(ROUTES))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&caddy)
        .await;
    c.ensure_route(&route(3)).await.unwrap();
}
