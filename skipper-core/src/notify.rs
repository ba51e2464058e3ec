//! A [`Notifier`] that POSTs each event as JSON to a URL (feature `webhook-notifier`).
//!
//! The body is the [`Event`] itself: `{"kind":"deploy_succeeded","project":…,"stage":…,
//! "image":…,"deployment_id":…,"instance_id":…,"url":…,"message":…,"at":…}`. Any 2xx is a
//! delivery; anything else is an error the engine logs (a failing notifier never fails a deploy).

use std::time::Duration;

use async_trait::async_trait;
use url::Url;

use crate::backend::Notifier;
use crate::error::{Error, ErrorKind, Result};
use crate::model::Event;

/// POSTs events to a URL.
#[derive(Debug, Clone)]
pub struct WebhookNotifier {
    url: Url,
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
        Ok(Self { url, client })
    }
}

#[async_trait]
impl Notifier for WebhookNotifier {
    async fn notify(&self, event: &Event) -> Result<()> {
        let resp = self
            .client
            .post(self.url.clone())
            .json(event)
            .send()
            .await
            .map_err(|e| {
                Error::backend_with(
                    "webhook",
                    ErrorKind::Transient,
                    format!("cannot deliver the event to {}", self.url),
                    e,
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
                format!("{} answered {status}", self.url),
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
}
