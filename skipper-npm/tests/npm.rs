//! `NpmClient` against `FakeNpm`, a faithful fake of Nginx Proxy Manager's API.
//!
//! Each test starts its own fake (one wiremock server). Exact requests are asserted with mocks
//! that match method, path, query, bearer and body, count with `.expect(n)`, and let the fake
//! answer; unmatched requests fall through to the fake. Expectations are checked when the fake
//! drops.

use std::time::Duration;

use secrecy::SecretString;
use serde_json::{Value, json};
use skipper_core::{ErrorKind, ProxyManager, Route, RouteOptions, Upstream};
use skipper_npm::fake::{FakeNpm, FakeOp, Fault};
use skipper_npm::{NpmClient, NpmError, NpmVersion};
use wiremock::matchers::{bearer_token, body_json, body_partial_json, method, path, query_param};
use wiremock::{Match, Mock, MockBuilder, Request, ResponseTemplate};

const DOMAIN: &str = "app.example.com";
const HOSTS: &str = "/api/nginx/proxy-hosts";

fn route(host: &str, port: u16) -> Route {
    Route {
        domain: DOMAIN.into(),
        upstream: Upstream {
            scheme: "http".into(),
            host: host.into(),
            port,
        },
        options: RouteOptions {
            websocket: true,
            block_exploits: true,
            ..RouteOptions::default()
        },
    }
}

/// A mock that the fake answers, expected `times` times.
async fn spy(npm: &FakeNpm, mock: MockBuilder, times: u64) {
    mock.respond_with(npm.responder())
        .expect(times)
        .mount(npm.server())
        .await;
}

fn on(verb: &str, p: &str) -> MockBuilder {
    Mock::given(method(verb)).and(path(p.to_owned()))
}

