//! Bad artifacts never cost capacity. `drover artifact push` refuses the
//! archives an agent would refuse, with the reason; and every way a bad or
//! missing artifact can still reach a rollout (a blob corrupted on the
//! coordinator, bit rot the coordinator has not noticed yet, a bomb over
//! the agents' own limit, a blob that disappeared) fails at the stage,
//! while the instance still serves: no instance is ever drained, by the
//! rollout's events, by the agents' own execution logs, and by HAProxy's
//! `show stat` polled all along.

use std::path::Path;
use std::time::Duration;

use drover_tests::harness::release::{gz, sample_release, write_artifact};
use drover_tests::{CapacitySampler, Hostile, WAIT, WebFleet};

use crate::grpc::push_artifact;

/// Spec for every bad rollout: one instance at a time (floor 2 of 3), stop
/// at the first failure and put it back.
const STRICT: &[&str] = &[
    "--min-healthy",
    "66%",
    "--max-failures",
    "0",
    "--auto-rollback",
];

const HOSTS: u32 = 3;

/// A gzip stream of one tar header that claims a 16 GiB file: the start
/// of a decompression bomb, refused from its header alone.
fn bomb_header() -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    h.set_path("zeros").expect("path");
    h.set_size(16 << 30);
    h.set_mode(0o644);
    h.set_cksum();
    let mut bytes = h.as_bytes().to_vec();
    bytes.extend(std::iter::repeat_n(0u8, 64 * 1024));
    gz(&bytes)
}

/// Flips a byte in the middle of `path`, keeping its size and mtime: what
/// a failing disk does, which the coordinator only notices on its next
/// scheduled re-check.
fn rot(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644));
    let mtime = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .expect("mtime");
    let mut bytes = std::fs::read(path).expect("read blob");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(path, &bytes).expect("write blob");
    let f = std::fs::File::options()
        .write(true)
        .open(path)
        .expect("open blob");
    f.set_modified(mtime).expect("keep mtime");
}

