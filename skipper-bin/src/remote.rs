//! The CLI against a Skipper server: `--url` / `SKIPPER_URL` and `--token` / `SKIPPER_TOKEN`.
//!
//! Every command becomes requests to the server's `/v1` API, and is printed exactly as the
//! embedded mode prints it: the server answers with the documents the CLI prints
//! ([`output::deployment_json`], [`output::instance_json`]), so `--json` passes them through
//! and the human output turns them back into the model to reuse [`output`]'s printers. An HTTP
//! client only: no deploy logic lives here. Exit codes are the embedded mode's (0 ok, 1 failed
//! or refused, 2 usage).

use std::fmt;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use reqwest::{Method, RequestBuilder, Response, StatusCode, header};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};
use skipper_core::model::{DeployError, InstanceState, StepRecord, Timestamp, Trigger};
use skipper_core::{
    DeployStatus, Deployment, ErrorKind, ImageRef, Instance, ReconcileReport, TagPattern,
};
use url::Url;

use crate::cli::{Cli, Command, ConfigCommand, DeployArgs, Pull};
use crate::output::{self, Refused, errln, outln};

/// Whether `cli` runs against a server: `--url` is given (`serve` is the server itself and
/// ignores it), or the command is `health`, which only talks to one.
pub(crate) fn wanted(cli: &Cli) -> bool {
    match cli.command {
        Command::Serve(_) => false,
        Command::Health => true,
        _ => cli.global.url.is_some(),
    }
}

/// Run the command against the server; every failure is printed here (its kind known only
/// here) and becomes the exit code.
pub(crate) async fn run(cli: &Cli) -> Result<ExitCode> {
    let json = cli.global.json;
    Ok(match run_command(cli).await {
        Ok(code) => code,
        Err(e) => fail(&e, json),
    })
}

