//! What the CLI prints: short human text on a terminal, or exactly one JSON document.
//!
//! Everything goes through [`outln!`] (stdout) and [`errln!`] (stderr), never `println!`: a
//! closed pipe (`skipper history | head -1`) ends the output quietly instead of panicking.
//! Tables fit [`width`] columns.

use std::fmt;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::Utc;
use serde_json::{Value, json};
use skipper_core::{DeployStatus, Deployment, ErrorKind, ImageRef, Instance, ReconcileReport};

/// Set once stdout is closed (or failed): later output is dropped.
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);
/// Set when writing stdout failed for a reason other than a closed pipe.
static STDOUT_FAILED: AtomicBool = AtomicBool::new(false);

/// `println!` that never panics: a closed stdout (the reader went away) drops this and all
/// later output; any other write error is reported once on stderr and makes the exit code 1.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format_args!($($arg)*))
    };
}
/// `eprintln!` that never panics (stderr may be a closed pipe too: `2>&1 | head`).
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::output::write_stderr(format_args!($($arg)*))
    };
}
pub(crate) use {errln, outln};

/// One line on stdout; see [`outln!`].
pub(crate) fn write_stdout(args: fmt::Arguments<'_>) {
    if STDOUT_CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    let written = out
        .write_fmt(args)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    if let Err(e) = written {
        STDOUT_CLOSED.store(true, Ordering::Relaxed);
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            STDOUT_FAILED.store(true, Ordering::Relaxed);
            errln!("error: cannot write to stdout: {e}");
        }
    }
}

/// One line on stderr; errors are ignored (there is nowhere left to report them).
pub(crate) fn write_stderr(args: fmt::Arguments<'_>) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_fmt(args).and_then(|()| err.write_all(b"\n"));
}

/// Whether writing stdout failed other than by the reader closing it.
pub(crate) fn stdout_failed() -> bool {
    STDOUT_FAILED.load(Ordering::Relaxed)
}

/// The width tables fit: `$COLUMNS` when it is a number (at least 20), else 80.
pub(crate) fn width() -> usize {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.trim().parse::<usize>().ok())
        .filter(|&c| c >= 20)
        .unwrap_or(80)
}

/// The error envelope every failure document carries: `status` is `"failed"` and `error` has
/// `step` (the deploy step, else null), `kind` (an [`ErrorKind`] name), `message` and `logs`.
/// A document that is only an error (a usage error, `ps` failing, `rm` of an unknown id) is
/// exactly this.
pub(crate) fn error_json(kind: ErrorKind, message: &str) -> Value {
    json!({
        "status": "failed",
        "error": { "step": null, "kind": kind.as_str(), "message": message, "logs": [] },
    })
}

/// The kind of an error from a command: the first typed error in its chain (the engine's, a
/// registry's, NPM's), else `invalid` (the CLI's own checks of its input).
pub(crate) fn error_kind(e: &anyhow::Error) -> ErrorKind {
    error_kind_or(e, ErrorKind::Invalid)
}

/// The kind of the first typed error in `e`'s chain, else `otherwise`.
pub(crate) fn error_kind_or(e: &anyhow::Error, otherwise: ErrorKind) -> ErrorKind {
    e.chain()
        .find_map(|c| {
            c.downcast_ref::<skipper_core::Error>()
                .map(skipper_core::Error::kind)
                .or_else(|| {
                    c.downcast_ref::<skipper_registry::RegistryError>()
                        .map(skipper_registry::RegistryError::kind)
                })
                .or_else(|| {
                    c.downcast_ref::<skipper_npm::NpmError>()
                        .map(skipper_npm::NpmError::kind)
                })
        })
        .unwrap_or(otherwise)
}

