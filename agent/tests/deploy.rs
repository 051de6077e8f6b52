//! Deploying releases with real files: safe unpacking of hostile archives,
//! the `current` switch, pruning, the artifact cache and resumable fetches
//! (against a fake coordinator over real mutual TLS).

mod common;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use common::{Ca, Coordinator, Entry, FetchBehaviour, current, gz, releases, sha256_hex, tar};
use drover_agent::config::DeployConfig;
use drover_agent::deploy::fetch::{
    ArtifactSource, Cache, ChunkStream, FetchError, FetchProgress, GrpcSource,
};
use drover_agent::deploy::{self, DeployError, Progress};
use drover_net::transport::ConnectOptions;
use drover_proto::v1::{ArtifactChunk, Release};

/// Artifacts from memory; counts opens; can end the first stream early.
#[derive(Default)]
struct MemSource {
    artifacts: Mutex<HashMap<String, Vec<u8>>>,
    opens: Mutex<Vec<(String, u64)>>,
    /// The first stream ends cleanly after this many bytes.
    short_first: Mutex<Option<u64>>,
}

impl MemSource {
    fn add(&self, bytes: Vec<u8>) -> String {
        let d = sha256_hex(&bytes);
        self.artifacts
            .lock()
            .expect("lock")
            .insert(d.clone(), bytes);
        d
    }

    fn opens(&self) -> usize {
        self.opens.lock().expect("lock").len()
    }
}

#[async_trait::async_trait]
impl ArtifactSource for MemSource {
    async fn open(&self, digest: &str, offset: u64) -> Result<ChunkStream, FetchError> {
        self.opens
            .lock()
            .expect("lock")
            .push((digest.to_string(), offset));
        let bytes = self
            .artifacts
            .lock()
            .expect("lock")
            .get(digest)
            .cloned()
            .ok_or_else(|| FetchError::NotFound(format!("artifact {digest} not found")))?;
        let size = bytes.len() as u64;
        let end = self
            .short_first
            .lock()
            .expect("lock")
            .take()
            .map_or(size, |n| n.min(size));
        let mut chunks = Vec::new();
        let mut at = offset;
        while at < end {
            let to = (at + 16 * 1024).min(end);
            chunks.push(Ok(ArtifactChunk {
                offset: at,
                data: bytes[at as usize..to as usize].to_vec().into(),
                size_bytes: size,
            }));
            at = to;
        }
        Ok(Box::pin(futures::stream::iter(chunks)))
    }
}

fn release(version: &str, digest: &str) -> Release {
    Release {
        version: version.into(),
        digest: digest.into(),
    }
}

fn deploy_cfg(dir: &Path) -> DeployConfig {
    DeployConfig {
        dir: dir.to_path_buf(),
        keep_releases: 5,
        max_unpacked_bytes: 1024 * 1024,
        max_entries: 50,
    }
}

fn no_progress(_: Progress) {}

fn good_archive(version: &str) -> Vec<u8> {
    tar(&[
        Entry::Dir("./"),
        Entry::Dir("./bin"),
        Entry::Dir("./lib"),
        Entry::Exec("./lib/app", b"#!/bin/sh\necho app\n"),
        Entry::Symlink("./bin/app", "../lib/app"),
        Entry::HardLink("./lib/app-again", "./lib/app"),
        Entry::File("./VERSION", version.as_bytes()),
        Entry::Symlink("./self", "."),
    ])
}

struct Setup {
    _tmp: tempfile::TempDir,
    cfg: DeployConfig,
    cache: Cache,
    source: MemSource,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().expect("tempdir");
    let cfg = deploy_cfg(&tmp.path().join("srv/web"));
    let cache = Cache::new(&tmp.path().join("agent"));
    Setup {
        _tmp: tmp,
        cfg,
        cache,
        source: MemSource::default(),
    }
}

impl Setup {
    async fn deploy(&self, version: &str, digest: &str) -> Result<deploy::Deployed, DeployError> {
        deploy::deploy(
            &self.cfg,
            &release(version, digest),
            &self.cache,
            &self.source,
            &no_progress,
        )
        .await
    }
}

