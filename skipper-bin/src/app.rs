//! Assemble the backends from the config file and the environment, and run one command.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use secrecy::SecretString;
use skipper_core::backend::{DeploymentFilter, InstanceFilter};
use skipper_core::config::{Config, ProxyBackend, UpstreamMode};
use skipper_core::docker::DockerRuntime;
use skipper_core::notify::WebhookNotifier;
use skipper_core::store::{SecretKey, SqliteStore};
use skipper_core::{
    Credentials, DeployRequest, DeployStatus, Deployment, Engine, EngineSettings, ImageRef,
    Instance, Project, PullPolicy, PullProgress, ReconcileReport, RunSettings, Stage,
    UpstreamTarget,
};
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command, DeployArgs, Pull};
use crate::output::{self, Refused, errln, outln};

/// Logs go to stderr; stdout is for results.
pub(crate) fn init_tracing(verbose: u8, serve: Option<Option<crate::cli::LogFormat>>) {
    use std::io::IsTerminal;
    if let Some(format) = serve {
        // The server logs what it does (info) in JSON unless a person watches.
        let default = if verbose > 1 { "debug" } else { "info" };
        let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
        let json = match format {
            Some(f) => f == crate::cli::LogFormat::Json,
            None => !std::io::stderr().is_terminal(),
        };
        let b = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_target(false);
        let _ = if json {
            b.json().try_init()
        } else {
            b.try_init()
        };
        return;
    }
    let default = match verbose {
        0 => "error",
        1 => "info,skipper_core=info",
        _ => "debug",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// The default data directory: `$XDG_DATA_HOME/skipper`, `~/.local/share/skipper`, or
/// `./.skipper` when there is no home.
fn default_data_dir() -> PathBuf {
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("skipper");
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/share/skipper"),
        None => PathBuf::from(".skipper"),
    }
}

/// The config file: `--config`, else `./skipper.yaml` if present, else none.
pub(crate) fn load_config(path: Option<&Path>) -> Result<Config> {
    match path {
        Some(p) => Ok(Config::load(p)?),
        None if Path::new("skipper.yaml").exists() => Ok(Config::load(Path::new("skipper.yaml"))?),
        None => Ok(Config::parse("")?),
    }
}

pub(crate) fn env_nonempty(key: &str) -> Option<String> {
    std::env::var(key).ok().filter(|v| !v.is_empty())
}

/// Everything a command needs.
pub(crate) struct App {
    pub(crate) engine: Engine,
    pub(crate) config: Config,
    /// The NPM client when routing through Nginx Proxy Manager, to check it before a deploy.
    pub(crate) npm: Option<Arc<skipper_npm::NpmClient>>,
    /// The store is open read-only (the data directory is not writable): nothing may write,
    /// not even reconcile.
    pub(crate) read_only: bool,
    /// The data directory.
    pub(crate) data_dir: PathBuf,
    /// The server's notification outbox.
    pub(crate) outbox: Option<Arc<crate::server::outbox::Outbox>>,
    /// The server's nodes and work orders.
    pub(crate) nodes: Option<Arc<crate::server::nodes::Nodes>>,
}

/// Whether `dir` exists and this process cannot write it or its database: a read-only mount,
/// another user's files. (A probe file, created and removed: the only honest test of a mount.)
fn data_dir_read_only(dir: &Path) -> bool {
    use std::io::ErrorKind::{PermissionDenied, ReadOnlyFilesystem};
    if !dir.is_dir() {
        return false;
    }
    let refused = |r: std::io::Result<std::fs::File>| {
        r.err()
            .is_some_and(|e| matches!(e.kind(), PermissionDenied | ReadOnlyFilesystem))
    };
    let probe = dir.join(format!(".skipper-write-probe-{}", std::process::id()));
    let opened = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe);
    if opened.is_ok() {
        let _ = std::fs::remove_file(&probe);
    }
    let db = dir.join("skipper.db");
    refused(opened) || (db.exists() && refused(std::fs::OpenOptions::new().write(true).open(&db)))
}

