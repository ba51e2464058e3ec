//! A [`Notifier`] that POSTs each event to a URL (feature `webhook-notifier`).
//!
//! In the `webhook` format the body is the [`Event`] itself: `{"kind":"deploy_succeeded",
//! "project":…,"stage":…,"image":…,"deployment_id":…,"instance_id":…,"url":…,"message":…,
//! "at":…}`, with `X-Skipper-Delivery` (the same for every retry of one event) and
//! `X-Skipper-Timestamp`, and, when a secret is set, `X-Skipper-Signature:
//! sha256=<hex HMAC-SHA256 of "timestamp.body">` (the timestamp is signed, so a captured
//! delivery cannot be replayed later under a new one). `slack` (also Mattermost) sends
//! `{"text": …}`, `discord` `{"content": …}`, `ntfy` the message as plain text with a `Title`.
//! Any 2xx is a delivery; anything else is an error.

use std::time::Duration;

use async_trait::async_trait;
use url::Url;

use crate::backend::Notifier;
use crate::config::{NotificationTarget, NotifyFormat, SecretUrl};
use crate::error::{Error, ErrorKind, Result};
use crate::model::Event;

/// POSTs events to a URL. The URL is a secret (chat webhooks carry their token in it): `Debug`,
/// logs and errors show only its host, and reqwest's errors are stripped of it.
#[derive(Clone)]
pub struct WebhookNotifier {
    url: SecretUrl,
    client: reqwest::Client,
    format: NotifyFormat,
    secret: Option<secrecy::SecretString>,
}

impl std::fmt::Debug for WebhookNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookNotifier")
            .field("url", &self.url)
            .field("format", &self.format)
            .field("signed", &self.secret.is_some())
            .finish_non_exhaustive()
    }
}

/// The signature header's value for `body` sent at `timestamp` (unix seconds) under `secret`:
/// `sha256=<hex HMAC-SHA256 of "timestamp.body">`.
pub fn signature(secret: &secrecy::SecretString, timestamp: i64, body: &[u8]) -> String {
    use hmac::Mac;
    use secrecy::ExposeSecret;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.expose_secret().as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

impl WebhookNotifier {
    /// A notifier for `url`, with a 10 s request timeout.
    pub fn new(url: Url) -> Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .user_agent(concat!("skipper/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                Error::backend_with(
                    "webhook",
                    ErrorKind::Internal,
                    "cannot build an HTTP client",
                    e,
                )
            })?;
        Ok(Self {
            url: SecretUrl::new(url),
            client,
            format: NotifyFormat::Webhook,
            secret: None,
        })
    }

    /// A notifier for a `notifications:` entry (its format and secret).
    pub fn for_target(target: &NotificationTarget) -> Result<Self> {
        let mut n = Self::new(target.url.expose().clone())?;
        n.format = target.format;
        n.secret = target.secret.clone();
        Ok(n)
    }
}

