//! Server-Sent Events: one deployment's steps (`GET /v1/deploys/{id}/events`) and everything
//! (`GET /v1/events`). Streams end when the server shuts down.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use skipper_core::{Activity, DeployStatus, Deployment};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;

use super::AppState;
use super::error::{ApiError, ApiResult, ErrorBody};
use super::extract::Path;
use crate::output;

fn sse(rx: mpsc::Receiver<Event>) -> Response {
    use futures::StreamExt;
    let stream: futures::stream::BoxStream<'static, Result<Event, Infallible>> =
        futures::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) },
        )
        .boxed();
    let sse = Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)));
    let mut r = sse.into_response();
    r.headers_mut().insert(
        "x-accel-buffering",
        axum::http::HeaderValue::from_static("no"),
    );
    r
}

fn step_event(d: &Deployment, n: usize) -> Event {
    let r = &d.steps[n];
    Event::default()
        .event("step")
        .id(n.to_string())
        .json_data(json!({
            "deploy_id": d.id,
            "n": n,
            "step": r.step,
            "status": r.status,
            "message": r.message,
            "at": r.at,
        }))
        .unwrap_or_default()
}

fn done_event(d: &Deployment, doc: serde_json::Value) -> Event {
    Event::default()
        .event("done")
        .id(d.steps.len().to_string())
        .json_data(doc)
        .unwrap_or_default()
}

/// A deployment's steps as they happen, then a final `done` event with the deployment; a
/// finished deployment's log is replayed and the stream closes. Each step's event id is its
/// index: reconnecting with `Last-Event-ID` resumes after it.
#[utoipa::path(get, path = "/v1/deploys/{id}/events", tag = "history",
    params(("id" = String, Path)),
    responses((status = 200, description = "text/event-stream: `step` events, then `done`",
        content_type = "text/event-stream", body = String),
        (status = 404, body = ErrorBody)))]
pub(crate) async fn deploy_events(
    State(s): State<AppState>,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
) -> ApiResult<Response> {
    // A client that reconnects with `Last-Event-ID: n` gets the steps after n.
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok())
        .map_or(0, |n| n + 1);
    // Subscribe before reading the record: nothing between the two is missed.
    let mut feed = s.engine.activity();
    let d = s
        .engine
        .store()
        .get_deployment(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no deployment {id:?}")))?;
    let (tx, rx) = mpsc::channel::<Event>(64);
    let shutdown = s.shutdown.clone();
    let engine = s.engine.clone();
    tokio::spawn(async move {
        let mut sent = resume.min(d.steps.len());
        while sent < d.steps.len() {
            if tx.send(step_event(&d, sent)).await.is_err() {
                return;
            }
            sent += 1;
        }
        if d.status != DeployStatus::InProgress {
            let doc = crate::app::deployment_document(&engine, &d).await;
            let _ = tx.send(done_event(&d, doc)).await;
            return;
        }
        loop {
            let a = tokio::select! {
                () = shutdown.cancelled() => return,
                () = tx.closed() => return,
                a = feed.recv() => a,
            };
            let (now, finished) = match a {
                Ok(Activity::Step(d) | Activity::Started(d)) if d.id == id => (*d, false),
                Ok(Activity::Finished(d)) if d.id == id => (*d, true),
                Ok(_) => continue,
                Err(RecvError::Lagged(_)) => {
                    // Fell behind: the store has the record as of its last checkpoint.
                    match engine.store().get_deployment(&id).await {
                        Ok(Some(d)) => {
                            let finished = d.status != DeployStatus::InProgress;
                            (d, finished)
                        }
                        _ => continue,
                    }
                }
                Err(RecvError::Closed) => return,
            };
            while sent < now.steps.len() {
                if tx.send(step_event(&now, sent)).await.is_err() {
                    return;
                }
                sent += 1;
            }
            if finished {
                let doc = crate::app::deployment_document(&engine, &now).await;
                let _ = tx.send(done_event(&now, doc)).await;
                return;
            }
        }
    });
    Ok(sse(rx))
}

/// The SSE form of one activity item, for `GET /v1/events`.
pub(crate) fn activity_event(a: &Activity) -> Option<Event> {
    let (kind, data) = match a {
        Activity::Started(d) => ("deploy.started", output::deployment_json(d, None, None)),
        Activity::Step(d) => {
            let r = d.steps.last()?;
            (
                "deploy.step",
                json!({
                    "deploy_id": d.id, "project": d.project, "stage": d.stage,
                    "n": d.steps.len() - 1, "step": r.step, "status": r.status,
                    "message": r.message, "at": r.at,
                }),
            )
        }
        Activity::Finished(d) => ("deploy.finished", output::deployment_json(d, None, None)),
        Activity::Event(e) => ("event", serde_json::to_value(e).ok()?),
        Activity::Instance(i) => ("instance", serde_json::to_value(i).ok()?),
        _ => return None,
    };
    Event::default().event(kind).json_data(data).ok()
}

/// Everything as it happens: `deploy.started`, `deploy.step`, `deploy.finished`, `event`
/// (deploys succeeded or failed, rollbacks, new versions, repairs) and `instance` (one was
/// stopped, started, restarted or removed: the instance), for the dashboard.
#[utoipa::path(get, path = "/v1/events", tag = "history",
    responses((status = 200, description = "text/event-stream", content_type = "text/event-stream", body = String)))]
pub(crate) async fn all_events(State(s): State<AppState>) -> Response {
    let mut feed = s.engine.activity();
    let (tx, rx) = mpsc::channel::<Event>(256);
    let shutdown = s.shutdown.clone();
    tokio::spawn(async move {
        let mut seq: u64 = 0;
        loop {
            let a = tokio::select! {
                () = shutdown.cancelled() => return,
                () = tx.closed() => return,
                a = feed.recv() => a,
            };
            match a {
                Ok(a) => {
                    if let Some(e) = activity_event(&a) {
                        seq += 1;
                        if tx.send(e.id(seq.to_string())).await.is_err() {
                            return;
                        }
                    }
                }
                Err(RecvError::Lagged(n)) => {
                    let e = Event::default()
                        .event("lagged")
                        .json_data(json!({ "missed": n }))
                        .unwrap_or_default();
                    if tx.send(e).await.is_err() {
                        return;
                    }
                }
                Err(RecvError::Closed) => return,
            }
        }
    });
    sse(rx)
}
