//! A load checker that never retries: workers send `GET` requests with a chosen `Host` to an
//! address, some on a fresh connection each (`Connection: close`), some on kept-alive
//! connections, and every request's outcome is recorded with its time: the body of a 200 (the
//! version that answered), another status, or what went wrong on the wire. A failed request is
//! never sent again; a kept-alive worker opens a new connection for its *next* request.
//!
//! **The one rule for kept-alive connections.** Before a request is written on a connection
//! kept from an earlier request, the worker looks at it without blocking (a non-blocking
//! `peek`): when the server has already closed it (end of stream, a reset) or sent something
//! unasked, the connection is dropped and this request goes on a new connection. Nothing was
//! written, so this is not a retry: it is what a real client does (hyper's pool drops a
//! connection once it has seen the server close it, browsers likewise), and a checker that
//! wrote into a connection the server had already closed would count a failure no real client
//! sees. These drops are counted ([`Summary::stale_dropped`]). Every request that *was* written
//! and got no whole answer (reset, closed, timeout) is a failure, whatever the reason; in
//! particular a server that closes a kept-alive connection while a request is on its way (the
//! race HTTP/1.1 leaves open, RFC 9112 §9.6) costs a failure here.
//!
//! Used by `tests/caddy_real.rs` and by `examples/loadcheck.rs` (the same file, by `#[path]`).

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

/// What to load and how.
#[derive(Debug, Clone)]
pub(crate) struct LoadSettings {
    /// `host:port` to connect to (the proxy).
    pub(crate) target: SocketAddr,
    /// The `Host` header (the routed domain).
    pub(crate) host: String,
    /// The path requested.
    pub(crate) path: String,
    /// Workers that open a connection per request.
    pub(crate) fresh: usize,
    /// Workers that keep their connection alive between requests.
    pub(crate) kept: usize,
    /// Time limit of each connect, write and read.
    pub(crate) timeout: Duration,
    /// Stop once this many requests were sent (all workers together), if set.
    pub(crate) max_requests: Option<usize>,
}

/// Which kind of connection a request went on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Conn {
    /// A new connection for this request.
    Fresh,
    /// A kept-alive connection (new or reused).
    Kept,
}

/// What one request got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// 2xx, with this (trimmed) body: the version that answered.
    Answer(String),
    /// Another status.
    Status(u16),
    /// The connection was reset.
    Reset,
    /// The connection closed before a whole answer came.
    Closed,
    /// No answer in time.
    Timeout,
    /// The connection was refused.
    Refused,
    /// Any other failure, in words.
    Other(String),
}

impl Outcome {
    /// The failure's kind, `None` for an answer.
    pub(crate) fn failure(&self) -> Option<String> {
        Some(match self {
            Self::Answer(_) => return None,
            Self::Status(s) => format!("status {s}"),
            Self::Reset => "reset".into(),
            Self::Closed => "closed before answering".into(),
            Self::Timeout => "timeout".into(),
            Self::Refused => "refused".into(),
            Self::Other(e) => e.clone(),
        })
    }
}

/// One request: when it was sent (since the start), on what, and what it got.
#[derive(Debug, Clone)]
pub(crate) struct Sample {
    pub(crate) at: Duration,
    pub(crate) conn: Conn,
    pub(crate) outcome: Outcome,
    /// A kept-alive request that went on a new connection because the kept one was seen closed
    /// by the server before anything was written (see the module docs).
    pub(crate) dropped_stale: bool,
    /// The request went on a kept connection that had carried an earlier request.
    pub(crate) reused: bool,
}

/// A running load; [`Load::finish`] stops it and hands back every sample.
pub(crate) struct Load {
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<Vec<Sample>>>,
    started: SystemTime,
}

impl Load {
    /// Start the workers.
    pub(crate) fn start(settings: &LoadSettings) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let wall = SystemTime::now();
        let kinds = std::iter::repeat_n(Conn::Fresh, settings.fresh)
            .chain(std::iter::repeat_n(Conn::Kept, settings.kept));
        let workers = kinds
            .map(|conn| {
                let (s, stop, sent) = (settings.clone(), stop.clone(), sent.clone());
                std::thread::spawn(move || worker(&s, conn, &stop, &sent, started))
            })
            .collect();
        Self {
            stop,
            workers,
            started: wall,
        }
    }

    /// When the load started (the samples' `at` counts from here).
    pub(crate) fn started(&self) -> SystemTime {
        self.started
    }

    /// Whether every worker has stopped by itself (`max_requests` reached).
    pub(crate) fn done(&self) -> bool {
        self.workers.iter().all(JoinHandle::is_finished)
    }

    /// Stop, and every sample in the order sent.
    pub(crate) fn finish(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::SeqCst);
        let mut all: Vec<Sample> = self
            .workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_default())
            .collect();
        all.sort_by_key(|s| s.at);
        all
    }
}

