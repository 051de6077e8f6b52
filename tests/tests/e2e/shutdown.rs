//! Issue 10, section 3: a graceful stop. SIGTERM stops an agent and a
//! coordinator in the middle of a rollout, each exits 0 within its
//! shutdown deadline (every task joined), and the agent's instances keep
//! running, to be adopted by the next agent. Readiness is announced only
//! once the CA and TLS material loaded: a bad CA file exits non-zero with
//! no ready file and a message naming the file.

use std::process::Command;
use std::time::Duration;

use drover_tests::harness::process::alive;
use drover_tests::harness::rollout::SERVICE;
use drover_tests::{Pki, WAIT, WebFleet, bin_path, run_cmd};

/// The coordinator's and the agent's default shutdown deadline (10 s)
/// plus room for a loaded test machine: the processes must exit on their
/// own, not be killed, and with status 0.
const GRACE: Duration = Duration::from_secs(30);

#[test]
fn sigterm_mid_rollout_exits_zero_and_instances_keep_running() {
    let mut web = WebFleet::builder().hosts(3).start();
    web.deploy_initial("v1");
    // v2 comes up a few seconds late, so the rollout is surely still
    // running when the signals arrive.
    web.push_release("v2", &["--start-delay", "3s"]);
    let started = web.start_detached("v2", &["--batch", "1", "--min-healthy", "2"]);
    let id = started.id.clone();
    let mid = web.wait_rollout(&id, "has an instance mid-step", WAIT, |r| {
        r.instances
            .iter()
            .any(|i| !matches!(i.step.as_str(), "" | "pending" | "done"))
    });

    // An agent whose instance waits its turn: SIGTERM, exit 0, and its
    // instance still runs.
    let host = mid
        .instances
        .iter()
        .find(|i| i.step == "pending")
        .map(|i| i.host.clone())
        .unwrap_or_else(|| panic!("no instance waits its turn\n{}", mid.timeline()));
    let pid = web
        .fleet
        .agent(&host)
        .instance_pid(SERVICE)
        .expect("the instance's pidfile");
    assert!(alive(pid), "instance of {host} runs before the signal");
    let stopped = web.fleet.agent_mut(&host).terminate(GRACE);
    assert!(
        stopped,
        "agent {host} did not exit 0 within {GRACE:?} of SIGTERM\n{}",
        web.diagnostics()
    );
    assert!(
        alive(pid),
        "the instance of {host} (pid {pid}) must outlive its agent"
    );
    let log = std::fs::read_to_string(&web.fleet.agent(&host).log).unwrap_or_default();
    assert!(
        log.contains("shutting down; instances keep running")
            && !log.contains("after shutdown began; exiting anyway"),
        "agent {host} stopped by its deadline, not by joining its tasks:\n{log}"
    );
    // The next agent adopts it: same pid, reported as running.
    web.fleet.agent_mut(&host).start();
    web.fleet
        .wait(WAIT, "the restarted agent adopts its instance", || {
            web.fleet.host(&host).is_some_and(|h| {
                h.status == "connected"
                    && h.instances
                        .iter()
                        .any(|i| i.pid == pid && i.state == "running")
            })
        });

    // The coordinator: agents connected, the rollout running.
    assert!(
        !web.status(&id).is_terminal(),
        "the rollout ended before the coordinator was stopped; make v2 slower\n{}",
        web.diagnostics_for(&id)
    );
    let stopped = web.fleet.coordinator.terminate(GRACE);
    assert!(
        stopped,
        "coordinator did not exit 0 within {GRACE:?} of SIGTERM\n{}",
        web.fleet.coordinator.describe(40)
    );
    let log = web.fleet.coordinator.log_text();
    assert!(log.contains("coordinator stopped"), "{log}");
    // The agents are not the coordinator's to stop, nor the instances
    // (the one mid-deploy may be restarting; the adopted one waits).
    for h in web.hosts() {
        assert!(web.fleet.agent(&h).is_running(), "agent {h} keeps running");
    }
    assert!(
        alive(pid),
        "the instance of {host} keeps running without a coordinator"
    );
}

#[test]
fn a_bad_ca_file_exits_non_zero_before_ready() {
    let dir = tempfile::tempdir().expect("temp dir");
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).expect("create home");
    let pki = Pki::init(&dir.path().join("pki"), &home);
    let c = pki.issue("coordinator", "c1", &["127.0.0.1"], None);
    let bad_ca = dir.path().join("not-a-ca.pem");
    std::fs::write(
        &bad_ca,
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
    )
    .expect("write bad CA");
    let config = dir.path().join("coordinator.toml");
    let quoted = |p: &std::path::Path| toml::Value::String(p.display().to_string()).to_string();
    std::fs::write(
        &config,
        format!(
            "name = \"c1\"\ndata_dir = {data}\n[listen]\ngrpc = \"127.0.0.1:0\"\nhttp = \"127.0.0.1:0\"\n\
             [tls]\nca_cert = {ca}\nca_key = {ca_key}\ncert = {cert}\nkey = {key}\n",
            data = quoted(&dir.path().join("data")),
            ca = quoted(&bad_ca),
            ca_key = quoted(&pki.ca_key()),
            cert = quoted(&c.cert),
            key = quoted(&c.key),
        ),
    )
    .expect("write config");
    let ready = dir.path().join("ready.json");
    let mut cmd = Command::new(bin_path("drover-coordinator"));
    cmd.arg("--config")
        .arg(&config)
        .arg("--ready-file")
        .arg(&ready);
    let out = run_cmd(cmd, Duration::from_secs(30));
    assert!(!out.timed_out, "the coordinator kept running:\n{out}");
    assert!(
        out.code.is_some_and(|c| c != 0),
        "a bad CA file must fail the start:\n{out}"
    );
    assert!(
        !ready.exists(),
        "the coordinator announced readiness with a bad CA:\n{out}"
    );
    assert!(
        out.stderr.contains(&bad_ca.display().to_string()),
        "the error names the CA file:\n{out}"
    );
}
