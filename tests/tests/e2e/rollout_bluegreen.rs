//! Blue-green pairs (issue 11): every host runs `web-blue` and `web-green`
//! behind the same HAProxy backend. The agents report each instance's
//! color, and a blue-green start checks the pairs and which color serves
//! through them. The coordinator does not run blue-green rollouts yet; it
//! says so, after those checks.

use drover_tests::WebFleet;

#[test]
fn colored_pairs_reach_the_coordinator_and_a_blue_green_start_checks_them() {
    let web = WebFleet::builder().hosts(2).colors().start();
    web.push_release("v1", &[]);
    web.push_release("v2", &[]);

    // The agents report both instances of each pair with their color.
    let out = web.fleet.cli(&["agents", "-o", "json"]);
    assert!(out.success(), "{out}");
    let hosts: serde_json::Value = serde_json::from_str(&out.stdout).expect("agents JSON");
    let mut seen = Vec::new();
    for h in hosts.as_array().expect("a list of hosts") {
        for i in h["instances"].as_array().expect("instances") {
            seen.push(format!(
                "{} {} {}",
                i["id"].as_str().unwrap_or_default(),
                i["service"].as_str().unwrap_or_default(),
                i["color"].as_str().unwrap_or_default()
            ));
        }
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            "web-blue@h1 web blue",
            "web-blue@h2 web blue",
            "web-green@h1 web green",
            "web-green@h2 web green"
        ],
        "{out}"
    );

    // Nothing serves yet: there is no color to switch from.
    let dry = web.start_rollout("v1", &["--strategy", "blue-green", "--dry-run"]);
    assert_eq!(dry.code, Some(1), "{dry}");
    assert!(dry.stderr.contains("neither color serves"), "{dry}");

    // The first release goes everywhere with a rolling update.
    let out = web.start_rollout("v1", &["--min-healthy", "0", "--batch", "100%"]);
    assert!(out.success(), "{out}");

    // Now the pairs check out; the strategy itself is refused, plainly.
    let dry = web.start_rollout("v2", &["--strategy", "blue-green", "--dry-run"]);
    assert_eq!(dry.code, Some(1), "{dry}");
    assert!(
        dry.stderr
            .contains("strategy blue-green is not run by this coordinator yet"),
        "{dry}"
    );
}
