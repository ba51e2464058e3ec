//! A [`Notifier`] that POSTs each event as JSON to a URL (feature `webhook-notifier`).
//!
//! The body is the [`Event`] itself: `{"kind":"deploy_succeeded","project":…,"stage":…,
//! "image":…,"deployment_id":…,"instance_id":…,"url":…,"message":…,"at":…}`. Any 2xx is a
//! delivery; anything else is an error the engine logs (a failing notifier never fails a deploy).

use std::time::Duration;

use async_trait::async_trait;
use url::Url;

use crate::backend::Notifier;
use crate::config::SecretUrl;
use crate::error::{Error, ErrorKind, Result};
use crate::model::Event;

/// POSTs events to a URL. The URL is a secret (chat webhooks carry their token in it): `Debug`,
/// logs and errors show only its host, and reqwest's errors are stripped of it.
#[derive(Debug, Clone)]
pub struct WebhookNotifier {
    url: SecretUrl,
    client: reqwest::Client,
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
        })
    }
}

#[async_trait]
impl Notifier for WebhookNotifier {
    async fn notify(&self, event: &Event) -> Result<()> {
        let resp = self
            .client
            .post(self.url.expose().clone())
            .json(event)
            .send()
            .await
            .map_err(|e| {
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
