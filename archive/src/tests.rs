use std::io::Write;

use super::*;

enum Entry<'a> {
    File(&'a str, &'a [u8]),
    /// A file whose header claims `u64` bytes, followed by no data.
    Claims(&'a str, u64),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
    HardLink(&'a str, &'a str),
    CharDevice(&'a str),
    Fifo(&'a str),
}

fn tar(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let mut h = tar::Header::new_gnu();
        let (path, kind, data, size, link): (&str, EntryType, &[u8], Option<u64>, Option<&str>) =
            match e {
                Entry::File(p, d) => (p, EntryType::Regular, d, None, None),
                Entry::Claims(p, n) => (p, EntryType::Regular, &[], Some(*n), None),
                Entry::Dir(p) => (p, EntryType::Directory, &[], None, None),
                Entry::Symlink(p, t) => (p, EntryType::Symlink, &[], None, Some(t)),
                Entry::HardLink(p, t) => (p, EntryType::Link, &[], None, Some(t)),
                Entry::CharDevice(p) => (p, EntryType::Char, &[], None, None),
                Entry::Fifo(p) => (p, EntryType::Fifo, &[], None, None),
            };
        let name = &mut h.as_old_mut().name;
        assert!(path.len() < name.len(), "test path too long");
        name[..path.len()].copy_from_slice(path.as_bytes());
        if let Some(t) = link {
            h.set_link_name_literal(t).expect("link name");
        }
        h.set_entry_type(kind);
        h.set_size(size.unwrap_or(data.len() as u64));
        h.set_mode(0o644);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        out.extend(std::iter::repeat_n(0u8, pad));
    }
    if !entries.iter().any(|e| matches!(e, Entry::Claims(..))) {
        out.extend(std::iter::repeat_n(0u8, 1024));
    }
    out
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).expect("gzip");
    e.finish().expect("gzip")
}

const SMALL: Limits = Limits {
    max_bytes: 1024 * 1024,
    max_entries: 50,
};

fn refusal(bytes: &[u8]) -> String {
    check(bytes, SMALL).expect_err("refused").to_string()
}

#[test]
fn a_good_archive_passes_both_plain_and_gzipped() {
    let t = tar(&[
        Entry::Dir("./"),
        Entry::Dir("./bin"),
        Entry::File("./bin/app", b"#!/bin/sh\necho hi\n"),
        Entry::Symlink("./app", "bin/app"),
        Entry::HardLink("./app2", "./bin/app"),
        Entry::File("./data/deep/file", b"x"),
    ]);
    let want = Stats {
        entries: 6,
        files: 2,
        bytes: 19,
    };
    assert_eq!(check(&t[..], SMALL).expect("tar"), want);
    assert_eq!(check(&gz(&t)[..], SMALL).expect("gz"), want);
}

#[test]
fn unsafe_entries_are_refused_by_name_and_reason() {
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
            "a file where a directory is needed",
            tar(&[Entry::File("./f", b"x"), Entry::File("./f/g", b"x")]),
            "./f/g",
            "is a file, not a directory",
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
            "hard link through a symlink",
            tar(&[
                Entry::Dir("./sub"),
                Entry::File("./sub/f", b"x"),
                Entry::Symlink("./s", "sub"),
                Entry::HardLink("./hl", "./s/f"),
            ]),
            "./hl",
            "goes through the symlink",
        ),
        (
            // Harmless where it was made, `../../x` from `a/b/` is `x`;
            // linked to the root, the same target leads out.
            "hard link that moves a symlink",
            tar(&[
                Entry::Dir("./a/b"),
                Entry::Symlink("./a/b/l", "../../x"),
                Entry::HardLink("./moved", "./a/b/l"),
            ]),
            "./moved",
            "resolves outside",
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
                Entry::Claims("./zeros", 16 << 30),
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
        (
            "a directory replaced by a file",
            tar(&[Entry::Dir("./d"), Entry::File("./d", b"x")]),
            "./d",
            "a directory of the same name",
        ),
    ];
    for (what, bytes, entry, why) in cases {
        let err = refusal(&bytes);
        assert!(
            err.contains(&format!("entry `{entry}`")) && err.contains(why),
            "{what}: {err}"
        );
    }
}

#[test]
fn a_later_entry_replaces_an_earlier_one_of_the_same_name() {
    // An escaping symlink later replaced by a file is no longer there.
    let t = tar(&[
        Entry::Symlink("./l", "sub"),
        Entry::File("./l", b"now a file"),
    ]);
    assert!(check(&t[..], SMALL).is_ok());
}

