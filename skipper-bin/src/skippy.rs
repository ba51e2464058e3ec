//! `skippy`: the host agent. It dials out to a Skipper server (hosts behind NAT work), sends
//! heartbeats, long-polls for work orders (the server answers the moment one is queued), runs
//! each order once (a journal in `DATA_DIR` answers a redelivered order with its recorded
//! result), and answers. Every request is signed with the node's token and every answer is
//! checked before the agent acts (see `proto.rs`).
//!
//! Configuration (environment): `SKIPPER_URL`, `AGENT_ID`, `AGENT_TOKEN`, `DATA_DIR` (default
//! `./skippy-data`), `HEARTBEAT_INTERVAL_MS` (default 5000), `SKIPPY_COMPOSE_BASE_DIR`,
//! `DOCKER_HOST`.
//!
//! Exit codes: 0 after SIGINT/SIGTERM, 2 for bad configuration, 3 when the server refuses the
//! node's token (401/403: revoked or wrong; retrying would not help).

#[path = "compose.rs"]
#[allow(dead_code, reason = "shared with the server; the agent runs stacks")]
mod compose;
#[path = "compose_agent.rs"]
mod compose_agent;
#[path = "proto.rs"]
#[allow(
    dead_code,
    reason = "shared with the server; the agent uses the signing half"
)]
mod proto;
#[path = "runtime_call.rs"]
#[allow(dead_code, reason = "shared with the server; the agent runs calls")]
mod runtime_call;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use sha2::Digest;
use tokio::sync::RwLock;

struct Agent {
    url: String,
    id: String,
    /// The signing key: the SHA-256 of the node's token (what the server keeps).
    key: RwLock<String>,
    data: PathBuf,
    heartbeat: RwLock<Duration>,
    http: reqwest::Client,
    /// This host's Docker engine (connected on the first runtime order).
    docker: tokio::sync::OnceCell<Arc<skipper_core::docker::DockerRuntime>>,
    /// Where compose stacks live (`SKIPPY_COMPOSE_BASE_DIR`, default `DATA_DIR/compose`).
    compose_base: PathBuf,
}

#[derive(Debug)]
enum Failure {
    /// 401/403: the token is revoked or wrong.
    Refused(u16),
    /// Anything a retry may fix (connection, 5xx, a bad signature on an answer).
    Retry(String),
}

