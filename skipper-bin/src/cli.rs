//! Command-line arguments.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Skipper: health-gated, blue-green deploys of Docker images, with rollback.
#[derive(Debug, Parser)]
#[command(name = "skipper", version)]
pub(crate) struct Cli {
    #[command(flatten)]
    pub(crate) global: Global,
    #[command(subcommand)]
    pub(crate) command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub(crate) struct Global {
    /// Where Skipper keeps its state (SQLite). Default: $XDG_DATA_HOME/skipper or ~/.local/share/skipper.
    #[arg(long, global = true, env = "SKIPPER_DATA_DIR", value_parser = path_or_unset())]
    pub(crate) data_dir: Option<PathBuf>,
    /// The configuration file. Default: ./skipper.yaml if it exists.
    #[arg(long, global = true, env = "SKIPPER_CONFIG", value_parser = path_or_unset())]
    pub(crate) config: Option<PathBuf>,
    /// Print one JSON document on stdout and nothing else there.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// More logging on stderr (-v info, -vv debug). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub(crate) verbose: u8,
    /// Run the command on a Skipper server (`skipper serve`) instead of this host's Docker
    /// engine and store, e.g. http://127.0.0.1:8080. Every command but `serve`, `watch` and
    /// `token rotate` works against one.
    #[arg(long, global = true, env = "SKIPPER_URL")]
    pub(crate) url: Option<String>,
    /// The server's admin token (with --url).
    #[arg(long, global = true, env = "SKIPPER_TOKEN", hide_env_values = true, value_parser = secret())]
    pub(crate) token: Option<secrecy::SecretString>,
}

impl Cli {
    /// [`Cli::try_parse`], then an empty `--data-dir`/`--config` (`SKIPPER_DATA_DIR=`) is unset.
    pub(crate) fn parse_args() -> Result<Self, clap::Error> {
        let mut cli = <Self as clap::Parser>::try_parse()?;
        cli.global.unset_empty();
        Ok(cli)
    }
}

impl Global {
    fn unset_empty(&mut self) {
        for path in [&mut self.data_dir, &mut self.config] {
            if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                *path = None;
            }
        }
        if self.url.as_deref().is_some_and(|u| u.trim().is_empty()) {
            self.url = None;
        }
        use secrecy::ExposeSecret as _;
        if self
            .token
            .as_ref()
            .is_some_and(|t| t.expose_secret().is_empty())
        {
            self.token = None;
        }
    }
}

/// A secret from the command line or the environment, kept out of `Debug`.
fn secret() -> impl clap::builder::TypedValueParser<Value = secrecy::SecretString> {
    use clap::builder::TypedValueParser as _;
    clap::builder::StringValueParser::new().map(secrecy::SecretString::from)
}

/// A path that may be empty (then [`Global::unset_empty`] unsets it): clap's own path parser
/// refuses `SKIPPER_DATA_DIR=` as a missing value.
fn path_or_unset() -> impl clap::builder::TypedValueParser<Value = PathBuf> {
    use clap::builder::TypedValueParser as _;
    clap::builder::OsStringValueParser::new().map(PathBuf::from)
}

/// `--env KEY=value`: the name must be a valid environment variable name
/// ([`skipper_core::config::validate_env_name`]).
fn env_pair(kv: &str) -> Result<(String, String), String> {
    let Some((k, v)) = kv.split_once('=') else {
        return Err(format!("{kv:?} must look like KEY=value"));
    };
    skipper_core::config::validate_env_name(k)?;
    Ok((k.to_owned(), v.to_owned()))
}

