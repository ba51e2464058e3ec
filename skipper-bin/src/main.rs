//! `skipper`: deploy, list, roll back and remove containers on this Docker host.
//!
//! A thin binary: it parses arguments and the config file, builds the concrete backends
//! (Docker, SQLite, Nginx Proxy Manager, webhooks), hands them to `skipper_core::Engine`, and
//! prints what the engine returns. No deploy logic lives here.
//!
//! Exit codes: 0 success, 1 the operation failed or was refused, 2 a usage error (bad
//! arguments). Under `--json` stdout holds exactly one JSON document in every case, an error
//! envelope ([`output::error_json`]) for failures and usage errors alike.

mod app;
mod cli;
#[allow(
    dead_code,
    reason = "shared with skippy, which writes and runs the stacks; the server checks orders"
)]
mod compose;
mod output;
mod proto;
mod remote;
mod runtime_call;
mod server;
mod signals;
mod tags;
mod watch;

use std::process::ExitCode;

use output::{errln, outln};
use skipper_core::ErrorKind;

/// A usage error (bad arguments).
const USAGE: u8 = 2;

fn main() -> ExitCode {
    let json = json_requested(std::env::args_os().skip(1));
    let cli = match cli::Cli::parse_args() {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e, json),
    };
    let serve = match &cli.command {
        cli::Command::Serve(a) => Some(a.log_format),
        _ => None,
    };
    app::init_tracing(cli.global.verbose, serve);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            return fail(
                &anyhow::Error::from(e).context("cannot start the async runtime"),
                json,
            );
        }
    };
    let code = match runtime.block_on(app::run(cli)) {
        Ok(code) => code,
        Err(e) => fail(&e, json),
    };
    if output::stdout_failed() && code == ExitCode::SUCCESS {
        return ExitCode::from(1);
    }
    code
}

/// Whether the arguments ask for `--json` (before `--`), known before they are parsed so that
/// a usage error can be a JSON document too.
fn json_requested(args: impl IntoIterator<Item = std::ffi::OsString>) -> bool {
    args.into_iter()
        .take_while(|a| a != "--")
        .any(|a| a == "--json")
}

/// A failed command: the error envelope on stdout under `--json`, else a line on stderr; 1.
fn fail(e: &anyhow::Error, json: bool) -> ExitCode {
    if json {
        outln!(
            "{}",
            output::error_json(output::error_kind(e), &format!("{e:#}"))
        );
    } else {
        errln!("error: {e:#}");
    }
    ExitCode::from(1)
}

/// clap's error: `--help` and `--version` print to stdout and exit 0; anything else is a usage
/// error, exit 2, with the error envelope on stdout under `--json` (and clap's text on stderr).
fn usage_error(e: &clap::Error, json: bool) -> ExitCode {
    use clap::error::ErrorKind as Clap;
    if matches!(e.kind(), Clap::DisplayHelp | Clap::DisplayVersion) {
        outln!("{}", e.render().to_string().trim_end());
        return ExitCode::SUCCESS;
    }
    errln!("{}", e.render().to_string().trim_end());
    if json {
        outln!(
            "{}",
            output::error_json(ErrorKind::Invalid, &usage_message(e))
        );
    }
    ExitCode::from(USAGE)
}

/// clap's message without its `error: ` prefix, usage and tips, on one line.
fn usage_message(e: &clap::Error) -> String {
    if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        return "a command is required; see `skipper --help`".into();
    }
    let text = e.render().to_string();
    let first = text.split("\n\n").next().unwrap_or_default();
    let first = first.strip_prefix("error: ").unwrap_or(first);
    first.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    fn clap_error(args: &[&str]) -> clap::Error {
        cli::Cli::try_parse_from(std::iter::once("skipper").chain(args.iter().copied()))
            .expect_err("a usage error")
    }

    #[test]
    fn json_is_found_before_parsing() {
        let args = |a: &[&str]| a.iter().map(std::ffi::OsString::from).collect::<Vec<_>>();
        assert!(json_requested(args(&["ps", "--json", "--bogus"])));
        assert!(json_requested(args(&["--json"])));
        assert!(!json_requested(args(&["ps"])));
        assert!(!json_requested(args(&["deploy", "--", "--json"])));
    }

    #[test]
    fn usage_errors_are_one_line_without_usage_or_tips() {
        for (args, want) in [
            (
                &["deploy", "app:v1", "--port", "70000"][..],
                "invalid value '70000' for '--port <PORT>'",
            ),
            (
                &["deploy", "app:v1", "--pull", "bogus"],
                "invalid value 'bogus' for '--pull",
            ),
            (&["ps", "--bogus"], "unexpected argument '--bogus' found"),
            (
                &["deploy"],
                "the following required arguments were not provided: <IMAGE>",
            ),
            (&[], "a command is required"),
        ] {
            let msg = usage_message(&clap_error(args));
            assert!(msg.starts_with(want), "{args:?}: {msg}");
            assert!(
                !msg.contains('\n') && !msg.contains("Usage") && !msg.contains("--help'"),
                "{msg}"
            );
        }
    }
}