/// Matches a JSON body that does not have `key`.
struct BodyLacks(&'static str);

impl Match for BodyLacks {
    fn matches(&self, request: &Request) -> bool {
        request
            .body_json::<Value>()
            .ok()
            .and_then(|v| v.as_object().map(|o| !o.contains_key(self.0)))
            .unwrap_or(false)
    }
}

/// A host as someone would create it in NPM's UI (no Skipper marker).
fn ui_host(domain: &str, host: &str, port: u16) -> Value {
    json!({
        "domain_names": [domain],
        "forward_scheme": "http",
        "forward_host": host,
        "forward_port": port,
        "block_exploits": true,
        "allow_websocket_upgrade": true,
        "meta": {"letsencrypt_agree": false, "dns_challenge": false},
    })
}

fn managed_host(domain: &str, host: &str, port: u16) -> Value {
    let mut body = ui_host(domain, host, port);
    body["meta"] = json!({"skipper": true});
    body
}

fn kind(err: skipper_core::Error) -> ErrorKind {
    err.kind()
}

// ---- sessions ----------------------------------------------------------------------------------

#[tokio::test]
async fn logs_in_once_and_reuses_the_token() {
    let npm = FakeNpm::start().await;
    spy(
        &npm,
        on("POST", "/api/tokens").and(body_json(json!({
            "identity": FakeNpm::EMAIL,
            "secret": FakeNpm::PASSWORD,
        }))),
        1,
    )
    .await;
    spy(
        &npm,
        on("GET", HOSTS).and(bearer_token(FakeNpm::token(1))),
        3,
    )
    .await;
    let client = npm.client();

    client.list_routes().await.unwrap();
    client.ensure_route(&route("app-1", 8080)).await.unwrap();
    client.list_routes().await.unwrap();
}

#[tokio::test]
async fn refreshes_the_token_before_it_expires() {
    // Tokens live a minute; the client refreshes once less than its margin (10 min) is left.
    let npm = FakeNpm::builder()
        .token_lifetime(Duration::from_secs(60))
        .start()
        .await;
    spy(&npm, on("POST", "/api/tokens"), 1).await;
    spy(
        &npm,
        on("GET", "/api/tokens").and(bearer_token(FakeNpm::token(1))),
        1,
    )
    .await;
    spy(
        &npm,
        on("GET", HOSTS).and(bearer_token(FakeNpm::token(1))),
        1,
    )
    .await;
    spy(
        &npm,
        on("GET", HOSTS).and(bearer_token(FakeNpm::token(2))),
        1,
    )
    .await;
    let client = npm.client();

    client.list_routes().await.unwrap(); // logs in: token 1, used as is
    client.list_routes().await.unwrap(); // token 1 is near expiry: refreshed to token 2
}

#[tokio::test]
async fn logs_in_again_once_when_the_token_has_expired() {
    let npm = FakeNpm::start().await;
    spy(&npm, on("POST", "/api/tokens"), 2).await;
    spy(&npm, on("GET", "/api/tokens"), 0).await;
    spy(
        &npm,
        on("GET", HOSTS).and(bearer_token(FakeNpm::token(1))),
        2,
    )
    .await;
    spy(
        &npm,
        on("GET", HOSTS).and(bearer_token(FakeNpm::token(2))),
        1,
    )
    .await;
    let client = npm.client();

    client.list_routes().await.unwrap();
    npm.expire_tokens(); // NPM says "Token has expired" while the client still trusts it
    client.list_routes().await.unwrap();
}

#[tokio::test]
async fn logs_in_again_on_the_not_found_answer_of_2_13_to_2_15() {
    let npm = FakeNpm::start().await; // 2.15.1
    spy(&npm, on("POST", "/api/tokens"), 2).await;
    spy(&npm, on("GET", HOSTS), 3).await;
    let client = npm.client();

    client.list_routes().await.unwrap();
    npm.revoke_tokens(); // now answered 404 "Not Found - /nginx/proxy-hosts"
    client.list_routes().await.unwrap();
}

#[tokio::test]
async fn logs_in_again_on_403_before_2_13() {
    let npm = FakeNpm::builder()
        .version(NpmVersion::new(2, 12, 6))
        .start()
        .await;
    spy(&npm, on("POST", "/api/tokens"), 2).await;
    let client = npm.client();

    client.list_routes().await.unwrap();
    npm.revoke_tokens();
    client.list_routes().await.unwrap();
}

#[tokio::test]
async fn a_not_found_host_id_is_not_a_token_problem() {
    let npm = FakeNpm::start().await;
    let id = npm.insert_host(managed_host(DOMAIN, "app-1", 8080));
    let stale = npm.host(id).unwrap();
    assert!(npm.delete_host(id)); // gone between the client's list and its delete
    Mock::given(method("GET"))
        .and(path(HOSTS))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!([stale])))
        .with_priority(1)
        .mount(npm.server())
        .await;
    spy(&npm, on("POST", "/api/tokens"), 1).await;
    spy(&npm, on("DELETE", &format!("{HOSTS}/{id}")), 1).await; // 404 "Not Found - 1"
    spy(&npm, on("POST", &format!("{HOSTS}/{id}/disable")), 1).await;
    let client = npm.client();

    client.remove_route(DOMAIN).await.unwrap();
    let err = client.disable(DOMAIN).await.unwrap_err();
    assert!(matches!(err, NpmError::HostNotFound { .. }), "{err}");
}

#[tokio::test]
async fn a_refusal_with_a_fresh_token_is_unauthorized() {
    let npm = FakeNpm::builder()
        .version(NpmVersion::new(2, 12, 6))
        .start()
        .await;
    npm.set_host_permission(false);
    spy(&npm, on("POST", "/api/tokens"), 2).await;
    spy(&npm, on("GET", HOSTS), 2).await;

    let err = npm.client().list_routes().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unauthorized, "{err}");
    assert!(err.to_string().contains("403"), "{err}");
}

#[tokio::test]
async fn two_factor_accounts_get_a_clear_error() {
    let npm = FakeNpm::builder().two_factor(true).start().await;
    spy(&npm, on("POST", "/api/tokens"), 1).await;
    spy(&npm, on("GET", HOSTS), 0).await;

    let err = npm.client().list_routes().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unauthorized);
    assert!(err.to_string().contains("without 2FA"), "{err}");
}

#[tokio::test]
async fn bad_credentials_are_unauthorized_and_not_retried() {
    let npm = FakeNpm::start().await;
    spy(&npm, on("POST", "/api/tokens"), 1).await;
    let mut config = npm.config();
    config.password = SecretString::from("wrong");
    let client = NpmClient::new(config).unwrap();

    let err = client.list_routes().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unauthorized);
    assert!(
        err.to_string().contains("Invalid email or password"),
        "{err}"
    );
    assert!(!err.to_string().contains("wrong"), "{err}");
}

// ---- ensure_route ------------------------------------------------------------------------------