fn worker(
    s: &LoadSettings,
    conn: Conn,
    stop: &AtomicBool,
    sent: &AtomicUsize,
    started: Instant,
) -> Vec<Sample> {
    let mut samples = Vec::new();
    let mut kept: Option<TcpStream> = None;
    while !stop.load(Ordering::SeqCst) {
        if s.max_requests
            .is_some_and(|max| sent.fetch_add(1, Ordering::SeqCst) >= max)
        {
            break;
        }
        let at = started.elapsed();
        let mut dropped_stale = false;
        let mut reused_conn = false;
        let outcome = match conn {
            Conn::Fresh => match connect(s) {
                Ok(mut stream) => exchange(&mut stream, s, true).0,
                Err(e) => classify(&e),
            },
            Conn::Kept => {
                // A kept connection the server has closed meanwhile is dropped before anything
                // is written on it (see the module docs).
                let reused = kept.take();
                dropped_stale = reused.is_some();
                let reused = reused.filter(still_open);
                dropped_stale &= reused.is_none();
                reused_conn = reused.is_some();
                let stream = match reused {
                    Some(stream) => Ok(stream),
                    None => connect(s),
                };
                match stream {
                    Ok(mut stream) => {
                        let (outcome, reusable) = exchange(&mut stream, s, false);
                        if reusable {
                            kept = Some(stream);
                        }
                        outcome
                    }
                    Err(e) => classify(&e),
                }
            }
        };
        samples.push(Sample {
            at,
            conn,
            outcome,
            dropped_stale,
            reused: reused_conn,
        });
    }
    samples
}

/// Whether a kept connection can carry a request: a non-blocking peek finds nothing to read
/// (`WouldBlock`). End of stream or an error means the server closed it; bytes it sent unasked
/// (a 408 before closing) make it unusable too. Nothing is written.
fn still_open(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return false;
    }
    let mut byte = [0u8; 1];
    let open = matches!(stream.peek(&mut byte), Err(e) if e.kind() == ErrorKind::WouldBlock);
    open && stream.set_nonblocking(false).is_ok()
}

fn connect(s: &LoadSettings) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&s.target, s.timeout)?;
    stream.set_read_timeout(Some(s.timeout))?;
    stream.set_write_timeout(Some(s.timeout))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// One request and its answer; whether the connection may carry another.
fn exchange(stream: &mut TcpStream, s: &LoadSettings, close: bool) -> (Outcome, bool) {
    let connection = if close { "close" } else { "keep-alive" };
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: {connection}\r\nUser-Agent: skipper-loadcheck\r\n\r\n",
        s.path, s.host
    );
    if let Err(e) = stream.write_all(request.as_bytes()) {
        return (classify(&e), false);
    }
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match stream.read(&mut chunk) {
            Ok(0) => return (Outcome::Closed, false),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return (classify(&e), false),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status: Option<u16> = head.split_whitespace().nth(1).and_then(|v| v.parse().ok());
    let Some(status) = status else {
        return (Outcome::Other("not an HTTP answer".into()), false);
    };
    let header = |name: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
    };
    let length: Option<usize> = header("content-length:").and_then(|v| v.parse().ok());
    let server_closes = header("connection:").is_some_and(|v| v == "close");
    let mut body = buf[head_end..].to_vec();
    match length {
        Some(len) => {
            while body.len() < len {
                match stream.read(&mut chunk) {
                    Ok(0) => return (Outcome::Closed, false),
                    Ok(n) => body.extend_from_slice(&chunk[..n]),
                    Err(e) => return (classify(&e), false),
                }
            }
        }
        None => {
            // No length: the body ends with the connection.
            if let Err(e) = stream.read_to_end(&mut body) {
                return (classify(&e), false);
            }
        }
    }
    let outcome = if (200..300).contains(&status) {
        Outcome::Answer(String::from_utf8_lossy(&body).trim().to_owned())
    } else {
        Outcome::Status(status)
    };
    (outcome, !close && !server_closes && length.is_some())
}

fn classify(e: &std::io::Error) -> Outcome {
    match e.kind() {
        ErrorKind::ConnectionReset | ErrorKind::BrokenPipe | ErrorKind::ConnectionAborted => {
            Outcome::Reset
        }
        ErrorKind::UnexpectedEof => Outcome::Closed,
        ErrorKind::TimedOut | ErrorKind::WouldBlock => Outcome::Timeout,
        ErrorKind::ConnectionRefused => Outcome::Refused,
        _ => Outcome::Other(e.to_string()),
    }
}

