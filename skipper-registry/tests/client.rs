//! The registry client against wiremock: one mock server per test, asserting the exact requests
//! (paths, queries, `Accept`, `Authorization`) and how many of each were sent.

use std::time::Duration;

use base64::Engine as _;
use secrecy::SecretString;
use skipper_core::{Credentials, ErrorKind, ImageRef, Registry};
use skipper_registry::{
    MANIFEST_ACCEPT, RateLimitPolicy, RegistryClient, RegistryConfig, RegistryError, RegistryKind,
};
use wiremock::matchers::{header, headers, method, path, query_param};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

const DIGEST: &str = "sha256:4b0a7f3c9e1d2a8b6c5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b";

fn creds(user: &str, pass: &str) -> Credentials {
    Credentials {
        username: user.to_owned(),
        secret: SecretString::from(pass.to_owned()),
    }
}

fn basic(user: &str, pass: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

/// Matches requests that carry no `Authorization` header.
fn no_auth(req: &Request) -> bool {
    !req.headers.contains_key("authorization")
}

/// Matches requests without a query string.
fn no_query(req: &Request) -> bool {
    req.url.query().is_none()
}

fn client(
    server: &MockServer,
    kind: RegistryKind,
    credentials: Option<Credentials>,
) -> RegistryClient {
    RegistryClient::new(RegistryConfig {
        kind,
        url: Some(server.uri().parse().unwrap()),
        credentials,
        timeout: Duration::from_secs(5),
        ..RegistryConfig::default()
    })
    .unwrap()
}

/// `127.0.0.1:PORT/<path>`, a reference to the mock server's registry.
fn local_image(server: &MockServer, rest: &str) -> ImageRef {
    let host = server.uri().trim_start_matches("http://").to_owned();
    ImageRef::parse(&format!("{host}/{rest}")).unwrap()
}

fn bearer_challenge(server: &MockServer, service: &str, scope: &str) -> ResponseTemplate {
    ResponseTemplate::new(401)
        .insert_header(
            "WWW-Authenticate",
            format!(
                r#"Bearer realm="{}/token",service="{service}",scope="{scope}""#,
                server.uri()
            ),
        )
        .set_body_json(serde_json::json!({
            "errors": [{"code": "UNAUTHORIZED", "message": "authentication required", "detail": null}]
        }))
}

fn tags_body(name: &str, tags: &[&str]) -> serde_json::Value {
    serde_json::json!({ "name": name, "tags": tags })
}

#[tokio::test]
async fn docker_hub_bearer_challenge_token_then_retry_with_token() {
    let server = MockServer::start().await;
    let scope = "repository:library/nginx:pull";
    Mock::given(method("GET"))
        .and(path("/v2/library/nginx/tags/list"))
        .and(query_param("n", "100"))
        .and(no_auth)
        .respond_with(bearer_challenge(&server, "registry.docker.io", scope))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/token"))
        .and(query_param("service", "registry.docker.io"))
        .and(query_param("scope", scope))
        .and(header(
            "Authorization",
            basic("hubuser", "hubpass").as_str(),
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({
            "token": "hub-token", "access_token": "hub-token", "expires_in": 300,
            "issued_at": "2024-06-11T15:32:10.000000000Z"
        })))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v2/library/nginx/tags/list"))
        .and(header("Authorization", "Bearer hub-token"))
        .and(header("Accept", "application/json"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(tags_body("library/nginx", &["1.25", "1.27", "latest"])),
        )
        .expect(2)
        .mount(&server)
        .await;

    let hub = client(
        &server,
        RegistryKind::DockerHub,
        Some(creds("hubuser", "hubpass")),
    );
    assert_eq!(hub.registry(), "docker.io");
    let image = ImageRef::parse("nginx").unwrap();
    let tags = hub.list_tags(&image).await.unwrap();
    assert_eq!(tags, ["1.25", "1.27", "latest"]);
    // The second call uses the cached token: no challenge, no token request.
    let again = hub.list_tags(&image).await.unwrap();
    assert_eq!(again, tags);
}

#[tokio::test]
async fn ghcr_anonymous_token_for_a_public_image() {
    let server = MockServer::start().await;
    let scope = "repository:acme/web:pull";
    Mock::given(method("HEAD"))
        .and(path("/v2/acme/web/manifests/v1.4.2"))
        .and(no_auth)
        .respond_with(bearer_challenge(&server, "ghcr.io", scope))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/token"))
        .and(query_param("service", "ghcr.io"))
        .and(query_param("scope", scope))
        .and(no_auth)
        .respond_with(
            ResponseTemplate::new(200).set_body_json(serde_json::json!({"token": "djE6YW5vbg=="})),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("HEAD"))
        .and(path("/v2/acme/web/manifests/v1.4.2"))
        .and(header("Authorization", "Bearer djE6YW5vbg=="))
        .and(headers("Accept", MANIFEST_ACCEPT.to_vec()))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("Docker-Content-Digest", DIGEST)
                .insert_header("Content-Type", "application/vnd.oci.image.index.v1+json"),
        )
        .expect(1)
        .mount(&server)
        .await;

    let ghcr = client(&server, RegistryKind::Ghcr, None);
    let image = ImageRef::parse("ghcr.io/acme/web:v1.4.2").unwrap();
    assert_eq!(ghcr.resolve_digest(&image).await.unwrap(), DIGEST);
}

#[tokio::test]
async fn gitea_token_realm_with_basic_credentials_and_star_scope() {
    let server = MockServer::start().await;
    // Gitea's challenge: realm on the forge, service "container_registry", scope "*".
    Mock::given(method("GET"))
        .and(path("/v2/acme/web/tags/list"))
        .and(no_auth)
        .respond_with(ResponseTemplate::new(401).insert_header(
            "WWW-Authenticate",
            format!(
                r#"Bearer realm="{}/v2/token",service="container_registry",scope="*""#,
                server.uri()
            ),
        ))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v2/token"))
        .and(header(
            "Authorization",
            basic("ci-bot", "gitea-pat").as_str(),
        ))
        .and(|r: &Request| {
            let pairs: Vec<(String, String)> = r.url.query_pairs().into_owned().collect();
            pairs
                == [
                    ("service".to_owned(), "container_registry".to_owned()),
                    ("scope".to_owned(), "repository:acme/web:pull".to_owned()),
                    ("scope".to_owned(), "*".to_owned()),
                ]
        })
        .respond_with(
            ResponseTemplate::new(200).set_body_json(serde_json::json!({"token": "gitea-jwt"})),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v2/acme/web/tags/list"))
        .and(header("Authorization", "Bearer gitea-jwt"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(tags_body("acme/web", &["v1.4.1", "v1.4.2"])),
        )
        .expect(1)
        .mount(&server)
        .await;

    let gitea = client(
        &server,
        RegistryKind::Gitea,
        Some(creds("ci-bot", "gitea-pat")),
    );
    let image = local_image(&server, "acme/web");
    assert_eq!(gitea.tags(&image).await.unwrap(), ["v1.4.1", "v1.4.2"]);
}

#[tokio::test]
async fn distribution_basic_auth_after_basic_challenge() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v2/team/app/tags/list"))
        .and(no_auth)
        .respond_with(
            ResponseTemplate::new(401)
                .insert_header("WWW-Authenticate", r#"Basic realm="Registry Realm""#)
                .set_body_json(serde_json::json!({"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]})),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v2/team/app/tags/list"))
        .and(header("Authorization", basic("deploy", "s3cret").as_str()))
        .respond_with(ResponseTemplate::new(200).set_body_json(tags_body("team/app", &["dev-1"])))
        .expect(2)
        .mount(&server)
        .await;

    let reg = client(
        &server,
        RegistryKind::Distribution,
        Some(creds("deploy", "s3cret")),
    );
    let image = local_image(&server, "team/app");
    assert_eq!(reg.tags(&image).await.unwrap(), ["dev-1"]);
    // Basic is now sent up front.
    assert_eq!(reg.tags(&image).await.unwrap(), ["dev-1"]);
}

#[tokio::test]
async fn basic_challenge_without_credentials_is_unauthorized() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v2/team/app/tags/list"))
        .respond_with(
            ResponseTemplate::new(401).insert_header("WWW-Authenticate", r#"Basic realm="r""#),
        )
        .expect(1)
        .mount(&server)
        .await;
    let reg = client(&server, RegistryKind::Distribution, None);
    let err = reg
        .tags(&local_image(&server, "team/app"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::Unauthorized { status: 401, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("none are configured"), "{err}");
}

#[tokio::test]
async fn pagination_follows_link_headers() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v2/team/app/tags/list"))
        .and(query_param("n", "2"))
        .and(|r: &Request| r.url.query_pairs().all(|(k, _)| k != "last"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("Link", r#"</v2/team/app/tags/list?last=b&n=2>; rel="next""#)
                .set_body_json(tags_body("team/app", &["a", "b"])),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v2/team/app/tags/list"))
        .and(query_param("last", "b"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("Link", r#"</v2/team/app/tags/list?last=d&n=2>; rel="next""#)
                .set_body_json(tags_body("team/app", &["c", "d"])),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v2/team/app/tags/list"))
        .and(query_param("last", "d"))
        .respond_with(ResponseTemplate::new(200).set_body_json(tags_body("team/app", &["e"])))
        .expect(1)
        .mount(&server)
        .await;

    let reg = RegistryClient::new(RegistryConfig {
        url: Some(server.uri().parse().unwrap()),
        page_size: 2,
        ..RegistryConfig::default()
    })
    .unwrap();
    let tags = reg.tags(&local_image(&server, "team/app")).await.unwrap();
    assert_eq!(tags, ["a", "b", "c", "d", "e"]);
}

#[tokio::test]
async fn a_next_link_to_another_host_is_refused() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v2/team/app/tags/list"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header(
                    "Link",
                    r#"<https://elsewhere.example/v2/team/app/tags/list?last=a>; rel="next""#,
                )
                .set_body_json(tags_body("team/app", &["a"])),
        )
        .expect(1)
        .mount(&server)
        .await;
    let reg = client(&server, RegistryKind::Distribution, None);
    let err = reg
        .tags(&local_image(&server, "team/app"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::InvalidResponse { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("another host"), "{err}");
}

#[tokio::test]
async fn empty_repository_has_no_tags() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v2/team/app/tags/list"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"name": "team/app", "tags": null})),
        )
        .expect(1)
        .mount(&server)
        .await;
    let reg = client(&server, RegistryKind::Distribution, None);
    assert!(
        reg.tags(&local_image(&server, "team/app"))
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn head_digest_sends_every_manifest_accept_type_and_never_gets() {
    let server = MockServer::start().await;
    Mock::given(method("HEAD"))
        .and(path("/v2/team/app/manifests/v2"))
        .and(headers(
            "Accept",
            vec![
                "application/vnd.oci.image.index.v1+json",
                "application/vnd.oci.image.manifest.v1+json",
                "application/vnd.docker.distribution.manifest.list.v2+json",
                "application/vnd.docker.distribution.manifest.v2+json",
            ],
        ))
        .and(no_auth)
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("Docker-Content-Digest", DIGEST)
                .insert_header(
                    "Content-Type",
                    "application/vnd.docker.distribution.manifest.list.v2+json",
                ),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(500))
        .expect(0)
        .mount(&server)
        .await;

    let reg = client(&server, RegistryKind::Distribution, None);
    let digest = reg
        .digest(&local_image(&server, "team/app:v2"))
        .await
        .unwrap();
    assert_eq!(digest, DIGEST);
}

#[tokio::test]
async fn digest_falls_back_to_get_and_hashes_the_body() {
    let server = MockServer::start().await;
    let manifest = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;
    let expected = {
        use sha2::Digest as _;
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(manifest)))
    };
    Mock::given(method("HEAD"))
        .and(path("/v2/team/app/manifests/latest"))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v2/team/app/manifests/latest"))
        .and(headers("Accept", MANIFEST_ACCEPT.to_vec()))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_raw(manifest.to_vec(), "application/vnd.oci.image.index.v1+json"),
        )
        .expect(1)
        .mount(&server)
        .await;

    let reg = client(&server, RegistryKind::Distribution, None);
    assert_eq!(
        reg.digest(&local_image(&server, "team/app")).await.unwrap(),
        expected
    );
}

#[tokio::test]
async fn rate_limited_then_success_after_retry_after() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v2/team/app/tags/list"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("Retry-After", "1")
                .set_body_json(serde_json::json!({"errors": [{"code": "TOOMANYREQUESTS", "message": "slow down"}]})),
        )
        .up_to_n_times(1)
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v2/team/app/tags/list"))
        .respond_with(ResponseTemplate::new(200).set_body_json(tags_body("team/app", &["v1"])))
        .expect(1)
        .mount(&server)
        .await;

    let reg = client(&server, RegistryKind::Distribution, None);
    assert_eq!(
        reg.tags(&local_image(&server, "team/app")).await.unwrap(),
        ["v1"]
    );
}

#[tokio::test]
async fn rate_limit_wait_beyond_the_budget_is_returned_not_slept() {
    let server = MockServer::start().await;
    Mock::given(method("HEAD"))
        .and(path("/v2/team/app/manifests/v1"))
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("Retry-After", "3600")
                .insert_header("RateLimit-Limit", "100;w=21600")
                .insert_header("RateLimit-Remaining", "0;w=21600"),
        )
        .expect(1)
        .mount(&server)
        .await;

    let reg = client(&server, RegistryKind::Distribution, None);
    let err = reg
        .digest(&local_image(&server, "team/app:v1"))
        .await
        .unwrap_err();
    assert_eq!(err.retry_after(), Some(Duration::from_secs(3600)));
    assert!(
        matches!(err, RegistryError::RateLimited { attempts: 1, .. }),
        "{err}"
    );
    let core: skipper_core::Error = err.into();
    assert_eq!(core.kind(), ErrorKind::RateLimited);
}

#[tokio::test]
async fn rate_limit_attempts_are_bounded() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v2/team/app/tags/list"))
        .respond_with(ResponseTemplate::new(429).insert_header("RateLimit-Reset", "0"))
        .expect(3)
        .mount(&server)
        .await;
    let reg = RegistryClient::new(RegistryConfig {
        url: Some(server.uri().parse().unwrap()),
        rate_limit: RateLimitPolicy {
            max_attempts: 3,
            max_wait: Duration::from_secs(1),
        },
        ..RegistryConfig::default()
    })
    .unwrap();
    let err = reg
        .tags(&local_image(&server, "team/app"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::RateLimited { attempts: 3, .. }),
        "{err}"
    );
}

#[tokio::test]
async fn bad_credentials_at_the_token_service_are_unauthorized() {
    let server = MockServer::start().await;
    let scope = "repository:library/nginx:pull";
    Mock::given(method("GET"))
        .and(path("/v2/library/nginx/tags/list"))
        .respond_with(bearer_challenge(&server, "registry.docker.io", scope))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/token"))
        .and(header("Authorization", basic("hubuser", "wrong").as_str()))
        .respond_with(
            ResponseTemplate::new(401)
                .set_body_json(serde_json::json!({"details": "incorrect username or password"})),
        )
        .expect(1)
        .mount(&server)
        .await;

    let hub = client(
        &server,
        RegistryKind::DockerHub,
        Some(creds("hubuser", "wrong")),
    );
    let err = hub
        .list_tags(&ImageRef::parse("nginx").unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unauthorized);
    let text = err.to_string();
    assert!(text.contains("incorrect username or password"), "{text}");
    assert!(!text.contains("wrong"), "the secret leaked: {text}");
    assert!(!text.contains("scope="), "the query leaked: {text}");
}

#[tokio::test]
async fn bad_basic_credentials_are_unauthorized_after_one_retry() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v2/team/app/tags/list"))
        .respond_with(
            ResponseTemplate::new(401)
                .insert_header("WWW-Authenticate", r#"Basic realm="Registry Realm""#)
                .set_body_json(serde_json::json!({"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]})),
        )
        .expect(2)
        .mount(&server)
        .await;
    let reg = client(
        &server,
        RegistryKind::Distribution,
        Some(creds("deploy", "wrong")),
    );
    let err = reg
        .tags(&local_image(&server, "team/app"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::Unauthorized { status: 401, .. }),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("UNAUTHORIZED: authentication required"),
        "{err}"
    );
    let core: skipper_core::Error = err.into();
    assert_eq!(core.kind(), ErrorKind::Unauthorized);
}

#[tokio::test]
async fn denied_after_a_token_is_unauthorized() {
    let server = MockServer::start().await;
    let scope = "repository:acme/private:pull";
    Mock::given(method("GET"))
        .and(path("/v2/acme/private/tags/list"))
        .and(no_auth)
        .respond_with(bearer_challenge(&server, "ghcr.io", scope))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/token"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(serde_json::json!({"token": "anon"})),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v2/acme/private/tags/list"))
        .and(header("Authorization", "Bearer anon"))
        .respond_with(
            ResponseTemplate::new(403)
                .set_body_json(serde_json::json!({"errors": [{"code": "DENIED", "message": "requested access to the resource is denied"}]})),
        )
        .expect(1)
        .mount(&server)
        .await;
    let ghcr = client(&server, RegistryKind::Ghcr, None);
    let err = ghcr
        .tags(&ImageRef::parse("ghcr.io/acme/private").unwrap())
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::Unauthorized { status: 403, .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("DENIED: requested access"),
        "{err}"
    );
}

#[tokio::test]
async fn a_revoked_cached_token_is_replaced_once() {
    let server = MockServer::start().await;
    let scope = "repository:team/app:pull";
    // The cached token works once, then the registry stops accepting it.
    Mock::given(method("GET"))
        .and(path("/v2/team/app/tags/list"))
        .and(header("Authorization", "Bearer old"))
        .respond_with(ResponseTemplate::new(200).set_body_json(tags_body("team/app", &["v1"])))
        .up_to_n_times(1)
        .expect(1)
        .mount(&server)
        .await;
    // The first, unauthenticated request and the one with the revoked token get the challenge.
    Mock::given(method("GET"))
        .and(path("/v2/team/app/tags/list"))
        .and(|r: &Request| {
            r.headers
                .get("authorization")
                .is_none_or(|v| v.as_bytes() == b"Bearer old")
        })
        .respond_with(bearer_challenge(&server, "reg", scope))
        .expect(2)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"token": "old"})))
        .up_to_n_times(1)
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/token"))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"access_token": "new", "expires_in": 600})),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v2/team/app/tags/list"))
        .and(header("Authorization", "Bearer new"))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(tags_body("team/app", &["v1", "v2"])),
        )
        .expect(1)
        .mount(&server)
        .await;
    let reg = client(&server, RegistryKind::Distribution, None);
    let image = local_image(&server, "team/app");
    // Challenge → token "old" → ok.
    assert_eq!(reg.tags(&image).await.unwrap(), ["v1"]);
    // Cached "old" → 401 → token "new" → ok.
    assert_eq!(reg.tags(&image).await.unwrap(), ["v1", "v2"]);
}

