//! Webhook parsers against realistic payloads (`tests/fixtures/`), signed at test time.

use hmac::{Hmac, Mac};
use secrecy::SecretString;
use sha2::Sha256;
use skipper_registry::webhook::{
    self, PushEvent, WebhookError, WebhookSource, parse_distribution, parse_docker_hub,
    parse_generic, parse_gitea, parse_github,
};

const SECRET: &str = "It's a Secret to Everybody";

fn secret() -> SecretString {
    SecretString::from(SECRET.to_owned())
}

fn hmac_hex(key: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

fn images(events: &[PushEvent]) -> Vec<String> {
    events.iter().map(|e| e.image.to_string()).collect()
}

const INDEX_DIGEST: &str =
    "sha256:4b0a7f3c9e1d2a8b6c5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b";

#[test]
fn generic_fixture() {
    let events = parse_generic(include_bytes!("fixtures/generic.json")).unwrap();
    assert_eq!(
        images(&events),
        [format!(
            "registry.example.com/acme/web:v1.4.2@{INDEX_DIGEST}"
        )]
    );
    assert_eq!(events[0].source, WebhookSource::Generic);
    assert_eq!(events[0].image.tag(), Some("v1.4.2"));
}

#[test]
fn distribution_envelope_yields_only_tagged_manifest_pushes() {
    let events =
        parse_distribution(include_bytes!("fixtures/distribution_envelope.json"), None).unwrap();
    assert_eq!(
        images(&events),
        [
            format!("registry.example.com/acme/web:v1.4.2@{INDEX_DIGEST}"),
            "registry.example.com/acme/worker:dev-20240611-1532@sha256:9c8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b".to_owned(),
        ]
    );
    assert!(
        events
            .iter()
            .all(|e| e.source == WebhookSource::Distribution)
    );
}

#[test]
fn distribution_registry_override_renames_the_host() {
    let events = parse_distribution(
        include_bytes!("fixtures/distribution_envelope.json"),
        Some("localhost:5000"),
    )
    .unwrap();
    assert_eq!(events[0].image.registry(), "localhost:5000");
    assert_eq!(events[0].image.repository(), "acme/web");
}

#[test]
fn distribution_rejects_malformed_envelopes() {
    for (body, needle) in [
        (&br#"{"event": []}"#[..], "events is missing"),
        (br#"{"events": [1]}"#, "events[0] is not an object"),
        (br#"{"events": [{"target": {}}]}"#, "events[0].action is missing"),
        (
            br#"{"events": [{"action": "push", "target": {"tag": "v1", "mediaType": "application/vnd.oci.image.manifest.v1+json"}, "request": {"host": "r.example"}}]}"#,
            "events[0].target.repository is missing",
        ),
        (
            br#"{"events": [{"action": "push", "target": {"tag": "v1", "repository": "a"}}]}"#,
            "cannot tell the registry",
        ),
        (
            br#"{"events": [{"action": "push", "target": {"tag": "v1", "repository": "A/B"}, "request": {"host": "r.example"}}]}"#,
            "invalid image",
        ),
    ] {
        let e = parse_distribution(body, None).unwrap_err();
        assert!(e.to_string().contains(needle), "{e} should mention {needle}");
        assert!(!e.is_authentication());
    }
    // An envelope of pulls only is valid and announces nothing.
    assert!(
        parse_distribution(
            br#"{"events": [{"action": "pull", "target": {"repository": "a", "tag": "v1"}}]}"#,
            None
        )
        .unwrap()
        .is_empty()
    );
}

#[test]
fn docker_hub_fixture() {
    let events = parse_docker_hub(include_bytes!("fixtures/docker_hub_push.json")).unwrap();
    assert_eq!(images(&events), ["docker.io/acme/web:v1.4.2"]);
    assert_eq!(events[0].source, WebhookSource::DockerHub);
    // An official image's repo_name has no namespace.
    let official = br#"{"push_data": {"tag": "1.27"}, "repository": {"repo_name": "nginx"}}"#;
    assert_eq!(
        images(&parse_docker_hub(official).unwrap()),
        ["docker.io/library/nginx:1.27"]
    );
    let e = parse_docker_hub(br#"{"repository": {"repo_name": "acme/web"}}"#).unwrap_err();
    assert_eq!(
        e.to_string(),
        "docker_hub webhook: malformed payload: push_data.tag is missing"
    );
}

#[test]
fn github_registry_package_signed() {
    let body = include_bytes!("fixtures/github_registry_package_published.json");
    let sig = format!("sha256={}", hmac_hex(SECRET, body));
    let events = parse_github(body, Some(&sig), &secret()).unwrap();
    assert_eq!(
        images(&events),
        [format!("ghcr.io/acme-corp/web:v1.4.2@{INDEX_DIGEST}")]
    );
    assert_eq!(events[0].source, WebhookSource::GitHub);
}

#[test]
fn github_package_event_signed() {
    let body = include_bytes!("fixtures/github_package_published.json");
    let sig = format!("sha256={}", hmac_hex(SECRET, body));
    let events = parse_github(body, Some(&sig), &secret()).unwrap();
    assert_eq!(
        images(&events),
        [format!(
            "ghcr.io/acme-corp/web:dev-20240611-1532@{INDEX_DIGEST}"
        )]
    );
}

#[test]
fn github_untagged_version_is_no_push() {
    let body = include_bytes!("fixtures/github_package_untagged.json");
    let sig = format!("sha256={}", hmac_hex(SECRET, body));
    assert!(
        parse_github(body, Some(&sig), &secret())
            .unwrap()
            .is_empty()
    );
}

#[test]
fn github_signature_missing_bad_or_wrong_secret() {
    let body = include_bytes!("fixtures/github_registry_package_published.json");
    let e = parse_github(body, None, &secret()).unwrap_err();
    assert!(matches!(
        e,
        WebhookError::MissingSignature {
            header: "X-Hub-Signature-256",
            ..
        }
    ));
    assert!(e.is_authentication());
    assert_eq!(
        e.to_string(),
        "github webhook: missing X-Hub-Signature-256; configure the webhook's secret"
    );

    let wrong = format!("sha256={}", hmac_hex("another secret", body));
    let e = parse_github(body, Some(&wrong), &secret()).unwrap_err();
    assert!(matches!(e, WebhookError::BadSignature { .. }), "{e}");

    let sha1_style = format!("sha1={}", hmac_hex(SECRET, body));
    assert!(parse_github(body, Some(&sha1_style), &secret()).is_err());

    // A valid signature over a body that was then altered.
    let sig = format!("sha256={}", hmac_hex(SECRET, body));
    let mut altered = body.to_vec();
    let at = altered.windows(6).position(|w| w == b"v1.4.2").unwrap();
    altered[at + 5] = b'3';
    let e = parse_github(&altered, Some(&sig), &secret()).unwrap_err();
    assert!(e.to_string().contains("does not match the body"), "{e}");
}

#[test]
fn github_ignores_other_actions_and_packages_and_pings() {
    let sign = |b: &[u8]| format!("sha256={}", hmac_hex(SECRET, b));
    let mut v: serde_json::Value = serde_json::from_slice(include_bytes!(
        "fixtures/github_registry_package_published.json"
    ))
    .unwrap();
    v["action"] = "updated".into();
    let body = serde_json::to_vec(&v).unwrap();
    assert!(
        parse_github(&body, Some(&sign(&body)), &secret())
            .unwrap()
            .is_empty()
    );

    let npm = br#"{"action":"published","package":{"name":"lib","namespace":"acme","package_type":"npm","ecosystem":"npm","package_version":{"version":"1.0.0","container_metadata":null}}}"#;
    assert!(
        parse_github(npm, Some(&sign(npm)), &secret())
            .unwrap()
            .is_empty()
    );

    let ping = br#"{"zen":"Keep it logically awesome.","hook_id":12345678}"#;
    assert!(
        parse_github(ping, Some(&sign(ping)), &secret())
            .unwrap()
            .is_empty()
    );

    let junk = br#"{"action":"published"}"#;
    let e = parse_github(junk, Some(&sign(junk)), &secret()).unwrap_err();
    assert!(
        e.to_string()
            .contains("neither registry_package nor package"),
        "{e}"
    );

    let no_ns = br#"{"action":"published","package":{"name":"web","package_type":"container","package_version":{"container_metadata":{"tag":{"name":"v1"}}}}}"#;
    let e = parse_github(no_ns, Some(&sign(no_ns)), &secret()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "github webhook: malformed payload: package.namespace is missing"
    );
}

#[test]
fn gitea_package_signed() {
    let body = include_bytes!("fixtures/gitea_package_created.json");
    let sig = hmac_hex(SECRET, body);
    let events = parse_gitea(body, Some(&sig), &secret()).unwrap();
    assert_eq!(images(&events), ["git.example.com/acme/web:v1.4.2"]);
    assert_eq!(events[0].source, WebhookSource::Gitea);
    assert_eq!(events[0].image.digest(), None);
}

#[test]
fn gitea_signature_missing_or_bad() {
    let body = include_bytes!("fixtures/gitea_package_created.json");
    let e = parse_gitea(body, None, &secret()).unwrap_err();
    assert!(matches!(
        e,
        WebhookError::MissingSignature {
            header: "X-Gitea-Signature",
            ..
        }
    ));
    let e = parse_gitea(body, Some(&hmac_hex("nope", body)), &secret()).unwrap_err();
    assert!(e.is_authentication());
    let e = parse_gitea(body, Some("not-hex"), &secret()).unwrap_err();
    assert!(e.to_string().contains("is not hex"), "{e}");
}

#[test]
fn gitea_ignores_deletes_other_types_and_digest_versions() {
    let v: serde_json::Value =
        serde_json::from_slice(include_bytes!("fixtures/gitea_package_created.json")).unwrap();
    for (path, value) in [
        ("/action", "deleted"),
        ("/package/type", "npm"),
        (
            "/package/version",
            "sha256:1f3e5d7c9b2a4f6e8d0c1b3a5f7e9d2c4b6a8f0e1d3c5b7a9f2e4d6c8b0a1f3e",
        ),
    ] {
        let mut changed = v.clone();
        *changed.pointer_mut(path).unwrap() = value.into();
        let body = serde_json::to_vec(&changed).unwrap();
        let sig = hmac_hex(SECRET, &body);
        assert!(
            parse_gitea(&body, Some(&sig), &secret())
                .unwrap()
                .is_empty(),
            "{path} = {value}"
        );
    }
    let push = br#"{"ref":"refs/heads/main","commits":[]}"#;
    let e = parse_gitea(push, Some(&hmac_hex(SECRET, push)), &secret()).unwrap_err();
    assert!(e.to_string().contains("not a package event"), "{e}");
}

#[test]
fn errors_map_to_core_kinds() {
    let auth: skipper_core::Error = parse_gitea(b"{}", None, &secret()).unwrap_err().into();
    assert_eq!(auth.kind(), skipper_core::ErrorKind::Unauthorized);
    let bad: skipper_core::Error = parse_generic(b"{}").unwrap_err().into();
    assert_eq!(bad.kind(), skipper_core::ErrorKind::Invalid);
    assert!(webhook::verify_token(WebhookSource::Generic, Some("x"), &secret()).is_err());
}
