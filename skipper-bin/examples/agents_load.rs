//! Run with: `scripts/bench-agents.sh 10000` (it starts a server and runs this), or by hand:
//! `cargo run --release -p skipper-bin --example agents_load -- --url http://127.0.0.1:8080
//! --admin-token … --agents 1000 --server-pid 1234`
//!
//! N simulated agents in one process, against one `skipper serve`. A thin client of the agent
//! protocol (`src/proto.rs`, shared with the server and `skippy`), no server logic:
//! 1. registers N nodes through the admin API (`POST /v1/nodes`);
//! 2. starts the agents, spread over `--ramp`: each sends a signed heartbeat at the interval the
//!    server gives and holds a signed long-poll (`work-orders/next?wait=25`), like `skippy`:
//!    two kept-alive connections per agent (or, with `--heartbeat-close`, a fresh connection per
//!    heartbeat); every answer's signature is checked;
//! 3. once all are connected, waits `--settle`, reads the server's RSS and open files
//!    (`--server-pid`), then counts requests over `--window` (the heartbeat load);
//! 4. queues `--orders` `ping` orders, one at a time, each to a random node, through the admin
//!    API; the agent that gets one answers it (a signed result). Each order is timed from just
//!    before the admin request is sent to the moment the server accepted the agent's answer.
//!
//! Prints `name value` lines on stdout; exits 1 if any agent saw an error, an order was not
//! answered within 10 s, or `--max-time` passed.

#[path = "../src/proto.rs"]
#[allow(
    dead_code,
    reason = "shared with the server; the load tool signs and checks"
)]
mod proto;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use serde_json::{Value, json};
use sha2::Digest;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

#[derive(Parser, Debug)]
#[command(about = "N simulated skippy agents against one skipper serve")]
struct Args {
    /// The server, `http://host:port` (plain HTTP only).
    #[arg(long)]
    url: String,
    /// The server's admin token.
    #[arg(long, env = "SKIPPER_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: String,
    /// How many agents.
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    /// Node ids are `<prefix>-<n>`.
    #[arg(long, default_value = "load")]
    prefix: String,
    /// Orders to time, one at a time.
    #[arg(long, default_value_t = 500)]
    orders: usize,
    /// Agents start spread over this long.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    ramp: Duration,
    /// After all are connected, wait this long before measuring.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    settle: Duration,
    /// Count requests over this long (the heartbeat load).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    window: Duration,
    /// The server's pid, to read its RSS and open files from /proc.
    #[arg(long)]
    server_pid: Option<u32>,
    /// A fresh connection for each heartbeat (`Connection: close`) instead of a kept one.
    #[arg(long)]
    heartbeat_close: bool,
    /// Give up after this long in all.
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    max_time: Duration,
}

/// Counters shared by every agent.
#[derive(Default)]
struct Stats {
    heartbeats: AtomicU64,
    polls: AtomicU64,
    orders: AtomicU64,
    /// Runtime orders (the server's reconcile pass lists each node's containers).
    runtime_orders: AtomicU64,
    results: AtomicU64,
    /// Agents whose first heartbeat was answered.
    connected: AtomicUsize,
    /// Agents with a long-poll sent at least once.
    polling: AtomicUsize,
    agents_with_errors: AtomicUsize,
    errors: Mutex<BTreeMap<String, u64>>,
    /// Heartbeat round trips (µs) while `measuring`.
    heartbeat_us: Mutex<Vec<u32>>,
    measuring: AtomicBool,
}

impl Stats {
    fn error(&self, kind: String) {
        *self
            .errors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(kind)
            .or_default() += 1;
    }
}

/// The orders being timed: `seq` → who waits for the answer.
type Waiters = Mutex<HashMap<u64, tokio::sync::oneshot::Sender<(Instant, Instant)>>>;

struct Shared {
    addr: SocketAddr,
    host: String,
    stats: Stats,
    waiters: Waiters,
    heartbeat_close: bool,
    stop: CancellationToken,
}

/// One kept-alive HTTP/1.1 connection (the server answers with a length, never chunked).
struct Conn {
    io: BufReader<TcpStream>,
}

struct Answer {
    status: u16,
    headers: HashMap<String, String>,
    body: Vec<u8>,
    close: bool,
}