#[tokio::test]
async fn a_fresh_token_refused_is_unauthorized_without_looping() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v2/team/app/tags/list"))
        .respond_with(bearer_challenge(&server, "reg", "repository:team/app:pull"))
        .expect(2)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/token"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"token": "t"})))
        .expect(1)
        .mount(&server)
        .await;
    let reg = client(&server, RegistryKind::Distribution, None);
    let err = reg
        .tags(&local_image(&server, "team/app"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("after authentication"), "{err}");
    assert_eq!(err.kind(), ErrorKind::Unauthorized);
}

#[tokio::test]
async fn identity_token_uses_the_refresh_token_grant() {
    let server = MockServer::start().await;
    let scope = "repository:team/app:pull";
    Mock::given(method("HEAD"))
        .and(path("/v2/team/app/manifests/v1"))
        .and(no_auth)
        .respond_with(bearer_challenge(&server, "reg.example", scope))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(path("/token"))
        .and(no_auth)
        .and(no_query)
        .and(header("Content-Type", "application/x-www-form-urlencoded"))
        .and(|r: &Request| {
            let form: Vec<(String, String)> =
                url::form_urlencoded::parse(&r.body).into_owned().collect();
            form == [
                ("grant_type".to_owned(), "refresh_token".to_owned()),
                ("client_id".to_owned(), "skipper".to_owned()),
                ("refresh_token".to_owned(), "refresh-me".to_owned()),
                ("service".to_owned(), "reg.example".to_owned()),
                ("scope".to_owned(), scope.to_owned()),
            ]
        })
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(serde_json::json!({"access_token": "oauth", "expires_in": 300})),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("HEAD"))
        .and(path("/v2/team/app/manifests/v1"))
        .and(header("Authorization", "Bearer oauth"))
        .respond_with(ResponseTemplate::new(200).insert_header("Docker-Content-Digest", DIGEST))
        .expect(1)
        .mount(&server)
        .await;
    let reg = client(
        &server,
        RegistryKind::Distribution,
        Some(creds("<token>", "refresh-me")),
    );
    assert_eq!(
        reg.digest(&local_image(&server, "team/app:v1"))
            .await
            .unwrap(),
        DIGEST
    );
}