/// Open the store, read-only when the data directory is (only `ps` and `history` may run on
/// one; any other command is refused, saying so).
fn open_store(dir: &Path, key: Option<SecretKey>, reads_only: bool) -> Result<(SqliteStore, bool)> {
    if !data_dir_read_only(dir) {
        return Ok((SqliteStore::open(dir, key)?, false));
    }
    if !reads_only {
        return Err(skipper_core::Error::rejected(format!(
            "the data directory {} is read-only: only `skipper ps` and `skipper history` work on it \
             (set SKIPPER_DATA_DIR or --data-dir to a writable one)",
            dir.display()
        ))
        .into());
    }
    Ok((SqliteStore::open_read_only(dir, key)?, true))
}

/// Build the engine: Docker, SQLite in the data directory, NPM and the webhook notifier when
/// configured.
pub(crate) async fn build(cli: &Cli) -> Result<App> {
    let config = load_config(cli.global.config.as_deref())?;
    let data_dir = cli.global.data_dir.clone().unwrap_or_else(default_data_dir);
    let key = SecretKey::from_env()?;
    let (store, read_only) = {
        let dir = data_dir.clone();
        let reads_only = matches!(cli.command, Command::Ps(_) | Command::History(_));
        tokio::task::spawn_blocking(move || open_store(&dir, key, reads_only))
            .await
            .context("opening the store")??
    };
    // The server also uses the registry entries added through its API (kept in the store).
    let mut registries_in_use = config.registries.clone();
    if matches!(cli.command, Command::Serve(_)) {
        for r in crate::server::registries::load(&store).await? {
            registries_in_use.entry(r.name.clone()).or_insert(r);
        }
    }
    // In a container of its own (the image sets it), Skipper reaches the apps over their shared
    // network: nothing is published on the host, probes go to the container's address.
    let in_container = env_nonempty("SKIPPER_IN_CONTAINER").as_deref() == Some("1");
    let mut runtime = DockerRuntime::connect()
        .await?
        .with_probe_via_network(in_container);
    let scope = env_nonempty("SKIPPER_SCOPE");
    if let Some(scope) = &scope {
        runtime = runtime.with_scope(scope.clone());
    }

    let npm = npm_settings(&config)?;
    let caddy = caddy_settings(&config);
    let mode = npm
        .as_ref()
        .map(|(_, m, h)| (*m, h))
        .or(caddy.as_ref().map(|(_, m, h)| (*m, h)));
    let upstream = match mode {
        Some((UpstreamMode::Published, host)) => UpstreamTarget::Published { host: host.clone() },
        _ => UpstreamTarget::ContainerName,
    };
    let settings = EngineSettings {
        domains: config.global.domains(),
        network: config.global.network.clone(),
        publish: !in_container,
        upstream,
        scope,
        lock_ttl: Duration::from_secs(10),
        stop_grace: env_nonempty("SKIPPER_STOP_GRACE")
            .map(|v| humantime::parse_duration(&v))
            .transpose()
            .context("SKIPPER_STOP_GRACE")?
            .unwrap_or(Duration::from_secs(10)),
        drain: config.proxy.as_ref().map_or(Duration::ZERO, |p| p.drain),
        ..EngineSettings::default()
    };
    let mut builder = Engine::builder(Arc::new(runtime), Arc::new(store)).settings(settings);
    let npm = match npm {
        Some((npm_config, _, _)) => {
            let client = Arc::new(skipper_npm::NpmClient::new(npm_config)?);
            builder = builder.proxy(client.clone());
            Some(client)
        }
        None => None,
    };
    if let Some((caddy_config, _, _)) = caddy {
        builder = builder.proxy(Arc::new(skipper_caddy::CaddyClient::new(caddy_config)?));
    }
    let mut targets = config.notifications.clone();
    if let Some(url) = &config.global.notification_url {
        targets.push(skipper_core::config::NotificationTarget {
            url: url.clone(),
            format: skipper_core::config::NotifyFormat::Webhook,
            secret: None,
            events: Vec::new(),
            projects: Vec::new(),
        });
    }
    // The server queues events in its durable outbox (a restart loses none, a slow receiver
    // never delays a deploy); a CLI command delivers them itself.
    let mut nodes = None;
    let outbox = if matches!(cli.command, Command::Serve(_)) {
        let outbox = crate::server::outbox::Outbox::open(&data_dir, &targets)?;
        builder = builder.notifier(outbox.clone());
        // The server drives its registered nodes' hosts through their agents.
        let n = Arc::new(crate::server::nodes::Nodes::open(
            &data_dir,
            crate::server::nodes::HEARTBEAT,
        )?);
        builder = builder.nodes(Arc::new(crate::server::remote_runtime::AgentNodes(
            n.clone(),
        )));
        nodes = Some(n);
        Some(outbox)
    } else {
        for t in &targets {
            builder = builder.notifier(Arc::new(WebhookNotifier::for_target(t)?));
        }
        None
    };
    for (name, r) in &registries_in_use {
        if let (Some(username), Some(token)) = (&r.username, &r.token) {
            builder = builder.credentials(
                name.clone(),
                Credentials {
                    username: username.clone(),
                    secret: token.clone(),
                },
            );
        }
    }
    // Tags are listed (watch) and pulled (deploy) with the same credentials: the config's
    // entries, else the Docker config, through skipper_core::docker_config either way.
    builder = builder.registry(Arc::new(skipper_registry::Registries::from_settings(
        registries_in_use.values(),
    )?));
    let engine = builder.build();
    // The config file is the source of truth for the projects it names; for the server (and
    // `config` commands) the store is, the file only seeding a new store once.
    let store_is_truth = matches!(
        cli.command,
        Command::Serve(_) | Command::Config(_) | Command::Token(_) | Command::Node(_)
    );
    for p in config
        .projects
        .values()
        .filter(|_| !read_only && !store_is_truth)
    {
        engine.put_project(p).await?;
    }
    Ok(App {
        engine,
        config,
        npm,
        read_only,
        data_dir,
        outbox,
        nodes,
    })
}