#[tokio::test]
async fn creates_a_managed_host_for_a_new_domain() {
    let npm = FakeNpm::start().await;
    spy(&npm, on("GET", "/api/"), 1).await;
    spy(&npm, on("GET", HOSTS).and(query_param("query", DOMAIN)), 1).await;
    spy(
        &npm,
        on("POST", HOSTS).and(body_json(json!({
            "domain_names": [DOMAIN],
            "forward_scheme": "http",
            "forward_host": "app-1",
            "forward_port": 8080,
            "allow_websocket_upgrade": true,
            "block_exploits": true,
            "http2_support": false,
            "certificate_id": 0,
            "ssl_forced": false,
            "access_list_id": 0,
            "advanced_config": "",
            "meta": {"skipper": true},
        }))),
        1,
    )
    .await;
    // The create's answer predates nginx's configuration: the client reads the host back.
    spy(&npm, on("GET", &format!("{HOSTS}/1")), 1).await;

    npm.client()
        .ensure_route(&route("app-1", 8080))
        .await
        .unwrap();

    let host = npm.host_for(DOMAIN).unwrap();
    assert_eq!(host["forward_host"], "app-1");
    assert_eq!(host["meta"]["skipper"], true);
    assert_eq!(host["meta"]["nginx_online"], true);
}

#[tokio::test]
async fn certificate_options_use_an_existing_certificate_id() {
    let npm = FakeNpm::start().await;
    spy(
        &npm,
        on("POST", HOSTS).and(body_partial_json(json!({
            "certificate_id": 7,
            "ssl_forced": true,
            "http2_support": true,
            "access_list_id": 2,
            "advanced_config": "client_max_body_size 64m;",
        }))),
        1,
    )
    .await;
    let mut r = route("app-1", 8080);
    r.options.certificate_id = Some(7);
    r.options.ssl_forced = true;
    r.options.http2 = true;
    r.options.access_list_id = Some(2);
    r.options.advanced_config = Some("client_max_body_size 64m;".into());
    let client = npm.client();

    client.ensure_route(&r).await.unwrap();
    let host = npm.host_for(DOMAIN).unwrap();
    assert_eq!(
        (host["ssl_forced"].clone(), host["http2_support"].clone()),
        (json!(true), json!(true))
    );
    assert_eq!(client.list_routes().await.unwrap(), vec![r]);
}

#[tokio::test]
async fn ssl_options_without_a_certificate_converge_like_npm() {
    // NPM turns ssl_forced and http2 off without a certificate; asking anyway must not PUT forever.
    let npm = FakeNpm::start().await;
    let mut r = route("app-1", 8080);
    r.options.ssl_forced = true;
    r.options.http2 = true;
    let client = npm.client();
    client.ensure_route(&r).await.unwrap();

    spy(&npm, on("PUT", &format!("{HOSTS}/1")), 0).await;
    client.ensure_route(&r).await.unwrap();
}

#[tokio::test]
async fn adopts_the_host_when_a_create_times_out() {
    let npm = FakeNpm::start().await;
    // NPM makes the host but answers after the client gave up.
    npm.fail_next(FakeOp::CreateHost, 1, Fault::Delay(Duration::from_secs(3)));
    spy(&npm, on("POST", HOSTS), 1).await;
    spy(&npm, on("GET", HOSTS).and(query_param("query", DOMAIN)), 2).await;
    spy(&npm, on("PUT", &format!("{HOSTS}/1")), 0).await;
    let client = NpmClient::new(npm.config().with_timeout(Duration::from_millis(300))).unwrap();

    client.ensure_route(&route("app-1", 8080)).await.unwrap();
    assert_eq!(npm.hosts().len(), 1);
}

#[tokio::test]
async fn adopts_the_host_when_a_create_answers_500_after_making_it() {
    let npm = FakeNpm::start().await;
    npm.fail_next(FakeOp::CreateHost, 1, Fault::StatusAfterCommit(500));
    spy(&npm, on("POST", HOSTS), 1).await;

    npm.client()
        .ensure_route(&route("app-1", 8080))
        .await
        .unwrap();
    assert_eq!(npm.hosts().len(), 1);
}

#[tokio::test]
async fn a_failed_create_that_made_nothing_is_transient_and_not_repeated() {
    let npm = FakeNpm::start().await;
    npm.fail_next(FakeOp::CreateHost, 1, Fault::Status(502));
    spy(&npm, on("POST", HOSTS), 1).await;
    spy(&npm, on("GET", HOSTS).and(query_param("query", DOMAIN)), 2).await;

    let err = npm
        .client()
        .ensure_route(&route("app-1", 8080))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
    assert!(npm.hosts().is_empty());
}