/// When to pull.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum Pull {
    /// Always ask the registry.
    Always,
    /// Only if the image is not present.
    Missing,
    /// Never; the image must be present.
    Never,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Deploy an image to a stage (health-gated, blue-green, rolled back on failure).
    ///
    /// Pulls, starts the new version beside the running one, waits until it is healthy,
    /// switches the stage to it, then retires the oldest versions past --max-instances.
    Deploy(DeployArgs),
    /// List instances.
    Ps(PsArgs),
    /// Remove an instance (its routes, container and record).
    Rm(InstanceArgs),
    /// Stop an instance's container.
    Stop(InstanceArgs),
    /// Start a stopped instance.
    Start(InstanceArgs),
    /// Restart an instance.
    Restart(InstanceArgs),
    /// Roll a stage back to its previous successful version.
    Rollback(StageArgs),
    /// Show recent deployments, newest first.
    History(HistoryArgs),
    /// Repair the store against Docker and the proxy (every mutating command does this first).
    Reconcile,
    /// List a repository's tags, newest first, with their digests.
    ///
    /// Versions are ordered by semver (v1.10.0 above v1.9.3); other tags follow.
    Tags(TagsArgs),
    /// Poll registries and deploy new tags to auto_deploy stages.
    ///
    /// Other matching stages get a "new version available" notification.
    Watch(WatchArgs),
    /// Run the control plane: the /v1 API, webhooks, event streams, the registry watcher and
    /// a periodic reconcile.
    Serve(ServeArgs),
    /// Check that a Skipper server answers (`--url`; no token needed).
    Health,
    /// The server's admin token.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Import projects from a skipper.yaml into the store, or export them.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Nodes (hosts running `skippy`), on the server's data directory.
    #[command(subcommand)]
    Node(NodeCommand),
}

#[derive(Debug, Subcommand)]
pub(crate) enum NodeCommand {
    /// Register a node; its token is printed this once (the server keeps only its hash).
    Register(NodeRegister),
    /// Show a node: status (online/offline) and last heartbeat.
    Show(NodeId),
}

#[derive(Debug, Args)]
pub(crate) struct NodeRegister {
    /// The node's id.
    #[arg(long)]
    pub(crate) node_id: String,
    /// Its role.
    #[arg(long, default_value = "worker")]
    pub(crate) role: String,
    /// Its region.
    #[arg(long)]
    pub(crate) region: Option<String>,
    /// Use this token instead of a generated one (at least 16 characters).
    #[arg(long)]
    pub(crate) token: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct NodeId {
    /// The node's id.
    #[arg(long)]
    pub(crate) node_id: String,
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Where to listen. Default 127.0.0.1:8080, or HOST and PORT when set.
    #[arg(long, env = "SKIPPER_LISTEN")]
    pub(crate) listen: Option<std::net::SocketAddr>,
    /// How often to repair drift (a container removed or stopped by hand).
    #[arg(long, env = "SKIPPER_RECONCILE_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub(crate) reconcile_interval: std::time::Duration,
    /// How long in-flight deploys may take to finish or roll back on SIGTERM.
    #[arg(long, env = "SKIPPER_DRAIN_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub(crate) drain_timeout: std::time::Duration,
    /// The URL clients reach this server at (for the webhook URL). Default: from the request.
    #[arg(long, env = "SKIPPER_PUBLIC_URL")]
    pub(crate) public_url: Option<String>,
    /// Also serve /metrics without a token on this address.
    #[arg(long, env = "SKIPPER_METRICS_LISTEN")]
    pub(crate) metrics_listen: Option<std::net::SocketAddr>,
    /// Log format: json (the default when stderr is not a terminal) or text.
    #[arg(long, env = "SKIPPER_LOG_FORMAT")]
    pub(crate) log_format: Option<LogFormat>,
}

/// How the server logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Text,
}

#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
    /// Make a new admin token (printed once); the old one stops working at once.
    Rotate,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCommand {
    /// Create or replace the projects of a skipper.yaml in the store.
    Import(ConfigFile),
    /// Print every project in the store as skipper.yaml.
    Export,
}