/// A deploy or rollback, as JSON.
pub(crate) fn deployment_json(
    d: &Deployment,
    instance: Option<&Instance>,
    url: Option<&str>,
) -> Value {
    json!({
        "deploy_id": d.id,
        "status": d.status.as_str(),
        "project": d.project,
        "stage": d.stage,
        "image": d.image.to_string(),
        "tag": d.tag,
        "digest": d.digest,
        "trigger": d.trigger,
        "instance": instance.map(|i| json!({
            "id": i.id,
            "container_id": i.container_id,
            "container_name": i.container_name,
            "address": i.address,
            "domain": i.domain,
        })),
        "url": url,
        "replaced": d.replaced,
        "error": d.error.as_ref().map(|e| json!({
            "step": e.step.as_str(),
            "kind": e.kind.as_str(),
            "message": e.message,
            "logs": e.logs,
        })),
        "steps": d.steps.iter().map(|s| json!({
            "step": s.step.as_str(),
            "status": s.status,
            "message": s.message,
            "at": s.at,
        })).collect::<Vec<_>>(),
        "started_at": d.started_at,
        "finished_at": d.finished_at,
    })
}

/// What a refused deploy or rollback was asked to do.
pub(crate) struct Refused<'a> {
    /// The project, when known (an invalid image names none).
    pub(crate) project: Option<&'a str>,
    pub(crate) stage: &'a str,
    /// The image as parsed, else as given (a rollback names none).
    pub(crate) image: Option<&'a ImageRef>,
    pub(crate) input: Option<&'a str>,
    /// `manual` or `rollback`.
    pub(crate) trigger: &'a str,
}

/// A refusal before any deploy started: the error envelope ([`error_json`]) with every field of
/// [`deployment_json`], so a script reads one shape whether the deploy ran or not.
pub(crate) fn refusal_json(r: &Refused<'_>, kind: ErrorKind, message: &str) -> Value {
    let image = r.image.map(ToString::to_string);
    json!({
        "deploy_id": null,
        "status": "failed",
        "project": r.project,
        "stage": r.stage,
        "image": image.as_deref().or(r.input),
        "tag": r.image.and_then(ImageRef::tag),
        "digest": r.image.and_then(ImageRef::digest),
        "trigger": r.trigger,
        "instance": null,
        "url": null,
        "replaced": [],
        "error": { "step": "validate", "kind": kind.as_str(), "message": message, "logs": [] },
        "steps": [],
        "started_at": null,
        "finished_at": null,
    })
}

/// An instance, as JSON.
pub(crate) fn instance_json(i: &Instance) -> Value {
    json!({
        "id": i.id,
        "project": i.project,
        "stage": i.stage,
        "image": i.image.to_string(),
        "tag": i.tag,
        "digest": i.digest,
        "state": i.state.as_str(),
        "active": i.active,
        "address": i.address,
        "domain": i.domain,
        "container_id": i.container_id,
        "container_name": i.container_name,
        "created_at": i.created_at,
    })
}

/// Print a deploy's outcome for a person.
pub(crate) fn print_deployment(
    d: &Deployment,
    instance: Option<&Instance>,
    url: Option<&str>,
    took: Duration,
) {
    let secs = took.as_secs_f64();
    match d.status {
        DeployStatus::Succeeded => {
            outln!(
                "deployed {} to {}/{} in {secs:.1}s",
                d.image.familiar(),
                d.project,
                d.stage
            );
            if let Some(i) = instance {
                outln!("  instance  {}  ({})", i.id, i.container_name);
                if let Some(a) = &i.address {
                    outln!("  address   http://{a}");
                }
                outln!("  domain    {}", i.domain);
            }
            if let Some(u) = url {
                outln!("  url       {u}");
            }
            if !d.replaced.is_empty() {
                outln!("  replaced  {}", d.replaced.join(", "));
            }
        }
        _ => {
            let e = d.error.as_ref();
            let step = e.map_or("?", |e| e.step.as_str());
            let kind = e.map_or("?", |e| e.kind.as_str());
            errln!(
                "deploy of {} to {}/{} failed at step {step} ({kind}) after {secs:.1}s",
                d.image.familiar(),
                d.project,
                d.stage
            );
            if let Some(e) = e {
                errln!("  cause: {}", e.message);
                if !e.logs.is_empty() {
                    errln!("  last log lines of the new container:");
                    for l in &e.logs {
                        errln!("    | {l}");
                    }
                }
            }
            errln!("  rolled back; the previous version (if any) keeps serving");
        }
    }
}