/// Caddy from the config's `proxy: { kind: caddy, ... }`.
fn caddy_settings(
    config: &Config,
) -> Option<(skipper_caddy::CaddyConfig, UpstreamMode, Option<String>)> {
    match config.proxy.as_ref().map(|p| &p.backend) {
        Some(ProxyBackend::Caddy(c)) => Some((
            skipper_caddy::CaddyConfig::new(c.url.clone())
                .with_server(c.server.clone())
                .with_listen(c.listen.clone()),
            c.upstream,
            c.upstream_host.clone(),
        )),
        _ => None,
    }
}

/// NPM from the config's `npm:` section, or `SKIPPER_NPM_URL` / `_EMAIL` / `_PASSWORD` (unless
/// the config routes through Caddy).
fn npm_settings(
    config: &Config,
) -> Result<Option<(skipper_npm::NpmConfig, UpstreamMode, Option<String>)>> {
    if caddy_settings(config).is_some() {
        return Ok(None);
    }
    if let Some(n) = &config.npm {
        let c = skipper_npm::NpmConfig::new(n.url.clone(), n.email.clone(), n.password.clone());
        return Ok(Some((c, n.upstream, n.upstream_host.clone())));
    }
    let Some(url) = env_nonempty("SKIPPER_NPM_URL") else {
        return Ok(None);
    };
    let url = url.parse().context("SKIPPER_NPM_URL is not a URL")?;
    let email = env_nonempty("SKIPPER_NPM_EMAIL")
        .context("SKIPPER_NPM_URL is set but SKIPPER_NPM_EMAIL is not")?;
    let password: SecretString = env_nonempty("SKIPPER_NPM_PASSWORD")
        .context("SKIPPER_NPM_URL is set but SKIPPER_NPM_PASSWORD is not")?
        .into();
    let mode = match env_nonempty("SKIPPER_NPM_UPSTREAM").as_deref() {
        None | Some("network") => UpstreamMode::Network,
        Some("published") => UpstreamMode::Published,
        Some(other) => bail!("SKIPPER_NPM_UPSTREAM must be network or published, not {other:?}"),
    };
    let c = skipper_npm::NpmConfig::new(url, email, password);
    Ok(Some((c, mode, env_nonempty("SKIPPER_NPM_UPSTREAM_HOST"))))
}