#[tokio::test]
async fn updates_in_place_with_only_the_changed_fields() {
    let npm = FakeNpm::start().await;
    let id = npm.insert_host(managed_host(DOMAIN, "app-1", 8080));
    spy(
        &npm,
        on("PUT", &format!("{HOSTS}/{id}")).and(body_json(json!({
            "forward_host": "app-2",
            "forward_port": 9090,
        }))),
        1,
    )
    .await;
    spy(&npm, on("POST", HOSTS), 0).await;
    spy(&npm, on("DELETE", &format!("{HOSTS}/{id}")), 0).await;

    npm.client()
        .ensure_route(&route("app-2", 9090))
        .await
        .unwrap();
    let host = npm.host(id).unwrap();
    assert_eq!(
        (host["forward_host"].clone(), host["forward_port"].clone()),
        (json!("app-2"), json!(9090))
    );
}

#[tokio::test]
async fn takes_over_an_unmanaged_host_keeping_its_meta() {
    let npm = FakeNpm::start().await;
    let id = npm.insert_host(ui_host(DOMAIN, "app-1", 8080));
    spy(
        &npm,
        on("PUT", &format!("{HOSTS}/{id}")).and(body_json(json!({
            "meta": {"letsencrypt_agree": false, "dns_challenge": false, "skipper": true},
        }))),
        1,
    )
    .await;

    let mut adopting = route("app-1", 8080);
    adopting.options.adopt = true;
    npm.client().ensure_route(&adopting).await.unwrap();
    let meta = &npm.host(id).unwrap()["meta"];
    assert_eq!(meta["skipper"], true);
    assert_eq!(meta["letsencrypt_agree"], false);
}

/// A host made by hand for the same domain is refused, and left as it was, unless the project
/// opts in with `route: { adopt: true }`; `remove` never deletes it.
#[tokio::test]
async fn refuses_a_host_it_did_not_create_unless_adopting() {
    let npm = FakeNpm::start().await;
    let id = npm.insert_host(ui_host(DOMAIN, "by-hand", 80));
    let before = npm.host(id).unwrap();
    let err = npm
        .client()
        .ensure_route(&route("app-1", 8080))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), skipper_core::ErrorKind::Conflict, "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("adopt: true") && msg.contains("not created by Skipper"),
        "{msg}"
    );
    assert_eq!(npm.host(id).unwrap(), before, "the host is untouched");
    let err = npm.client().remove_route(DOMAIN).await.unwrap_err();
    assert_eq!(err.kind(), skipper_core::ErrorKind::Conflict, "{err}");
    assert_eq!(npm.host(id).unwrap(), before, "and never deleted");
}

#[tokio::test]
async fn an_equal_route_is_a_no_op() {
    let npm = FakeNpm::start().await;
    let client = npm.client();
    client.ensure_route(&route("app-1", 8080)).await.unwrap();

    spy(&npm, on("POST", HOSTS), 0).await;
    spy(&npm, on("PUT", &format!("{HOSTS}/1")), 0).await;
    spy(&npm, on("GET", HOSTS), 1).await;
    client.ensure_route(&route("app-1", 8080)).await.unwrap();
}

#[tokio::test]
async fn integer_booleans_before_2_12_compare_equal() {
    let npm = FakeNpm::builder()
        .version(NpmVersion::new(2, 11, 3))
        .start()
        .await;
    let client = npm.client();
    client.ensure_route(&route("app-1", 8080)).await.unwrap();
    assert_eq!(npm.host(1).unwrap()["block_exploits"], 1);

    spy(&npm, on("PUT", &format!("{HOSTS}/1")), 0).await;
    client.ensure_route(&route("app-1", 8080)).await.unwrap();
    assert_eq!(
        client.list_routes().await.unwrap(),
        vec![route("app-1", 8080)]
    );
}

#[tokio::test]
async fn a_domain_in_use_elsewhere_is_a_conflict_naming_it() {
    let npm = FakeNpm::start().await;
    npm.occupy_domain(DOMAIN); // a redirection host holds it
    spy(&npm, on("POST", HOSTS), 1).await;

    let err = npm
        .client()
        .ensure_route(&route("app-1", 8080))
        .await
        .unwrap_err();
    assert!(err.to_string().contains(DOMAIN), "{err}");
    assert_eq!(kind(err), ErrorKind::Conflict);
}