#[test]
fn what_is_not_a_whole_archive_is_refused() {
    let good = gz(&tar(&[Entry::File("./a", &[7u8; 100_000])]));
    let err = check(&b"this is not an archive at all"[..], SMALL).expect_err("junk");
    assert!(matches!(err, ArchiveError::Format), "{err}");
    assert!(check(&[][..], SMALL).is_err(), "empty");

    for cut in [good.len() / 2, good.len() - 4] {
        let err = check(&good[..cut], SMALL).expect_err("truncated");
        assert!(matches!(err, ArchiveError::Read(_)), "cut at {cut}: {err}");
    }
    // One flipped byte in the gzip trailer (its CRC).
    let mut crc = good.clone();
    let at = crc.len() - 6;
    crc[at] ^= 0xff;
    assert!(check(&crc[..], SMALL).is_err(), "bad crc");
    assert!(check(&good[..], SMALL).is_ok());
}

#[test]
fn zeros_after_the_end_of_the_tar_count_towards_the_limit() {
    let mut t = tar(&[Entry::File("./a", b"x")]);
    t.extend(std::iter::repeat_n(0u8, 4 * 1024 * 1024));
    let limits = Limits {
        max_bytes: 1024,
        max_entries: 10,
    };
    let err = check(&gz(&t)[..], limits).expect_err("bomb");
    assert!(err.to_string().contains("max_unpacked_bytes"), "{err}");
}

#[test]
fn the_sink_sees_what_the_archive_holds_in_order() {
    #[derive(Default)]
    struct Log(Vec<String>);
    impl Sink for Log {
        fn dir(&mut self, rel: &Path) -> Result<(), ArchiveError> {
            self.0.push(format!("dir {}", rel.display()));
            Ok(())
        }
        fn remove(&mut self, rel: &Path) -> Result<(), ArchiveError> {
            self.0.push(format!("rm {}", rel.display()));
            Ok(())
        }
        fn file(
            &mut self,
            rel: &Path,
            mode: u32,
            data: &mut dyn Read,
        ) -> Result<u64, ArchiveError> {
            let mut v = Vec::new();
            data.read_to_end(&mut v).map_err(ArchiveError::Read)?;
            self.0
                .push(format!("file {} {mode:o} {}", rel.display(), v.len()));
            Ok(v.len() as u64)
        }
        fn symlink(&mut self, rel: &Path, target: &Path) -> Result<(), ArchiveError> {
            self.0
                .push(format!("ln -s {} {}", target.display(), rel.display()));
            Ok(())
        }
        fn hard_link(&mut self, rel: &Path, source: &Path) -> Result<(), ArchiveError> {
            self.0
                .push(format!("ln {} {}", source.display(), rel.display()));
            Ok(())
        }
        fn dir_mode(&mut self, rel: &Path, mode: u32) -> Result<(), ArchiveError> {
            self.0.push(format!("chmod {mode:o} {}", rel.display()));
            Ok(())
        }
    }
    let t = tar(&[
        Entry::Dir("./a"),
        Entry::File("./a/b/f", b"abc"),
        Entry::File("./a/b/f", b"abcd"),
        Entry::Symlink("./l", "a/b/f"),
        Entry::HardLink("./h", "a/b/f"),
    ]);
    let mut log = Log::default();
    walk(&t[..], SMALL, &mut log, &AtomicBool::new(false)).expect("walk");
    assert_eq!(
        log.0,
        [
            "dir a",
            "dir a/b",
            "file a/b/f 644 3",
            "rm a/b/f",
            "file a/b/f 644 4",
            "ln -s a/b/f l",
            "ln a/b/f h",
            "chmod 644 a",
        ]
    );
}

#[test]
fn cancelling_stops_the_walk() {
    let t = tar(&[Entry::File("./a", b"x")]);
    let err = walk(&t[..], SMALL, &mut Discard, &AtomicBool::new(true)).expect_err("cancelled");
    assert!(matches!(err, ArchiveError::Cancelled), "{err}");
}

#[test]
fn relative_paths() {
    assert_eq!(
        relative(Path::new("./a/b")).ok(),
        Some(PathBuf::from("a/b"))
    );
    assert!(relative(Path::new("/etc/passwd")).is_err());
    assert!(relative(Path::new("a/../../b")).is_err());
    assert_eq!(relative(Path::new("./")).ok(), Some(PathBuf::new()));
}

#[test]
fn lexical_symlink_checks() {
    let ok = |rel: &str, t: &str| check_symlink_lexically(Path::new(rel), Path::new(t));
    assert!(ok("bin/app", "../lib/app").is_ok());
    assert!(ok("app", "lib/../lib/app").is_ok());
    assert!(ok("app", "../x").is_err());
    assert!(ok("a/b/c", "../../../x").is_err());
    assert!(ok("app", "/etc/passwd").is_err());
}

#[test]
fn symlink_loops_are_refused() {
    let t = tar(&[
        Entry::Symlink("./loop1", "loop2"),
        Entry::Symlink("./loop2", "loop1"),
    ]);
    assert!(refusal(&t).contains("too many levels"));
}
