//! Run with: `cargo run --example loadcheck -- --target 127.0.0.1:5058 --host stage-dev-app.localhost --fresh 2 --kept 2 --duration 20s`
//!
//! A load checker for zero-downtime claims: it sends `GET` requests with a chosen `Host` through
//! a proxy, on fresh connections (`--fresh N` workers) and kept-alive ones (`--kept N`), never
//! retries, and records every request's outcome: the body of a 2xx (the version that answered),
//! another status, a reset, a connection closed before answering, a timeout. It stops after
//! `--duration` or `--requests`, prints one JSON summary on stdout (requests, failures by kind,
//! answers by version, when answers switched from the first version) and a line on stderr, and
//! exits 1 when any request failed. Start it, then deploy (`skipper deploy …:v2`) in another
//! shell.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};

#[path = "../tests/common/load.rs"]
#[allow(dead_code, reason = "shared with the tests, which use other parts")]
mod load;

use load::{Load, LoadSettings, Summary};

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
            other => bail!(
                "unknown flag {other:?} (--target, --host, --path, --fresh, --kept, --timeout, --duration, --requests)"
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
    let summary = Summary::of(&load.finish());
    eprintln!("{}", summary.line());
    println!("{}", summary.json());
    if summary.failures > 0 {
        std::process::exit(1);
    }
    Ok(())
}
