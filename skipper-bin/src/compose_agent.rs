//! The agent's half of compose stacks: write a stack's files under the base directory without
//! following a symlink, run `docker compose` (or `docker-compose`) there, report the services.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::compose::{Action, ComposeOrder};

/// How long one compose command may run.
const LIMIT: Duration = Duration::from_secs(10 * 60);

/// Run one `compose` order under `base`: `(ok, result)`.
pub(crate) async fn run(base: &Path, payload: &Value) -> (bool, Value) {
    let order: ComposeOrder = match serde_json::from_value(payload.clone()) {
        Ok(o) => o,
        Err(e) => return fail("invalid", format!("not a compose order: {e}")),
    };
    if let Err(e) = order.check() {
        return fail("invalid", e);
    }
    let dir = match stack_dir(base, &order) {
        Ok(d) => d,
        Err(e) => return fail("invalid", e),
    };
    let mut logs = Vec::new();
    let ok = match order.action {
        Action::Up => {
            if let Err(e) = write_files(&dir, &order) {
                return fail("internal", format!("writing the stack's files: {e}"));
            }
            compose(&dir, &order, &["up", "-d", "--remove-orphans"], &mut logs).await
        }
        Action::Down => {
            if dir.join("docker-compose.yml").exists() {
                compose(&dir, &order, &["down", "--remove-orphans"], &mut logs).await
            } else {
                true
            }
        }
        Action::Ps => true,
    };
    let services = services(&order.project()).await;
    let result = json!({
        "tenant": order.tenant,
        "stack": order.stack,
        "action": order.action,
        "project": order.project(),
        "services": services,
        "logs": logs,
    });
    if ok {
        (true, result)
    } else {
        let mut r = result;
        r["kind"] = "internal".into();
        r["message"] = format!(
            "docker compose {:?} failed for {}/{}",
            order.action, order.tenant, order.stack
        )
        .into();
        (false, r)
    }
}

fn fail(kind: &str, message: String) -> (bool, Value) {
    (false, json!({ "kind": kind, "message": message }))
}

/// `base/tenant/stack`, made as needed; refused when any of them is a symlink (or not a
/// directory): nothing is followed out of the base directory.
fn stack_dir(base: &Path, order: &ComposeOrder) -> Result<PathBuf, String> {
    std::fs::create_dir_all(base).map_err(|e| format!("{}: {e}", base.display()))?;
    let mut dir = base.to_owned();
    for part in [&order.tenant, &order.stack] {
        dir.push(part);
        match std::fs::symlink_metadata(&dir) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(format!(
                    "{} is a symlink; refusing to follow it",
                    dir.display()
                ));
            }
            Ok(m) if !m.is_dir() => return Err(format!("{} is not a directory", dir.display())),
            Ok(_) => {}
            Err(_) => std::fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?,
        }
    }
    Ok(dir)
}

/// Write `docker-compose.yml` and `.env` (0600) by a new file and a rename, so an existing path
/// (a symlink planted there) is replaced, never written through.
fn write_files(dir: &Path, order: &ComposeOrder) -> std::io::Result<()> {
    let compose = order.compose.as_deref().unwrap_or_default();
    replace(dir, "docker-compose.yml", compose.as_bytes(), 0o644)?;
    replace(dir, ".env", order.env_file().as_bytes(), 0o600)
}

fn replace(dir: &Path, name: &str, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = dir.join(format!(".{name}.skippy-tmp"));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(name))
}