#[async_trait]
impl Notifier for WebhookNotifier {
    async fn notify(&self, event: &Event) -> Result<()> {
        use sha2::Digest;
        let json = serde_json::to_vec(event).map_err(|e| {
            Error::backend_with("webhook", ErrorKind::Internal, "cannot encode the event", e)
        })?;
        let delivery = hex::encode(&sha2::Sha256::digest(&json)[..16]);
        let timestamp = chrono::Utc::now().timestamp();
        let title = format!(
            "skipper: {}/{} {:?}",
            event.project, event.stage, event.kind
        );
        let (body, content_type) = match self.format {
            NotifyFormat::Webhook => (json, "application/json"),
            NotifyFormat::Slack => (
                serde_json::to_vec(&serde_json::json!({ "text": event.message }))
                    .unwrap_or_default(),
                "application/json",
            ),
            NotifyFormat::Discord => (
                serde_json::to_vec(&serde_json::json!({ "content": event.message }))
                    .unwrap_or_default(),
                "application/json",
            ),
            NotifyFormat::Ntfy => (
                event.message.clone().into_bytes(),
                "text/plain; charset=utf-8",
            ),
        };
        let mut req = self
            .client
            .post(self.url.expose().clone())
            .header("content-type", content_type)
            .header("x-skipper-delivery", &delivery)
            .header("x-skipper-timestamp", timestamp.to_string());
        if self.format == NotifyFormat::Ntfy {
            req = req.header("title", title);
        }
        if let Some(secret) = &self.secret {
            req = req.header("x-skipper-signature", signature(secret, timestamp, &body));
        }
        let resp = req.body(body).send().await.map_err(|e| {
            Error::backend_with(
                "webhook",
                ErrorKind::Transient,
                format!("cannot deliver the event to {}", self.url.host()),
                e.without_url(),
            )
        })?;
        let status = resp.status();
        if status.is_success() {
            Ok(())
        } else {
            let kind = if status.is_server_error() {
                ErrorKind::Transient
            } else {
                ErrorKind::Invalid
            };
            Err(Error::backend(
                "webhook",
                kind,
                format!("{} answered {status}", self.url.host()),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use wiremock::matchers::{body_partial_json, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use super::*;
    use crate::model::EventKind;

    fn event() -> Event {
        Event {
            kind: EventKind::DeploySucceeded,
            project: "web".into(),
            stage: "dev".into(),
            image: None,
            deployment_id: Some("d1".into()),
            instance_id: None,
            url: None,
            message: "ok".into(),
            at: Utc::now(),
            correlation_id: None,
        }
    }

    #[tokio::test]
    async fn posts_the_event_as_json() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/hook"))
            .and(body_partial_json(serde_json::json!({"kind": "deploy_succeeded", "project": "web", "deployment_id": "d1"})))
            .respond_with(ResponseTemplate::new(204))
            .expect(1)
            .mount(&server)
            .await;
        let n = WebhookNotifier::new(format!("{}/hook", server.uri()).parse().unwrap()).unwrap();
        n.notify(&event()).await.unwrap();
    }

    /// A signed delivery: the signature is the HMAC of "timestamp.body" under the secret, so
    /// the receiver can check both; a retry of the same event carries the same delivery id.
    #[tokio::test]
    async fn a_signed_delivery_can_be_checked_by_the_receiver() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(200))
            .expect(2)
            .mount(&server)
            .await;
        let target = NotificationTarget {
            url: SecretUrl::new(format!("{}/hook", server.uri()).parse().unwrap()),
            format: NotifyFormat::Webhook,
            secret: Some("s3cret".into()),
            events: vec![],
            projects: vec![],
        };
        let n = WebhookNotifier::for_target(&target).unwrap();
        let e = event();
        n.notify(&e).await.unwrap();
        n.notify(&e).await.unwrap();
        let got = server.received_requests().await.unwrap();
        let header =
            |r: &wiremock::Request, h: &str| r.headers.get(h).unwrap().to_str().unwrap().to_owned();
        let ts: i64 = header(&got[0], "x-skipper-timestamp").parse().unwrap();
        let want = signature(&"s3cret".into(), ts, &got[0].body);
        assert_eq!(header(&got[0], "x-skipper-signature"), want);
        assert_ne!(signature(&"other".into(), ts, &got[0].body), want);
        assert_ne!(
            signature(&"s3cret".into(), ts + 1, &got[0].body),
            want,
            "the time is signed"
        );
        assert_eq!(
            header(&got[0], "x-skipper-delivery"),
            header(&got[1], "x-skipper-delivery"),
            "one event, one delivery id"
        );
    }

    #[tokio::test]
    async fn chat_formats_carry_the_message() {
        for (format, want) in [
            (NotifyFormat::Slack, serde_json::json!({"text": "ok"})),
            (NotifyFormat::Discord, serde_json::json!({"content": "ok"})),
        ] {
            let server = MockServer::start().await;
            Mock::given(method("POST"))
                .and(body_partial_json(want.clone()))
                .respond_with(ResponseTemplate::new(200))
                .expect(1)
                .mount(&server)
                .await;
            let target = NotificationTarget {
                url: SecretUrl::new(server.uri().parse().unwrap()),
                format,
                secret: None,
                events: vec![],
                projects: vec![],
            };
            WebhookNotifier::for_target(&target)
                .unwrap()
                .notify(&event())
                .await
                .unwrap();
        }
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(wiremock::matchers::header_exists("title"))
            .and(wiremock::matchers::body_string("ok"))
            .respond_with(ResponseTemplate::new(200))
            .expect(1)
            .mount(&server)
            .await;
        let target = NotificationTarget {
            url: SecretUrl::new(server.uri().parse().unwrap()),
            format: NotifyFormat::Ntfy,
            secret: None,
            events: vec![EventKind::DeploySucceeded],
            projects: vec!["web".into()],
        };
        assert!(target.wants(&event()));
        let mut other = event();
        other.project = "api".into();
        assert!(!target.wants(&other));
        WebhookNotifier::for_target(&target)
            .unwrap()
            .notify(&event())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn a_server_error_is_transient() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(503))
            .expect(1)
            .mount(&server)
            .await;
        let n = WebhookNotifier::new(server.uri().parse().unwrap()).unwrap();
        let e = n.notify(&event()).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Transient);
        assert!(e.to_string().contains("503"), "{e}");
    }

    /// The URL is a bearer token: never in `Debug` or in error text, even reqwest's.
    #[tokio::test]
    async fn the_url_never_shows() {
        let token = "T000/B000/XXXXsecretXXXX";
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(ResponseTemplate::new(404))
            .mount(&server)
            .await;
        let url: Url = format!("{}/services/{token}", server.uri())
            .parse()
            .unwrap();
        let n = WebhookNotifier::new(url).unwrap();
        assert!(!format!("{n:?}").contains("secret"), "{n:?}");
        let e = n.notify(&event()).await.unwrap_err();
        assert!(!e.chain().contains("secret"), "{}", e.chain());
        assert!(!format!("{e:?}").contains("secret"), "{e:?}");
        // Nothing listens: reqwest's own error names the URL unless it is stripped.
        let closed: Url = format!("http://127.0.0.1:9/services/{token}")
            .parse()
            .unwrap();
        let e = WebhookNotifier::new(closed)
            .unwrap()
            .notify(&event())
            .await
            .unwrap_err();
        assert!(e.chain().contains("127.0.0.1:9"), "{}", e.chain());
        assert!(!e.chain().contains("secret"), "{}", e.chain());
        assert!(!format!("{e:?}").contains("secret"), "{e:?}");
        let config = crate::config::Config::parse(&format!(
            "global:\n  notification_url: https://hooks.example.com/services/{token}\n"
        ))
        .unwrap();
        assert!(!format!("{config:?}").contains("secret"));
    }
}
