//! What the CLI prints: short human text on a terminal, or exactly one JSON document.

use std::io::IsTerminal;
use std::time::Duration;

use chrono::Utc;
use serde_json::{Value, json};
use skipper_core::{DeployStatus, Deployment, Error, Instance, ReconcileReport};

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

/// A refusal before any deploy started, in the same shape.
pub(crate) fn refusal_json(project: &str, stage: &str, image: &str, e: &Error) -> Value {
    json!({
        "deploy_id": null,
        "status": "failed",
        "project": project,
        "stage": stage,
        "image": image,
        "instance": null,
        "replaced": [],
        "steps": [],
        "error": { "step": "validate", "kind": e.kind().as_str(), "message": e.chain(), "logs": [] },
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
            println!(
                "deployed {} to {}/{} in {secs:.1}s",
                d.image.familiar(),
                d.project,
                d.stage
            );
            if let Some(i) = instance {
                println!("  instance  {}  ({})", i.id, i.container_name);
                if let Some(a) = &i.address {
                    println!("  address   http://{a}");
                }
                println!("  domain    {}", i.domain);
            }
            if let Some(u) = url {
                println!("  url       {u}");
            }
            if !d.replaced.is_empty() {
                println!("  replaced  {}", d.replaced.join(", "));
            }
        }
        _ => {
            let e = d.error.as_ref();
            let step = e.map_or("?", |e| e.step.as_str());
            let kind = e.map_or("?", |e| e.kind.as_str());
            eprintln!(
                "deploy of {} to {}/{} failed at step {step} ({kind}) after {secs:.1}s",
                d.image.familiar(),
                d.project,
                d.stage
            );
            if let Some(e) = e {
                eprintln!("  cause: {}", e.message);
                if !e.logs.is_empty() {
                    eprintln!("  last log lines of the new container:");
                    for l in &e.logs {
                        eprintln!("    | {l}");
                    }
                }
            }
            eprintln!("  rolled back; the previous version (if any) keeps serving");
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

/// Print instances as a table that fits a terminal.
pub(crate) fn print_instances(list: &[Instance]) {
    if list.is_empty() {
        println!("no instances");
        return;
    }
    let rows: Vec<[String; 7]> = list
        .iter()
        .map(|i| {
            [
                i.id.clone(),
                format!("{}/{}", i.project, i.stage),
                truncate(&i.tag, 24),
                format!("{}{}", i.state, if i.active { " *" } else { "" }),
                i.address.clone().unwrap_or_else(|| "-".into()),
                age(i),
                truncate(&i.domain, 40),
            ]
        })
        .collect();
    let header = ["ID", "STAGE", "TAG", "STATE", "ADDRESS", "AGE", "DOMAIN"];
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut out = String::new();
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(&header.map(String::from));
    for r in &rows {
        line(r);
    }
    if list.iter().any(|i| i.active) {
        println!("(* routes the stage's domain)");
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        format!("{}…", s.chars().take(n - 1).collect::<String>())
    }
}

/// Print deployments for a person.
pub(crate) fn print_history(list: &[Deployment]) {
    if list.is_empty() {
        println!("no deployments");
        return;
    }
    for d in list {
        let outcome = match &d.error {
            Some(e) => format!("failed at {} ({})", e.step, e.kind),
            None => d.status.as_str().to_owned(),
        };
        println!(
            "{}  {}  {}/{}  {}  {outcome}",
            d.id,
            d.started_at.format("%Y-%m-%d %H:%M:%S"),
            d.project,
            d.stage,
            d.tag
        );
    }
}

/// Tell a person what reconcile repaired (quietly: only when something was repaired).
pub(crate) fn print_reconcile(r: &ReconcileReport, always: bool) {
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
    if !r.foreign.is_empty() {
        let n = r.foreign.len();
        parts.push(format!(
            "{n} container{} belong{} to another Skipper store (left alone)",
            if n == 1 { "" } else { "s" },
            if n == 1 { "s" } else { "" }
        ));
    }
    if parts.is_empty() {
        if always {
            println!("nothing to repair");
        }
    } else if always {
        println!("reconciled: {}", parts.join("; "));
    } else {
        eprintln!("reconciled: {}", parts.join("; "));
    }
}

/// Whether to draw progress (stderr is a terminal).
pub(crate) fn progress_enabled() -> bool {
    std::io::stderr().is_terminal()
}