#[tokio::test]
async fn a_good_tar_gz_is_unpacked_and_current_switched() {
    let s = setup();
    let v1 = s.source.add(gz(&good_archive("v1")));
    let progress = Mutex::new(Vec::new());
    let record = |p: Progress| progress.lock().expect("lock").push(p);
    let d = deploy::deploy(&s.cfg, &release("v1", &v1), &s.cache, &s.source, &record)
        .await
        .expect("deploy v1");
    let name1 = format!("v1-{}", &v1[..12]);
    assert_eq!(d.dir, s.cfg.releases_dir().join(&name1));
    assert!(!d.reused && d.fetched && d.previous.is_none());
    assert_eq!(current(&s.cfg.dir), Some(format!("releases/{name1}")));
    let cur = s.cfg.current_link();
    assert_eq!(
        std::fs::read_to_string(cur.join("VERSION")).expect("VERSION"),
        "v1"
    );
    assert_eq!(
        std::fs::read_to_string(cur.join("bin/app")).expect("through the symlink"),
        "#!/bin/sh\necho app\n"
    );
    let mode = std::fs::metadata(cur.join("lib/app"))
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
    let meta = std::fs::metadata(cur.join("lib/app-again")).expect("hard link");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(meta.nlink(), 2);
    assert_eq!(
        deploy::current_release(&s.cfg).expect("read"),
        Some(release("v1", &v1))
    );
    let progress = progress.into_inner().expect("lock");
    assert!(
        progress.iter().any(|p| matches!(p, Progress::Fetching(FetchProgress { done, total }) if done == total && *total > 0)),
        "{progress:?}"
    );
    assert!(progress.contains(&Progress::Unpacking));

    // A plain tar works too (told apart by its magic bytes).
    let v2 = s.source.add(good_archive("v2"));
    let d = s.deploy("v2", &v2).await.expect("deploy v2");
    assert_eq!(d.previous.as_deref(), Some(name1.as_str()));
    assert_eq!(
        std::fs::read_to_string(cur.join("VERSION")).expect("VERSION"),
        "v2"
    );
    let names = releases(&s.cfg.dir);
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
}

#[tokio::test]
async fn unsafe_archives_are_refused_by_entry_and_leave_nothing_behind() {
    let zeros = vec![0u8; 2 * 1024 * 1024];
    let many: Vec<String> = (0..60).map(|i| format!("./f{i}")).collect();
    let many_entries: Vec<Entry<'_>> = many.iter().map(|p| Entry::File(p, b"x")).collect();
    let cases: Vec<(&str, Vec<u8>, &str, &str)> = vec![
        (
            "absolute path",
            tar(&[Entry::File("/tmp/drover-evil", b"x")]),
            "/tmp/drover-evil",
            "absolute",
        ),
        (
            "dot-dot",
            tar(&[Entry::File("./a/../../evil", b"x")]),
            "./a/../../evil",
            "`..`",
        ),
        (
            "escaping symlink",
            tar(&[Entry::Dir("./d"), Entry::Symlink("./d/link", "../../etc")]),
            "./d/link",
            "outside the release",
        ),
        (
            "absolute symlink",
            tar(&[Entry::Symlink("./passwd", "/etc/passwd")]),
            "./passwd",
            "absolute path",
        ),
        (
            "chained symlinks",
            tar(&[
                Entry::Dir("./sub"),
                Entry::Symlink("./sub/up", ".."),
                Entry::Symlink("./s", "sub/up"),
                Entry::Symlink("./t", "s/.."),
            ]),
            "./t",
            "resolves outside",
        ),
        (
            "writing through a symlink",
            tar(&[
                Entry::Dir("./sub"),
                Entry::Symlink("./d", "sub"),
                Entry::File("./d/file", b"x"),
            ]),
            "./d/file",
            "through the symlink",
        ),
        (
            "escaping hard link",
            tar(&[Entry::HardLink("./hl", "../outside")]),
            "./hl",
            "`..`",
        ),
        (
            "absolute hard link",
            tar(&[Entry::HardLink("./hl", "/etc/passwd")]),
            "./hl",
            "absolute",
        ),
        (
            "hard link to nothing unpacked",
            tar(&[Entry::HardLink("./hl", "./missing")]),
            "./hl",
            "not a file unpacked earlier",
        ),
        (
            "device file",
            tar(&[Entry::CharDevice("./dev/null")]),
            "./dev/null",
            "character device",
        ),
        ("fifo", tar(&[Entry::Fifo("./pipe")]), "./pipe", "fifo"),
        (
            "bomb",
            gz(&tar(&[
                Entry::File("./ok", b"fine"),
                Entry::File("./zeros", &zeros),
            ])),
            "./zeros",
            "max_unpacked_bytes",
        ),
        (
            "too many entries",
            tar(&many_entries),
            "./f50",
            "max_entries",
        ),
    ];
    let s = setup();
    let v1 = s.source.add(gz(&good_archive("v1")));
    s.deploy("v1", &v1).await.expect("deploy v1");
    let before = releases(&s.cfg.dir);
    for (i, (what, bytes, entry, why)) in cases.into_iter().enumerate() {
        let digest = s.source.add(bytes);
        let err = s
            .deploy(&format!("bad{i}"), &digest)
            .await
            .expect_err(what)
            .to_string();
        assert!(
            err.contains(&format!("entry `{entry}`")) && err.contains(why),
            "{what}: {err}"
        );
        assert_eq!(releases(&s.cfg.dir), before, "{what}: leftovers");
        assert_eq!(
            deploy::current_release(&s.cfg).expect("read"),
            Some(release("v1", &v1)),
            "{what}: current changed"
        );
    }
    assert!(!Path::new("/tmp/drover-evil").exists());

    let garbage = s.source.add(b"this is not an archive at all".to_vec());
    let err = s.deploy("junk", &garbage).await.expect_err("junk");
    assert!(err.to_string().contains("not a tar"), "{err}");
    assert_eq!(releases(&s.cfg.dir), before);
}

