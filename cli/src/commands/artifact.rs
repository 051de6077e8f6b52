//! `drover artifact push|ls`: the releases rollouts deploy.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use drover_proto::v1::push_artifact_request::{Header, Msg};
use drover_proto::v1::{Artifact, ListArtifactsRequest, PushArtifactRequest};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use crate::commands::Ctx;
use crate::output::{ShowFormat, bytes, print, rfc3339_ms, table};

/// Bytes per upload message.
const CHUNK: usize = 256 * 1024;

#[derive(Debug, Subcommand)]
pub enum ArtifactCommand {
    /// Upload a release artifact (.tar.gz or .tar) to the coordinator
    ///
    /// The coordinator stores it by sha256 and binds it to SERVICE/VERSION.
    /// Pushing the same bytes again is a no-op; a version already bound to
    /// other bytes is refused, so a version never silently changes.
    ///
    /// Prints `pushed SERVICE VERSION: sha256:DIGEST (SIZE)`; with -o json
    /// one object for scripts:
    ///   {"service": "web", "version": "v2", "digest": "<64 hex>",
    ///    "size_bytes": 1234, "pushed_at": "2026-11-26T10:00:00Z",
    ///    "pushed_by": "operator/alice"}
    /// (digest without the sha256: prefix; pushed_at in UTC.)
    ///
    /// Example:
    ///   drover artifact push web-v2.tar.gz --service web --version v2
    #[command(verbatim_doc_comment, disable_version_flag = true)]
    Push(PushArgs),
    /// List pushed artifacts
    Ls(LsArgs),
}

#[derive(Debug, Args)]
pub struct PushArgs {
    /// The artifact file (.tar.gz or .tar)
    pub file: PathBuf,
    /// Service the release belongs to, e.g. web
    #[arg(long)]
    pub service: String,
    /// Version name, e.g. v2 or 2026.11.26-1
    #[arg(long)]
    pub version: String,
    /// Output format: table (one line) or json (the artifact object above)
    #[arg(short = 'o', long, value_name = "FORMAT", default_value = "table")]
    pub output: ShowFormat,
}

#[derive(Debug, Args)]
pub struct LsArgs {
    /// Only this service's artifacts
    #[arg(long)]
    pub service: Option<String>,
    /// Output format
    #[arg(short = 'o', long, value_name = "FORMAT", default_value = "table")]
    pub output: ShowFormat,
}

#[derive(Debug, Serialize)]
struct ArtifactJson {
    service: String,
    version: String,
    digest: String,
    size_bytes: u64,
    pushed_at: Option<String>,
    pushed_by: String,
}

impl From<&Artifact> for ArtifactJson {
    fn from(a: &Artifact) -> Self {
        ArtifactJson {
            service: a.service.clone(),
            version: a.version.clone(),
            digest: a.digest.clone(),
            size_bytes: a.size_bytes,
            pushed_at: rfc3339_ms(a.pushed_at_ms),
            pushed_by: a.pushed_by.clone(),
        }
    }
}

pub async fn run(ctx: &Ctx, cmd: ArtifactCommand) -> anyhow::Result<()> {
    match cmd {
        ArtifactCommand::Push(args) => push(ctx, args).await,
        ArtifactCommand::Ls(args) => ls(ctx, args).await,
    }
}

async fn sha256_file(path: &std::path::Path) -> anyhow::Result<String> {
    let mut file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("open {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = file
            .read(&mut buf)
            .await
            .with_context(|| format!("read {}", path.display()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

async fn push(ctx: &Ctx, args: PushArgs) -> anyhow::Result<()> {
    // Hash first: the coordinator checks the upload against it, so bytes
    // changed in flight (or the file changing under us) fail the push.
    let digest = sha256_file(&args.file).await?;
    let mut file = tokio::fs::File::open(&args.file)
        .await
        .with_context(|| format!("open {}", args.file.display()))?;
    let mut session = ctx.session().await?;
    let header = PushArtifactRequest {
        msg: Some(Msg::Header(Header {
            service: args.service.clone(),
            version: args.version.clone(),
            expected_digest: digest,
        })),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let path = args.file.clone();
    let reader = tokio::spawn(async move {
        if tx.send(header).await.is_err() {
            return Ok(());
        }
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = file
                .read(&mut buf)
                .await
                .with_context(|| format!("read {}", path.display()))?;
            if n == 0 {
                return Ok::<(), anyhow::Error>(());
            }
            let msg = PushArtifactRequest {
                msg: Some(Msg::Chunk(buf[..n].to_vec())),
            };
            if tx.send(msg).await.is_err() {
                return Ok(());
            }
        }
    });
    let result = session
        .client
        .push_artifact(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await;
    reader.await.context("upload task")??;
    let artifact = match result {
        Ok(r) => r.into_inner(),
        Err(status) => return Err(session.rpc_error(status)),
    };
    match args.output {
        ShowFormat::Json => print(&format!(
            "{}\n",
            serde_json::to_string_pretty(&ArtifactJson::from(&artifact))?
        )),
        ShowFormat::Table => print(&format!(
            "pushed {} {}: sha256:{} ({})\n",
            artifact.service,
            artifact.version,
            artifact.digest,
            bytes(artifact.size_bytes)
        )),
    }
}

async fn ls(ctx: &Ctx, args: LsArgs) -> anyhow::Result<()> {
    let mut session = ctx.session().await?;
    let req = ListArtifactsRequest {
        service: args.service.unwrap_or_default(),
    };
    let artifacts = match session.client.list_artifacts(req).await {
        Ok(r) => r.into_inner().artifacts,
        Err(status) => return Err(session.rpc_error(status)),
    };
    match args.output {
        ShowFormat::Json => {
            let v: Vec<ArtifactJson> = artifacts.iter().map(ArtifactJson::from).collect();
            print(&format!("{}\n", serde_json::to_string_pretty(&v)?))
        }
        ShowFormat::Table => print(&render_table(&artifacts)),
    }
}

fn render_table(artifacts: &[Artifact]) -> String {
    let rows: Vec<Vec<String>> = artifacts
        .iter()
        .map(|a| {
            vec![
                a.service.clone(),
                a.version.clone(),
                format!("sha256:{}", &a.digest[..a.digest.len().min(12)]),
                bytes(a.size_bytes),
                rfc3339_ms(a.pushed_at_ms).unwrap_or_default(),
                a.pushed_by.clone(),
            ]
        })
        .collect();
    table(
        &["SERVICE", "VERSION", "DIGEST", "SIZE", "PUSHED", "BY"],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_shows_short_digest_and_size() {
        let a = Artifact {
            service: "web".into(),
            version: "v2".into(),
            digest: "ab".repeat(32),
            size_bytes: 2048,
            pushed_at_ms: 1_790_000_000_000,
            pushed_by: "operator/alice".into(),
        };
        let text = render_table(&[a]);
        assert!(text.contains("SERVICE"), "{text}");
        assert!(text.contains("sha256:abababababab "), "{text}");
        assert!(text.contains("operator/alice"), "{text}");
    }

    #[tokio::test]
    async fn hashes_files_in_chunks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("a");
        std::fs::write(&p, vec![7u8; CHUNK * 2 + 3]).expect("write");
        let want = hex::encode(Sha256::digest(vec![7u8; CHUNK * 2 + 3]));
        assert_eq!(sha256_file(&p).await.expect("hash"), want);
    }
}