fn key_of(token: &str) -> String {
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl Agent {
    /// A signed request; the answer's signature is checked before it is returned.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), Failure> {
        let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
        let ts = chrono::Utc::now().timestamp();
        let rid = uuid::Uuid::new_v4().to_string();
        let key = self.key.read().await.clone();
        let sig = proto::sign(&key, method.as_str(), path, ts, &rid, &bytes);
        let r = self
            .http
            .request(method, format!("{}{path}", self.url))
            .header(proto::AGENT_ID, &self.id)
            .header(proto::TIMESTAMP, ts.to_string())
            .header(proto::REQUEST_ID, &rid)
            .header(proto::SIGNATURE, sig)
            .header("content-type", "application/json")
            .body(bytes)
            .send()
            .await
            .map_err(|e| {
                Failure::Retry(format!("cannot reach {}: {}", self.url, e.without_url()))
            })?;
        let status = r.status().as_u16();
        if status == 401 || status == 403 {
            return Err(Failure::Refused(status));
        }
        let their_ts = r
            .headers()
            .get(proto::TIMESTAMP)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let their_sig = r
            .headers()
            .get(proto::SIGNATURE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = r
            .bytes()
            .await
            .map_err(|e| Failure::Retry(format!("reading the answer: {e}")))?;
        if status >= 500 {
            return Err(Failure::Retry(format!("the server answered {status}")));
        }
        // The answer must be the server's, for this request: check before acting on it.
        let response_path = path.split('?').next().unwrap_or(path);
        let want_paths = [path, response_path];
        let ok = their_ts
            .as_deref()
            .and_then(|t| t.parse::<i64>().ok())
            .is_some_and(|t| {
                let given = their_sig.as_deref().unwrap_or_default();
                want_paths
                    .iter()
                    .any(|p| proto::sign(&key, "RESPONSE", p, t, &rid, &body) == given)
                    && (chrono::Utc::now().timestamp() - t).abs() <= proto::WINDOW.as_secs() as i64
            });
        if !ok {
            return Err(Failure::Retry(format!(
                "an answer to {path} was not signed by the server with this node's key; ignored"
            )));
        }
        let v = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body).unwrap_or(Value::Null)
        };
        Ok((status, v))
    }

    fn journal(&self, order: &str) -> PathBuf {
        self.data.join("journal").join(format!("{order}.json"))
    }

    /// Switch to a rotated token: kept in `DATA_DIR/token` (0600) so a restart uses it.
    async fn switch_token(&self, token: &str) -> std::io::Result<()> {
        let path = self.data.join("token");
        write_private(&path, token.as_bytes())?;
        *self.key.write().await = key_of(token);
        tracing::info!(node = %self.id, "switched to the rotated token");
        Ok(())
    }

    async fn heartbeat_loop(self: Arc<Self>) -> Failure {
        let mut backoff = Backoff::default();
        loop {
            match self
                .call(
                    reqwest::Method::POST,
                    &format!("/v1/nodes/{}/heartbeat", self.id),
                    Some(&json!({})),
                )
                .await
            {
                Ok((_, v)) => {
                    backoff.reset();
                    if let Some(ms) = v["heartbeat_interval_ms"].as_u64() {
                        *self.heartbeat.write().await =
                            Duration::from_millis(ms.clamp(200, 600_000));
                    }
                    if let Some(t) = v["token"].as_str()
                        && let Err(e) = self.switch_token(t).await
                    {
                        tracing::error!(error = %e, "cannot keep the rotated token; staying on the old one");
                    }
                    tokio::time::sleep(*self.heartbeat.read().await).await;
                }
                Err(Failure::Refused(s)) => return Failure::Refused(s),
                Err(Failure::Retry(why)) => {
                    let d = backoff.next();
                    tracing::warn!(%why, retry_in = ?d, "heartbeat failed");
                    tokio::time::sleep(d).await;
                }
            }
        }
    }

    async fn work_loop(self: Arc<Self>) -> Failure {
        let mut backoff = Backoff::default();
        loop {
            let path = format!("/v1/nodes/{}/work-orders/next?wait=25", self.id);
            match self.call(reqwest::Method::GET, &path, None).await {
                Ok((204, _)) => backoff.reset(),
                Ok((200, order)) => {
                    backoff.reset();
                    if let Err(f) = self.handle(order).await {
                        match f {
                            Failure::Refused(s) => return Failure::Refused(s),
                            Failure::Retry(why) => {
                                tracing::warn!(%why, "answering an order failed; the server hands it out again")
                            }
                        }
                    }
                }
                Ok((status, v)) => {
                    let d = backoff.next();
                    tracing::warn!(status, answer = %v, retry_in = ?d, "unexpected answer to the long-poll");
                    tokio::time::sleep(d).await;
                }
                Err(Failure::Refused(s)) => return Failure::Refused(s),
                Err(Failure::Retry(why)) => {
                    let d = backoff.next();
                    tracing::warn!(%why, retry_in = ?d, "long-poll failed");
                    tokio::time::sleep(d).await;
                }
            }
        }
    }

    /// Run an order once, then answer (a redelivered one gets its recorded answer).
    async fn handle(&self, order: Value) -> Result<(), Failure> {
        let id = order["id"].as_str().unwrap_or_default().to_owned();
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(Failure::Retry(format!(
                "an order without a usable id: {order}"
            )));
        }
        let journal = self.journal(&id);
        let answer: Value = match std::fs::read(&journal)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
        {
            Some(recorded) => {
                tracing::info!(order = %id, "redelivered: answering with the recorded result");
                recorded
            }
            None => {
                let answer = self.execute(&order).await;
                if let Some(dir) = journal.parent() {
                    let _ = std::fs::create_dir_all(dir);
                }
                write_private(&journal, answer.to_string().as_bytes())
                    .map_err(|e| Failure::Retry(format!("cannot write the journal: {e}")))?;
                answer
            }
        };
        // The answer is in the journal: keep offering it while the server is away (a restart,
        // a cut), for up to ten minutes; after that the lease lapses and a redelivery gets the
        // same recorded answer.
        let path = format!("/v1/work-orders/{id}/result");
        let until = std::time::Instant::now() + Duration::from_secs(600);
        let mut backoff = Backoff::default();
        loop {
            match self.call(reqwest::Method::POST, &path, Some(&answer)).await {
                Ok((200, _)) => return Ok(()),
                Ok((status, v)) => {
                    // Cancelled, expired or gone: nobody waits for this answer any more.
                    tracing::warn!(order = %id, status, answer = %v, "the server did not take the answer");
                    return Ok(());
                }
                Err(Failure::Refused(s)) => return Err(Failure::Refused(s)),
                Err(Failure::Retry(why)) if std::time::Instant::now() < until => {
                    let d = backoff.next();
                    tracing::warn!(order = %id, %why, retry_in = ?d, "answering the order failed; trying again");
                    tokio::time::sleep(d).await;
                }
                Err(f) => return Err(f),
            }
        }
    }

    async fn docker(&self) -> skipper_core::Result<&Arc<skipper_core::docker::DockerRuntime>> {
        self.docker
            .get_or_try_init(|| async {
                // In a container (the skippy image sets it), apps are probed at their address
                // on their network, which the agent's container joins.
                let in_container = env("SKIPPER_IN_CONTAINER").as_deref() == Some("1");
                let mut rt = skipper_core::docker::DockerRuntime::connect()
                    .await?
                    .with_probe_via_network(in_container);
                if let Some(scope) = env("SKIPPER_SCOPE") {
                    rt = rt.with_scope(scope);
                }
                Ok(Arc::new(rt))
            })
            .await
    }

    async fn execute(&self, order: &Value) -> Value {
        let kind = order["kind"].as_str().unwrap_or_default();
        let started = std::time::Instant::now();
        let (ok, result) = match kind {
            "ping" => (
                true,
                json!({ "pong": true, "node": self.id, "version": env!("CARGO_PKG_VERSION") }),
            ),
            "runtime" => {
                match serde_json::from_value::<runtime_call::RuntimeCall>(order["payload"].clone())
                {
                    Ok(call) => match self.docker().await {
                        Ok(rt) => {
                            let answer = runtime_call::run(rt.as_ref(), call).await;
                            (
                                answer["ok"].as_bool().unwrap_or(false),
                                answer["result"].clone(),
                            )
                        }
                        Err(e) => (
                            false,
                            json!({ "kind": e.kind().as_str(), "message": e.chain() }),
                        ),
                    },
                    Err(e) => (
                        false,
                        json!({ "kind": "invalid", "message": format!("not a runtime call: {e}") }),
                    ),
                }
            }
            "compose" => compose_agent::run(&self.compose_base, &order["payload"]).await,
            other => (
                false,
                json!({ "error": format!("this agent does not know orders of kind {other:?}") }),
            ),
        };
        tracing::info!(order = %order["id"], kind, ok, ms = started.elapsed().as_millis() as u64, "order done");
        json!({ "ok": ok, "result": result })
    }
}