#[tokio::test]
async fn nginx_refusing_a_new_host_is_an_error_with_its_message() {
    let npm = FakeNpm::start().await;
    let nginx_err = "nginx: [emerg] host not found in upstream \"app-1\"";
    npm.break_nginx_for(DOMAIN, nginx_err);

    let err = npm
        .client()
        .ensure_route(&route("app-1", 8080))
        .await
        .unwrap_err();
    assert!(err.to_string().contains(nginx_err), "{err}");
    assert_eq!(err.kind(), ErrorKind::Invalid);
}

#[tokio::test]
async fn nginx_refusing_an_update_is_an_error() {
    let npm = FakeNpm::start().await;
    let client = npm.client();
    client.ensure_route(&route("app-1", 8080)).await.unwrap();
    npm.break_nginx_for(DOMAIN, "nginx: [emerg] unknown directive \"proxy_pas\"");

    let err = client.ensure(&route("app-2", 8080)).await.unwrap_err();
    assert!(
        matches!(err, NpmError::NginxOffline { ref nginx_err, .. } if nginx_err.contains("proxy_pas")),
        "{err}"
    );
}

#[tokio::test]
async fn trust_forwarded_proto_is_not_sent_before_2_14() {
    let npm = FakeNpm::builder()
        .version(NpmVersion::new(2, 13, 7))
        .start()
        .await;
    spy(
        &npm,
        on("POST", HOSTS).and(BodyLacks("trust_forwarded_proto")),
        1,
    )
    .await;
    let client = NpmClient::new(npm.config().with_trust_forwarded_proto(true)).unwrap();

    client.ensure_route(&route("app-1", 8080)).await.unwrap();
    spy(&npm, on("PUT", &format!("{HOSTS}/1")), 0).await;
    client.ensure_route(&route("app-1", 8080)).await.unwrap();
}

#[tokio::test]
async fn trust_forwarded_proto_is_sent_from_2_14() {
    let npm = FakeNpm::builder()
        .version(NpmVersion::new(2, 14, 0))
        .start()
        .await;
    spy(
        &npm,
        on("POST", HOSTS).and(body_partial_json(json!({"trust_forwarded_proto": true}))),
        1,
    )
    .await;
    let client = NpmClient::new(npm.config().with_trust_forwarded_proto(true)).unwrap();

    client.ensure_route(&route("app-1", 8080)).await.unwrap();
    assert_eq!(npm.host(1).unwrap()["trust_forwarded_proto"], true);
    spy(&npm, on("PUT", &format!("{HOSTS}/1")), 0).await;
    client.ensure_route(&route("app-1", 8080)).await.unwrap();
}