#[test]
fn push_refuses_what_agents_would_refuse_with_the_reason() {
    let web = WebFleet::builder().hosts(1).start();
    let outside = web.root.join("drover-escaped");
    let good = sample_release("v9", &[]);
    let cases: Vec<(&str, Vec<u8>, Vec<String>)> = vec![
        (
            "random bytes",
            (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect(),
            vec!["not a tar".into()],
        ),
        (
            "truncated gzip",
            good[..good.len() / 2].to_vec(),
            vec!["read archive".into()],
        ),
        (
            "16 GiB bomb",
            bomb_header(),
            vec!["zeros".into(), "max_unpacked_bytes".into()],
        ),
        (
            "path traversal",
            Hostile::Traversal.archive(&outside),
            Hostile::Traversal.expected_error(&outside),
        ),
        (
            "absolute path",
            Hostile::AbsolutePath.archive(&outside),
            Hostile::AbsolutePath.expected_error(&outside),
        ),
        (
            "escaping symlink",
            Hostile::EscapingSymlink.archive(&outside),
            Hostile::EscapingSymlink.expected_error(&outside),
        ),
    ];
    for (i, (what, bytes, words)) in cases.iter().enumerate() {
        let file = write_artifact(&web.artifacts_dir(), &format!("bad-{i}.tar.gz"), bytes);
        let out = web.fleet.cli(&[
            "artifact",
            "push",
            &file.to_string_lossy(),
            "--service",
            "web",
            "--version",
            &format!("bad-{i}"),
        ]);
        assert_eq!(out.code, Some(1), "{what}: {out:?}");
        assert!(
            out.stderr.contains("refused")
                && out.stderr.contains("nothing was uploaded")
                && words.iter().all(|w| out.stderr.contains(w.as_str())),
            "{what}: the refusal must say why ({words:?}): {out:?}"
        );
    }
    let ls = web.fleet.cli(&["artifact", "ls", "-o", "json"]);
    assert!(ls.success(), "{ls:?}");
    assert_eq!(ls.stdout.trim(), "[]", "nothing may be stored: {ls:?}");
    assert!(std::fs::symlink_metadata(&outside).is_err());
}

/// A client that skips the CLI's check (here: straight gRPC) is refused by
/// the coordinator with the same reasons, and nothing is stored.
#[test]
fn the_coordinator_refuses_what_push_would_refuse() {
    let web = WebFleet::builder().hosts(1).start();
    let fleet = &web.fleet;
    let (addr, ca) = (fleet.coordinator.grpc_addr(), fleet.pki.ca_cert());
    let outside = web.root.join("drover-escaped");
    let good = sample_release("v9", &[]);
    let cases: Vec<(&str, Vec<u8>, Vec<String>)> = vec![
        (
            "random bytes",
            (0..4096u32).map(|i| (i * 7919 % 251) as u8).collect(),
            vec!["not a tar".into()],
        ),
        (
            "truncated gzip",
            good[..good.len() / 2].to_vec(),
            vec!["read archive".into()],
        ),
        (
            "16 GiB bomb",
            bomb_header(),
            vec!["zeros".into(), "max_unpacked_bytes".into()],
        ),
        (
            "path traversal",
            Hostile::Traversal.archive(&outside),
            Hostile::Traversal.expected_error(&outside),
        ),
    ];
    for (i, (what, bytes, words)) in cases.iter().enumerate() {
        let res = push_artifact(&addr, &ca, &fleet.operator_cert, &format!("raw-{i}"), bytes);
        let Err((code, message)) = res else {
            panic!("{what}: the coordinator stored it: {res:?}");
        };
        assert_eq!(code, tonic::Code::InvalidArgument, "{what}: {message}");
        assert!(
            message.contains("nothing was stored")
                && words.iter().all(|w| message.contains(w.as_str())),
            "{what}: {message}"
        );
    }
    let stored = std::fs::read_dir(fleet.coordinator.data_dir.join("artifacts/sha256"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(stored, 0, "blobs were stored");
    assert!(
        push_artifact(&addr, &ca, &fleet.operator_cert, "v9", &good).is_ok(),
        "a good archive goes through"
    );
}

#[test]
fn every_bad_artifact_fails_at_the_stage_and_no_instance_leaves_service() {
    let web = WebFleet::builder()
        .hosts(HOSTS as usize)
        .max_unpacked_bytes(1024 * 1024)
        .start();
    web.deploy_initial("v1");
    let v1_link = web.current_link("h1");
    let v1_releases = web.releases_on_disk("h1");

    // (version, words web@h1's error must contain)
    let mut cases: Vec<(String, Vec<String>)> = Vec::new();

    // Bytes on the coordinator that no longer match their digest: it
    // refuses to serve them.
    let corrupt = web.push_release("corrupt", &[]);
    web.fleet
        .corrupt_artifact(&corrupt, b"random bytes, not what was pushed");
    cases.push((
        "corrupt".into(),
        vec![
            format!("artifact {corrupt} on the coordinator is corrupt"),
            "push it again".into(),
        ],
    ));
    let truncated = web.push_release("truncated", &[]);
    let whole = std::fs::read(web.fleet.artifact_file(&truncated)).expect("blob");
    web.fleet
        .corrupt_artifact(&truncated, &whole[..whole.len() / 2]);
    cases.push((
        "truncated".into(),
        vec![format!(
            "artifact {truncated} on the coordinator is corrupt"
        )],
    ));
    let traversal = web.push_release("traversal", &[]);
    web.fleet.corrupt_artifact(
        &traversal,
        &Hostile::Traversal.archive(&web.root.join("drover-escaped")),
    );
    cases.push((
        "traversal".into(),
        vec![format!(
            "artifact {traversal} on the coordinator is corrupt"
        )],
    ));
    // Bit rot the coordinator has not re-checked yet: the agent's own
    // sha256 check catches it.
    let rotten = web.push_release("rotten", &[]);
    rot(&web.fleet.artifact_file(&rotten));
    cases.push(("rotten".into(), vec!["checksum mismatch".into(), rotten]));
    // Within what push allows (4 GiB) but over these agents' 1 MiB.
    let bomb = Hostile::Bomb.archive(&web.root.join("drover-escaped"));
    web.push_bytes("bomb", &bomb);
    cases.push((
        "bomb".into(),
        vec!["./zeros".into(), "max_unpacked_bytes".into()],
    ));
    // Gone from the coordinator.
    let gone = web.push_release("gone", &[]);
    std::fs::remove_file(web.fleet.artifact_file(&gone)).expect("remove blob");
    cases.push(("gone".into(), vec![format!("artifact {gone} not found")]));

    let serving = web.haproxy.capacity().expect("show stat");
    assert!(serving >= HOSTS, "{}", web.haproxy.describe());
    // Every 50 ms, at most 20 minutes' worth.
    let sampler = CapacitySampler::start(
        web.haproxy.socket(),
        &web.haproxy.backend,
        Duration::from_millis(50),
        24_000,
    );
    let mut results = Vec::new();
    for (version, words) in &cases {
        let out = web.start_rollout(version, STRICT);
        results.push((version.clone(), words.clone(), out, web.latest()));
    }
    let report = sampler.stop();

    for (version, words, out, rollout) in &results {
        let diag = || {
            format!(
                "{version}:\n{out}\n{}\n{}",
                rollout.timeline(),
                web.diagnostics()
            )
        };
        assert_eq!(out.code, Some(1), "{}", diag());
        assert_eq!(rollout.phase, "rolled_back", "{}", diag());
        let h1 = rollout.instance("h1");
        let error = h1.error_text();
        assert!(
            error.contains("stage") && words.iter().all(|w| error.contains(w.as_str())),
            "web@h1's error must name the problem ({words:?}): {error:?}\n{}",
            diag()
        );
        assert!(
            words.iter().any(|w| out.combined().contains(w.as_str())),
            "the CLI's output must show the problem\n{}",
            diag()
        );
        assert_eq!(h1.version(), Some("v1"), "{}", diag());
        let drained: Vec<String> = (rollout.events.iter())
            .filter(|e| e.step_is("draining"))
            .map(|e| format!("{:?}", e.instance))
            .collect();
        assert!(drained.is_empty(), "drained {drained:?}\n{}", diag());
    }
    // The agents' own record: not one drain (nor anything after a stage)
    // ran for any of these rollouts.
    for host in web.hosts() {
        let ran: Vec<String> = (web.fleet.agent(&host).executions().into_iter())
            .filter(|id| {
                results
                    .iter()
                    .any(|(_, _, _, r)| id.starts_with(&format!("{}/", r.id)))
            })
            .collect();
        assert!(
            ran.iter().all(|id| id.contains("/stage/")),
            "{host} ran more than stages: {ran:?}"
        );
    }
    // The six rollouts take about a second: every 50 ms gives a handful.
    assert!(report.samples >= 5 && report.errors.is_empty(), "{report}");
    assert_eq!(
        report.min_capacity(),
        Some(serving),
        "HAProxy's in-service count went under {serving}\n{report}\n{}",
        web.diagnostics()
    );
    assert_eq!(web.current_link("h1"), v1_link, "current moved");
    assert_eq!(web.releases_on_disk("h1"), v1_releases, "leftovers");
    web.wait_all_serving("v1");
    web.haproxy.wait_serving(HOSTS, WAIT);
}