#[tokio::test]
async fn keeps_the_last_releases_but_never_current_or_previous() {
    let mut s = setup();
    s.cfg.keep_releases = 2;
    let mut digests = Vec::new();
    for v in ["v1", "v2", "v3", "v4"] {
        let d = s.source.add(gz(&good_archive(v)));
        let done = s.deploy(v, &d).await.expect("deploy");
        deploy::prune(&s.cfg, done.previous.as_deref());
        digests.push(d);
    }
    let name = |i: usize, v: &str| format!("{v}-{}", &digests[i][..12]);
    assert_eq!(releases(&s.cfg.dir), vec![name(2, "v3"), name(3, "v4")]);

    // Rolling back to a kept release needs no download.
    let opens = s.source.opens();
    let back = s.deploy("v3", &digests[2]).await.expect("rollback");
    assert!(back.reused);
    assert_eq!(s.source.opens(), opens, "no fetch for a kept release");
    deploy::prune(&s.cfg, back.previous.as_deref());
    assert_eq!(releases(&s.cfg.dir), vec![name(2, "v3"), name(3, "v4")]);
    assert_eq!(
        current(&s.cfg.dir),
        Some(format!("releases/{}", name(2, "v3")))
    );

    // keep_releases = 1 still keeps the previous release.
    s.cfg.keep_releases = 1;
    let v5 = s.source.add(gz(&good_archive("v5")));
    let done = s.deploy("v5", &v5).await.expect("deploy v5");
    deploy::prune(&s.cfg, done.previous.as_deref());
    let kept = releases(&s.cfg.dir);
    assert_eq!(kept, vec![name(2, "v3"), format!("v5-{}", &v5[..12])]);
}

#[tokio::test]
async fn the_cache_and_unpacked_releases_are_reused() {
    let s = setup();
    let v1 = s.source.add(gz(&good_archive("v1")));
    s.deploy("v1", &v1).await.expect("deploy");
    assert_eq!(s.source.opens(), 1);
    let again = s.deploy("v1", &v1).await.expect("again");
    assert!(again.reused && !again.fetched);
    assert_eq!(s.source.opens(), 1);

    // Another instance on the same host shares the cache.
    let other = deploy_cfg(&s._tmp.path().join("srv/api"));
    let d = deploy::deploy(
        &other,
        &release("v1", &v1),
        &s.cache,
        &s.source,
        &no_progress,
    )
    .await
    .expect("deploy from cache");
    assert!(!d.reused && !d.fetched);
    assert_eq!(s.source.opens(), 1, "served from the cache");

    // A corrupted cache entry is noticed and fetched again.
    std::fs::write(s.cache.path_of(&v1), b"rotten").expect("corrupt");
    let third = deploy_cfg(&s._tmp.path().join("srv/third"));
    let d = deploy::deploy(
        &third,
        &release("v1", &v1),
        &s.cache,
        &s.source,
        &no_progress,
    )
    .await
    .expect("deploy after corruption");
    assert!(d.fetched);
    assert_eq!(s.source.opens(), 2);
}

#[tokio::test]
async fn a_checksum_mismatch_is_refused_and_the_old_release_stays() {
    let s = setup();
    let v1 = s.source.add(gz(&good_archive("v1")));
    s.deploy("v1", &v1).await.expect("deploy");
    let claimed = sha256_hex(b"what the operator pushed");
    s.source
        .artifacts
        .lock()
        .expect("lock")
        .insert(claimed.clone(), gz(&good_archive("evil")));
    let err = s.deploy("v2", &claimed).await.expect_err("mismatch");
    let text = err.to_string();
    assert!(
        text.contains("checksum mismatch") && text.contains(&claimed),
        "{text}"
    );
    assert!(!s.cache.path_of(&claimed).exists());
    assert!(!s.cache.partial_of(&claimed).exists());
    assert_eq!(
        deploy::current_release(&s.cfg).expect("read"),
        Some(release("v1", &v1))
    );
    assert_eq!(releases(&s.cfg.dir).len(), 1);
}