fn age(i: &Instance) -> String {
    let secs = (Utc::now() - i.created_at).num_seconds().max(0) as u64;
    let d = Duration::from_secs(secs);
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86400 => format!("{}h", secs / 3600),
        _ => {
            humantime::format_duration(Duration::from_secs(d.as_secs() / 86400 * 86400)).to_string()
        }
    }
}

/// Print instances as a table that fits [`width`].
pub(crate) fn print_instances(list: &[Instance]) {
    for line in instances_table(list, width()) {
        outln!("{line}");
    }
}

/// The `ps` table, every line at most `width` columns: the domain is cut first (with `…`;
/// `--json` has it whole), then the tag and the stage; a narrow terminal loses the domain.
pub(crate) fn instances_table(list: &[Instance], width: usize) -> Vec<String> {
    if list.is_empty() {
        return vec!["no instances".into()];
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|i| {
            vec![
                i.id.clone(),
                format!("{}/{}", i.project, i.stage),
                i.tag.clone(),
                format!("{}{}", i.state, if i.active { " *" } else { "" }),
                i.address.clone().unwrap_or_else(|| "-".into()),
                age(i),
                i.domain.clone(),
            ]
        })
        .collect();
    const ID: usize = 0;
    const STAGE: usize = 1;
    const TAG: usize = 2;
    const DOMAIN: usize = 6;
    let mut lines = Table {
        header: &["ID", "STAGE", "TAG", "STATE", "ADDRESS", "AGE", "DOMAIN"],
        rows,
        plan: &[
            Fit::Cut(DOMAIN, 24),
            Fit::Cut(TAG, 16),
            Fit::Cut(STAGE, 20),
            Fit::Cut(DOMAIN, 16),
            Fit::Prefix(ID, 8),
            Fit::Cut(DOMAIN, 10),
            Fit::Cut(TAG, 12),
            Fit::Cut(STAGE, 14),
            Fit::Drop(DOMAIN),
            Fit::Cut(TAG, 8),
            Fit::Cut(STAGE, 10),
        ],
    }
    .render(width);
    if list.iter().any(|i| i.active) {
        lines.push(fit_line("(* routes the stage's domain)", width));
    }
    lines
}

/// How a [`Table`] gives up width, step by step, until its lines fit.
#[derive(Debug, Clone, Copy)]
enum Fit {
    /// Cut the column's cells at their end (with `…`) down to no less than this width.
    Cut(usize, usize),
    /// Shorten the column's cells to a prefix of no less than this width, without `…` (an id
    /// prefix still names the instance).
    Prefix(usize, usize),
    /// Leave the column out.
    Drop(usize),
}

/// How a column's cells are cut to its width.
#[derive(Debug, Clone, Copy)]
enum Style {
    End,
    Prefix,
}

/// A table of left-aligned columns, two spaces apart.
struct Table<'a> {
    header: &'a [&'a str],
    rows: Vec<Vec<String>>,
    plan: &'a [Fit],
}