/// Exponential backoff with full jitter, 1 s up to 60 s.
#[derive(Default)]
struct Backoff {
    attempt: u32,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let cap = 60_000u64.min(1_000u64 << self.attempt.min(6));
        self.attempt += 1;
        Duration::from_millis(rand::random_range(0..=cap).max(100))
    }

    fn reset(&mut self) {
        self.attempt = 0;
    }
}

fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    o.mode(0o600);
    let mut f = o.open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(tmp, path)
}

fn main() -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
    let (Some(url), Some(id), Some(token)) =
        (env("SKIPPER_URL"), env("AGENT_ID"), env("AGENT_TOKEN"))
    else {
        eprintln!(
            "skippy: set SKIPPER_URL (the server), AGENT_ID and AGENT_TOKEN (from `skipper node register` or POST /v1/nodes)"
        );
        return ExitCode::from(2);
    };
    let url = url.trim_end_matches('/').to_owned();
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        eprintln!("skippy: SKIPPER_URL {url:?} must be an http:// or https:// URL");
        return ExitCode::from(2);
    }
    let data = PathBuf::from(env("DATA_DIR").unwrap_or_else(|| "skippy-data".into()));
    if let Err(e) = std::fs::create_dir_all(data.join("journal")) {
        eprintln!("skippy: cannot create DATA_DIR {}: {e}", data.display());
        return ExitCode::from(2);
    }
    // A token rotated since AGENT_TOKEN was written down is kept in DATA_DIR/token.
    let token = std::fs::read_to_string(data.join("token"))
        .ok()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .unwrap_or(token);
    let heartbeat = env("HEARTBEAT_INTERVAL_MS")
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000u64);
    let http = match reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(40))
        .user_agent(concat!("skippy/", env!("CARGO_PKG_VERSION")))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("skippy: cannot build an HTTP client: {e}");
            return ExitCode::from(2);
        }
    };
    let compose_base = env("SKIPPY_COMPOSE_BASE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| data.join("compose"));
    let agent = Arc::new(Agent {
        url,
        id,
        key: RwLock::new(key_of(&token)),
        compose_base,
        data,
        heartbeat: RwLock::new(Duration::from_millis(heartbeat.max(200))),
        http,
        docker: tokio::sync::OnceCell::new(),
    });
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("skippy: cannot start: {e}");
            return ExitCode::from(2);
        }
    };
    rt.block_on(async move {
        tracing::info!(node = %agent.id, server = %agent.url, "skippy started");
        let stop = async {
            #[cfg(unix)]
            if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                tokio::select! { _ = tokio::signal::ctrl_c() => {}, _ = term.recv() => {} }
                return;
            }
            let _ = tokio::signal::ctrl_c().await;
        };
        let failure = tokio::select! {
            f = agent.clone().heartbeat_loop() => Some(f),
            f = agent.clone().work_loop() => Some(f),
            () = stop => None,
        };
        match failure {
            None => {
                tracing::info!("skippy stopped");
                ExitCode::SUCCESS
            }
            Some(Failure::Refused(status)) => {
                eprintln!(
                    "skippy: the server refused node {:?}'s token ({status}): it was revoked or is wrong. Register the node again (`skipper node register`) and set AGENT_TOKEN; retrying would not help.",
                    agent.id
                );
                ExitCode::from(3)
            }
            Some(Failure::Retry(why)) => {
                eprintln!("skippy: {why}");
                ExitCode::from(1)
            }
        }
    })
}