/// The compose command: `docker compose` when the Docker CLI has it, else `docker-compose`.
async fn compose_command() -> (String, Vec<String>) {
    let v2 = tokio::process::Command::new("docker")
        .args(["compose", "version"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .is_ok_and(|s| s.success());
    if v2 {
        ("docker".into(), vec!["compose".into()])
    } else {
        ("docker-compose".into(), Vec::new())
    }
}

/// Run compose in `dir` (its `.env` is read from there); its output's last lines go to `logs`.
async fn compose(dir: &Path, order: &ComposeOrder, args: &[&str], logs: &mut Vec<String>) -> bool {
    let (bin, pre) = compose_command().await;
    let mut c = tokio::process::Command::new(&bin);
    c.args(&pre)
        .args(["-p", &order.project(), "-f", "docker-compose.yml"])
        .args(args)
        .current_dir(dir)
        .kill_on_drop(true);
    match tokio::time::timeout(LIMIT, c.output()).await {
        Ok(Ok(out)) => {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let lines: Vec<&str> = text.lines().collect();
            logs.extend(
                lines[lines.len().saturating_sub(40)..]
                    .iter()
                    .map(|l| (*l).to_owned()),
            );
            out.status.success()
        }
        Ok(Err(e)) => {
            logs.push(format!(
                "cannot run {bin}: {e} (install the Docker CLI's compose plugin or docker-compose)"
            ));
            false
        }
        Err(_) => {
            logs.push(format!("{bin} did not finish within {}s", LIMIT.as_secs()));
            false
        }
    }
}

/// The project's containers: service, container name, state, status.
async fn services(project: &str) -> Vec<Value> {
    let out = tokio::process::Command::new("docker")
        .args(["ps", "-a", "--filter"])
        .arg(format!("label=com.docker.compose.project={project}"))
        .args([
            "--format",
            "{{.Label \"com.docker.compose.service\"}}\t{{.Names}}\t{{.State}}\t{{.Status}}",
        ])
        .output()
        .await;
    let Ok(out) = out else {
        return Vec::new();
    };
    let mut list: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            Some(json!({
                "service": f.next()?,
                "container": f.next()?,
                "state": f.next()?,
                "status": f.next().unwrap_or_default(),
            }))
        })
        .collect();
    list.sort_by(|a, b| a["service"].as_str().cmp(&b["service"].as_str()));
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order() -> ComposeOrder {
        ComposeOrder {
            action: Action::Up,
            tenant: "acme".into(),
            stack: "web".into(),
            compose: Some("services: {}\n".into()),
            env: [("SECRET".to_owned(), "s3cret".to_owned())].into(),
        }
    }

    #[test]
    fn files_are_written_private_and_symlinks_are_never_followed() {
        use std::os::unix::fs::PermissionsExt;
        let base = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let dir = stack_dir(base.path(), &order()).unwrap();
        assert_eq!(dir, base.path().join("acme/web"));
        // A symlink planted where .env goes is replaced, not written through.
        let target = outside.path().join("stolen");
        std::fs::write(&target, "untouched").unwrap();
        std::os::unix::fs::symlink(&target, dir.join(".env")).unwrap();
        write_files(&dir, &order()).unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "untouched");
        let env = dir.join(".env");
        assert!(
            !std::fs::symlink_metadata(&env)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(std::fs::read_to_string(&env).unwrap(), "SECRET=s3cret\n");
        let mode = std::fs::metadata(&env).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            std::fs::read_to_string(dir.join("docker-compose.yml")).unwrap(),
            "services: {}\n"
        );

        // A tenant directory that is a symlink out of the base is refused.
        let mut other = order();
        other.tenant = "evil".into();
        std::os::unix::fs::symlink(outside.path(), base.path().join("evil")).unwrap();
        let e = stack_dir(base.path(), &other).unwrap_err();
        assert!(e.contains("symlink"), "{e}");
        assert!(!outside.path().join("web").exists());
    }

    #[tokio::test]
    async fn a_bad_order_is_refused_before_anything_is_written() {
        let base = tempfile::tempdir().unwrap();
        let (ok, r) = run(
            base.path(),
            &json!({"action": "up", "tenant": "..", "stack": "web", "compose": "x"}),
        )
        .await;
        assert!(!ok);
        assert_eq!(r["kind"], "invalid", "{r}");
        assert!(std::fs::read_dir(base.path()).unwrap().next().is_none());
        let (ok, r) = run(base.path(), &json!({"action": "explode"})).await;
        assert!(!ok, "{r}");
    }
}