/// What a run adds up to.
#[derive(Debug, Clone, Default)]
pub(crate) struct Summary {
    pub(crate) requests: usize,
    pub(crate) failures: usize,
    /// Failures by kind, and by connection kind (`fresh: reset`).
    pub(crate) failure_kinds: BTreeMap<String, usize>,
    /// Answers by body (version).
    pub(crate) versions: BTreeMap<String, usize>,
    /// The version that answered first.
    pub(crate) first_version: Option<String>,
    /// When another version first answered (since the start).
    pub(crate) switched_at: Option<Duration>,
    /// When the first version last answered.
    pub(crate) last_first_at: Option<Duration>,
    /// Answers of the first version sent after another version had answered.
    pub(crate) first_after_switch: usize,
    /// Kept connections dropped before a request because the server had closed them (not
    /// failures, nothing was sent; see the module docs).
    pub(crate) stale_dropped: usize,
    /// How long the run took (the last request's start).
    pub(crate) duration: Duration,
}

impl Summary {
    /// Add up `samples` (in the order sent).
    pub(crate) fn of(samples: &[Sample]) -> Self {
        let mut s = Self {
            requests: samples.len(),
            ..Self::default()
        };
        for sample in samples {
            s.duration = s.duration.max(sample.at);
            s.stale_dropped += usize::from(sample.dropped_stale);
            match &sample.outcome {
                Outcome::Answer(body) => {
                    *s.versions.entry(body.clone()).or_default() += 1;
                    let first = s.first_version.get_or_insert_with(|| body.clone());
                    if body == first {
                        s.last_first_at = Some(sample.at);
                        if s.switched_at.is_some() {
                            s.first_after_switch += 1;
                        }
                    } else if s.switched_at.is_none() {
                        s.switched_at = Some(sample.at);
                    }
                }
                other => {
                    s.failures += 1;
                    let kind = other.failure().unwrap_or_default();
                    let conn = match sample.conn {
                        Conn::Fresh => "fresh",
                        Conn::Kept => "kept-alive",
                    };
                    *s.failure_kinds
                        .entry(format!("{conn}: {kind}"))
                        .or_default() += 1;
                }
            }
        }
        s
    }

    /// Failures with an HTTP status (a missing route, a stopped upstream): the ones a proxy
    /// switch done in the right order never causes.
    pub(crate) fn status_failures(&self) -> usize {
        self.failure_kinds
            .iter()
            .filter(|(k, _)| k.contains("status "))
            .map(|(_, n)| n)
            .sum()
    }

    /// How much later than the switch the first version last answered (`None` when it never
    /// answered after the switch, or there was no switch): compare with the drain.
    pub(crate) fn first_last_after_switch(&self) -> Option<Duration> {
        let (switched, last) = (self.switched_at?, self.last_first_at?);
        last.checked_sub(switched).filter(|d| !d.is_zero())
    }

    /// One line for people.
    pub(crate) fn line(&self) -> String {
        let ms = |d: Option<Duration>| d.map_or("-".into(), |d| format!("{} ms", d.as_millis()));
        format!(
            "{} requests in {:.1} s, {} failed {:?}; answers {:?}; switched at {}, first version last at {}, {} first-version answers after the switch; {} closed kept-alive connections dropped before a request",
            self.requests,
            self.duration.as_secs_f64(),
            self.failures,
            self.failure_kinds,
            self.versions,
            ms(self.switched_at),
            ms(self.last_first_at),
            self.first_after_switch,
            self.stale_dropped
        )
    }

    /// The summary as one JSON document.
    pub(crate) fn json(&self) -> serde_json::Value {
        let ms = |d: Option<Duration>| d.map(|d| d.as_millis() as u64);
        serde_json::json!({
            "requests": self.requests,
            "failures": self.failures,
            "failure_kinds": self.failure_kinds,
            "versions": self.versions,
            "first_version": self.first_version,
            "switched_at_ms": ms(self.switched_at),
            "first_version_last_at_ms": ms(self.last_first_at),
            "first_version_after_switch": self.first_after_switch,
            "first_version_last_after_switch_ms": ms(self.first_last_after_switch()),
            "stale_kept_alive_dropped": self.stale_dropped,
            "duration_ms": self.duration.as_millis() as u64,
        })
    }
}

/// Every sample as CSV (`at_ms,conn,outcome,dropped_stale,reused`, `at_ms` since the load started), for
/// lining failures up with a proxy's log.
pub(crate) fn samples_csv(samples: &[Sample]) -> String {
    let mut out = String::from("at_ms,conn,outcome,dropped_stale,reused\n");
    for s in samples {
        let outcome = match &s.outcome {
            Outcome::Answer(body) => format!("answer {}", body.replace([',', '\n'], " ")),
            other => other
                .failure()
                .unwrap_or_default()
                .replace([',', '\n'], " "),
        };
        let conn = match s.conn {
            Conn::Fresh => "fresh",
            Conn::Kept => "kept-alive",
        };
        out.push_str(&format!(
            "{:.3},{conn},{outcome},{},{}\n",
            s.at.as_secs_f64() * 1000.0,
            u8::from(s.dropped_stale),
            u8::from(s.reused)
        ));
    }
    out
}