impl Table<'_> {
    /// The header and the rows, each line at most `width` columns (after the plan, any line
    /// still too long is cut).
    fn render(&self, width: usize) -> Vec<String> {
        let n = self.header.len();
        let mut widths: Vec<usize> = (0..n)
            .map(|c| {
                self.rows
                    .iter()
                    .map(|r| r[c].chars().count())
                    .chain([self.header[c].len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut shown = vec![true; n];
        let mut style = vec![Style::End; n];
        let total = |widths: &[usize], shown: &[bool]| {
            let cols: Vec<usize> = (0..n).filter(|&c| shown[c]).map(|c| widths[c]).collect();
            cols.iter().sum::<usize>() + 2 * cols.len().saturating_sub(1)
        };
        for step in self.plan {
            let excess = total(&widths, &shown).saturating_sub(width);
            if excess == 0 {
                break;
            }
            let (c, min, how) = match *step {
                Fit::Cut(c, min) => (c, min, Style::End),
                Fit::Prefix(c, min) => (c, min, Style::Prefix),
                Fit::Drop(c) => {
                    shown[c] = false;
                    continue;
                }
            };
            let min = min.max(self.header[c].len());
            widths[c] = widths[c].saturating_sub(excess).max(min).min(widths[c]);
            style[c] = how;
        }
        let header: Vec<String> = self.header.iter().map(|h| (*h).to_owned()).collect();
        std::iter::once(&header)
            .chain(&self.rows)
            .map(|cells| {
                let mut line = String::new();
                for c in (0..n).filter(|&c| shown[c]) {
                    let cell = match style[c] {
                        Style::End => truncate(&cells[c], widths[c]),
                        Style::Prefix => cells[c].chars().take(widths[c]).collect(),
                    };
                    if !line.is_empty() {
                        line.push_str("  ");
                    }
                    line.push_str(&format!("{cell:<w$}", w = widths[c]));
                }
                fit_line(line.trim_end(), width)
            })
            .collect()
    }
}

/// `line`, cut to `width` columns (with `…`) if longer.
fn fit_line(line: &str, width: usize) -> String {
    truncate(line, width)
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else if n == 0 {
        String::new()
    } else {
        format!("{}…", s.chars().take(n - 1).collect::<String>())
    }
}

/// Print deployments as a table that fits [`width`].
pub(crate) fn print_history(list: &[Deployment]) {
    for line in history_table(list, width()) {
        outln!("{line}");
    }
}

/// The `history` table, newest first, every line at most `width` columns: the outcome is cut
/// first (`--json` has the whole error), then the tag and the stage.
pub(crate) fn history_table(list: &[Deployment], width: usize) -> Vec<String> {
    if list.is_empty() {
        return vec!["no deployments".into()];
    }
    let rows = list
        .iter()
        .map(|d| {
            let outcome = match &d.error {
                Some(e) => format!("failed at {} ({})", e.step, e.kind),
                None => d.status.as_str().to_owned(),
            };
            vec![
                d.id.clone(),
                d.started_at
                    .with_timezone(&chrono::Local)
                    .format("%Y-%m-%d %H:%M")
                    .to_string(),
                format!("{}/{}", d.project, d.stage),
                d.tag.clone(),
                serde_json::to_value(d.trigger)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                outcome,
            ]
        })
        .collect();
    const ID: usize = 0;
    const STAGE: usize = 2;
    const TAG: usize = 3;
    const TRIGGER: usize = 4;
    const OUTCOME: usize = 5;
    Table {
        header: &["ID", "STARTED", "STAGE", "TAG", "TRIGGER", "OUTCOME"],
        rows,
        plan: &[
            Fit::Cut(OUTCOME, 20),
            Fit::Cut(TAG, 16),
            Fit::Cut(STAGE, 20),
            Fit::Prefix(ID, 8),
            Fit::Drop(TRIGGER),
            Fit::Cut(OUTCOME, 12),
            Fit::Cut(TAG, 10),
            Fit::Cut(STAGE, 12),
        ],
    }
    .render(width)
}

/// Tell a person what reconcile repaired (quietly: only when something was repaired).
pub(crate) fn print_reconcile(r: &ReconcileReport, always: bool) {
    match reconcile_summary(r) {
        None if always => outln!("nothing to repair"),
        None => {}
        Some(line) if always => outln!("{line}"),
        Some(line) => errln!("{line}"),
    }
}

/// One line saying every repair made and every problem found (`None`: nothing at all).
fn reconcile_summary(r: &ReconcileReport) -> Option<String> {
    let mut parts = Vec::new();
    let mut add = |what: &str, v: &Vec<String>| {
        if !v.is_empty() {
            parts.push(format!("{what}: {}", v.join(", ")));
        }
    };
    add("interrupted deploys settled", &r.interrupted);
    add("orphan containers removed", &r.removed_containers);
    add("containers adopted", &r.adopted);
    add("restarted", &r.restarted);
    add("corrected from the runtime", &r.updated);
    add("routes repaired", &r.routes_repaired);
    add(
        "missing (container gone; deploy again or roll back)",
        &r.missing,
    );
    add("busy (skipped)", &r.busy);
    add("nodes unreachable (left for a later pass)", &r.unreachable);
    if !r.foreign.is_empty() {
        let n = r.foreign.len();
        parts.push(format!(
            "{n} container{} belong{} to another Skipper store (left alone)",
            if n == 1 { "" } else { "s" },
            if n == 1 { "s" } else { "" }
        ));
    }
    (!parts.is_empty()).then(|| format!("reconciled: {}", parts.join("; ")))
}

/// Whether to draw progress (stderr is a terminal).
pub(crate) fn progress_enabled() -> bool {
    std::io::stderr().is_terminal()
}

#[cfg(test)]
mod reconcile_tests {
    use super::*;

    /// A vanished active container is a problem found: said in human output, as in `--json`.
    #[test]
    fn every_repair_and_problem_is_said() {
        assert_eq!(reconcile_summary(&ReconcileReport::default()), None);
        let r = ReconcileReport {
            missing: vec!["3f2a9c1b7d4e".into()],
            foreign: vec!["a".into(), "b".into()],
            updated: vec!["77aa".into()],
            ..ReconcileReport::default()
        };
        let line = reconcile_summary(&r).expect("something to say");
        assert!(
            line.contains("missing") && line.contains("3f2a9c1b7d4e"),
            "{line}"
        );
        assert!(
            line.contains("2 containers belong to another Skipper store"),
            "{line}"
        );
        assert!(line.contains("corrected from the runtime: 77aa"), "{line}");
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use skipper_core::model::{DeployError, InstanceState, Step, Trigger};

    use super::*;

    /// Realistic rows: a project and stage with ordinary names, a semver tag, a stage domain
    /// under a real domain.
    fn instance(project: &str, stage: &str, tag: &str, active: bool) -> Instance {
        let image = ImageRef::parse(&format!("git.example.com/team/{project}:{tag}")).unwrap();
        Instance {
            id: "3f2a9c0b7d41".into(),
            project: project.into(),
            stage: stage.into(),
            tag: tag.into(),
            digest: Some(format!("sha256:{}", "ab".repeat(32))),
            container_name: format!("skipper-{project}-{stage}-3f2a9c0b7d41"),
            container_id: Some("c0ffee".into()),
            address: Some("127.0.0.1:49153".into()),
            upstream: None,
            domain: format!(
                "stage-{stage}-{project}-{}.example.com",
                tag.replace('.', "-")
            ),
            state: InstanceState::Running,
            active,
            deployment_id: "9d8e7f6a5b4c".into(),
            created_at: Utc::now(),
            updated_at: Utc::now(),
            image,
        }
    }

    fn deployment(project: &str, stage: &str, tag: &str, failed: bool) -> Deployment {
        Deployment {
            id: "9d8e7f6a5b4c".into(),
            project: project.into(),
            stage: stage.into(),
            image: ImageRef::parse(&format!("git.example.com/team/{project}:{tag}")).unwrap(),
            tag: tag.into(),
            digest: None,
            instance_id: None,
            previous_instance: None,
            replaced: vec![],
            status: if failed {
                DeployStatus::Failed
            } else {
                DeployStatus::Succeeded
            },
            trigger: Trigger::Manual,
            steps: vec![],
            error: failed.then(|| DeployError {
                step: Step::Health,
                kind: ErrorKind::Unhealthy,
                message: "not healthy within 60s".into(),
                logs: vec![],
            }),
            started_at: Utc::now(),
            finished_at: None,
            settings: None,
            correlation_id: None,
        }
    }

    fn assert_fits(lines: &[String], width: usize) {
        for l in lines {
            assert!(
                l.chars().count() <= width,
                "{} columns > {width}: {l:?}",
                l.chars().count()
            );
        }
    }

    #[test]
    fn ps_fits_80_and_60_columns() {
        let list = [
            instance("web-app", "prod", "v1.12.3", false),
            instance("web-app", "prod", "v1.13.0-rc.1", true),
            instance("launcher-api", "staging", "dev-2024-11-30-abcdef", false),
        ];
        let wide = instances_table(&list, 200);
        assert!(
            wide.iter().any(|l| l.chars().count() > 80),
            "the rows are wider than 80 untruncated: {wide:#?}"
        );
        for width in [80, 60] {
            let lines = instances_table(&list, width);
            assert_fits(&lines, width);
            assert_eq!(lines.len(), 5, "header, three rows, the footnote");
            assert!(lines[0].starts_with("ID"), "{lines:#?}");
            for l in &lines[1..4] {
                assert!(l.contains("127.0.0.1:49153"), "the address is whole: {l}");
                assert!(l.starts_with("3f2a9c0b"), "an id prefix: {l}");
            }
        }
        let ordinary = [
            instance("web-app", "prod", "v1.12.3", false),
            instance("web-app", "prod", "v1.13.0", true),
        ];
        let at80 = instances_table(&ordinary, 80);
        assert_fits(&at80, 80);
        assert!(
            at80[0].ends_with("DOMAIN"),
            "80 columns keep the domain: {at80:#?}"
        );
        assert!(at80[2].contains("web-app/prod  v1.13.0"), "{at80:#?}");
        assert!(
            at80[1].ends_with("  stage-prod-we…") && at80[1].chars().count() == 80,
            "the domain is cut: {at80:#?}"
        );
    }

    #[test]
    fn history_has_a_header_aligned_columns_and_fits() {
        let list = [
            deployment("web-app", "prod", "v1.13.0-rc.1", true),
            deployment("web-app", "prod", "v1.12.3", false),
            deployment("launcher-api", "staging", "dev-2024-11-30-abcdef", false),
        ];
        for width in [80, 60] {
            let lines = history_table(&list, width);
            assert_fits(&lines, width);
            assert!(lines[0].starts_with("ID  "), "{lines:#?}");
            // Aligned: every row's second column starts where the header's does.
            let at = lines[0].find("STARTED").unwrap();
            for l in &lines[1..] {
                assert_eq!(l.chars().nth(at - 1), Some(' '), "{lines:#?}");
                assert_ne!(l.chars().nth(at), Some(' '), "{lines:#?}");
            }
        }
        let ordinary = [
            deployment("web-app", "prod", "v1.13.0", true),
            deployment("web-app", "prod", "v1.12.3", false),
        ];
        let at80 = history_table(&ordinary, 80);
        assert_fits(&at80, 80);
        assert!(at80[1].contains("web-app/prod  v1.13.0"), "{at80:#?}");
        assert!(at80[1].contains("failed at health"), "{at80:#?}");
    }

    #[test]
    fn empty_tables_say_so() {
        assert_eq!(instances_table(&[], 80), ["no instances"]);
        assert_eq!(history_table(&[], 80), ["no deployments"]);
    }

    #[test]
    fn every_failure_document_has_the_one_envelope() {
        let plain = error_json(ErrorKind::NotFound, "instance \"abcd\" not found");
        let image = ImageRef::parse("127.0.0.1:5055/team/app:v1").unwrap();
        let refused = Refused {
            project: Some("app"),
            stage: "dev",
            image: Some(&image),
            input: Some("127.0.0.1:5055/team/app:v1"),
            trigger: "manual",
        };
        let refusal = refusal_json(&refused, ErrorKind::Rejected, "no");
        let invalid = Refused {
            project: None,
            stage: "dev",
            image: None,
            input: Some("Bad"),
            trigger: "manual",
        };
        let invalid = refusal_json(&invalid, ErrorKind::Invalid, "invalid image reference");
        for doc in [&plain, &refusal, &invalid] {
            assert_eq!(doc["status"], "failed", "{doc:#}");
            let keys: Vec<&str> = doc["error"]
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            assert_eq!(keys, ["kind", "logs", "message", "step"], "{doc:#}");
        }
        assert_eq!(
            refusal["tag"], "v1",
            "a refusal carries the image's real tag"
        );
        assert_eq!(refusal["image"], "127.0.0.1:5055/team/app:v1");
        assert_eq!(invalid["image"], "Bad");
        assert!(invalid["tag"].is_null());

        // A refusal has every field a deployment has, so one reader handles both.
        let d = deployment("app", "dev", "v1", true);
        let ran = deployment_json(&d, None, None);
        let fields = |v: &Value| {
            let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
            k.sort();
            k
        };
        assert_eq!(fields(&refusal), fields(&ran));
        assert_eq!(fields(&invalid), fields(&ran));
    }
}
