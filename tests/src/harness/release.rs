//! Release artifacts built at test time: drover-sample releases whose `run`
//! script decides how the instance behaves, and hostile archives the agent
//! must refuse.
//!
//! A release is a `.tar.gz` with `VERSION` and an executable `run` that
//! execs the workspace's drover-sample with the instance's arguments plus
//! the release's own flags. Instances use `command = "{current}/run"`, so
//! each release fully decides its behaviour (a failing health check, a slow
//! start) without any change outside the test crate.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::bin_path;

/// One tar entry. Paths are written into the header verbatim, so hostile
/// names (`../x`, `/abs`) get through as they would from an attacker.
#[derive(Debug, Clone, Copy)]
pub enum Entry<'a> {
    File(&'a str, &'a [u8]),
    Exec(&'a str, &'a [u8]),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
}

/// A plain tar archive of `entries`.
pub fn tar(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        let (path, kind, data, link, mode): (&str, tar::EntryType, &[u8], Option<&str>, u32) =
            match *e {
                Entry::File(p, d) => (p, tar::EntryType::Regular, d, None, 0o644),
                Entry::Exec(p, d) => (p, tar::EntryType::Regular, d, None, 0o755),
                Entry::Dir(p) => (p, tar::EntryType::Directory, &[], None, 0o755),
                Entry::Symlink(p, t) => (p, tar::EntryType::Symlink, &[], Some(t), 0o777),
            };
        // The old header's name field, written directly: the tar crate's
        // set_path refuses `..` and absolute paths, which is the point here.
        let name = &mut h.as_old_mut().name;
        assert!(path.len() < name.len(), "tar entry path too long: {path}");
        name[..path.len()].copy_from_slice(path.as_bytes());
        if let Some(t) = link {
            h.set_link_name_literal(t)
                .unwrap_or_else(|e| panic!("tar link name {t}: {e}"));
        }
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        b.append(&h, data)
            .unwrap_or_else(|e| panic!("append tar entry {path}: {e}"));
    }
    b.into_inner().expect("finish tar archive in memory")
}

/// gzip of `bytes`.
pub fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).expect("gzip in memory");
    e.finish().expect("finish gzip in memory")
}

/// The `run` script of a drover-sample release: execs drover-sample with
/// the instance's arguments (`"$@"`) followed by `flags`.
pub fn run_script(version: &str, flags: &[&str]) -> String {
    let sample = bin_path("drover-sample");
    let mut line = format!("exec {} \"$@\"", sh_quote(&sample.display().to_string()));
    for f in flags {
        line.push(' ');
        line.push_str(&sh_quote(f));
    }
    format!("#!/bin/sh\n# drover-sample release {version}\n{line}\n")
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A drover-sample release as `.tar.gz` bytes: `VERSION` holds `version`,
/// `run` passes `flags` (e.g. `--fail-health`) to drover-sample.
pub fn sample_release(version: &str, flags: &[&str]) -> Vec<u8> {
    let run = run_script(version, flags);
    let version_file = format!("{version}\n");
    gz(&tar(&[
        Entry::Dir("./"),
        Entry::File("./VERSION", version_file.as_bytes()),
        Entry::Exec("./run", run.as_bytes()),
    ]))
}

/// [`sample_release`] plus `./payload`, `payload_bytes` of incompressible
/// bytes: a release that takes a while to fetch and unpack.
pub fn sample_release_with_payload(version: &str, flags: &[&str], payload_bytes: usize) -> Vec<u8> {
    let run = run_script(version, flags);
    let version_file = format!("{version}\n");
    // xorshift64: cheap, deterministic, and gzip cannot shrink it.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut payload = Vec::with_capacity(payload_bytes + 8);
    while payload.len() < payload_bytes {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        payload.extend_from_slice(&x.to_le_bytes());
    }
    payload.truncate(payload_bytes);
    gz(&tar(&[
        Entry::Dir("./"),
        Entry::File("./VERSION", version_file.as_bytes()),
        Entry::Exec("./run", run.as_bytes()),
        Entry::File("./payload", &payload),
    ]))
}

/// Archives the agent must refuse while unpacking, each with the words its
/// error has to contain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hostile {
    /// An entry `../<name>` that climbs out of the release directory.
    Traversal,
    /// An entry with an absolute path.
    AbsolutePath,
    /// A symlink pointing outside the release directory.
    EscapingSymlink,
    /// 8 MiB of zeros (a few KiB compressed): over a 1 MiB
    /// `max_unpacked_bytes`.
    Bomb,
}