impl Conn {
    async fn open(addr: SocketAddr) -> std::io::Result<Self> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(Self {
            io: BufReader::with_capacity(1024, s),
        })
    }

    async fn send(&mut self, head: &str, body: &[u8]) -> anyhow::Result<Answer> {
        let s = self.io.get_mut();
        s.write_all(head.as_bytes()).await?;
        s.write_all(body).await?;
        let mut line = String::new();
        if self.io.read_line(&mut line).await? == 0 {
            bail!("closed before answering");
        }
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("not a status line: {line:?}"))?;
        let mut headers = HashMap::new();
        loop {
            line.clear();
            if self.io.read_line(&mut line).await? == 0 {
                bail!("closed in the headers");
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
            }
        }
        if headers.contains_key("transfer-encoding") {
            bail!("a chunked answer (this client reads lengths only)");
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; len];
        self.io.read_exact(&mut body).await?;
        let close = headers
            .get("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        Ok(Answer {
            status,
            headers,
            body,
            close,
        })
    }
}

/// A request on `conn` (opened if needed, dropped after an error or a close).
async fn request(
    sh: &Shared,
    conn: &mut Option<Conn>,
    method: &str,
    path: &str,
    extra_headers: &str,
    body: &[u8],
    close: bool,
) -> anyhow::Result<Answer> {
    if conn.is_none() {
        *conn = Some(
            Conn::open(sh.addr)
                .await
                .map_err(|e| anyhow::anyhow!("connect: {e}"))?,
        );
    }
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra_headers}{}\r\n",
        sh.host,
        body.len(),
        if close { "connection: close\r\n" } else { "" }
    );
    let c = conn.as_mut().expect("opened above");
    let r = tokio::time::timeout(Duration::from_secs(40), c.send(&head, body)).await;
    match r {
        Ok(Ok(a)) => {
            if a.close || close {
                *conn = None;
            }
            Ok(a)
        }
        Ok(Err(e)) => {
            *conn = None;
            Err(e)
        }
        Err(_) => {
            *conn = None;
            bail!("timeout (40 s)")
        }
    }
}

struct Agent {
    id: String,
    key: String,
    sh: Arc<Shared>,
    saw_error: AtomicBool,
}

impl Agent {
    fn failed(&self, what: &str, why: String) {
        // Keep the error kinds few: cut the detail after the first colon.
        let kind = why.split(':').next().unwrap_or(&why).to_owned();
        self.sh.stats.error(format!("{what}: {kind}"));
        if !self.saw_error.swap(true, Ordering::Relaxed) {
            self.sh
                .stats
                .agents_with_errors
                .fetch_add(1, Ordering::Relaxed);
            eprintln!("agent {}: {what}: {why}", self.id);
        }
    }

    /// A signed request; the answer's signature is checked.
    async fn call(
        &self,
        conn: &mut Option<Conn>,
        method: &str,
        path: &str,
        body: &[u8],
        close: bool,
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        let ts = chrono::Utc::now().timestamp();
        let rid = uuid::Uuid::new_v4().to_string();
        let sig = proto::sign(&self.key, method, path, ts, &rid, body);
        let headers = format!(
            "{}: {}\r\n{}: {ts}\r\n{}: {rid}\r\n{}: {sig}\r\n",
            proto::AGENT_ID,
            self.id,
            proto::TIMESTAMP,
            proto::REQUEST_ID,
            proto::SIGNATURE
        );
        let a = request(&self.sh, conn, method, path, &headers, body, close).await?;
        let their_ts = a
            .headers
            .get(proto::TIMESTAMP)
            .and_then(|t| t.parse::<i64>().ok());
        let their_sig = a.headers.get(proto::SIGNATURE).cloned().unwrap_or_default();
        let bare = path.split('?').next().unwrap_or(path);
        let ok = their_ts.is_some_and(|t| {
            [path, bare]
                .iter()
                .any(|p| proto::sign(&self.key, "RESPONSE", p, t, &rid, &a.body) == their_sig)
        });
        if !ok {
            bail!(
                "status {}, answer not signed with this node's key: {}",
                a.status,
                String::from_utf8_lossy(&a.body)
            );
        }
        Ok((a.status, a.body))
    }