#[tokio::test]
async fn missing_manifest_is_not_found() {
    let server = MockServer::start().await;
    Mock::given(method("HEAD"))
        .and(path("/v2/team/app/manifests/nope"))
        .respond_with(ResponseTemplate::new(404))
        .expect(1)
        .mount(&server)
        .await;
    let reg = client(&server, RegistryKind::Distribution, None);
    let err = reg
        .resolve_digest(&local_image(&server, "team/app:nope"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(err.to_string().contains("HEAD"), "{err}");
}

#[tokio::test]
async fn unknown_repository_is_not_found_with_the_registry_text() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v2/team/ghost/tags/list"))
        .respond_with(ResponseTemplate::new(404).set_body_json(serde_json::json!({
            "errors": [{"code": "NAME_UNKNOWN", "message": "repository name not known to registry", "detail": {"name": "team/ghost"}}]
        })))
        .expect(1)
        .mount(&server)
        .await;
    let reg = client(&server, RegistryKind::Distribution, None);
    let err = reg
        .tags(&local_image(&server, "team/ghost"))
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::NotFound { .. }), "{err}");
    assert!(
        err.to_string()
            .ends_with("not found: NAME_UNKNOWN: repository name not known to registry"),
        "{err}"
    );
}

#[tokio::test]
async fn server_errors_and_timeouts_are_transient() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v2/team/app/tags/list"))
        .respond_with(
            ResponseTemplate::new(503).set_body_string("<html>upstream unavailable</html>"),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("HEAD"))
        .and(path("/v2/team/app/manifests/slow"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(3)))
        .expect(1)
        .mount(&server)
        .await;
    let reg = RegistryClient::new(RegistryConfig {
        url: Some(server.uri().parse().unwrap()),
        timeout: Duration::from_millis(300),
        ..RegistryConfig::default()
    })
    .unwrap();
    let err = reg
        .tags(&local_image(&server, "team/app"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::Server { status: 503, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("upstream unavailable"), "{err}");
    assert_eq!(err.kind(), ErrorKind::Transient);

    let err = reg
        .digest(&local_image(&server, "team/app:slow"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            RegistryError::Transport {
                timed_out: true,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.kind(), ErrorKind::Transient);
}

#[tokio::test]
async fn connection_refused_is_transient() {
    let reg = RegistryClient::new(RegistryConfig {
        url: Some("http://127.0.0.1:1".parse().unwrap()),
        timeout: Duration::from_secs(2),
        ..RegistryConfig::default()
    })
    .unwrap();
    let err = reg
        .resolve_digest(&ImageRef::parse("127.0.0.1:1/team/app:v1").unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Transient);
}

#[tokio::test]
async fn ping_authenticates_like_docker_login() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v2/"))
        .and(no_auth)
        .respond_with(
            ResponseTemplate::new(401)
                .insert_header(
                    "WWW-Authenticate",
                    format!(r#"Bearer realm="{}/token",service="reg""#, server.uri()),
                )
                .insert_header("Docker-Distribution-Api-Version", "registry/2.0"),
        )
        .expect(1)
        .mount(&server)
        .await;
    // No scope for the ping: a plain login token.
    Mock::given(method("GET"))
        .and(path("/token"))
        .and(|r: &Request| r.url.query() == Some("service=reg"))
        .and(header("Authorization", basic("u", "p").as_str()))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(serde_json::json!({"token": "login"})),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/v2/"))
        .and(header("Authorization", "Bearer login"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({})))
        .expect(1)
        .mount(&server)
        .await;
    let reg = client(&server, RegistryKind::Distribution, Some(creds("u", "p")));
    reg.ping().await.unwrap();
}

#[tokio::test]
async fn a_reference_to_another_registry_is_refused_without_a_request() {
    let server = MockServer::start().await;
    Mock::given(wiremock::matchers::any())
        .respond_with(ResponseTemplate::new(500))
        .expect(0)
        .mount(&server)
        .await;
    let reg = client(&server, RegistryKind::Distribution, Some(creds("u", "p")));
    let err = reg
        .list_tags(&ImageRef::parse("ghcr.io/acme/web").unwrap())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid);
    assert!(
        err.to_string().contains("is not in registry 127.0.0.1:"),
        "{err}"
    );
}

#[tokio::test]
async fn an_insecure_token_realm_is_refused() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/v2/team/app/tags/list"))
        .respond_with(ResponseTemplate::new(401).insert_header(
            "WWW-Authenticate",
            r#"Bearer realm="http://auth.example.com/token",service="reg""#,
        ))
        .expect(1)
        .mount(&server)
        .await;
    let reg = client(&server, RegistryKind::Distribution, Some(creds("u", "p")));
    let err = reg
        .tags(&local_image(&server, "team/app"))
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::InsecureUrl { .. }), "{err}");
}