/// Bytes of zeros in [`Hostile::Bomb`].
pub const BOMB_BYTES: usize = 8 * 1024 * 1024;

impl Hostile {
    pub const ALL: [Hostile; 4] = [
        Hostile::Traversal,
        Hostile::AbsolutePath,
        Hostile::EscapingSymlink,
        Hostile::Bomb,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Hostile::Traversal => "traversal",
            Hostile::AbsolutePath => "absolute-path",
            Hostile::EscapingSymlink => "escaping-symlink",
            Hostile::Bomb => "bomb",
        }
    }

    /// The archive, as `.tar.gz` bytes. `outside` is a path the absolute
    /// entry would write (the test checks it never appears); the traversal
    /// entry is `../<file name of outside>`.
    pub fn archive(self, outside: &Path) -> Vec<u8> {
        let leaf = outside
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "drover-evil".to_string());
        let climb = format!("../{leaf}");
        let absolute = outside.display().to_string();
        let zeros = vec![0u8; BOMB_BYTES];
        let run = run_script("evil", &[]);
        let mut entries = vec![
            Entry::Dir("./"),
            Entry::File("./VERSION", b"evil\n"),
            Entry::Exec("./run", run.as_bytes()),
        ];
        match self {
            Hostile::Traversal => entries.push(Entry::File(&climb, b"escaped\n")),
            Hostile::AbsolutePath => entries.push(Entry::File(&absolute, b"escaped\n")),
            Hostile::EscapingSymlink => {
                entries.push(Entry::Dir("./conf"));
                entries.push(Entry::Symlink("./conf/etc", "../../../../etc"));
            }
            Hostile::Bomb => entries.push(Entry::File("./zeros", &zeros)),
        }
        gz(&tar(&entries))
    }

    /// Words the deploy step's error must contain (from the agent's
    /// unpacker): the offending entry and why.
    pub fn expected_error(self, outside: &Path) -> Vec<String> {
        let leaf = outside
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        match self {
            Hostile::Traversal => vec![format!("../{leaf}"), "`..`".to_string()],
            Hostile::AbsolutePath => vec![outside.display().to_string(), "absolute".to_string()],
            Hostile::EscapingSymlink => {
                vec!["./conf/etc".to_string(), "outside the release".to_string()]
            }
            Hostile::Bomb => vec!["./zeros".to_string(), "max_unpacked_bytes".to_string()],
        }
    }
}

/// Writes `bytes` to `<dir>/<name>` and returns the path.
pub fn write_artifact(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(archive: &[u8]) -> Vec<String> {
        let dec = flate2::read::GzDecoder::new(archive);
        let mut a = tar::Archive::new(dec);
        a.entries()
            .expect("entries")
            .map(|e| {
                let e = e.expect("entry");
                String::from_utf8_lossy(&e.path_bytes()).into_owned()
            })
            .collect()
    }

    #[test]
    fn sample_release_has_version_and_run() {
        let bytes = sample_release("v3", &["--fail-health"]);
        assert_eq!(names(&bytes), vec!["./", "./VERSION", "./run"]);
        let script = run_script("v3", &["--fail-health"]);
        assert!(script.starts_with("#!/bin/sh\n"), "{script}");
        assert!(script.contains("\"$@\" '--fail-health'"), "{script}");
    }

    #[test]
    fn hostile_archives_keep_their_hostile_names() {
        let outside = Path::new("/tmp/drover-evil-test");
        assert!(
            names(&Hostile::Traversal.archive(outside)).contains(&"../drover-evil-test".into())
        );
        assert!(
            names(&Hostile::AbsolutePath.archive(outside))
                .contains(&"/tmp/drover-evil-test".into())
        );
        let bomb = Hostile::Bomb.archive(outside);
        assert!(bomb.len() < 64 * 1024, "bomb is {} bytes", bomb.len());
    }
}