#[derive(Debug, Args)]
pub(crate) struct ConfigFile {
    /// The file (`-` for stdin).
    pub(crate) file: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct TagsArgs {
    /// The repository, e.g. 127.0.0.1:5000/team/app (a tag, if given, is ignored).
    pub(crate) repository: String,
    /// Only tags matching this glob (`v*`, `dev-*`).
    #[arg(long, default_value = "*")]
    pub(crate) pattern: String,
    /// Show (and resolve digests for) at most this many tags.
    #[arg(long, short = 'n', default_value_t = 20)]
    pub(crate) limit: usize,
}

#[derive(Debug, Args)]
#[command(after_help = "\
The first poll of a repository records its tags as a baseline and deploys nothing, except the \
newest matching tag to an auto_deploy stage that has no instance yet. Seen tags are kept in the \
store, so a restart never redeploys old tags.

With --once the exit code is 0 when no deploy failed, 1 when a deploy failed (it was rolled \
back) or could not start, 2 when only polling failed (a registry unreachable or refusing). \
Without --once, --json prints one JSON report per round, one per line.")]
pub(crate) struct WatchArgs {
    /// Time between polls. Default: the config's global.poll_interval (5m).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub(crate) interval: Option<std::time::Duration>,
    /// Up to this much random extra time between polls. Default: a tenth of the interval.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub(crate) jitter: Option<std::time::Duration>,
    /// Poll once, print the report and exit.
    #[arg(long)]
    pub(crate) once: bool,
}

#[derive(Debug, Args)]
pub(crate) struct DeployArgs {
    /// The image, e.g. 127.0.0.1:5000/team/app:v1, or a local image id (sha256:…), which
    /// deploys that image by its tag and is never pulled.
    pub(crate) image: String,
    /// The project. Default: the image's name (its last path component).
    #[arg(long, short)]
    pub(crate) project: Option<String>,
    /// The stage.
    #[arg(long, short, default_value = "dev")]
    pub(crate) stage: String,
    /// The app's port in the container. Default: the config's, else the image's first EXPOSE.
    #[arg(long)]
    pub(crate) port: Option<u16>,
    /// HTTP path that answers 2xx when the app is healthy. Default: the image's HEALTHCHECK,
    /// else "still running after a few seconds".
    #[arg(long)]
    pub(crate) health_path: Option<String>,
    /// How long the new version may take to become healthy (e.g. 60s).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub(crate) health_timeout: Option<std::time::Duration>,
    /// How many versions may run side by side in the stage (oldest retired first).
    #[arg(long)]
    pub(crate) max_instances: Option<u32>,
    /// When to pull the image.
    #[arg(long, value_enum, default_value = "always")]
    pub(crate) pull: Pull,
    /// Environment variable for the container (repeatable).
    #[arg(long = "env", short = 'e', value_name = "K=V", value_parser = env_pair)]
    pub(crate) env: Vec<(String, String)>,
    /// Confirm a deploy to a stage with `confirm: true`.
    #[arg(long, short)]
    pub(crate) yes: bool,
    /// With the image `apply` (`skipper deploy apply --tenant-id acme --url …`): apply this
    /// tenant's compose stacks on its node, and wait for them.
    #[arg(long, value_name = "TENANT")]
    pub(crate) tenant_id: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct PsArgs {
    /// Only this project.
    #[arg(long, short)]
    pub(crate) project: Option<String>,
    /// Only this stage.
    #[arg(long, short)]
    pub(crate) stage: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct InstanceArgs {
    /// The instance id (or an unambiguous prefix of at least 4 characters).
    pub(crate) instance: String,
}

#[derive(Debug, Args)]
pub(crate) struct StageArgs {
    /// The project.
    #[arg(long, short)]
    pub(crate) project: String,
    /// The stage.
    #[arg(long, short, default_value = "dev")]
    pub(crate) stage: String,
}

#[derive(Debug, Args)]
pub(crate) struct HistoryArgs {
    /// Only this project.
    #[arg(long, short)]
    pub(crate) project: Option<String>,
    /// Only this stage.
    #[arg(long, short)]
    pub(crate) stage: Option<String>,
    /// At most this many.
    #[arg(long, short = 'n', default_value_t = 20)]
    pub(crate) limit: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        let mut cli = Cli::try_parse_from(std::iter::once("skipper").chain(args.iter().copied()))?;
        cli.global.unset_empty();
        Ok(cli)
    }

    #[test]
    fn env_names_are_checked() {
        let cli = parse(&["deploy", "app:v1", "-e", "A_1=x=y", "--env", "B="]).unwrap();
        let Command::Deploy(d) = cli.command else {
            panic!("not a deploy");
        };
        assert_eq!(
            d.env,
            [("A_1".into(), "x=y".into()), ("B".into(), String::new())]
        );
        for bad in ["A B=x", "A\nB=x", "=x", "NOEQUALS", "1A=x"] {
            let e = parse(&["deploy", "app:v1", "--env", bad]).unwrap_err();
            assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation, "{bad:?}");
            let msg = e.to_string();
            assert!(
                msg.contains("KEY=value") || msg.contains("not a valid environment variable name"),
                "{bad:?}: {msg}"
            );
        }
    }

    #[test]
    fn an_empty_path_is_unset() {
        let cli = parse(&["ps", "--data-dir", "", "--config", ""]).unwrap();
        assert_eq!((cli.global.data_dir, cli.global.config), (None, None));
        let cli = parse(&["ps", "--data-dir", "/d"]).unwrap();
        assert_eq!(cli.global.data_dir, Some(PathBuf::from("/d")));
    }
}
