//! Artifacts are pushed to the coordinator's content-addressed store: the
//! same bytes twice is a no-op, a version bound to other bytes is refused,
//! and viewers cannot push.

use drover_tests::Fleet;
use drover_tests::harness::release::sample_release;

#[test]
fn push_is_content_addressed_and_versions_never_change() {
    let fleet = Fleet::builder().agents(0).start();
    let v1 = fleet.dir.join("web-v1.tar");
    let other = fleet.dir.join("other.tar");
    let v1_bytes = sample_release("v1", &[]);
    std::fs::write(&v1, &v1_bytes).expect("write artifact");
    std::fs::write(&other, sample_release("other", &[])).expect("write artifact");
    let path = v1.to_str().expect("utf-8 path");

    let first = fleet.cli(&[
        "artifact",
        "push",
        path,
        "--service",
        "web",
        "--version",
        "v1",
        "-o",
        "json",
    ]);
    assert!(first.success(), "{first:?}");
    let pushed: serde_json::Value = serde_json::from_str(&first.stdout).expect("json");
    let digest = pushed["digest"].as_str().expect("digest").to_string();
    assert_eq!(digest.len(), 64, "{pushed}");
    assert_eq!(pushed["size_bytes"], v1_bytes.len());

    let again = fleet.cli(&[
        "artifact",
        "push",
        path,
        "--service",
        "web",
        "--version",
        "v1",
        "-o",
        "json",
    ]);
    assert!(
        again.success(),
        "same bytes again must be a no-op: {again:?}"
    );

    let clash = fleet.cli(&[
        "artifact",
        "push",
        other.to_str().expect("utf-8"),
        "--service",
        "web",
        "--version",
        "v1",
    ]);
    assert_eq!(clash.code, Some(1), "{clash:?}");
    assert!(clash.stderr.contains("already bound"), "{clash:?}");

    let ls = fleet.cli(&["artifact", "ls", "-o", "json"]);
    assert!(ls.success(), "{ls:?}");
    let list: Vec<serde_json::Value> = serde_json::from_str(&ls.stdout).expect("json");
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["digest"], digest.as_str());

    let viewer = fleet.viewer().run(&[
        "artifact",
        "push",
        path,
        "--service",
        "web",
        "--version",
        "v9",
    ]);
    assert_eq!(viewer.code, Some(1), "{viewer:?}");
    let listed_by_viewer = fleet.viewer().run(&["artifact", "ls"]);
    assert!(listed_by_viewer.success(), "{listed_by_viewer:?}");
    assert!(
        listed_by_viewer.stdout.contains("v1"),
        "{listed_by_viewer:?}"
    );
}
