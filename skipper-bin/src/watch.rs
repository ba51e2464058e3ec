//! `skipper watch`: poll the registries and deploy new tags (the rules are
//! `skipper_registry::watch`'s).

use std::collections::BTreeSet;
use std::process::ExitCode;

use anyhow::Result;
use skipper_registry::{WatchReport, WatchSettings, Watcher};

use crate::app::App;
use crate::cli::WatchArgs;
use crate::output::{errln, outln};

/// Poll once (`--once`) or until Ctrl-C / SIGTERM.
pub(crate) async fn run(app: &App, args: &WatchArgs, json: bool) -> Result<ExitCode> {
    // With a config file that names projects, watch those; otherwise every project in the store.
    let projects = (!app.config.projects.is_empty())
        .then(|| app.config.projects.keys().cloned().collect::<BTreeSet<_>>());
    let settings = WatchSettings {
        projects,
        ..WatchSettings::default()
    };
    // The engine's registry (`app::build` gives it one): the watcher is one of its controllers.
    let watcher = Watcher::with_settings(app.engine.clone(), settings)?;

    if args.once {
        let report = watcher.run_once().await?;
        print_report(&report, json);
        return Ok(exit_code(&report));
    }

    let interval = args.interval.unwrap_or(app.config.global.poll_interval);
    let jitter = args.jitter.unwrap_or(interval / 10);
    if !json {
        errln!(
            "watching every {} (Ctrl-C stops)",
            humantime::format_duration(interval)
        );
    }
    watcher
        .run_with(interval, jitter, shutdown_signal(), |report| {
            if json {
                print_report(report, true);
            } else if !report.is_quiet() || !report.skipped.is_empty() {
                print_report(report, false);
            }
        })
        .await;
    // Let a deploy in flight finish (or roll back) before exiting.
    app.engine.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

/// 0: no deploy failed; 1: a deploy failed or could not start; 2: only polling failed.
fn exit_code(report: &WatchReport) -> ExitCode {
    if report.deploy_failed() {
        ExitCode::from(1)
    } else if !report.errors.is_empty() {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

/// The report as one JSON line, or as lines for a person.
fn print_report(report: &WatchReport, json: bool) {
    if json {
        match serde_json::to_string(report) {
            Ok(line) => outln!("{line}"),
            Err(e) => errln!("error: cannot serialise the report: {e}"),
        }
        return;
    }
    for p in &report.polled {
        let what = if p.baseline {
            "first poll, baseline recorded".to_owned()
        } else {
            format!("{} new, {} re-pushed", p.new, p.repushed)
        };
        outln!(
            "polled {} ({}): {} tags, {what}",
            p.repository,
            p.projects.join(", "),
            p.tags
        );
    }
    for d in &report.deployed {
        outln!(
            "deployed {}/{} {} ({}), deployment {}",
            d.project,
            d.stage,
            d.tag,
            d.change,
            d.deployment_id
        );
    }
    for a in &report.announced {
        outln!(
            "announced {}/{} {} ({}): {}",
            a.project,
            a.stage,
            a.tag,
            a.change,
            a.reason
        );
    }
    for s in &report.skipped {
        let at = match (&s.stage, &s.tag) {
            (Some(stage), Some(tag)) => format!("{}/{stage} {tag}", s.project),
            (Some(stage), None) => format!("{}/{stage}", s.project),
            (None, Some(tag)) => format!("{} {tag}", s.project),
            (None, None) => s.project.clone(),
        };
        outln!("skipped {at}: {}", s.reason);
    }
    for e in &report.errors {
        let at = match (&e.stage, &e.tag) {
            (Some(stage), Some(tag)) => format!("{}/{stage} {tag}", e.project),
            _ => e.project.clone(),
        };
        match &e.deployment_id {
            Some(id) => outln!(
                "deploy FAILED {at}, rolled back, deployment {id}: {} ({})",
                e.message,
                e.kind
            ),
            None => outln!("error {at}: {} ({})", e.message, e.kind),
        }
    }
    outln!("{}", report.summary());
}
