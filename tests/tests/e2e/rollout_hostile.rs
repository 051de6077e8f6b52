//! Hostile artifacts and a corrupted one, rolled out for real: the stage
//! step refuses them (on the agent, or the coordinator refuses to serve a
//! corrupt blob), the instance's error says what was wrong, nothing lands
//! outside the release directory, and the old release keeps serving
//! through HAProxy without a single failed request. `artifact push` now
//! refuses the traversal, absolute-path and escaping-symlink archives
//! itself (`rollout_artifacts.rs`); the bomb is within what push allows
//! and over these agents' own limit, so it still reaches them.

use drover_tests::harness::release::sample_release;
use drover_tests::{Hostile, Load, LoadSpec, WAIT, WebFleet};

/// Spec for every bad rollout: one instance at a time (floor 2 of 3), stop
/// at the first failure and put it back.
const STRICT: &[&str] = &[
    "--min-healthy",
    "66%",
    "--max-failures",
    "0",
    "--auto-rollback",
];

#[test]
fn hostile_artifacts_and_a_checksum_mismatch_fail_the_rollout_and_v1_keeps_serving() {
    let web = WebFleet::builder().hosts(3).start();
    web.deploy_initial("v1");
    let v1_link = web.current_link("h1");
    let v1_releases = web.releases_on_disk("h1");
    assert!(v1_link.is_some(), "no current link after v1");
    let outside = web.root.join("drover-escaped");

    // (version, artifact bytes, words the instance's error must contain)
    let mut cases: Vec<(String, Vec<u8>, Vec<String>)> = [Hostile::Bomb]
        .iter()
        .map(|h| {
            (
                format!("bad-{}", h.name()),
                h.archive(&outside),
                h.expected_error(&outside),
            )
        })
        .collect();
    let mut digests = Vec::new();
    for (version, bytes, _) in &cases {
        digests.push(web.push_bytes(version, bytes));
    }
    // A good release whose stored bytes are swapped after the push.
    let mismatch = web.push_release("v2", &[]);
    web.fleet
        .corrupt_artifact(&mismatch, &sample_release("evil", &[]));
    cases.push((
        "v2".to_string(),
        Vec::new(),
        vec![format!("artifact {mismatch} on the coordinator is corrupt")],
    ));

    let load = Load::start(&web.haproxy.frontend_addr(), LoadSpec::default());
    web.fleet.wait(WAIT, "load flows", || load.counts().1 >= 30);
    let mut results = Vec::new();
    for (version, _, words) in &cases {
        let out = web.start_rollout(version, STRICT);
        let rollout = web.latest();
        results.push((version.clone(), words.clone(), out, rollout));
        // Back in service before the next one, or its floor is not met.
        web.haproxy.wait_serving(3, WAIT);
    }
    let report = load.stop();

    for (version, words, out, rollout) in &results {
        let diag = || {
            format!(
                "{version}:\n{out}\n{}\n{report}\n{}",
                rollout.timeline(),
                web.diagnostics()
            )
        };
        assert_eq!(out.code, Some(1), "{}", diag());
        assert_eq!(
            rollout.target.as_ref().map(|t| t.version.as_str()),
            Some(version.as_str()),
            "{}",
            diag()
        );
        assert_eq!(rollout.phase, "rolled_back", "{}", diag());
        let h1 = rollout.instance("h1");
        let error = h1.error_text();
        assert!(
            error.contains("stage") && words.iter().all(|w| error.contains(w.as_str())),
            "web@h1's error must name the problem ({words:?}): {error:?}\n{}",
            diag()
        );
        assert!(
            rollout.reason_text().contains("stage"),
            "the rollout's reason must point at the stage: {:?}\n{}",
            rollout.reason,
            diag()
        );
        assert!(
            words.iter().any(|w| out.combined().contains(w.as_str())),
            "the CLI's output must show the problem\n{}",
            diag()
        );
        assert_eq!(h1.version(), Some("v1"), "{}", diag());
        assert_eq!(h1.step, "rolled_back", "{}", diag());
        let touched: Vec<&str> = rollout
            .events
            .iter()
            .filter(|e| e.step_is("draining"))
            .filter_map(|e| e.instance.as_deref())
            .collect();
        assert!(
            touched.iter().all(|i| *i == "web@h1"),
            "only web@h1 may be touched: {touched:?}\n{}",
            diag()
        );
    }

    // Nothing escaped, nothing was left behind, v1 is still current.
    for candidate in [
        outside.clone(),
        web.deploy_dir("h1").join("releases").join("drover-escaped"),
        web.deploy_dir("h1").join("drover-escaped"),
    ] {
        assert!(
            std::fs::symlink_metadata(&candidate).is_err(),
            "{} was written by a hostile artifact",
            candidate.display()
        );
    }
    assert_eq!(web.current_link("h1"), v1_link, "current moved");
    assert_eq!(web.releases_on_disk("h1"), v1_releases, "leftovers");

    web.wait_all_serving("v1");
    let diag = || format!("{report}\n{}", web.diagnostics());
    assert_eq!(report.failed, 0, "failed requests\n{}", diag());
    // The rollouts now fail at the stage, within moments: the load only
    // has to have flowed throughout (30 requests before they started).
    assert!(report.ok >= 30, "{report}");
    assert!(
        !report.hit_limit,
        "the load ended before the rollouts\n{report}"
    );
    assert_eq!(
        report.versions.keys().collect::<Vec<_>>(),
        vec!["v1"],
        "only v1 may ever answer\n{}",
        diag()
    );
    assert!(
        web.haproxy.failed_requests_logged(10).is_empty(),
        "{:#?}",
        web.haproxy.failed_requests_logged(10)
    );
}