#[tokio::test]
async fn invalid_releases_are_refused_before_anything_happens() {
    let s = setup();
    let err = s
        .deploy("../../x", &"a".repeat(64))
        .await
        .expect_err("version");
    assert!(err.to_string().contains("version"), "{err}");
    let err = s
        .deploy("v1", "../../etc/passwd")
        .await
        .expect_err("digest");
    assert!(err.to_string().contains("digest"), "{err}");
    assert_eq!(s.source.opens(), 0);
}

#[tokio::test]
async fn a_stream_that_ends_early_is_resumed_from_the_partial_file() {
    let s = setup();
    let big: Vec<u8> = (0..300_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let v1 = s.source.add(gz(&tar(&[Entry::File("./data", &big)])));
    *s.source.short_first.lock().expect("lock") = Some(50_000);
    let mut cfg = s.cfg.clone();
    cfg.max_unpacked_bytes = 10 * 1024 * 1024;
    deploy::deploy(&cfg, &release("v1", &v1), &s.cache, &s.source, &no_progress)
        .await
        .expect("deploy");
    let opens = s.source.opens.lock().expect("lock").clone();
    assert_eq!(opens, vec![(v1.clone(), 0), (v1.clone(), 50_000)]);
    assert_eq!(
        std::fs::read(cfg.current_link().join("data")).expect("data"),
        big
    );
}

/// The checksum covers the bytes kept from an earlier attempt too (they
/// are hashed from disk, the new ones as they arrive): wrong kept bytes
/// cost one fresh download, not a bad release.
#[tokio::test]
async fn a_partial_file_with_wrong_bytes_is_downloaded_again_from_the_start() {
    let s = setup();
    let big: Vec<u8> = (0..300_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let v1 = s.source.add(gz(&tar(&[Entry::File("./data", &big)])));
    std::fs::create_dir_all(s.cache.dir()).expect("cache dir");
    std::fs::write(s.cache.partial_of(&v1), vec![0xA5u8; 40_000]).expect("partial");
    let mut cfg = s.cfg.clone();
    cfg.max_unpacked_bytes = 10 * 1024 * 1024;
    deploy::deploy(&cfg, &release("v1", &v1), &s.cache, &s.source, &no_progress)
        .await
        .expect("deploy");
    let opens = s.source.opens.lock().expect("lock").clone();
    assert_eq!(opens, vec![(v1.clone(), 40_000), (v1.clone(), 0)]);
    assert_eq!(
        std::fs::read(cfg.current_link().join("data")).expect("data"),
        big
    );
    assert!(!s.cache.partial_of(&v1).exists());
}

#[tokio::test]
async fn a_fetch_cut_off_over_mtls_resumes_where_it_stopped() {
    let ca = Ca::new("test CA");
    let mut coord = Coordinator::start(&ca).await;
    // Incompressible enough to stay large.
    let bytes: Vec<u8> = (0..200_000u32)
        .flat_map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes())
        .collect();
    let digest = coord.add_artifact(bytes.clone());
    coord.set_fetch(FetchBehaviour {
        cut_first_after: Some(300_000),
        chunk: Some(32 * 1024),
        chunk_delay: None,
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let files = common::enrol_directly(&ca, dir.path(), "h1", Duration::from_secs(3600));
    let source = GrpcSource::new(files, vec![coord.addr.clone()], ConnectOptions::default());
    let cache = Cache::new(dir.path());
    let seen = Mutex::new(Vec::new());
    let record = |p: FetchProgress| seen.lock().expect("lock").push(p);
    let (path, downloaded) = cache.get(&digest, &source, &record).await.expect("fetch");
    assert!(downloaded);
    assert_eq!(path, dir.path().join("cache").join(&digest));
    assert_eq!(std::fs::read(&path).expect("read"), bytes);
    assert!(!cache.partial_of(&digest).exists());
    let first = coord
        .expect("the first fetch", |e| match e {
            common::Event::Fetch { offset, .. } => Some(*offset),
            _ => None,
        })
        .await;
    let second = coord
        .expect("the resumed fetch", |e| match e {
            common::Event::Fetch { offset, .. } => Some(*offset),
            _ => None,
        })
        .await;
    assert_eq!((first, second), (0, 300_000));
    let seen = seen.into_inner().expect("lock");
    let last = seen.last().expect("progress");
    assert_eq!((last.done, last.total), (800_000, 800_000));

    // An artifact the coordinator does not have fails at once.
    let missing = "b".repeat(64);
    let err = cache
        .get(&missing, &source, &|_| {})
        .await
        .expect_err("missing");
    assert!(matches!(err, FetchError::NotFound(_)), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("artifact {missing} not found")),
        "{err}"
    );
}

#[tokio::test]
async fn start_up_removes_what_a_killed_deploy_left_behind() {
    let s = setup();
    let v1 = s.source.add(gz(&good_archive("v1")));
    s.deploy("v1", &v1).await.expect("deploy");
    let tmp = s.cfg.releases_dir().join(".tmp-v2-abc-123-0");
    std::fs::create_dir_all(tmp.join("half/unpacked")).expect("mkdir");
    std::fs::write(tmp.join("half/unpacked/file"), b"x").expect("write");
    std::fs::set_permissions(tmp.join("half"), std::fs::Permissions::from_mode(0o500))
        .expect("chmod");
    let link = s.cfg.dir.join("current.tmp-4242");
    std::os::unix::fs::symlink("releases/.tmp-v2-abc-123-0", &link).expect("symlink");
    let removed = deploy::clean_leftovers(&s.cfg);
    assert_eq!(removed.len(), 2, "{removed:?}");
    assert!(!tmp.exists() && std::fs::symlink_metadata(&link).is_err());
    assert_eq!(releases(&s.cfg.dir), vec![format!("v1-{}", &v1[..12])]);
    assert_eq!(
        deploy::current_release(&s.cfg).expect("read"),
        Some(release("v1", &v1))
    );
}

impl Setup {
    async fn stage(&self, version: &str, digest: &str) -> Result<deploy::Staged, DeployError> {
        deploy::stage(
            &self.cfg,
            &release(version, digest),
            &self.cache,
            &self.source,
            &no_progress,
        )
        .await
    }
}

#[tokio::test]
async fn staging_unpacks_beside_current_and_the_deploy_only_switches() {
    let s = setup();
    let v1 = s.source.add(gz(&good_archive("v1")));
    s.deploy("v1", &v1).await.expect("deploy v1");
    let v2 = s.source.add(gz(&good_archive("v2")));

    let staged = s.stage("v2", &v2).await.expect("stage v2");
    assert!(!staged.reused && staged.fetched);
    assert_eq!(
        staged.dir,
        s.cfg.releases_dir().join(format!("v2-{}", &v2[..12]))
    );
    assert_eq!(
        std::fs::read_to_string(staged.dir.join("VERSION")).expect("VERSION"),
        "v2"
    );
    // Nothing that serves moved.
    assert_eq!(
        deploy::current_release(&s.cfg).expect("read"),
        Some(release("v1", &v1))
    );

    // Staging again is done at once: no fetch, no unpack.
    let opens = s.source.opens();
    let again = s.stage("v2", &v2).await.expect("stage again");
    assert!(again.reused && !again.fetched);
    assert_eq!(s.source.opens(), opens);

    // A prune before the deploy keeps what was staged for it.
    let mut cfg = s.cfg.clone();
    cfg.keep_releases = 1;
    assert!(deploy::prune(&cfg, None).is_empty());

    let d = s.deploy("v2", &v2).await.expect("deploy v2");
    assert!(d.reused, "the deploy found it staged");
    assert_eq!(s.source.opens(), opens, "the deploy fetched nothing");
    assert_eq!(
        deploy::current_release(&s.cfg).expect("read"),
        Some(release("v2", &v2))
    );
}

#[tokio::test]
async fn a_bad_or_missing_artifact_fails_the_stage_and_current_stays() {
    let s = setup();
    let v1 = s.source.add(gz(&good_archive("v1")));
    s.deploy("v1", &v1).await.expect("deploy v1");
    let before = releases(&s.cfg.dir);

    let junk = s.source.add(b"random bytes, not an archive".to_vec());
    let err = s.stage("junk", &junk).await.expect_err("junk");
    assert!(err.to_string().contains("not a tar"), "{err}");

    let good = gz(&good_archive("v3"));
    let truncated = s.source.add(good[..good.len() / 2].to_vec());
    let err = s.stage("cut", &truncated).await.expect_err("truncated");
    assert!(err.to_string().contains("read archive"), "{err}");

    let missing = "e".repeat(64);
    assert!(s.stage("missing", &missing).await.is_err());

    assert_eq!(releases(&s.cfg.dir), before, "leftovers");
    assert_eq!(
        deploy::current_release(&s.cfg).expect("read"),
        Some(release("v1", &v1))
    );
}