#[tokio::test]
async fn the_fake_rejects_unknown_fields_like_npm() {
    let npm = FakeNpm::builder()
        .version(NpmVersion::new(2, 13, 0))
        .start()
        .await;
    let http = reqwest::Client::new();
    let token: Value = http
        .post(format!("{}/api/tokens", npm.uri()))
        .json(&json!({"identity": FakeNpm::EMAIL, "secret": FakeNpm::PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = token["token"].as_str().unwrap().to_owned();
    let mut body = managed_host(DOMAIN, "app-1", 8080);
    body["trust_forwarded_proto"] = json!(true);

    let answer = http
        .post(format!("{}{HOSTS}", npm.uri()))
        .bearer_auth(&token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 400);
    let answer: Value = answer.json().await.unwrap();
    assert_eq!(
        answer["error"]["message"],
        "data must NOT have additional properties"
    );
    assert!(npm.hosts().is_empty());

    let expiry = http
        .post(format!("{}/api/tokens", npm.uri()))
        .json(&json!({"identity": FakeNpm::EMAIL, "secret": FakeNpm::PASSWORD, "expiry": "1d"}))
        .send()
        .await
        .unwrap();
    assert_eq!(expiry.status(), 400);
}

#[tokio::test]
async fn the_version_is_asked_once() {
    let npm = FakeNpm::start().await;
    spy(&npm, on("GET", "/api/"), 1).await;
    let client = npm.client();
    client.ensure_route(&route("app-1", 8080)).await.unwrap();
    client.ensure_route(&route("app-2", 8080)).await.unwrap();
    assert_eq!(client.version().await.unwrap(), NpmVersion::new(2, 15, 1));
}

// ---- remove_route, list_routes, enable/disable ---------------------------------------------------

#[tokio::test]
async fn removes_the_managed_host() {
    let npm = FakeNpm::start().await;
    let id = npm.insert_host(managed_host(DOMAIN, "app-1", 8080));
    spy(&npm, on("DELETE", &format!("{HOSTS}/{id}")), 1).await;

    npm.client().remove_route(DOMAIN).await.unwrap();
    assert!(npm.hosts().is_empty());
}

#[tokio::test]
async fn removing_a_missing_route_succeeds() {
    let npm = FakeNpm::start().await;
    npm.insert_host(managed_host("other-app.example.com", "other", 80)); // a substring, not a match
    spy(&npm, Mock::given(method("DELETE")), 0).await;

    npm.client().remove_route("app.example.com").await.unwrap();
    assert_eq!(npm.hosts().len(), 1);
}

#[tokio::test]
async fn does_not_delete_a_host_skipper_does_not_manage() {
    let npm = FakeNpm::start().await;
    npm.insert_host(ui_host(DOMAIN, "app-1", 8080));
    spy(&npm, Mock::given(method("DELETE")), 0).await;

    let err = npm.client().remove_route(DOMAIN).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
}

#[tokio::test]
async fn lists_only_managed_hosts() {
    let npm = FakeNpm::start().await;
    npm.insert_host(ui_host("blog.example.com", "blog", 2368));
    let client = npm.client();
    client.ensure_route(&route("app-1", 8080)).await.unwrap();

    assert_eq!(
        client.list_routes().await.unwrap(),
        vec![route("app-1", 8080)]
    );
}

#[tokio::test]
async fn enable_and_disable_switch_the_host() {
    let npm = FakeNpm::start().await;
    let client = npm.client();
    client.ensure_route(&route("app-1", 8080)).await.unwrap();
    spy(&npm, on("POST", &format!("{HOSTS}/1/disable")), 1).await;
    spy(&npm, on("POST", &format!("{HOSTS}/1/enable")), 1).await;

    client.disable(DOMAIN).await.unwrap();
    assert_eq!(npm.host(1).unwrap()["enabled"], false);
    client.disable(DOMAIN).await.unwrap(); // already disabled: no request
    client.enable(DOMAIN).await.unwrap();
    assert_eq!(npm.host(1).unwrap()["enabled"], true);

    let err = client.enable("missing.example.com").await.unwrap_err();
    assert!(matches!(err, NpmError::HostNotFound { .. }), "{err}");
}

// ---- retries -----------------------------------------------------------------------------------

#[tokio::test]
async fn idempotent_calls_are_retried() {
    let npm = FakeNpm::start().await;
    npm.fail_next(FakeOp::ListHosts, 2, Fault::Status(502));
    spy(&npm, on("GET", HOSTS), 3).await;

    npm.client().list_routes().await.unwrap();
}

#[tokio::test]
async fn retries_are_bounded() {
    let npm = FakeNpm::start().await;
    npm.fail_next(FakeOp::ListHosts, 10, Fault::Status(503));
    spy(&npm, on("GET", HOSTS), 3).await;

    let err = npm.client().list_routes().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
    assert!(err.to_string().contains("503"), "{err}");
}

#[tokio::test]
async fn an_update_lost_in_transit_is_retried_safely() {
    let npm = FakeNpm::start().await;
    let id = npm.insert_host(managed_host(DOMAIN, "app-1", 8080));
    npm.fail_next(FakeOp::UpdateHost, 1, Fault::StatusAfterCommit(502));
    spy(&npm, on("PUT", &format!("{HOSTS}/{id}")), 2).await;

    npm.client()
        .ensure_route(&route("app-2", 8080))
        .await
        .unwrap();
    assert_eq!(npm.host(id).unwrap()["forward_host"], "app-2");
}

#[tokio::test]
async fn unreachable_npm_is_transient() {
    // A port nobody listens on (wiremock pools its servers, so a dropped fake still answers).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}").parse().unwrap();
    let config = skipper_npm::NpmConfig::new(url, FakeNpm::EMAIL, SecretString::from("x"))
        .with_retries(2, Duration::from_millis(1))
        .with_timeout(Duration::from_secs(2));

    let err = NpmClient::new(config)
        .unwrap()
        .list_routes()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transient, "{err}");
}
