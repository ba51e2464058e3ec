//! `skipper`: deploy, list, roll back and remove containers on this Docker host.
//!
//! A thin binary: it parses arguments and the config file, builds the concrete backends
//! (Docker, SQLite, Nginx Proxy Manager, webhooks), hands them to `skipper_core::Engine`, and
//! prints what the engine returns. No deploy logic lives here.

mod app;
mod cli;
mod output;
mod signals;
mod tags;
mod watch;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    app::init_tracing(cli.global.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let json = cli.global.json;
    match runtime.block_on(app::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "error": { "message": format!("{e:#}") } })
                );
            } else {
                eprintln!("error: {e:#}");
            }
            ExitCode::from(1)
        }
    }
}