async fn run_command(cli: &Cli) -> Result<ExitCode> {
    let json = cli.global.json;
    let Some(url) = cli.global.url.as_deref() else {
        return Err(Usage(
            "`skipper health` checks a Skipper server: give --url or set SKIPPER_URL".into(),
        )
        .into());
    };
    let r = Remote::new(url, cli.global.token.clone())?;
    match &cli.command {
        Command::Health => {
            let doc = r.json(r.get(&["v1", "health"]).without_token()).await?;
            if json {
                outln!("{doc}");
            } else {
                outln!(
                    "ok: the Skipper server at {} answers (version {})",
                    r.base(),
                    doc["version"].as_str().unwrap_or("?")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Deploy(a) => deploy(&r, a, json).await,
        Command::Ps(a) => {
            let list = r
                .instances(a.project.as_deref(), a.stage.as_deref())
                .await?;
            if json {
                outln!(
                    "{}",
                    Value::Array(list.into_iter().map(|(v, _)| v).collect())
                );
            } else {
                let list: Vec<Instance> = list
                    .into_iter()
                    .map(|(_, i)| i.into_instance())
                    .collect::<Result<_>>()?;
                output::print_instances(&list);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Rm(a) | Command::Stop(a) | Command::Start(a) | Command::Restart(a) => {
            let (verb, method) = match &cli.command {
                Command::Rm(_) => (None, Method::DELETE),
                Command::Stop(_) => (Some("stop"), Method::POST),
                Command::Start(_) => (Some("start"), Method::POST),
                _ => (Some("restart"), Method::POST),
            };
            let i = r.find_instance(&a.instance).await?;
            let mut path = vec![
                "v1",
                "projects",
                i.project.as_str(),
                "stages",
                i.stage.as_str(),
                "instances",
                i.id.as_str(),
            ];
            path.extend(verb);
            let mut req = r.request(method, &path);
            if verb.is_some() {
                req = req.idempotent();
            }
            let doc = r.json(req).await?;
            if json {
                outln!("{doc}");
            } else {
                let s = |k: &str| doc[k].as_str().unwrap_or("?").to_owned();
                outln!(
                    "{} {} ({}/{} {})",
                    s("action"),
                    s("id"),
                    s("project"),
                    s("stage"),
                    s("tag")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Rollback(a) => {
            let started = Instant::now();
            let path = [
                "v1",
                "projects",
                a.project.as_str(),
                "stages",
                a.stage.as_str(),
                "rollback",
            ];
            match r.json(r.request(Method::POST, &path).idempotent()).await {
                Ok(doc) => report(&doc, json, started.elapsed()),
                Err(e) if json && is_answer(&e) => {
                    let refused = Refused {
                        project: Some(&a.project),
                        stage: &a.stage,
                        image: None,
                        input: None,
                        trigger: "rollback",
                    };
                    outln!(
                        "{}",
                        output::refusal_json(&refused, kind_of(&e), &message(&e))
                    );
                    Ok(ExitCode::from(1))
                }
                Err(e) => Err(e),
            }
        }
        Command::History(a) => {
            let list = r
                .history(a.project.as_deref(), a.stage.as_deref(), a.limit)
                .await?;
            if json {
                outln!("{}", Value::Array(list));
            } else {
                let list: Vec<Deployment> = list
                    .iter()
                    .map(|v| Ok(DeploymentDoc::deserialize(v)?.into_parts()?.0))
                    .collect::<Result<_>>()?;
                output::print_history(&list);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Reconcile => {
            let doc = r
                .json(r.request(Method::POST, &["v1", "reconcile"]))
                .await?;
            if json {
                outln!("{doc}");
            } else {
                output::print_reconcile(&reconcile_report(&doc), true);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Tags(a) => tags(&r, a, json).await,
        Command::Config(ConfigCommand::Export) => {
            let text = r.text(r.get(&["v1", "config", "export"])).await?;
            outln!("{}", text.trim_end());
            Ok(ExitCode::SUCCESS)
        }
        Command::Config(ConfigCommand::Import(f)) => {
            let text = if f.file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin()).context("reading stdin")?
            } else {
                std::fs::read_to_string(&f.file)
                    .with_context(|| format!("cannot read {}", f.file.display()))?
            };
            let req = r
                .request(Method::POST, &["v1", "config", "import"])
                .header(header::CONTENT_TYPE, "application/yaml")
                .body(text);
            let doc = r.json(req).await?;
            if json {
                outln!("{doc}");
            } else {
                let names: Vec<&str> = doc["imported"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                outln!("imported {} project(s): {}", names.len(), names.join(", "));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Watch(_) => Err(Usage(
            "`skipper watch` does not run against a server: `skipper serve` runs the registry \
             watcher itself (unset --url / SKIPPER_URL to watch from this host)"
                .into(),
        )
        .into()),
        Command::Token(_) => Err(Usage(
            "`skipper token rotate` writes the server's store: run it on the server's host, \
             without --url / SKIPPER_URL"
                .into(),
        )
        .into()),
        Command::Node(cmd) => {
            let doc = match cmd {
                crate::cli::NodeCommand::Register(n) => {
                    let mut body = serde_json::json!({ "id": n.node_id, "role": n.role });
                    if let Some(r) = &n.region {
                        body["region"] = r.clone().into();
                    }
                    if let Some(t) = &n.token {
                        body["token"] = t.clone().into();
                    }
                    r.json(
                        r.request(Method::POST, &["v1", "nodes"])
                            .json(&body)
                            .idempotent(),
                    )
                    .await?
                }
                crate::cli::NodeCommand::Show(n) => {
                    r.json(r.get(&["v1", "nodes", &n.node_id])).await?
                }
            };
            if json {
                outln!("{doc}");
            } else {
                outln!(
                    "{} ({}) {} last heartbeat {}",
                    doc["id"].as_str().unwrap_or("?"),
                    doc["role"].as_str().unwrap_or("?"),
                    doc["status"].as_str().unwrap_or("?"),
                    doc["last_heartbeat"].as_str().unwrap_or("never")
                );
                if let Some(t) = doc["token"].as_str() {
                    crate::output::errln!(
                        "the node's token (shown this once; set it as AGENT_TOKEN for skippy):"
                    );
                    outln!("{t}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve(_) => unreachable!("`serve` never runs against a server (see `wanted`)"),
    }
}

// ---- errors -------------------------------------------------------------------------------

/// A usage error in remote mode (a flag the server cannot take): exit 2.
#[derive(Debug)]
struct Usage(String);

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

/// A request to the server that failed: unreachable, refused the token, or answered with the
/// API's error envelope (`status` is then the HTTP status).
#[derive(Debug)]
pub(crate) struct RemoteError {
    pub(crate) kind: ErrorKind,
    /// The HTTP status, when the server answered.
    pub(crate) status: Option<u16>,
    pub(crate) message: String,
}

impl fmt::Display for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RemoteError {}

/// The kind of a failed command: the server's (mapped from its error code), else the CLI's own.
pub(crate) fn kind_of(e: &anyhow::Error) -> ErrorKind {
    match e.chain().find_map(|c| c.downcast_ref::<RemoteError>()) {
        Some(r) => r.kind,
        None => output::error_kind(e),
    }
}

/// Whether `e` is the server's answer (not a transport failure, not a refused token).
fn is_answer(e: &anyhow::Error) -> bool {
    e.downcast_ref::<RemoteError>()
        .is_some_and(|r| r.status.is_some_and(|s| s != 401))
}

fn status_of(e: &anyhow::Error) -> Option<u16> {
    e.downcast_ref::<RemoteError>().and_then(|r| r.status)
}

fn message(e: &anyhow::Error) -> String {
    format!("{e:#}")
}

/// What `main` does for a failed command, with the kind known here: the CLI's error envelope on
/// stdout under `--json`, else a line on stderr; 1, or 2 for a usage error.
fn fail(e: &anyhow::Error, json: bool) -> ExitCode {
    let usage = e.downcast_ref::<Usage>().is_some();
    if !json || usage {
        errln!("error: {e:#}");
    }
    if json {
        let kind = if usage {
            ErrorKind::Invalid
        } else {
            kind_of(e)
        };
        outln!("{}", output::error_json(kind, &message(e)));
    }
    ExitCode::from(if usage { 2 } else { 1 })
}

/// The CLI's kind for the API's error `code` (`ErrorKind` names, and the API's own codes), else
/// for the HTTP status.
fn kind_of_code(code: &str, status: u16) -> ErrorKind {
    match code {
        "unauthorized" | "backend_unauthorized" => ErrorKind::Unauthorized,
        "unprocessable" => ErrorKind::Rejected,
        "too_large" => ErrorKind::Invalid,
        "unavailable" => ErrorKind::Transient,
        other => serde_json::from_value(Value::String(other.to_owned()))
            .unwrap_or_else(|_| kind_of_status(status)),
    }
}

fn kind_of_status(status: u16) -> ErrorKind {
    match status {
        400 | 413 | 415 => ErrorKind::Invalid,
        401 | 403 => ErrorKind::Unauthorized,
        404 => ErrorKind::NotFound,
        409 => ErrorKind::Conflict,
        422 => ErrorKind::Rejected,
        429 => ErrorKind::RateLimited,
        502 | 503 => ErrorKind::Transient,
        504 => ErrorKind::Timeout,
        _ => ErrorKind::Internal,
    }
}

/// The deepest cause of a transport error, in words (`connection refused`).
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    let mut io = None;
    while let Some(next) = cur.source() {
        if let Some(i) = next.downcast_ref::<std::io::Error>() {
            io = Some(i);
        }
        cur = next;
    }
    match io {
        // An OS error's kind says it plainly ("connection refused"); others say more themselves.
        Some(i) if i.raw_os_error().is_some() => i.kind().to_string(),
        Some(i) => i.to_string(),
        None => cur.to_string(),
    }
}

// ---- the client ---------------------------------------------------------------------------

/// The `/v1` API of one server.
pub(crate) struct Remote {
    http: reqwest::Client,
    base: Url,
    token: Option<SecretString>,
    /// How long a POST that starts something may take to answer (a deploy answers 202 as soon as
    /// it is recorded). One that timed out is sent once more with the same `Idempotency-Key`.
    post_timeout: Duration,
}

/// A request being built, and whether it carries the token and an idempotency key.
pub(crate) struct Req {
    builder: RequestBuilder,
    token: bool,
    idempotent: bool,
    answers_at_once: bool,
}

impl Req {
    fn without_token(mut self) -> Self {
        self.token = false;
        self
    }

    /// Send an `Idempotency-Key` (a new one, kept across this request's retry).
    fn idempotent(mut self) -> Self {
        self.idempotent = true;
        self
    }

    /// The server answers this one at once (a deploy's 202): no answer within
    /// [`Remote::post_timeout`] is a timeout (and, idempotent, asked again).
    fn answers_at_once(mut self) -> Self {
        self.answers_at_once = true;
        self
    }

    fn header(mut self, k: header::HeaderName, v: &'static str) -> Self {
        self.builder = self.builder.header(k, v);
        self
    }

    fn body(mut self, body: String) -> Self {
        self.builder = self.builder.body(body);
        self
    }

    fn json(mut self, body: &Value) -> Self {
        self.builder = self.builder.json(body);
        self
    }
}

impl Remote {
    /// A client of the server at `url` (`http://` or `https://`).
    pub(crate) fn new(url: &str, token: Option<SecretString>) -> Result<Self> {
        let mut base = Url::parse(url.trim()).map_err(|e| {
            Usage(format!(
                "--url / SKIPPER_URL {url:?} is not a URL ({e}); give e.g. http://127.0.0.1:8080"
            ))
        })?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(Usage(format!(
                "--url / SKIPPER_URL {url:?} must be an http:// or https:// URL"
            ))
            .into());
        }
        base.set_query(None);
        base.set_fragment(None);
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("skipper/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Self {
            http,
            base,
            token,
            post_timeout: Duration::from_secs(60),
        })
    }

    /// The server's URL, as the messages name it.
    pub(crate) fn base(&self) -> &str {
        self.base.as_str().trim_end_matches('/')
    }

    /// The URL of the API path made of `segments` (each percent-encoded).
    fn url(&self, segments: &[&str]) -> Url {
        let mut u = self.base.clone();
        if let Ok(mut p) = u.path_segments_mut() {
            p.pop_if_empty().extend(segments);
        }
        u
    }

    fn request(&self, method: Method, segments: &[&str]) -> Req {
        Req {
            builder: self.http.request(method, self.url(segments)),
            token: true,
            idempotent: false,
            answers_at_once: false,
        }
    }

    fn get(&self, segments: &[&str]) -> Req {
        self.request(Method::GET, segments)
    }

    /// Send `req`, adding the token; a transport failure or an error answer becomes a
    /// [`RemoteError`] that says what to check.
    async fn send(&self, req: Req) -> Result<Response> {
        let mut b = req.builder;
        if req.token
            && let Some(t) = &self.token
        {
            let mut v = header::HeaderValue::from_str(&format!("Bearer {}", t.expose_secret()))
                .map_err(|_| {
                    Usage("--token / SKIPPER_TOKEN has characters a header cannot carry".into())
                })?;
            v.set_sensitive(true);
            b = b.header(header::AUTHORIZATION, v);
        }
        if req.answers_at_once {
            b = b.timeout(self.post_timeout);
        }
        let resp = if req.idempotent {
            let key = uuid::Uuid::new_v4().to_string();
            let b = b.header("idempotency-key", &key);
            let again = b.try_clone();
            match b.send().await {
                // Sent but unanswered (a timeout, a reset): it may have acted; the same key makes
                // the second try return the first one's answer instead of acting twice.
                Err(e) if !e.is_connect() && !e.is_builder() && again.is_some() => {
                    tracing::info!(error = %e, "no answer; asking again with the same Idempotency-Key");
                    let again = again.expect("checked");
                    again.send().await.map_err(|e| self.transport(&e))?
                }
                r => r.map_err(|e| self.transport(&e))?,
            }
        } else {
            b.send().await.map_err(|e| self.transport(&e))?
        };
        if resp.status().is_success() {
            return Ok(resp);
        }
        Err(self.error_answer(resp).await.into())
    }

    fn transport(&self, e: &reqwest::Error) -> anyhow::Error {
        let cause = root_cause(e);
        let (kind, message) = if e.is_connect() {
            (
                ErrorKind::Transient,
                format!(
                    "cannot reach the Skipper server at {}: {cause} — is `skipper serve` running \
                     there? (--url / SKIPPER_URL)",
                    self.base()
                ),
            )
        } else if e.is_timeout() {
            (
                ErrorKind::Timeout,
                format!(
                    "the Skipper server at {} did not answer in time ({cause})",
                    self.base()
                ),
            )
        } else {
            (
                ErrorKind::Transient,
                format!(
                    "the request to the Skipper server at {} failed: {cause}",
                    self.base()
                ),
            )
        };
        RemoteError {
            kind,
            status: None,
            message,
        }
        .into()
    }

    /// The error an answer that is not 2xx means: the API's envelope, or (a proxy's page) the
    /// status alone.
    async fn error_answer(&self, resp: Response) -> RemoteError {
        let status = resp.status();
        let body = resp.bytes().await.unwrap_or_default();
        #[derive(Deserialize)]
        struct Envelope {
            error: Detail,
        }
        #[derive(Deserialize)]
        struct Detail {
            code: String,
            message: String,
            request_id: Option<String>,
        }
        let envelope = serde_json::from_slice::<Envelope>(&body)
            .ok()
            .map(|e| e.error);
        if status == StatusCode::UNAUTHORIZED {
            let message = match &self.token {
                None => format!(
                    "the Skipper server at {} needs its admin token: give --token or set \
                     SKIPPER_TOKEN (`skipper serve` printed it at its first start; `skipper token \
                     rotate` on its host makes a new one)",
                    self.base()
                ),
                Some(_) => format!(
                    "the Skipper server at {} refused the token: check --token / SKIPPER_TOKEN \
                     (`skipper token rotate` on its host makes a new one)",
                    self.base()
                ),
            };
            return RemoteError {
                kind: ErrorKind::Unauthorized,
                status: Some(401),
                message,
            };
        }
        let code = status.as_u16();
        match envelope {
            Some(d) => {
                let mut message = d.message;
                if d.code == "not_found" && message == "no such route" {
                    message = format!(
                        "the server at {} has no such route: is it a Skipper server of this \
                         version? (--url / SKIPPER_URL)",
                        self.base()
                    );
                }
                if status.is_server_error()
                    && let Some(id) = d.request_id
                {
                    message.push_str(&format!(" (the server's request id: {id})"));
                }
                RemoteError {
                    kind: kind_of_code(&d.code, code),
                    status: Some(code),
                    message,
                }
            }
            None => RemoteError {
                kind: kind_of_status(code),
                status: Some(code),
                message: format!("the server at {} answered {status}", self.base()),
            },
        }
    }

    async fn json(&self, req: Req) -> Result<Value> {
        let resp = self.send(req).await?;
        let url = resp.url().clone();
        resp.json()
            .await
            .with_context(|| format!("the answer of {url} is not the JSON expected"))
    }

    async fn text(&self, req: Req) -> Result<String> {
        let resp = self.send(req).await?;
        let url = resp.url().clone();
        resp.text()
            .await
            .with_context(|| format!("reading the answer of {url}"))
    }

    /// Every project on the server (`GET /v1/projects`): each one's name and stage names.
    async fn projects(&self) -> Result<Vec<(String, Vec<String>)>> {
        let list = self.json(self.get(&["v1", "projects"])).await?;
        let list = list.as_array().cloned().unwrap_or_default();
        Ok(list
            .iter()
            .filter_map(|p| {
                let name = p["name"].as_str()?.to_owned();
                let stages = p["stages"]
                    .as_object()
                    .map(|s| s.keys().cloned().collect())
                    .unwrap_or_default();
                Some((name, stages))
            })
            .collect())
    }

    /// The instances of every stage (or only `project` / `stage`), as `ps` lists them: oldest
    /// first, each as the server's document and parsed.
    async fn instances(
        &self,
        project: Option<&str>,
        stage: Option<&str>,
    ) -> Result<Vec<(Value, InstanceDoc)>> {
        let mut out = Vec::new();
        for (p, stages) in self.projects().await? {
            if project.is_some_and(|want| want != p) {
                continue;
            }
            for s in stages
                .iter()
                .filter(|s| stage.is_none_or(|want| want == *s))
            {
                let list = self
                    .json(self.get(&["v1", "projects", &p, "stages", s, "instances"]))
                    .await?;
                for v in list.as_array().cloned().unwrap_or_default() {
                    let doc = InstanceDoc::deserialize(&v)
                        .with_context(|| format!("an instance of {p}/{s} the CLI cannot read"))?;
                    out.push((v, doc));
                }
            }
        }
        // The store's order, as embedded `ps` shows it.
        out.sort_by(|(_, a), (_, b)| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(out)
    }

    /// The instance `id` names, as the engine's `find_instance` resolves it: the whole id, else
    /// an unambiguous prefix of at least 4 characters.
    async fn find_instance(&self, id: &str) -> Result<InstanceDoc> {
        let all: Vec<InstanceDoc> = self
            .instances(None, None)
            .await?
            .into_iter()
            .map(|(_, i)| i)
            .collect();
        resolve_instance(all, id).map_err(Into::into)
    }

    /// `limit` deployments, newest first (paged by the server's 500).
    async fn history(
        &self,
        project: Option<&str>,
        stage: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Value>> {
        const PAGE: usize = 500;
        let mut out = Vec::new();
        while out.len() < limit {
            let want = (limit - out.len()).min(PAGE);
            let mut q: Vec<(&str, String)> = vec![
                ("limit", want.to_string()),
                ("offset", out.len().to_string()),
            ];
            if let Some(p) = project {
                q.push(("project", p.to_owned()));
            }
            if let Some(s) = stage {
                q.push(("stage", s.to_owned()));
            }
            let mut req = self.get(&["v1", "deploys"]);
            req.builder = req.builder.query(&q);
            let page = self.json(req).await?;
            let page = page.as_array().cloned().unwrap_or_default();
            let n = page.len();
            out.extend(page);
            if n < want {
                break;
            }
        }
        Ok(out)
    }

    /// Follow a deploy's event stream (`GET /v1/deploys/{id}/events`) to its `done` event,
    /// calling `step` for each step event once; the final deployment document. A stream that
    /// ends early is opened again (it replays from the start); after three tries the record
    /// decides.
    async fn follow(&self, id: &str, mut step: impl FnMut(&Value)) -> Result<Value> {
        let mut seen = 0u64;
        for attempt in 0..3 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let req = self
                .get(&["v1", "deploys", id, "events"])
                .header(header::ACCEPT, "text/event-stream");
            let mut resp = match self.send(req).await {
                Ok(r) => r,
                Err(e) if status_of(&e).is_some() => return Err(e),
                Err(e) => {
                    tracing::info!(error = %e, "the event stream failed; opening it again");
                    continue;
                }
            };
            let mut parser = SseParser::default();
            loop {
                let chunk = match resp.chunk().await {
                    Ok(Some(c)) => c,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::info!(error = %e, "the event stream broke; opening it again");
                        break;
                    }
                };
                for ev in parser.push(&chunk) {
                    let data: Value = match serde_json::from_str(&ev.data) {
                        Ok(v) => v,
                        Err(_) => continue,
                    };
                    match ev.event.as_str() {
                        "step" => {
                            let n = data["n"].as_u64().unwrap_or(seen);
                            if n >= seen {
                                seen = n + 1;
                                step(&data);
                            }
                        }
                        "done" => return Ok(data),
                        _ => {}
                    }
                }
            }
        }
        let doc = self.json(self.get(&["v1", "deploys", id])).await?;
        if doc["status"] == "in_progress" {
            return Err(RemoteError {
                kind: ErrorKind::Transient,
                status: None,
                message: format!(
                    "lost the event stream of deploy {id}; it goes on on the server \
                     (`skipper --url {} history` shows how it ends)",
                    self.base()
                ),
            }
            .into());
        }
        Ok(doc)
    }
}

/// [`Remote::find_instance`]'s choice, with the engine's own errors and messages.
fn resolve_instance(all: Vec<InstanceDoc>, id: &str) -> skipper_core::Result<InstanceDoc> {
    use skipper_core::Error;
    if let Some(i) = all.iter().position(|i| i.id == id) {
        return Ok(all.into_iter().nth(i).expect("found"));
    }
    if id.chars().count() < 4 {
        return Err(Error::InvalidName {
            what: "instance id",
            value: id.to_owned(),
            reason: "give at least 4 characters of the instance id".into(),
        });
    }
    let mut matches: Vec<InstanceDoc> = all.into_iter().filter(|i| i.id.starts_with(id)).collect();
    match matches.len() {
        1 => Ok(matches.remove(0)),
        0 => Err(Error::not_found(format!("instance {id:?}"))),
        n => Err(Error::Conflict {
            what: format!("{n} instances start with {id:?}; give more of the id"),
        }),
    }
}

// ---- deploy, tags -------------------------------------------------------------------------

/// The flags a server cannot take: refused, never ignored.
fn refuse_local_flags(a: &DeployArgs) -> Result<(), Usage> {
    let mut given = Vec::new();
    if !a.env.is_empty() {
        given.push("--env");
    }
    if a.max_instances.is_some() {
        given.push("--max-instances");
    }
    if a.health_timeout.is_some() {
        given.push("--health-timeout");
    }
    if !matches!(a.pull, Pull::Always) {
        given.push("--pull");
    }
    if !given.is_empty() {
        return Err(Usage(format!(
            "{} cannot be given to a Skipper server: set them in the project's settings \
             (`skipper config export`, edit, `skipper config import`) and deploy again",
            given.join(", ")
        )));
    }
    if skipper_core::reference::local_image_id(&a.image).is_some() {
        return Err(Usage(format!(
            "{} is a local image id of this host; a Skipper server deploys images from a \
             registry: give repository:tag",
            a.image
        )));
    }
    Ok(())
}

async fn deploy(r: &Remote, a: &DeployArgs, json: bool) -> Result<ExitCode> {
    if let Some(tenant) = tenant_apply(a)? {
        return apply_tenant(r, tenant, json).await;
    }
    refuse_local_flags(a)?;
    let mut refused = Refused {
        project: a.project.as_deref(),
        stage: &a.stage,
        image: None,
        input: Some(&a.image),
        trigger: "manual",
    };
    let image = match ImageRef::parse(&a.image) {
        Ok(i) => i,
        Err(e) => return refuse(json, &refused, e.into()),
    };
    let project = a
        .project
        .clone()
        .unwrap_or_else(|| crate::app::project_from_image(&image));
    refused.project = Some(&project);
    refused.image = Some(&image);
    let Some(tag) = image.tag() else {
        let e = skipper_core::Error::rejected(format!(
            "{} has no tag: a Skipper server deploys a tag (repository:tag)",
            a.image
        ));
        return refuse(json, &refused, e.into());
    };
    let started = Instant::now();
    // The stage exists: deploy the tag to it. Otherwise a quick deploy makes the project or
    // the stage from the image's defaults (and the flags that set them).
    let existing = match r.json(r.get(&["v1", "projects", &project])).await {
        Ok(doc) => Some(doc),
        Err(e) if status_of(&e) == Some(404) => None,
        Err(e) => return Err(e),
    };
    let stage_exists = existing
        .as_ref()
        .is_some_and(|p| p["stages"].get(&a.stage).is_some());
    if let Some(p) = &existing {
        let theirs = p["image"].as_str().unwrap_or_default();
        let same = ImageRef::parse(theirs).is_ok_and(|t| t.same_repository(&image));
        if !same {
            let e = skipper_core::Error::Conflict {
                what: format!("project {project:?} deploys {theirs}, not {}", image.name()),
            };
            return refuse(json, &refused, e.into());
        }
    }
    let req = if stage_exists {
        if a.port.is_some() || a.health_path.is_some() {
            return Err(Usage(format!(
                "--port and --health-path set a new project's settings on a server; project \
                 {project:?} exists: change its settings (`skipper config export`, edit, \
                 `skipper config import`) and deploy again"
            ))
            .into());
        }
        r.request(
            Method::POST,
            &["v1", "projects", &project, "stages", &a.stage, "instances"],
        )
        .json(&json!({ "tag": tag, "confirm": a.yes }))
    } else {
        r.request(Method::POST, &["v1", "deploy", "quick"])
            .json(&json!({
                "image": image.to_string(),
                "project": project,
                "stage": a.stage,
                "port": a.port,
                "health_path": a.health_path,
            }))
    };
    let accepted = match r.json(req.idempotent().answers_at_once()).await {
        Ok(doc) => doc,
        Err(e) if is_answer(&e) => {
            if json {
                outln!(
                    "{}",
                    output::refusal_json(&refused, kind_of(&e), &message(&e))
                );
            } else {
                errln!("deploy refused: {e:#}");
            }
            return Ok(ExitCode::from(1));
        }
        Err(e) => return Err(e),
    };
    let done = if accepted["status"] == "in_progress" {
        let id = accepted["deploy_id"]
            .as_str()
            .context("the server's answer names no deploy_id")?
            .to_owned();
        let show = output::progress_enabled();
        r.follow(&id, |s| {
            if show {
                errln!(
                    "  {:<8} {:<7} {}",
                    s["step"].as_str().unwrap_or("?"),
                    s["status"].as_str().unwrap_or("?"),
                    s["message"].as_str().unwrap_or("")
                );
            }
        })
        .await?
    } else {
        accepted
    };
    report(&done, json, started.elapsed())
}

/// A deploy or rollback refused before it started (the refusal document under `--json`, exit
/// 1), else the error for [`fail`].
fn refuse(json: bool, refused: &Refused<'_>, e: anyhow::Error) -> Result<ExitCode> {
    if !json {
        return Err(e);
    }
    outln!(
        "{}",
        output::refusal_json(refused, kind_of(&e), &message(&e))
    );
    Ok(ExitCode::from(1))
}

/// Print a deployment document as the embedded mode prints a deployment; 1 unless it succeeded.
fn report(doc: &Value, json: bool, took: Duration) -> Result<ExitCode> {
    let d = DeploymentDoc::deserialize(doc).context("the server's deployment document")?;
    let ok = d.status == DeployStatus::Succeeded;
    if json {
        outln!("{doc}");
    } else {
        let (d, instance, url) = d.into_parts()?;
        output::print_deployment(&d, instance.as_ref(), url.as_deref(), took);
    }
    Ok(ExitCode::from(if ok { 0 } else { 1 }))
}

/// `tags REPOSITORY` against a server: the tags of the server's project that deploys that
/// repository (or is named so), through the server's registry credentials. The API lists tags
/// without digests.
async fn tags(r: &Remote, a: &crate::cli::TagsArgs, json: bool) -> Result<ExitCode> {
    let pattern = TagPattern::new(&a.pattern)?;
    let wanted = ImageRef::parse(&a.repository).ok();
    let list = r.json(r.get(&["v1", "projects"])).await?;
    let project = list.as_array().into_iter().flatten().find(|p| {
        p["name"] == a.repository.as_str()
            || ImageRef::parse(p["image"].as_str().unwrap_or_default())
                .is_ok_and(|i| wanted.as_ref().is_some_and(|w| w.same_repository(&i)))
    });
    let Some(project) = project else {
        return Err(RemoteError {
            kind: ErrorKind::NotFound,
            status: None,
            message: format!(
                "no project on the server deploys {:?}: against a server, `skipper tags` lists \
                 the tags of a project's repository (or of the project so named)",
                a.repository
            ),
        }
        .into());
    };
    let name = project["name"].as_str().unwrap_or_default();
    let repository = project["image"].as_str().unwrap_or_default().to_owned();
    let all = r.json(r.get(&["v1", "projects", name, "tags"])).await?;
    let matching: Vec<&str> = all
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter(|t| pattern.matches(t))
        .collect();
    let rows: Vec<&str> = matching.iter().copied().take(a.limit).collect();
    if json {
        let list: Vec<Value> = rows
            .iter()
            .map(|t| json!({ "tag": t, "digest": null }))
            .collect();
        outln!("{}", Value::Array(list));
    } else if rows.is_empty() {
        outln!("no tag of {repository} matches {:?}", pattern.as_str());
    } else {
        let width = rows.iter().map(|t| t.len()).max().unwrap_or(3).max(3);
        outln!("{:width$}  DIGEST", "TAG");
        for t in &rows {
            outln!("{t:width$}  -");
        }
        if matching.len() > rows.len() {
            outln!(
                "({} of {} matching tags; --limit shows more)",
                rows.len(),
                matching.len()
            );
        }
        errln!("(a server lists tags without their digests)");
    }
    Ok(ExitCode::SUCCESS)
}

// ---- the server's documents, read back ----------------------------------------------------

/// [`output::instance_json`], read back.
#[derive(Debug, Deserialize)]
pub(crate) struct InstanceDoc {
    id: String,
    project: String,
    stage: String,
    image: String,
    tag: String,
    digest: Option<String>,
    state: InstanceState,
    active: bool,
    address: Option<String>,
    domain: String,
    container_id: Option<String>,
    container_name: String,
    created_at: Timestamp,
}

impl InstanceDoc {
    fn into_instance(self) -> Result<Instance> {
        Ok(Instance {
            image: ImageRef::parse(&self.image)?,
            id: self.id,
            project: self.project,
            stage: self.stage,
            tag: self.tag,
            digest: self.digest,
            container_name: self.container_name,
            container_id: self.container_id,
            address: self.address,
            upstream: None,
            domain: self.domain,
            state: self.state,
            active: self.active,
            deployment_id: String::new(),
            created_at: self.created_at,
            updated_at: self.created_at,
        })
    }
}

/// The instance part of [`output::deployment_json`].
#[derive(Debug, Deserialize)]
struct InstanceBrief {
    id: String,
    container_id: Option<String>,
    container_name: String,
    address: Option<String>,
    domain: String,
}

/// [`output::deployment_json`], read back.
#[derive(Debug, Deserialize)]
struct DeploymentDoc {
    deploy_id: String,
    status: DeployStatus,
    project: String,
    stage: String,
    image: String,
    tag: String,
    digest: Option<String>,
    trigger: Trigger,
    instance: Option<InstanceBrief>,
    url: Option<String>,
    #[serde(default)]
    replaced: Vec<String>,
    error: Option<DeployError>,
    #[serde(default)]
    steps: Vec<StepRecord>,
    started_at: Timestamp,
    finished_at: Option<Timestamp>,
}

impl DeploymentDoc {
    /// The deployment, its instance and URL, as [`output::print_deployment`] takes them.
    fn into_parts(self) -> Result<(Deployment, Option<Instance>, Option<String>)> {
        let image = ImageRef::parse(&self.image)?;
        let instance = self.instance.map(|i| Instance {
            id: i.id,
            project: self.project.clone(),
            stage: self.stage.clone(),
            image: image.clone(),
            tag: self.tag.clone(),
            digest: self.digest.clone(),
            container_name: i.container_name,
            container_id: i.container_id,
            address: i.address,
            upstream: None,
            domain: i.domain,
            state: InstanceState::Running,
            active: true,
            deployment_id: self.deploy_id.clone(),
            created_at: self.started_at,
            updated_at: self.started_at,
        });
        let d = Deployment {
            id: self.deploy_id,
            project: self.project,
            stage: self.stage,
            image,
            tag: self.tag,
            digest: self.digest,
            instance_id: instance.as_ref().map(|i| i.id.clone()),
            previous_instance: None,
            replaced: self.replaced,
            status: self.status,
            trigger: self.trigger,
            steps: self.steps,
            error: self.error,
            started_at: self.started_at,
            finished_at: self.finished_at,
            settings: None,
            correlation_id: None,
        };
        Ok((d, instance, self.url))
    }
}

/// `POST /v1/reconcile`'s answer (the report's own JSON), read back.
fn reconcile_report(v: &Value) -> ReconcileReport {
    let list = |k: &str| -> Vec<String> {
        v[k].as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    ReconcileReport {
        adopted: list("adopted"),
        missing: list("missing"),
        removed_containers: list("removed_containers"),
        interrupted: list("interrupted"),
        routes_repaired: list("routes_repaired"),
        restarted: list("restarted"),
        updated: list("updated"),
        foreign: list("foreign"),
        busy: list("busy"),
        unreachable: list("unreachable"),
    }
}

// ---- server-sent events -------------------------------------------------------------------

/// One server-sent event.
#[derive(Debug, PartialEq, Eq)]
struct SseEvent {
    event: String,
    data: String,
}

/// `text/event-stream` parsed as bytes arrive: `event:` and `data:` lines, an empty line ends
/// an event, `:` lines are comments (keep-alives). Lines may be cut anywhere between chunks.
#[derive(Debug, Default)]
struct SseParser {
    buf: Vec<u8>,
    event: String,
    data: Vec<String>,
}

impl SseParser {
    fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        self.buf.extend_from_slice(chunk);
        let mut out = Vec::new();
        while let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
            let raw: Vec<u8> = self.buf.drain(..=end).collect();
            let line = String::from_utf8_lossy(&raw[..end]);
            let line = line.strip_suffix('\r').unwrap_or(&line);
            if line.is_empty() {
                if !self.data.is_empty() {
                    let event = std::mem::take(&mut self.event);
                    out.push(SseEvent {
                        event: if event.is_empty() {
                            "message".into()
                        } else {
                            event
                        },
                        data: std::mem::take(&mut self.data).join("\n"),
                    });
                }
                self.event.clear();
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "event" => self.event = value.to_owned(),
                "data" => self.data.push(value.to_owned()),
                _ => {}
            }
        }
        out
    }
}

/// `skipper deploy apply --tenant-id T`: the tenant to apply, if this deploy is that one. A
/// `--tenant-id` with an image, or `apply` without one, is a usage error.
fn tenant_apply(a: &crate::cli::DeployArgs) -> Result<Option<&str>> {
    match (a.image.as_str(), a.tenant_id.as_deref()) {
        ("apply", Some(t)) => Ok(Some(t)),
        ("apply", None) => Err(Usage(
            "`skipper deploy apply` applies a tenant's stacks: give --tenant-id".into(),
        )
        .into()),
        (_, Some(_)) => {
            Err(Usage("--tenant-id goes with `skipper deploy apply` (no image)".into()).into())
        }
        _ => Ok(None),
    }
}

/// `skipper deploy apply --tenant-id T`: queue the tenant's stacks, then follow them until each
/// is answered (succeeded, failed, expired or cancelled), printing each stack's services.
async fn apply_tenant(r: &Remote, tenant: &str, json: bool) -> Result<ExitCode> {
    let req = r
        .request(Method::POST, &["v1", "deployments", tenant, "apply"])
        .idempotent();
    let queued = r.json(req).await?;
    if !json {
        errln!(
            "applying tenant {tenant} (generation {}) on node {}: {} stack(s)",
            queued["generation"],
            queued["node"].as_str().unwrap_or("?"),
            queued["orders"].as_object().map_or(0, |o| o.len())
        );
    }
    let deadline = Instant::now() + std::time::Duration::from_secs(30 * 60);
    let doc = loop {
        let doc = r.json(r.get(&["v1", "tenants", tenant])).await?;
        let open = doc["current"].as_object().is_some_and(|c| {
            c.values()
                .any(|s| matches!(s["status"].as_str(), Some("queued" | "leased")))
        });
        if !open || Instant::now() > deadline {
            break doc;
        }
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    };
    let stacks = doc["current"].as_object().cloned().unwrap_or_default();
    let ok = !stacks.is_empty() && stacks.values().all(|s| s["status"] == "succeeded");
    if json {
        outln!("{doc}");
    } else {
        for (name, s) in &stacks {
            let services: Vec<String> = s["services"]
                .as_array()
                .map(|l| {
                    l.iter()
                        .map(|v| {
                            format!(
                                "{} {}",
                                v["service"].as_str().unwrap_or("?"),
                                v["state"].as_str().unwrap_or("?")
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            outln!(
                "{name}: {}{}",
                s["status"].as_str().unwrap_or("?"),
                if services.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", services.join(", "))
                }
            );
            if s["status"] != "succeeded" {
                let logs = s["logs"].as_array().cloned().unwrap_or_default();
                for l in &logs[logs.len().saturating_sub(5)..] {
                    outln!("  {}", l.as_str().unwrap_or_default());
                }
            }
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use clap::Parser as _;
    use skipper_core::model::{Step, StepStatus};
    use wiremock::matchers::{body_json, header, header_exists, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};

    use super::*;

    fn cli(server: &str, args: &[&str]) -> Cli {
        let base = ["skipper", "--url", server, "--token", "t0ken"];
        Cli::try_parse_from(base.iter().chain(args)).expect("valid arguments")
    }

    fn instance(id: &str, project: &str, stage: &str) -> Instance {
        Instance {
            id: id.into(),
            project: project.into(),
            stage: stage.into(),
            image: ImageRef::parse(&format!("127.0.0.1:5055/team/{project}:v2")).unwrap(),
            tag: "v2".into(),
            digest: Some(format!("sha256:{}", "ab".repeat(32))),
            container_name: format!("skipper-{project}-{stage}-{id}"),
            container_id: Some("c0ffee".into()),
            address: Some("127.0.0.1:49153".into()),
            upstream: None,
            domain: format!("stage-{stage}-{project}-v2.localhost"),
            state: InstanceState::Running,
            active: true,
            deployment_id: "9d8e7f6a5b4c".into(),
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    fn deployment(id: &str, status: DeployStatus) -> Deployment {
        let failed = status == DeployStatus::Failed;
        Deployment {
            id: id.into(),
            project: "app".into(),
            stage: "dev".into(),
            image: ImageRef::parse("127.0.0.1:5055/team/app:v2").unwrap(),
            tag: "v2".into(),
            digest: None,
            instance_id: None,
            previous_instance: None,
            replaced: vec!["0ld1nstance0".into()],
            status,
            trigger: Trigger::Manual,
            steps: vec![StepRecord {
                step: Step::Validate,
                status: StepStatus::Done,
                message: "may deploy".into(),
                at: Utc::now(),
            }],
            error: failed.then(|| DeployError {
                step: Step::Health,
                kind: ErrorKind::Unhealthy,
                message: "not healthy within 60s".into(),
                logs: vec!["listening".into()],
            }),
            started_at: Utc::now(),
            finished_at: (!matches!(status, DeployStatus::InProgress)).then(Utc::now),
            settings: None,
            correlation_id: None,
        }
    }

    fn envelope(code: &str, message: &str) -> Value {
        json!({ "error": { "code": code, "message": message, "request_id": "req-7" } })
    }

    async fn error_of(body: ResponseTemplate) -> (RemoteError, ErrorKind) {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/v1/projects"))
            .respond_with(body)
            .mount(&server)
            .await;
        let r = Remote::new(&server.uri(), Some("t0ken".to_owned().into())).unwrap();
        let e = r.json(r.get(&["v1", "projects"])).await.unwrap_err();
        let kind = kind_of(&e);
        let e = e.downcast::<RemoteError>().expect("a RemoteError");
        (e, kind)
    }

    #[tokio::test]
    async fn error_envelopes_keep_the_servers_message_and_map_its_code() {
        for (status, code, kind) in [
            (422, "rejected", ErrorKind::Rejected),
            (409, "conflict", ErrorKind::Conflict),
            (404, "not_found", ErrorKind::NotFound),
            (400, "invalid", ErrorKind::Invalid),
            (502, "backend_unauthorized", ErrorKind::Unauthorized),
            (422, "unprocessable", ErrorKind::Rejected),
            (504, "timeout", ErrorKind::Timeout),
            (418, "something_new", ErrorKind::Internal),
        ] {
            let body = ResponseTemplate::new(status).set_body_json(envelope(code, "what failed"));
            let (e, k) = error_of(body).await;
            assert_eq!((k, e.status), (kind, Some(status)), "{code}");
            assert!(
                e.message.starts_with("what failed"),
                "{code}: {}",
                e.message
            );
            // The request id is worth quoting only when the server failed.
            assert_eq!(
                e.message.contains("req-7"),
                status >= 500,
                "{code}: {}",
                e.message
            );
        }
        // A proxy's own error page: the status decides.
        let page = ResponseTemplate::new(502).set_body_string("<html>Bad Gateway</html>");
        let (e, k) = error_of(page).await;
        assert_eq!(k, ErrorKind::Transient);
        assert!(
            e.message.contains("answered 502 Bad Gateway"),
            "{}",
            e.message
        );
    }

    #[tokio::test]
    async fn a_refused_or_missing_token_says_to_check_it_and_exits_1() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/v1/projects"))
            .respond_with(
                ResponseTemplate::new(401).set_body_json(envelope("unauthorized", "no token")),
            )
            .mount(&server)
            .await;
        let r = Remote::new(&server.uri(), Some("wrong".to_owned().into())).unwrap();
        let e = r.json(r.get(&["v1", "projects"])).await.unwrap_err();
        assert_eq!(kind_of(&e), ErrorKind::Unauthorized);
        assert!(
            message(&e).contains("refused the token: check --token / SKIPPER_TOKEN"),
            "{e:#}"
        );
        let r = Remote::new(&server.uri(), None).unwrap();
        let e = r.json(r.get(&["v1", "projects"])).await.unwrap_err();
        assert!(
            message(&e).contains("needs its admin token: give --token or set SKIPPER_TOKEN"),
            "{e:#}"
        );
        let code = run(&cli(&server.uri(), &["ps", "--json"])).await.unwrap();
        assert_eq!(code, ExitCode::from(1));
    }

    #[tokio::test]
    async fn an_unreachable_server_says_what_to_check() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let url = format!("http://127.0.0.1:{port}");
        let r = Remote::new(&url, None).unwrap();
        let e = r.json(r.get(&["v1", "health"])).await.unwrap_err();
        assert_eq!(kind_of(&e), ErrorKind::Transient);
        assert_eq!(
            message(&e),
            format!(
                "cannot reach the Skipper server at {url}: connection refused — is `skipper \
                 serve` running there? (--url / SKIPPER_URL)"
            )
        );
        let code = run(&cli(&url, &["history"])).await.unwrap();
        assert_eq!(code, ExitCode::from(1));
    }

    #[tokio::test]
    async fn usage_errors_exit_2() {
        let server = MockServer::start().await;
        for args in [
            &["deploy", "app:v1", "--env", "A=b"][..],
            &["deploy", "app:v1", "--max-instances", "3"],
            &["deploy", "sha256:0123456789abcdef"],
            &["watch", "--once"],
            &["token", "rotate"],
        ] {
            let code = run(&cli(&server.uri(), args)).await.unwrap();
            assert_eq!(code, ExitCode::from(2), "{args:?}");
        }
        let code = run(&cli("ftp://example.com", &["ps"])).await.unwrap();
        assert_eq!(code, ExitCode::from(2));
        let health = Cli::try_parse_from(["skipper", "health"]).unwrap();
        let health = Cli {
            global: crate::cli::Global {
                url: None,
                ..health.global
            },
            ..health
        };
        assert_eq!(run(&health).await.unwrap(), ExitCode::from(2));
        assert!(
            server.received_requests().await.unwrap().is_empty(),
            "a refused flag sends nothing"
        );
    }

    /// `stop 3f2a`: the projects, every stage's instances, then the stage's stop route with
    /// the whole id, each with the token; the POST with an idempotency key.
    #[tokio::test]
    async fn instance_commands_find_the_instance_then_act_on_its_route() {
        let server = MockServer::start().await;
        let bearer = || header("authorization", "Bearer t0ken");
        Mock::given(method("GET"))
            .and(path("/v1/projects"))
            .and(bearer())
            .respond_with(ResponseTemplate::new(200).set_body_json(json!([
                { "name": "web", "image": "127.0.0.1:5055/team/web", "stages": { "dev": {}, "prod": {} } },
            ])))
            .expect(2)
            .mount(&server)
            .await;
        let i = instance("3f2a9c0b7d41", "web", "prod");
        Mock::given(method("GET"))
            .and(path("/v1/projects/web/stages/prod/instances"))
            .and(bearer())
            .respond_with(
                ResponseTemplate::new(200).set_body_json(json!([output::instance_json(&i)])),
            )
            .expect(2)
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/v1/projects/web/stages/dev/instances"))
            .and(bearer())
            .respond_with(ResponseTemplate::new(200).set_body_json(json!([])))
            .expect(2)
            .mount(&server)
            .await;
        let mut acted = output::instance_json(&i);
        acted["action"] = "stopped".into();
        Mock::given(method("POST"))
            .and(path(
                "/v1/projects/web/stages/prod/instances/3f2a9c0b7d41/stop",
            ))
            .and(bearer())
            .and(header_exists("idempotency-key"))
            .respond_with(ResponseTemplate::new(200).set_body_json(acted))
            .expect(1)
            .mount(&server)
            .await;
        let code = run(&cli(&server.uri(), &["stop", "3f2a"])).await.unwrap();
        assert_eq!(code, ExitCode::SUCCESS);
        let reqs = server.received_requests().await.unwrap();
        let stop = reqs.iter().find(|r| r.method.as_str() == "POST").unwrap();
        let key = stop
            .headers
            .get("idempotency-key")
            .unwrap()
            .to_str()
            .unwrap();
        assert!(uuid::Uuid::parse_str(key).is_ok(), "{key}");

        // An id no instance has is the engine's own not-found, exit 1 (and no POST: the stop
        // mock expects exactly one).
        let code = run(&cli(&server.uri(), &["stop", "ffff"])).await;
        assert_eq!(code.unwrap(), ExitCode::from(1));
    }

    #[test]
    fn ids_resolve_as_the_engine_resolves_them() {
        let doc = |id: &str| {
            InstanceDoc::deserialize(&output::instance_json(&instance(id, "web", "dev"))).unwrap()
        };
        let all = || vec![doc("3f2a9c0b7d41"), doc("3f2a11111111"), doc("3f2a")];
        assert_eq!(
            resolve_instance(all(), "3f2a").unwrap().id,
            "3f2a",
            "exact wins"
        );
        assert_eq!(resolve_instance(all(), "3f2a9").unwrap().id, "3f2a9c0b7d41");
        let e = resolve_instance(all(), "3f2a1").unwrap();
        assert_eq!(e.id, "3f2a11111111");
        let e =
            resolve_instance(vec![doc("3f2a9c0b7d41"), doc("3f2a11111111")], "3f2a").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Conflict);
        assert!(
            e.to_string().contains("2 instances start with \"3f2a\""),
            "{e}"
        );
        let e = resolve_instance(all(), "3f").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Invalid);
        let e = resolve_instance(all(), "beef").unwrap_err();
        assert_eq!(e.to_string(), "instance \"beef\" not found");
    }

    /// `deploy` to a stage the server has: the tag and confirmation posted with an idempotency
    /// key, then the deploy's event stream followed to `done`; a failed deploy exits 1.
    #[tokio::test]
    async fn deploy_posts_the_tag_and_follows_the_event_stream() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/v1/projects/app"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "name": "app", "image": "127.0.0.1:5055/team/app", "stages": { "dev": {} },
            })))
            .mount(&server)
            .await;
        let started =
            output::deployment_json(&deployment("d1", DeployStatus::InProgress), None, None);
        Mock::given(method("POST"))
            .and(path("/v1/projects/app/stages/dev/instances"))
            .and(header("authorization", "Bearer t0ken"))
            .and(header_exists("idempotency-key"))
            .and(body_json(json!({ "tag": "v2", "confirm": true })))
            .respond_with(ResponseTemplate::new(202).set_body_json(started))
            .expect(1)
            .mount(&server)
            .await;
        let done = output::deployment_json(&deployment("d1", DeployStatus::Failed), None, None);
        let stream = format!(
            ": keep-alive\n\nevent: step\nid: 0\ndata: {}\n\nevent: done\nid: 1\ndata: {}\n\n",
            json!({ "deploy_id": "d1", "n": 0, "step": "validate", "status": "done", "message": "ok" }),
            done
        );
        Mock::given(method("GET"))
            .and(path("/v1/deploys/d1/events"))
            .respond_with(ResponseTemplate::new(200).set_body_raw(stream, "text/event-stream"))
            .expect(1)
            .mount(&server)
            .await;
        let args = ["deploy", "127.0.0.1:5055/team/app:v2", "--yes", "--json"];
        let code = run(&cli(&server.uri(), &args)).await.unwrap();
        assert_eq!(code, ExitCode::from(1), "the deploy failed");

        // A repository other than the project's is refused before anything is posted.
        let args = ["deploy", "127.0.0.1:5055/team/other:v2", "--project", "app"];
        let code = run(&cli(&server.uri(), &args)).await.unwrap();
        assert_eq!(code, ExitCode::from(1));
    }

    /// A project the server does not know: a quick deploy with the flags it takes; an answer
    /// that already ended needs no event stream.
    #[tokio::test]
    async fn deploy_of_a_new_project_is_a_quick_deploy() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/v1/projects/app"))
            .respond_with(
                ResponseTemplate::new(404).set_body_json(envelope("not_found", "no project")),
            )
            .mount(&server)
            .await;
        let mut done =
            output::deployment_json(&deployment("d2", DeployStatus::Succeeded), None, None);
        done["instance"] = json!({
            "id": "5450cf182056", "container_id": "c0ffee", "container_name": "skipper-app-dev-5450cf182056",
            "address": "127.0.0.1:32788", "domain": "stage-dev-app-v2.localhost",
        });
        Mock::given(method("POST"))
            .and(path("/v1/deploy/quick"))
            .and(header_exists("idempotency-key"))
            .and(body_json(json!({
                "image": "127.0.0.1:5055/team/app:v2", "project": "app", "stage": "dev",
                "port": 8080, "health_path": "/health",
            })))
            .respond_with(ResponseTemplate::new(202).set_body_json(done))
            .expect(1)
            .mount(&server)
            .await;
        Mock::given(method("GET"))
            .and(path("/v1/deploys/d2/events"))
            .respond_with(ResponseTemplate::new(500))
            .expect(0)
            .mount(&server)
            .await;
        let args = [
            "deploy",
            "127.0.0.1:5055/team/app:v2",
            "--port",
            "8080",
            "--health-path",
            "/health",
        ];
        let code = run(&cli(&server.uri(), &args)).await.unwrap();
        assert_eq!(code, ExitCode::SUCCESS);
    }

    /// A deploy the server refuses (a 422 envelope) is a refusal: exit 1, the server's words.
    #[tokio::test]
    async fn a_refused_deploy_exits_1() {
        let server = MockServer::start().await;
        Mock::given(method("GET"))
            .and(path("/v1/projects/app"))
            .respond_with(ResponseTemplate::new(200).set_body_json(json!({
                "name": "app", "image": "127.0.0.1:5055/team/app", "stages": { "prod": {} },
            })))
            .mount(&server)
            .await;
        Mock::given(method("POST"))
            .and(path("/v1/projects/app/stages/prod/instances"))
            .respond_with(
                ResponseTemplate::new(422)
                    .set_body_json(envelope("rejected", "stage prod needs --yes")),
            )
            .expect(1)
            .mount(&server)
            .await;
        let args = [
            "deploy",
            "127.0.0.1:5055/team/app:v2",
            "-s",
            "prod",
            "--json",
        ];
        let code = run(&cli(&server.uri(), &args)).await.unwrap();
        assert_eq!(code, ExitCode::from(1));
    }

    /// A POST that got no answer in time is sent once more with the same key, so the server
    /// answers the second with the first one's answer instead of deploying twice.
    #[tokio::test]
    async fn an_unanswered_post_is_asked_again_with_the_same_key() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/v1/deploy/quick"))
            .respond_with(
                ResponseTemplate::new(202)
                    .set_body_json(json!({}))
                    .set_delay(Duration::from_secs(5)),
            )
            .mount(&server)
            .await;
        let mut r = Remote::new(&server.uri(), None).unwrap();
        r.post_timeout = Duration::from_millis(100);
        let req = r
            .request(Method::POST, &["v1", "deploy", "quick"])
            .json(&json!({ "image": "app:v1" }))
            .idempotent()
            .answers_at_once();
        let e = r.json(req).await.unwrap_err();
        assert_eq!(kind_of(&e), ErrorKind::Timeout, "{e:#}");
        let reqs = server.received_requests().await.unwrap();
        let keys: Vec<_> = reqs
            .iter()
            .map(|r| r.headers.get("idempotency-key").cloned())
            .collect();
        assert_eq!(keys.len(), 2, "asked twice");
        assert!(keys[0].is_some() && keys[0] == keys[1], "{keys:?}");
    }

    #[test]
    fn the_sse_parser_takes_lines_cut_anywhere() {
        let text = ": keep-alive\r\n\r\nevent: step\r\ndata: {\"n\":0}\r\n\r\nevent: done\ndata: a\ndata:b\n\ndata: plain\n\n";
        let all = SseParser::default().push(text.as_bytes());
        let want = vec![
            SseEvent {
                event: "step".into(),
                data: "{\"n\":0}".into(),
            },
            SseEvent {
                event: "done".into(),
                data: "a\nb".into(),
            },
            SseEvent {
                event: "message".into(),
                data: "plain".into(),
            },
        ];
        assert_eq!(all, want);
        // Byte by byte (a UTF-8 character cut in two included), the same events.
        let text = "event: step\ndata: é\n\n";
        let mut p = SseParser::default();
        let got: Vec<SseEvent> = text.as_bytes().iter().flat_map(|b| p.push(&[*b])).collect();
        assert_eq!(
            got,
            [SseEvent {
                event: "step".into(),
                data: "é".into()
            }]
        );
    }

    /// The documents read back print as the engine's records do: `deployment_json` of the
    /// parts is the document again.
    #[test]
    fn documents_read_back_are_the_records() {
        let d = deployment("d3", DeployStatus::Failed);
        let i = instance("5450cf182056", "app", "dev");
        let doc = output::deployment_json(&d, Some(&i), Some("http://127.0.0.1:49153"));
        let (d2, i2, url) = DeploymentDoc::deserialize(&doc)
            .unwrap()
            .into_parts()
            .unwrap();
        assert_eq!(
            output::deployment_json(&d2, i2.as_ref(), url.as_deref()),
            doc
        );
        let doc = output::instance_json(&i);
        let back = InstanceDoc::deserialize(&doc)
            .unwrap()
            .into_instance()
            .unwrap();
        assert_eq!(output::instance_json(&back), doc);
        let r = ReconcileReport {
            missing: vec!["a".into()],
            foreign: vec!["b".into()],
            ..ReconcileReport::default()
        };
        assert_eq!(reconcile_report(&serde_json::to_value(&r).unwrap()), r);
    }
}