/// Registry clients for the config's `registries:` entries; any other registry gets a client on
/// first use, with the credentials `docker pull` would use (or none).
pub(crate) fn registries(config: &Config) -> Result<skipper_registry::Registries> {
    Ok(skipper_registry::Registries::from_settings(
        config.registries.values(),
    )?)
}

/// Run the command; the exit code says whether it succeeded.
pub(crate) async fn run(cli: Cli) -> Result<ExitCode> {
    if crate::remote::wanted(&cli) {
        // `--url`: the same command, as requests to a Skipper server.
        return crate::remote::run(&cli).await;
    }
    if let Command::Deploy(d) = &cli.command
        && (d.image == "apply" || d.tenant_id.is_some())
    {
        anyhow::bail!(
            "a tenant's compose stacks are applied by a Skipper server through the node's agent: \
             add --url (or SKIPPER_URL) and --token"
        );
    }
    if let Command::Tags(args) = &cli.command {
        // Only the registry: no Docker engine, no store.
        return crate::tags::run(&cli, args).await;
    }
    let json = cli.global.json;
    // Deploys and rollbacks stop safely on the first SIGINT/SIGTERM from the start of the
    // command: one during the setup or the reconcile before them still ends with the command's
    // usual document and exit 1 (a second signal exits at once).
    let interrupt = matches!(cli.command, Command::Deploy(_) | Command::Rollback(_))
        .then(crate::signals::interrupt_token);
    let Some(app) = until_interrupted(interrupt.as_ref(), build(&cli)).await else {
        return interrupted_before_start(&cli, json);
    };
    let app = app?;
    match &cli.command {
        Command::Serve(args) => {
            let dir = app.data_dir.clone();
            return crate::server::run(app, &dir, serve_options(args)?).await;
        }
        Command::Token(crate::cli::TokenCommand::Rotate) => {
            use secrecy::ExposeSecret;
            let token = crate::server::auth::rotate(app.engine.store().as_ref()).await?;
            if json {
                outln!("{}", serde_json::json!({ "token": token.expose_secret() }));
            } else {
                errln!("a new admin token (shown this once; the old one no longer works):");
                outln!("{}", token.expose_secret());
            }
            return Ok(ExitCode::SUCCESS);
        }
        Command::Node(cmd) => {
            let nodes =
                crate::server::nodes::Nodes::open(&app.data_dir, crate::server::nodes::HEARTBEAT)?;
            let (node, token) = match cmd {
                crate::cli::NodeCommand::Register(r) => {
                    let (n, t) = nodes
                        .register(&r.node_id, &r.role, r.region.as_deref(), r.token.clone())
                        .map_err(skipper_core::Error::from)?;
                    (n, Some(t))
                }
                crate::cli::NodeCommand::Show(n) => (
                    nodes.get(&n.node_id).map_err(skipper_core::Error::from)?,
                    None,
                ),
            };
            if json {
                let mut v = serde_json::to_value(&node)?;
                if let Some(t) = &token {
                    v["token"] = t.clone().into();
                }
                outln!("{v}");
            } else {
                outln!(
                    "{} ({}{}) {} last heartbeat {}",
                    node.id,
                    node.role,
                    node.region
                        .as_deref()
                        .map(|r| format!(", {r}"))
                        .unwrap_or_default(),
                    node.status,
                    node.last_heartbeat.as_deref().unwrap_or("never")
                );
                if let Some(t) = token {
                    errln!("the node's token (shown this once; set it as AGENT_TOKEN for skippy):");
                    outln!("{t}");
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
        Command::Config(crate::cli::ConfigCommand::Export) => {
            let list = app.engine.store().list_projects().await?;
            outln!(
                "{}",
                skipper_core::config::Config::export_projects(&list).trim_end()
            );
            return Ok(ExitCode::SUCCESS);
        }
        Command::Config(crate::cli::ConfigCommand::Import(f)) => {
            let text = if f.file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin()).context("reading stdin")?
            } else {
                std::fs::read_to_string(&f.file)
                    .with_context(|| format!("cannot read {}", f.file.display()))?
            };
            let config = skipper_core::config::Config::parse(&text)?;
            let names = crate::server::import_projects(&app.engine, &config).await?;
            if json {
                outln!("{}", serde_json::json!({ "imported": names }));
            } else {
                outln!("imported {} project(s): {}", names.len(), names.join(", "));
            }
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    let engine = &app.engine;
    // Read commands change nothing; every other command starts by repairing what an
    // interrupted one may have left (a read-only store cannot be repaired at all).
    let read_only = app.read_only || matches!(cli.command, Command::Ps(_) | Command::History(_));
    let report = if read_only {
        ReconcileReport::default()
    } else {
        match until_interrupted(interrupt.as_ref(), engine.reconcile()).await {
            Some(r) => r?,
            None => return interrupted_before_start(&cli, json),
        }
    };
    let is_reconcile = matches!(cli.command, Command::Reconcile);
    if !json && !is_reconcile && !read_only {
        output::print_reconcile(&report, false);
    }
    match &cli.command {
        Command::Deploy(args) => deploy(&app, args, json, interrupt.unwrap_or_default()).await,
        Command::Ps(args) => {
            // What runs now, drift included (`missing`, `exited`, `interrupted`).
            let list = engine
                .observe(&InstanceFilter {
                    project: args.project.clone(),
                    stage: args.stage.clone(),
                })
                .await?;
            if json {
                let v: Vec<_> = list.iter().map(output::instance_json).collect();
                outln!("{}", serde_json::Value::Array(v));
            } else {
                output::print_instances(&list);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Rm(a) | Command::Stop(a) | Command::Start(a) | Command::Restart(a) => {
            let (verb, inst) = match &cli.command {
                Command::Rm(_) => ("removed", engine.remove_instance(&a.instance).await?),
                Command::Stop(_) => ("stopped", engine.stop_instance(&a.instance).await?),
                Command::Start(_) => ("started", engine.start_instance(&a.instance).await?),
                _ => ("restarted", engine.restart_instance(&a.instance).await?),
            };
            if json {
                let mut v = output::instance_json(&inst);
                v["action"] = verb.into();
                outln!("{v}");
            } else {
                outln!(
                    "{verb} {} ({}/{} {})",
                    inst.id,
                    inst.project,
                    inst.stage,
                    inst.tag
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Rollback(a) => {
            let started = Instant::now();
            let cancel = interrupt.unwrap_or_default();
            match engine
                .rollback_with(&a.project, &a.stage, Some(cancel))
                .await
            {
                Ok(d) => Ok(report_deployment(engine, &d, json, started.elapsed()).await?),
                Err(e) if json => {
                    let refused = Refused {
                        project: Some(&a.project),
                        stage: &a.stage,
                        image: None,
                        input: None,
                        trigger: "rollback",
                    };
                    outln!("{}", output::refusal_json(&refused, e.kind(), &e.chain()));
                    Ok(ExitCode::from(1))
                }
                Err(e) => Err(e.into()),
            }
        }
        Command::History(a) => {
            let list = engine
                .deployments(&DeploymentFilter {
                    project: a.project.clone(),
                    stage: a.stage.clone(),
                    limit: Some(a.limit),
                })
                .await?;
            if json {
                let v: Vec<_> = list
                    .iter()
                    .map(|d| output::deployment_json(d, None, None))
                    .collect();
                outln!("{}", serde_json::Value::Array(v));
            } else {
                output::print_history(&list);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Tags(args) => crate::tags::run(&cli, args).await,
        Command::Watch(args) => crate::watch::run(&app, args, json).await,
        Command::Serve(_)
        | Command::Token(_)
        | Command::Config(_)
        | Command::Node(_)
        | Command::Health => Ok(ExitCode::SUCCESS),
        Command::Reconcile => {
            if json {
                outln!("{}", serde_json::to_value(&report)?);
            } else {
                output::print_reconcile(&report, true);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The project a deploy uses: the config's, else the store's, else a new one from the image;
/// command-line flags override.
async fn resolve_project(
    app: &App,
    args: &DeployArgs,
    image: &ImageRef,
    project: &str,
) -> Result<(Project, Option<RunSettings>)> {
    // Read, change and write the project under its lease: two first deploys of one project's
    // stages at once must not lose each other's stage.
    let lease = app
        .engine
        .lease(&format!("project/{project}"), Duration::from_secs(60))
        .await?
        .with_context(|| format!("project {project:?} stayed busy for a minute"))?;
    let result = resolve_project_locked(app, args, image, project).await;
    lease.release().await;
    result
}

async fn resolve_project_locked(
    app: &App,
    args: &DeployArgs,
    image: &ImageRef,
    project: &str,
) -> Result<(Project, Option<RunSettings>)> {
    let from_config = app.config.projects.get(project).cloned();
    let configured = from_config.is_some();
    let mut p = match from_config {
        Some(p) => p,
        // A stored project keeps its repository here: a deploy of another one changes it only
        // if it succeeds (`DeployRequest::adopt_repository`).
        None => match app.engine.store().get_project(project).await? {
            Some(p) => p,
            None => Project::new(project, &image.name())?,
        },
    };
    if !p.stages.contains_key(&args.stage) {
        if configured {
            bail!(
                "project {project:?} in the config has no stage {:?} (it has: {})",
                args.stage,
                p.stages.keys().cloned().collect::<Vec<_>>().join(", ")
            );
        }
        p.stages
            .insert(args.stage.clone(), Stage::new(args.stage.clone()));
    }
    // The project and its stage exist from now on; the flags below are this deploy's settings,
    // kept as the project's by the engine only if the deploy succeeds.
    app.engine.put_project(&p).await?;
    let stored = p.clone();
    if let Some(port) = args.port {
        p.port = Some(port);
    }
    if let Some(path) = &args.health_path {
        p.health.path = Some(path.clone());
    }
    if let Some(t) = args.health_timeout {
        p.health.deadline = t;
    }
    if let Some(n) = args.max_instances
        && let Some(s) = p.stages.get_mut(&args.stage)
    {
        s.max_instances = n;
    }
    for (k, v) in &args.env {
        p.env.insert(k.clone(), v.clone());
    }
    p.validate()?;
    let stage = p.stage(&args.stage)?;
    let settings = RunSettings::of(&p, stage);
    let changed = settings != RunSettings::of(&stored, stored.stage(&args.stage)?);
    Ok((p, changed.then_some(settings)))
}

/// The default project name for an image: its last path component, as a DNS-safe label.
pub(crate) fn project_from_image(image: &ImageRef) -> String {
    let base = image.repository().rsplit('/').next().unwrap_or("app");
    let mut name = skipper_core::subdomain::sanitize(base);
    name.truncate(40);
    let name = name.trim_end_matches('-').to_owned();
    if name.is_empty() { "app".into() } else { name }
}

/// The image to deploy: the reference given, or for a local image id (`sha256:…`) the image's
/// tag (in the project's repository, when `--project` names a known one).
async fn resolve_image(app: &App, args: &DeployArgs) -> Result<ImageRef> {
    let Some(id) = skipper_core::reference::local_image_id(&args.image) else {
        return Ok(ImageRef::parse(&args.image)?);
    };
    let repository = match &args.project {
        Some(name) => match app.config.projects.get(name) {
            Some(p) => Some(p.image.clone()),
            None => app.engine.store().get_project(name).await?.map(|p| p.image),
        },
        None => None,
    };
    let repository = repository.map(|r| ImageRef::parse(&r)).transpose()?;
    // The engine holds its runtime as `dyn Runtime`; looking an image up by id is Docker's own.
    let docker = DockerRuntime::connect().await?;
    Ok(docker
        .local_image(id)
        .await?
        .reference(repository.as_ref())?)
}

/// A deploy refused before it started: the refusal document under `--json` (exit 1), else the
/// error for `main` to print.
fn refuse(json: bool, refused: &Refused<'_>, e: anyhow::Error) -> Result<ExitCode> {
    if !json {
        return Err(e);
    }
    let doc = output::refusal_json(refused, output::error_kind(&e), &format!("{e:#}"));
    outln!("{doc}");
    Ok(ExitCode::from(1))
}

/// `fut`'s output, or `None` if the command was interrupted first (`fut` is dropped: the setup
/// and reconcile cut short there are what a `kill -9` would cut short, repaired by the next
/// command).
async fn until_interrupted<T>(
    interrupt: Option<&tokio_util::sync::CancellationToken>,
    fut: impl std::future::Future<Output = T>,
) -> Option<T> {
    match interrupt {
        Some(token) => token.run_until_cancelled(fut).await,
        None => Some(fut.await),
    }
}

fn interrupted_error() -> anyhow::Error {
    skipper_core::Error::Interrupted {
        reason: "a signal came before the deploy began; nothing was deployed".into(),
    }
    .into()
}

/// A deploy or rollback interrupted before it began: nothing deployed. Its usual document
/// (a refusal, kind `interrupted`) under `--json`, else the error; exit 1 either way.
fn interrupted_before_start(cli: &Cli, json: bool) -> Result<ExitCode> {
    let e = interrupted_error();
    let refused = match &cli.command {
        Command::Deploy(a) => Refused {
            project: a.project.as_deref(),
            stage: &a.stage,
            image: None,
            input: Some(&a.image),
            trigger: "manual",
        },
        Command::Rollback(a) => Refused {
            project: Some(&a.project),
            stage: &a.stage,
            image: None,
            input: None,
            trigger: "rollback",
        },
        _ => return Err(e),
    };
    refuse(json, &refused, e)
}

async fn deploy(
    app: &App,
    args: &DeployArgs,
    json: bool,
    cancel: tokio_util::sync::CancellationToken,
) -> Result<ExitCode> {
    let by_id = skipper_core::reference::local_image_id(&args.image).is_some();
    let image = match resolve_image(app, args).await {
        Ok(image) => image,
        Err(e) => {
            let refused = Refused {
                project: args.project.as_deref(),
                stage: &args.stage,
                image: None,
                input: Some(&args.image),
                trigger: "manual",
            };
            return refuse(json, &refused, e);
        }
    };
    let project_name = args
        .project
        .clone()
        .unwrap_or_else(|| project_from_image(&image));
    let started = Instant::now();
    let checked = async {
        // Fail fast on wrong NPM credentials, before pulling and starting anything.
        if let Some(npm) = &app.npm {
            npm.check()
                .await
                .context("cannot log in to Nginx Proxy Manager")?;
        }
        resolve_project(app, args, &image, &project_name).await
    };
    // The project lease may be busy for a while: a signal meanwhile ends the deploy there.
    let checked = cancel.run_until_cancelled(checked).await;
    let (project, settings) = match checked.unwrap_or_else(|| Err(interrupted_error())) {
        Ok(p) => p,
        Err(e) => {
            let refused = Refused {
                project: Some(&project_name),
                stage: &args.stage,
                image: Some(&image),
                input: Some(&args.image),
                trigger: "manual",
            };
            return refuse(json, &refused, e);
        }
    };
    let mut req = DeployRequest::new(&project.name, &args.stage, image.clone());
    req.confirmed = args.yes;
    req.settings = settings;
    // A project of the config file keeps the config's repository; one the CLI made takes the
    // new image's.
    req.adopt_repository = !app.config.projects.contains_key(&project.name);
    req.cancel = Some(cancel);
    req.pull = match args.pull {
        // A local image id names what is here; pulling its tag could bring another image.
        _ if by_id => PullPolicy::Never,
        Pull::Always => PullPolicy::Always,
        Pull::Missing => PullPolicy::Missing,
        Pull::Never => PullPolicy::Never,
    };
    let progress = output::progress_enabled().then(|| {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        req.progress = Some(tx);
        tokio::spawn(show_progress(image.familiar(), rx))
    });
    let result = app.engine.deploy(req).await;
    if let Some(p) = progress {
        let _ = p.await;
    }
    match result {
        Ok(d) => report_deployment(&app.engine, &d, json, started.elapsed()).await,
        Err(e) => {
            if json {
                let refused = Refused {
                    project: Some(&project.name),
                    stage: &args.stage,
                    image: Some(&image),
                    input: Some(&args.image),
                    trigger: "manual",
                };
                outln!("{}", output::refusal_json(&refused, e.kind(), &e.chain()));
            } else {
                errln!("deploy refused: {}", e.chain());
            }
            Ok(ExitCode::from(1))
        }
    }
}

/// A deployment's instance (when it succeeded) and the URL it is reached at.
pub(crate) async fn deployment_parts(
    engine: &Engine,
    d: &Deployment,
) -> Result<(Option<Instance>, Option<String>)> {
    let instance: Option<Instance> = match (&d.instance_id, d.status) {
        (Some(id), DeployStatus::Succeeded) => engine.store().get_instance(id).await?,
        _ => None,
    };
    let url = match &instance {
        Some(_) if engine.has_proxy() => {
            let project = engine.project(&d.project).await?;
            let stage = project.stage(&d.stage)?;
            Some(format!(
                "http://{}",
                engine.settings().domains.stage_domain(
                    &d.project,
                    &d.stage,
                    stage.subdomain.as_deref()
                )
            ))
        }
        Some(i) => i.address.as_ref().map(|a| format!("http://{a}")),
        None => None,
    };
    Ok((instance, url))
}

/// The document `skipper deploy --json` prints (and the API answers with).
pub(crate) async fn deployment_document(engine: &Engine, d: &Deployment) -> serde_json::Value {
    match deployment_parts(engine, d).await {
        Ok((instance, url)) => output::deployment_json(d, instance.as_ref(), url.as_deref()),
        // The record is the answer; its instance and URL are extras.
        Err(_) => output::deployment_json(d, None, None),
    }
}

async fn report_deployment(
    engine: &Engine,
    d: &Deployment,
    json: bool,
    took: Duration,
) -> Result<ExitCode> {
    let (instance, url) = deployment_parts(engine, d).await?;
    if json {
        outln!(
            "{}",
            output::deployment_json(d, instance.as_ref(), url.as_deref())
        );
    } else {
        output::print_deployment(d, instance.as_ref(), url.as_deref(), took);
    }
    Ok(if d.status == DeployStatus::Succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Draw one status line of pull progress on stderr.
async fn show_progress(image: String, mut rx: tokio::sync::mpsc::UnboundedReceiver<PullProgress>) {
    use std::collections::BTreeMap;
    use std::io::Write;
    let mut layers: BTreeMap<String, (u64, u64, bool)> = BTreeMap::new();
    let mut drew = false;
    while let Some(p) = rx.recv().await {
        let Some(layer) = p.layer.clone() else {
            continue;
        };
        let e = layers.entry(layer).or_insert((0, 0, false));
        if let (Some(c), Some(t)) = (p.current, p.total) {
            e.0 = c;
            e.1 = t;
        }
        if p.status.contains("complete") || p.status.contains("exists") {
            e.2 = true;
        }
        let done = layers.values().filter(|l| l.2).count();
        let (cur, tot) = layers.values().fold((0, 0), |(a, b), l| (a + l.0, b + l.1));
        let mb = |b: u64| b as f64 / 1_000_000.0;
        let mut err = std::io::stderr();
        let _ = write!(
            err,
            "\r\x1b[Kpulling {image}: {done}/{} layers, {:.1}/{:.1} MB",
            layers.len(),
            mb(cur),
            mb(tot)
        );
        let _ = err.flush();
        drew = true;
    }
    if drew {
        errln!("");
    }
}

/// `skipper serve`'s options from its flags and the environment (`HOST` and `PORT`, as the
/// seed's container sets them, when `--listen` is not given).
fn serve_options(args: &crate::cli::ServeArgs) -> Result<crate::server::ServeOptions> {
    let listen = match args.listen {
        Some(l) => l,
        None => {
            let host = env_nonempty("HOST").unwrap_or_else(|| "127.0.0.1".into());
            let port = env_nonempty("PORT").unwrap_or_else(|| "8080".into());
            let port: u16 = port
                .parse()
                .with_context(|| format!("PORT={port:?} is not a port"))?;
            let ip: std::net::IpAddr = host
                .parse()
                .with_context(|| format!("HOST={host:?} is not an IP address"))?;
            std::net::SocketAddr::new(ip, port)
        }
    };
    Ok(crate::server::ServeOptions {
        listen,
        reconcile_interval: args.reconcile_interval,
        drain_timeout: args.drain_timeout,
        public_url: args.public_url.clone(),
        metrics_listen: args.metrics_listen,
    })
}
