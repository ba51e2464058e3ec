//! Run with: `cargo run --example loadcheck -- --target 127.0.0.1:5058 --host stage-dev-app.localhost --fresh 2 --kept 2 --duration 20s`
//!
//! A load checker for zero-downtime claims: it sends `GET` requests with a chosen `Host` through
//! a proxy, on fresh connections (`--fresh N` workers) and kept-alive ones (`--kept N`), never
//! retries, and records every request's outcome: the body of a 2xx (the version that answered),
//! another status, a reset, a connection closed before answering, a timeout. It stops after
//! `--duration` or `--requests`, prints one JSON summary on stdout (requests, failures by kind,
//! answers by version, when answers switched from the first version) and a line on stderr, and
//! exits 1 when any request failed. `--samples FILE` writes every request's outcome as CSV.
//! A kept-alive connection the server has already closed is dropped before a request is written
//! on it: nothing was sent, so that is not a retry (the rule is in `tests/common/load.rs`).
//! Start it, then deploy (`skipper deploy …:v2`) in another shell.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};

#[path = "../tests/common/load.rs"]
#[allow(dead_code, reason = "shared with the tests, which use other parts")]
mod load;

use load::{Load, LoadSettings, Summary, samples_csv};

fn main() -> anyhow::Result<()> {
    let mut settings = LoadSettings {
        target: "127.0.0.1:80".parse()?,
        host: "localhost".into(),
        path: "/".into(),
        fresh: 1,
        kept: 1,
        timeout: Duration::from_secs(5),
        max_requests: None,
    };
    let mut duration = Duration::from_secs(10);
    let mut samples_file: Option<std::path::PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--target" => settings.target = value()?.parse().context("--target host:port")?,
            "--host" => settings.host = value()?,
            "--path" => settings.path = value()?,
            "--fresh" => settings.fresh = value()?.parse().context("--fresh N")?,
            "--kept" => settings.kept = value()?.parse().context("--kept N")?,
            "--timeout" => settings.timeout = humantime::parse_duration(&value()?)?,
            "--duration" => duration = humantime::parse_duration(&value()?)?,
            "--requests" => settings.max_requests = Some(value()?.parse().context("--requests N")?),
            "--samples" => samples_file = Some(value()?.into()),
            other => bail!(
                "unknown flag {other:?} (--target, --host, --path, --fresh, --kept, --timeout, --duration, --requests, --samples)"
            ),
        }
    }
    if settings.fresh + settings.kept == 0 {
        bail!("no workers: give --fresh or --kept");
    }
    let load = Load::start(&settings);
    let started = Instant::now();
    while started.elapsed() < duration && !load.done() {
        #[allow(
            clippy::disallowed_methods,
            reason = "a plain thread program, no async runtime"
        )]
        std::thread::sleep(Duration::from_millis(20));
    }
    let started = load.started();
    let samples = load.finish();
    if let Some(path) = &samples_file {
        std::fs::write(path, samples_csv(&samples))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let summary = Summary::of(&samples);
    eprintln!("{}", summary.line());
    let mut json = summary.json();
    json["started_unix_ms"] = started
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
        .into();
    println!("{json}");
    if summary.failures > 0 {
        std::process::exit(1);
    }
    Ok(())
}
