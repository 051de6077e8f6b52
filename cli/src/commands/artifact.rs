//! `drover artifact push|ls`: the releases rollouts deploy.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use drover_archive::{ArchiveError, Limits};
use drover_proto::json::ArtifactJson;
use drover_proto::v1::push_artifact_request::{Header, Msg};
use drover_proto::v1::{Artifact, ListArtifactsRequest, PushArtifactRequest};
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
    /// Before anything is uploaded the archive is read through the same
    /// checks the agents apply when they unpack it, and refused (exit 1,
    /// nothing uploaded) with the entry and the reason when it is:
    ///   - not a tar or gzip-compressed tar, truncated, or failing its
    ///     gzip checksum;
    ///   - an entry with an absolute path or a `..` component;
    ///   - a symlink that leads outside the release (also through other
    ///     symlinks), or a write through a symlinked directory;
    ///   - a hard link to anything but a file earlier in the archive;
    ///   - a device file or fifo;
    ///   - more than --max-entries entries, or more than
    ///     --max-unpacked-bytes bytes once unpacked (decompression bombs;
    ///     reading stops at the limit).
    ///
    /// The coordinator refuses an upload that fails the same checks.
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
    /// Refuse archives whose files add up to more than this once
    /// unpacked; keep it at or below the agents' `max_unpacked_bytes`
    #[arg(long, value_name = "BYTES", default_value_t = drover_archive::DEFAULT_MAX_UNPACKED_BYTES)]
    pub max_unpacked_bytes: u64,
    /// Refuse archives with more entries than this; keep it at or below
    /// the agents' `max_entries`
    #[arg(long, value_name = "COUNT", default_value_t = drover_archive::DEFAULT_MAX_ENTRIES)]
    pub max_entries: u64,
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

pub async fn run(ctx: &Ctx, cmd: ArtifactCommand) -> anyhow::Result<()> {
    match cmd {
        ArtifactCommand::Push(args) => push(ctx, args).await,
        ArtifactCommand::Ls(args) => ls(ctx, args).await,
    }
}

/// Reads the archive once through the agents' unpacking rules, hashing
/// every byte of the file on the way; returns the sha256, or why the
/// archive would be refused on a host.
fn check_and_hash(path: &std::path::Path, limits: Limits) -> anyhow::Result<String> {
    let file = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut reader = Hashing {
        inner: std::io::BufReader::with_capacity(CHUNK, file),
        hasher: Sha256::new(),
    };
    if let Err(e) = drover_archive::check(&mut reader, limits) {
        return Err(match e {
            ArchiveError::Io { .. } => anyhow::Error::new(e),
            e => anyhow::anyhow!(
                "refused {}: {e}; nothing was uploaded: agents would refuse to unpack it, so fix the archive and push again",
                path.display()
            ),
        });
    }
    // Bytes past the archive's own end (after a gzip member) are hashed too:
    // the digest is of the file as uploaded.
    std::io::copy(&mut reader, &mut std::io::sink())
        .with_context(|| format!("read {}", path.display()))?;
    Ok(hex::encode(reader.hasher.finalize()))
}

/// Hashes what is read through it.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: std::io::Read> std::io::Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

async fn push(ctx: &Ctx, args: PushArgs) -> anyhow::Result<()> {
    // Check and hash first, before connecting: a bad archive is refused
    // here with the reason, and the coordinator checks the upload against
    // the digest, so bytes changed in flight (or the file changing under
    // us) fail the push.
    let limits = Limits {
        max_bytes: args.max_unpacked_bytes,
        max_entries: args.max_entries,
    };
    let path = args.file.clone();
    let digest = tokio::task::spawn_blocking(move || check_and_hash(&path, limits))
        .await
        .context("check the archive")??;
    let mut session = ctx.session().await?;
    let mut result = upload(&mut session, &args, &digest).await?;
    // A coordinator that does not lead refuses an upload too large to be
    // resent for us; the session has moved to the leader it named, so
    // send it again, once.
    if let Err(status) = &result
        && crate::leader::leader_hint(status).is_some()
    {
        result = upload(&mut session, &args, &digest).await?;
    }
    let artifact = match result {
        Ok(r) => r,
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

/// One upload of the file: the coordinator's answer, or its refusal.
async fn upload(
    session: &mut crate::conn::Session,
    args: &PushArgs,
    digest: &str,
) -> anyhow::Result<Result<Artifact, tonic::Status>> {
    let mut file = tokio::fs::File::open(&args.file)
        .await
        .with_context(|| format!("open {}", args.file.display()))?;
    let header = PushArtifactRequest {
        msg: Some(Msg::Header(Header {
            service: args.service.clone(),
            version: args.version.clone(),
            expected_digest: digest.to_string(),
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
    Ok(result.map(tonic::Response::into_inner))
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

    fn tar_gz(files: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut b = tar::Builder::new(gz);
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, &data[..]).expect("append");
        }
        b.into_inner().expect("tar").finish().expect("gzip")
    }

    #[test]
    fn a_good_archive_is_hashed_whole_in_the_same_pass() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("a.tar.gz");
        let mut bytes = tar_gz(&[("app", vec![7u8; CHUNK * 3 + 3])]);
        // Bytes after the gzip member are part of what is uploaded.
        bytes.extend_from_slice(b"trailer");
        std::fs::write(&p, &bytes).expect("write");
        let want = hex::encode(Sha256::digest(&bytes));
        assert_eq!(check_and_hash(&p, Limits::default()).expect("hash"), want);
    }

    #[test]
    fn a_bad_archive_is_refused_with_the_reason() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("junk.tar.gz");
        std::fs::write(&p, b"random bytes, not an archive").expect("write");
        let err = format!(
            "{:#}",
            check_and_hash(&p, Limits::default()).expect_err("junk")
        );
        assert!(
            err.contains("refused") && err.contains("not a tar"),
            "{err}"
        );
        assert!(err.contains("nothing was uploaded"), "{err}");

        let big = tar_gz(&[("zeros", vec![0u8; 4096])]);
        std::fs::write(&p, &big).expect("write");
        let limits = Limits {
            max_bytes: 1024,
            max_entries: 10,
        };
        let err = format!("{:#}", check_and_hash(&p, limits).expect_err("too big"));
        assert!(
            err.contains("entry `zeros`") && err.contains("max_unpacked_bytes"),
            "{err}"
        );

        let err = format!(
            "{:#}",
            check_and_hash(&dir.path().join("missing"), limits).expect_err("missing")
        );
        assert!(err.contains("open") && !err.contains("refused"), "{err}");
    }
}
