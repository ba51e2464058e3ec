//! `skipper tags REPOSITORY`: a repository's tags, newest first, with their digests.

use std::process::ExitCode;

use anyhow::{Context, Result};
use serde_json::json;
use skipper_core::{ErrorKind, ImageRef, TagPattern};
use skipper_registry::select_tags;

use crate::app;
use crate::cli::{Cli, TagsArgs};
use crate::output::outln;

/// List the tags matching `--pattern`, newest first, at most `--limit`, each with the digest a
/// `HEAD` of its manifest returns (a tag deleted meanwhile has none).
pub(crate) async fn run(cli: &Cli, args: &TagsArgs) -> Result<ExitCode> {
    let config = app::load_config(cli.global.config.as_deref())?;
    let registries = app::registries(&config)?;
    let repository = ImageRef::parse(&args.repository)?;
    let pattern = TagPattern::new(&args.pattern)?;
    let client = registries.get(repository.registry()).await?;
    let tags = client
        .list_tags(&repository)
        .await
        .with_context(|| format!("listing the tags of {}", repository.name()))?;
    let selected = select_tags(&tags, &pattern);
    let matching = selected.len();
    let mut rows = Vec::new();
    for tag in selected.into_iter().take(args.limit) {
        let digest = match client.resolve_digest(&repository.with_tag(tag)?).await {
            Ok(d) => Some(d),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => {
                return Err(e).with_context(|| format!("resolving {}:{tag}", repository.name()));
            }
        };
        rows.push((tag, digest));
    }
    if cli.global.json {
        let list: Vec<_> = rows
            .iter()
            .map(|(tag, digest)| json!({ "tag": tag, "digest": digest }))
            .collect();
        outln!("{}", serde_json::Value::Array(list));
    } else if rows.is_empty() {
        outln!(
            "no tag of {} matches {:?}",
            repository.name(),
            pattern.as_str()
        );
    } else {
        let width = rows.iter().map(|(t, _)| t.len()).max().unwrap_or(3).max(3);
        outln!("{:width$}  DIGEST", "TAG");
        for (tag, digest) in &rows {
            outln!("{tag:width$}  {}", digest.as_deref().unwrap_or("-"));
        }
        if matching > rows.len() {
            outln!(
                "({} of {matching} matching tags; --limit shows more)",
                rows.len()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