    async fn heartbeats(self: Arc<Self>) {
        let path = format!("/v1/nodes/{}/heartbeat", self.id);
        let mut conn = None;
        let mut interval = Duration::from_secs(5);
        let mut first = true;
        loop {
            let t = Instant::now();
            let r = tokio::select! {
                r = self.call(&mut conn, "POST", &path, b"{}", self.sh.heartbeat_close) => r,
                () = self.sh.stop.cancelled() => return,
            };
            let pause = match r {
                Ok((200, body)) => {
                    let st = &self.sh.stats;
                    st.heartbeats.fetch_add(1, Ordering::Relaxed);
                    if st.measuring.load(Ordering::Relaxed) {
                        st.heartbeat_us
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                    }
                    if first {
                        first = false;
                        st.connected.fetch_add(1, Ordering::Relaxed);
                    }
                    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    if let Some(ms) = v["heartbeat_interval_ms"].as_u64() {
                        interval = Duration::from_millis(ms.clamp(200, 600_000));
                    }
                    interval
                }
                Ok((status, body)) => {
                    self.failed(
                        "heartbeat",
                        format!("status {status}: {}", String::from_utf8_lossy(&body)),
                    );
                    Duration::from_secs(1)
                }
                Err(e) => {
                    self.failed("heartbeat", e.to_string());
                    Duration::from_secs(1)
                }
            };
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = self.sh.stop.cancelled() => return,
            }
        }
    }

    async fn polls(self: Arc<Self>) {
        let path = format!("/v1/nodes/{}/work-orders/next?wait=25", self.id);
        let mut conn = None;
        let mut first = true;
        loop {
            if first {
                first = false;
                self.sh.stats.polling.fetch_add(1, Ordering::Relaxed);
            }
            let r = tokio::select! {
                r = self.call(&mut conn, "GET", &path, b"", false) => r,
                () = self.sh.stop.cancelled() => return,
            };
            match r {
                Ok((204, _)) => {
                    self.sh.stats.polls.fetch_add(1, Ordering::Relaxed);
                }
                Ok((200, body)) => {
                    let got = Instant::now();
                    self.sh.stats.polls.fetch_add(1, Ordering::Relaxed);
                    self.sh.stats.orders.fetch_add(1, Ordering::Relaxed);
                    let order: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    self.answer(&mut conn, &order, got).await;
                }
                Ok((status, body)) => {
                    self.failed(
                        "long-poll",
                        format!("status {status}: {}", String::from_utf8_lossy(&body)),
                    );
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => {
                    self.failed("long-poll", e.to_string());
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Answer an order (a ping: the agent's identity), on the long-poll's connection.
    async fn answer(&self, conn: &mut Option<Conn>, order: &Value, got: Instant) {
        let Some(oid) = order["id"].as_str() else {
            self.failed("order", format!("an order without an id: {order}"));
            return;
        };
        let path = format!("/v1/work-orders/{oid}/result");
        // A ping answers with the agent's identity; the server's reconcile pass asks every
        // node for its containers (a simulated host has none); anything else is refused.
        let body = match (order["kind"].as_str(), order["payload"]["call"].as_str()) {
            (Some("ping"), _) => json!({ "ok": true, "result": { "pong": true, "node": self.id } }),
            (Some("runtime"), call) => {
                self.sh.stats.runtime_orders.fetch_add(1, Ordering::Relaxed);
                if call == Some("list_containers") {
                    json!({ "ok": true, "result": { "value": [] } })
                } else {
                    json!({ "ok": false, "result": { "kind": "invalid", "message": "a simulated agent runs no containers" } })
                }
            }
            _ => json!({ "ok": false, "result": { "error": "unknown order kind" } }),
        }
        .to_string();
        match self.call(conn, "POST", &path, body.as_bytes(), false).await {
            Ok((200, _)) => {
                let done = Instant::now();
                self.sh.stats.results.fetch_add(1, Ordering::Relaxed);
                if let Some(seq) = order["payload"]["seq"].as_u64() {
                    let w = self
                        .sh
                        .waiters
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&seq);
                    if let Some(w) = w {
                        let _ = w.send((got, done));
                    }
                }
            }
            Ok((status, body)) => self.failed(
                "result",
                format!("status {status}: {}", String::from_utf8_lossy(&body)),
            ),
            Err(e) => self.failed("result", e.to_string()),
        }
    }
}

/// An admin request on a kept connection.
async fn admin(
    sh: &Shared,
    conn: &mut Option<Conn>,
    token: &str,
    method: &str,
    path: &str,
    body: &Value,
) -> anyhow::Result<(u16, Value)> {
    let b = body.to_string();
    let a = request(
        sh,
        conn,
        method,
        path,
        &format!("authorization: Bearer {token}\r\n"),
        b.as_bytes(),
        false,
    )
    .await?;
    Ok((
        a.status,
        serde_json::from_slice(&a.body).unwrap_or(Value::Null),
    ))
}

fn rss_kb(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn open_files(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((q * sorted.len() as f64) as usize).min(sorted.len() - 1)]
}

/// Raise the soft open-files limit to the hard one: each agent holds two sockets.
fn raise_nofile() -> u64 {
    #[cfg(unix)]
    {
        use rustix::process::{Resource, getrlimit, setrlimit};
        let mut l = getrlimit(Resource::Nofile);
        if let Some(max) = l.maximum {
            l.current = Some(max);
        }
        let _ = setrlimit(Resource::Nofile, l);
        getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
    }
    #[cfg(not(unix))]
    {
        u64::MAX
    }
}

fn main() -> anyhow::Result<std::process::ExitCode> {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let max = args.max_time;
    rt.block_on(async move {
        match tokio::time::timeout(max, run(args)).await {
            Ok(r) => r,
            Err(_) => {
                eprintln!(
                    "agents_load: gave up after {}",
                    humantime::format_duration(max)
                );
                Ok(std::process::ExitCode::FAILURE)
            }
        }
    })
}

async fn run(args: Args) -> anyhow::Result<std::process::ExitCode> {
    let nofile = raise_nofile();
    let per_agent = if args.heartbeat_close { 1 } else { 2 };
    let need = (args.agents * per_agent + 64) as u64;
    if nofile < need {
        bail!(
            "{} agents need about {need} open files here and the limit is {nofile} (ulimit -Hn); use fewer agents, --heartbeat-close, or raise the hard limit",
            args.agents
        );
    }
    let url = url::Url::parse(&args.url).context("--url")?;
    if url.scheme() != "http" {
        bail!("--url: plain http:// only");
    }
    let host = format!(
        "{}:{}",
        url.host_str().unwrap_or("127.0.0.1"),
        url.port_or_known_default().unwrap_or(80)
    );
    let addr = tokio::net::lookup_host(&host)
        .await?
        .next()
        .context("--url: no address")?;
    let sh = Arc::new(Shared {
        addr,
        host,
        stats: Stats::default(),
        waiters: Mutex::new(HashMap::new()),
        heartbeat_close: args.heartbeat_close,
        stop: CancellationToken::new(),
    });
    let pid = args.server_pid;
    let report_server = |label: &str| {
        if let Some(p) = pid {
            println!(
                "server_rss_kb_{label} {}",
                rss_kb(p).map_or("?".into(), |v| v.to_string())
            );
            println!(
                "server_open_files_{label} {}",
                open_files(p).map_or("?".into(), |v| v.to_string())
            );
        }
        rss_kb(pid.unwrap_or(0))
    };
    let rss_fresh = report_server("fresh");

    // 1. Register the nodes, 16 at a time.
    let t = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let keys = Arc::new(Mutex::new(vec![String::new(); args.agents]));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let (sh, next, keys, token, prefix, n) = (
            sh.clone(),
            next.clone(),
            keys.clone(),
            args.admin_token.clone(),
            args.prefix.clone(),
            args.agents,
        );
        workers.spawn(async move {
            let mut conn = None;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return anyhow::Ok(());
                }
                let (status, v) = admin(
                    &sh,
                    &mut conn,
                    &token,
                    "POST",
                    "/v1/nodes",
                    &json!({ "id": format!("{prefix}-{i}") }),
                )
                .await?;
                let Some(tok) = v["token"].as_str().filter(|_| status == 201) else {
                    bail!("registering {prefix}-{i}: {status} {v}");
                };
                keys.lock().unwrap_or_else(|e| e.into_inner())[i] =
                    hex::encode(sha2::Sha256::digest(tok.as_bytes()));
            }
        });
    }
    while let Some(r) = workers.join_next().await {
        r??;
    }
    println!("register_secs {:.1}", t.elapsed().as_secs_f64());
    let rss_registered = report_server("registered");

    // 2. Start the agents, spread over the ramp.
    let keys = std::mem::take(&mut *keys.lock().unwrap_or_else(|e| e.into_inner()));
    let mut agents = tokio::task::JoinSet::new();
    let gap = args
        .ramp
        .checked_div(args.agents as u32)
        .unwrap_or_default();
    let t = Instant::now();
    for (n, key) in keys.into_iter().enumerate() {
        let a = Arc::new(Agent {
            id: format!("{}-{n}", args.prefix),
            key,
            sh: sh.clone(),
            saw_error: AtomicBool::new(false),
        });
        agents.spawn(a.clone().heartbeats());
        agents.spawn(a.polls());
        if !gap.is_zero() {
            tokio::time::sleep_until((t + gap * (n as u32 + 1)).into()).await;
        }
    }
    while sh.stats.connected.load(Ordering::Relaxed) < args.agents {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "agents_connected {} ({:.1} s after the first started)",
        args.agents,
        t.elapsed().as_secs_f64()
    );

    // 3. Idle: settle, memory, then the request rate over the window.
    tokio::time::sleep(args.settle).await;
    let rss_idle = report_server("idle_agents");
    if let (Some(idle), Some(fresh), Some(reg)) = (rss_idle, rss_fresh, rss_registered) {
        println!(
            "server_kb_per_idle_agent {:.1} (from the fresh server; {:.1} of it after registering)",
            (idle as f64 - fresh as f64) / args.agents as f64,
            (idle as f64 - reg as f64) / args.agents as f64
        );
    }
    let st = &sh.stats;
    let count = || {
        (
            st.heartbeats.load(Ordering::Relaxed),
            st.polls.load(Ordering::Relaxed),
        )
    };
    let (h0, p0) = count();
    st.measuring.store(true, Ordering::Relaxed);
    let t = Instant::now();
    tokio::time::sleep(args.window).await;
    st.measuring.store(false, Ordering::Relaxed);
    let secs = t.elapsed().as_secs_f64();
    let (h1, p1) = count();
    println!(
        "heartbeats_per_sec {:.0} (long-polls answered {:.0}/s, over {secs:.0} s)",
        (h1 - h0) as f64 / secs,
        (p1 - p0) as f64 / secs
    );
    let mut hb: Vec<f64> = st
        .heartbeat_us
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|&us| us as f64 / 1000.0)
        .collect();
    hb.sort_by(f64::total_cmp);
    println!(
        "heartbeat_round_trip_ms p50 {:.1} p99 {:.1} max {:.1} (n={})",
        percentile(&hb, 0.5),
        percentile(&hb, 0.99),
        hb.last().copied().unwrap_or(f64::NAN),
        hb.len()
    );

    // 4. Orders, one at a time, each to a random node.
    let mut conn = None;
    let mut answered = Vec::new();
    let mut received = Vec::new();
    let mut lost = 0;
    for seq in 0..args.orders as u64 {
        let node = format!("{}-{}", args.prefix, rand::random_range(0..args.agents));
        let (tx, rx) = tokio::sync::oneshot::channel();
        sh.waiters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(seq, tx);
        let t0 = Instant::now();
        let (status, v) = admin(
            &sh,
            &mut conn,
            &args.admin_token,
            "POST",
            &format!("/v1/nodes/{node}/work-orders"),
            &json!({ "kind": "ping", "payload": { "seq": seq } }),
        )
        .await?;
        if status != 201 {
            bail!("queueing an order for {node}: {status} {v}");
        }
        match tokio::time::timeout(Duration::from_secs(10), rx).await {
            Ok(Ok((got, done))) => {
                received.push(got.duration_since(t0).as_secs_f64() * 1000.0);
                answered.push(done.duration_since(t0).as_secs_f64() * 1000.0);
            }
            _ => {
                lost += 1;
                eprintln!("order {seq} for {node} was not answered within 10 s");
            }
        }
    }
    for v in [&mut answered, &mut received] {
        v.sort_by(f64::total_cmp);
    }
    println!(
        "order_queued_to_answered_ms p50 {:.1} p99 {:.1} max {:.1} (n={}, not answered {lost})",
        percentile(&answered, 0.5),
        percentile(&answered, 0.99),
        answered.last().copied().unwrap_or(f64::NAN),
        answered.len()
    );
    println!(
        "order_queued_to_received_ms p50 {:.1} p99 {:.1}",
        percentile(&received, 0.5),
        percentile(&received, 0.99)
    );
    report_server("end");

    sh.stop.cancel();
    while agents.join_next().await.is_some() {}
    let errs = st.errors.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let bad = st.agents_with_errors.load(Ordering::Relaxed);
    println!(
        "orders_received {} (of them runtime calls from the server's reconcile pass: {})",
        st.orders.load(Ordering::Relaxed),
        st.runtime_orders.load(Ordering::Relaxed)
    );
    println!("agents_with_errors {bad}");
    for (kind, n) in &errs {
        println!("error {n} × {kind}");
    }
    Ok(if bad == 0 && lost == 0 {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}
