//! Instance commands end to end: a fake coordinator over real mutual TLS
//! sends commands to a real agent (in this process) supervising real
//! processes, with real files and hooks. Covers the journal (one run per
//! id, restarts), stop/start, verify, timeouts and deploy with `{current}`.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{
    Agent, Ca, Coordinator, DEADLINE, Entry, FetchBehaviour, KillInstances, command, gz, kinds, tar,
};
use drover_agent::journal;
use drover_proto::v1::command_update::Phase;
use drover_proto::v1::{CommandUpdate, DrainMethod, RuntimeState};
use drover_testkit::wait_until_async;

struct Env {
    dir: tempfile::TempDir,
    coord: Coordinator,
}

impl Env {
    async fn new() -> Env {
        let ca = Ca::new("test CA");
        let coord = Coordinator::start(&ca).await;
        let dir = tempfile::tempdir().expect("tempdir");
        common::enrol_directly(
            &ca,
            &dir.path().join("agent"),
            "h1",
            Duration::from_secs(3600),
        );
        Env { dir, coord }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn data_dir(&self) -> PathBuf {
        self.path("agent")
    }

    /// Instance blocks with `@` standing for the temp dir.
    fn agent(&self, instances: &str) -> Agent {
        let text = instances.replace('@', &self.dir.path().display().to_string());
        Agent::start(common::config(&self.data_dir(), &self.coord.addr, &text))
    }

    fn executions(&self) -> Vec<String> {
        journal::read_executions(&self.data_dir())
    }
}

fn phase(u: &CommandUpdate) -> Phase {
    u.phase()
}

fn assert_phase(u: &CommandUpdate, want: Phase, contains: &str) {
    assert_eq!(phase(u), want, "{u:?}");
    assert!(
        u.message.contains(contains),
        "expected {contains:?} in {u:?}"
    );
}

const SLEEPER: &str = r#"
[[instance]]
name = "web"
command = "/bin/sleep"
args = ["1000"]
stop_timeout = "2s"
[instance.health]
type = "exec"
command = ["/bin/sh", "-c", "test -f @/healthy"]
interval = "50ms"
timeout = "2s"
rise = 1
fall = 1
"#;

#[tokio::test]
async fn a_command_id_runs_once_and_is_answered_from_the_journal() {
    let mut env = Env::new().await;
    std::fs::write(env.path("healthy"), b"").expect("flag");
    let agent = env.agent(SLEEPER);
    let _kill = KillInstances::of(&agent.cfg);
    env.coord.hello().await;

    let drain = "r1/web@h1/drain/1";
    let first = env.coord.run(command(drain, "web", kinds::drain())).await;
    assert_phase(&first, Phase::Succeeded, "drained");
    let phases: Vec<Phase> = env.coord.updates_for(drain).iter().map(phase).collect();
    assert_eq!(phases, vec![Phase::Accepted, Phase::Succeeded]);
    env.coord
        .status_where("the drained flag", "web", |s| s.drained)
        .await;
    // The instance may be named with its host too.
    let again = env
        .coord
        .run(command(drain, "web@h1", kinds::drain()))
        .await;
    assert_eq!(
        (phase(&again), &again.message),
        (Phase::Succeeded, &first.message)
    );

    // A command still running is attached to; another id for the same
    // instance waits for it to end, then runs.
    let verify = "r1/web@h1/verify/1";
    env.coord
        .send(command(verify, "web", kinds::verify(1500, 10_000)))
        .await;
    env.coord
        .expect("verify accepted", |e| match e {
            common::Event::Update(u) if u.command_id == verify => Some(()),
            _ => None,
        })
        .await;
    env.coord
        .send(command(verify, "web", kinds::verify(1500, 10_000)))
        .await;
    let undrain = "r1/web@h1/undrain/1";
    let undrained = env
        .coord
        .run(command(undrain, "web", kinds::undrain()))
        .await;
    assert_phase(&undrained, Phase::Succeeded, "undrained");
    // The undrain's result came after the verify's, so it is on record.
    let verified = (env.coord.updates_for(verify).into_iter())
        .find(|u| u.phase != Phase::Accepted as i32 && u.phase != Phase::Progress as i32)
        .expect("verify's result");
    assert_phase(&verified, Phase::Succeeded, "passed continuously");
    let attached = env
        .coord
        .updates_for(verify)
        .iter()
        .filter(|u| u.message == "already running")
        .count();
    assert_eq!(attached, 1);
    let order: Vec<(String, i32)> = (env.coord.updates.iter())
        .filter(|u| u.command_id == verify || u.command_id == undrain)
        .map(|u| (u.command_id.clone(), u.phase))
        .collect();
    let verify_done = order
        .iter()
        .position(|(id, p)| id == verify && *p == Phase::Succeeded as i32)
        .expect("verify's result");
    let undrain_first = order
        .iter()
        .position(|(id, _)| id == undrain)
        .expect("undrain's updates");
    assert!(
        verify_done < undrain_first,
        "the undrain began before the verify ended: {order:?}"
    );

    let unknown = env
        .coord
        .run(command("r1/db@h1/drain/1", "db", kinds::drain()))
        .await;
    assert_phase(&unknown, Phase::Failed, "no instance named `db`");
    let elsewhere = env
        .coord
        .run(command("r1/web@h2/drain/1", "web@h2", kinds::drain()))
        .await;
    assert_phase(&elsewhere, Phase::Failed, "on host h2");

    // Drained again, then the agent restarts: the flag survives, and a
    // journaled id is answered without running again.
    let drain2 = "r1/web@h1/drain/2";
    env.coord.run(command(drain2, "web", kinds::drain())).await;
    let cfg = agent.stop().await;
    let agent = common::Agent::start(cfg);
    let hello = env.coord.hello().await;
    assert!(hello.instances[0].drained, "{hello:?}");
    let after = env.coord.run(command(drain, "web", kinds::drain())).await;
    assert_eq!(
        (phase(&after), &after.message),
        (Phase::Succeeded, &first.message)
    );
    let after_verify = env
        .coord
        .run(command(verify, "web", kinds::verify(1, 1)))
        .await;
    assert_eq!(after_verify.message, verified.message);

    assert_eq!(
        env.executions(),
        vec![drain, verify, undrain, drain2],
        "every id ran exactly once"
    );
    let records = journal::read(&env.data_dir()).expect("journal");
    let rec = records.iter().find(|r| r.id == drain).expect("journaled");
    assert_eq!(rec.kind, journal::RecordKind::Drain);
    assert!(rec.outcome.is_some());
    agent.stop().await;
}

#[tokio::test]
async fn a_stopped_instance_stays_stopped_until_started() {
    let mut env = Env::new().await;
    std::fs::write(env.path("healthy"), b"").expect("flag");
    let agent = env.agent(&format!(
        "{SLEEPER}[instance.hooks]\nbefore_stop = [\"/bin/sh\", \"-c\", \"echo $DROVER_INSTANCE $DROVER_COMMAND_ID > @/before_stop\"]\n"
    ));
    let _kill = KillInstances::of(&agent.cfg);
    env.coord.hello().await;
    let running = env
        .coord
        .status_where("running", "web", |s| s.pid > 0)
        .await;

    let stop = env
        .coord
        .run(command("s/stop/1", "web", kinds::stop()))
        .await;
    assert_phase(&stop, Phase::Succeeded, "stopped");
    assert_eq!(
        std::fs::read_to_string(env.path("before_stop")).expect("hook ran"),
        "web s/stop/1\n"
    );
    // The pidfile goes just after the stop (written off the runtime thread).
    let dir = agent.cfg.instance_dir("web");
    wait_until_async(
        DEADLINE,
        "the pidfile removed",
        async || drover_agent::runtime::process::read_pid(&dir).is_none(),
        String::new,
    )
    .await;
    // Give the crash-restart logic (first retry after 1 s) its chance:
    // the instance must stay down for the whole verify window.
    let verify = env
        .coord
        .run(command("s/verify/1", "web", kinds::verify(0, 1500)))
        .await;
    assert_phase(
        &verify,
        Phase::Failed,
        "instance is not running (state stopped)",
    );
    let status = env
        .coord
        .status_where("stopped", "web", |s| {
            s.state == RuntimeState::Stopped as i32
        })
        .await;
    assert_eq!(status.restarts, 0);

    // An agent restart does not bring it back either.
    let cfg = agent.stop().await;
    let agent = Agent::start(cfg);
    let hello = env.coord.hello().await;
    assert_eq!(hello.instances[0].state, RuntimeState::Stopped as i32);

    let start = env
        .coord
        .run(command("s/start/1", "web", kinds::start()))
        .await;
    assert_phase(&start, Phase::Succeeded, "running (pid ");
    let now = env
        .coord
        .status_where("running again", "web", |s| s.pid > 0)
        .await;
    assert_ne!(now.pid, running.pid);
    let verify = env
        .coord
        .run(command("s/verify/2", "web", kinds::verify(200, 5000)))
        .await;
    assert_phase(&verify, Phase::Succeeded, "passed continuously");
    agent.stop().await;
}

#[tokio::test]
async fn verify_needs_health_continuously_within_the_deadline() {
    let mut env = Env::new().await;
    let flaky = r#"
[[instance]]
name = "flaky"
command = "/bin/sleep"
args = ["1000"]
[instance.health]
type = "exec"
command = ["/bin/sh", "-c", "[ $(( $(date +%s%N) / 200000000 % 2 )) -eq 0 ]"]
interval = "50ms"
rise = 1
fall = 1
[[instance]]
name = "api"
command = "/bin/sleep"
args = ["1000"]
[instance.hooks]
validate = ["/bin/sh", "-c", "test -f @/valid || { echo smoke test failed >&2; exit 1; }"]
"#;
    let agent = env.agent(&format!("{SLEEPER}{flaky}"));
    let _kill = KillInstances::of(&agent.cfg);
    env.coord.hello().await;

    // Never healthy.
    let r = env
        .coord
        .run(command("v/1", "web", kinds::verify(300, 800)))
        .await;
    assert_phase(
        &r,
        Phase::Failed,
        "not healthy within the healthy_deadline of 800ms",
    );
    assert!(
        r.message.contains("test -f") || r.message.contains("/bin/sh"),
        "{r:?}"
    );

    // Healthy from the start.
    std::fs::write(env.path("healthy"), b"").expect("flag");
    let r = env
        .coord
        .run(command("v/2", "web", kinds::verify(300, 3000)))
        .await;
    assert_phase(&r, Phase::Succeeded, "health check passed continuously for");

    // Healthy, but the deadline is shorter than the required time.
    let r = env
        .coord
        .run(command("v/3", "web", kinds::verify(2000, 700)))
        .await;
    assert_phase(&r, Phase::Failed, "healthy for only");

    // Fails 200 ms out of every 400 ms: never 600 ms in a row.
    let r = env
        .coord
        .run(command("v/4", "flaky", kinds::verify(600, 1500)))
        .await;
    // Depending on where the deadline falls: a streak cut short, or a
    // failing last check.
    assert_phase(&r, Phase::Failed, "within the healthy_deadline of 1s 500ms");

    // No health check: running is enough, then the validate hook decides.
    let r = env
        .coord
        .run(command("v/5", "api", kinds::verify(200, 3000)))
        .await;
    assert_phase(&r, Phase::Failed, "validate hook failed");
    assert!(r.message.contains("smoke test failed"), "{r:?}");
    assert!(r.message.contains("running continuously"), "{r:?}");
    std::fs::write(env.path("valid"), b"").expect("flag");
    let r = env
        .coord
        .run(command("v/6", "api", kinds::verify(200, 3000)))
        .await;
    assert_phase(&r, Phase::Succeeded, "validate hook passed");
    agent.stop().await;
}

#[tokio::test]
async fn a_hung_hook_times_out_and_is_killed() {
    let mut env = Env::new().await;
    let agent = env.agent(&format!(
        "{SLEEPER}[instance.hooks]\nbefore_stop = [\"/bin/sh\", \"-c\", \"echo $$ > @/hook.pid; exec sleep 1000\"]\n"
    ));
    let _kill = KillInstances::of(&agent.cfg);
    env.coord.hello().await;
    let mut cmd = command("t/stop/1", "web", kinds::stop());
    cmd.timeout_ms = 500;
    let r = env.coord.run(cmd).await;
    assert_phase(&r, Phase::TimedOut, "timed out after 500ms");
    let pid: u32 = std::fs::read_to_string(env.path("hook.pid"))
        .expect("hook started")
        .trim()
        .parse()
        .expect("pid");
    wait_until_async(
        DEADLINE,
        "the hung hook to be killed",
        async || {
            drover_agent::runtime::process::proc_stat(pid)
                .is_none_or(|s| matches!(s.state, 'Z' | 'X'))
        },
        String::new,
    )
    .await;
    // The stop itself never happened.
    let status = env
        .coord
        .status_where("still running", "web", |s| s.pid > 0)
        .await;
    assert_eq!(status.state, RuntimeState::Running as i32);
    // The outcome is journaled like any other.
    let mut again = command("t/stop/1", "web", kinds::stop());
    again.timeout_ms = 500;
    let r2 = env.coord.run(again).await;
    assert_eq!((phase(&r2), &r2.message), (Phase::TimedOut, &r.message));
    agent.stop().await;
}

fn release_archive(version: &str) -> Vec<u8> {
    // Padding that does not compress, so the fetch spans many chunks.
    let pad: Vec<u8> = (0..100_000u32)
        .flat_map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes())
        .collect();
    gz(&tar(&[
        Entry::Dir("./"),
        Entry::File("./VERSION", version.as_bytes()),
        Entry::File("./pad", &pad),
    ]))
}

const DEPLOYABLE: &str = r#"
[[instance]]
name = "web"
command = "/bin/sh"
args = ["-c", "echo \"started $(cat {current}/VERSION) from {current}\" >> @/starts.log; exec sleep 1000"]
working_dir = "{current}"
deploy_dir = "@/srv/web"
keep_releases = 2
stop_timeout = "2s"
[instance.hooks]
after_deploy = ["/bin/sh", "-c", "echo $DROVER_RELEASE_VERSION $DROVER_RELEASE_DIR >> @/after_deploy.log"]
"#;

#[tokio::test]
async fn deploy_over_a_session_resumes_the_fetch_and_switches_current() {
    let mut env = Env::new().await;
    let v1 = env.coord.add_artifact(release_archive("v1"));
    let v2 = env.coord.add_artifact(release_archive("v2"));
    env.coord.set_fetch(FetchBehaviour {
        cut_first_after: Some(150_000),
        chunk: Some(32 * 1024),
        chunk_delay: None,
    });
    let agent = env.agent(DEPLOYABLE);
    let _kill = KillInstances::of(&agent.cfg);
    env.coord.hello().await;
    let deploy_dir = env.path("srv/web");
    // Nothing deployed yet: the agent says so (and that nothing drains it)
    // rather than crash in a loop on a `{current}` that does not exist.
    let before = env
        .coord
        .status_where("a first report", "web", |s| {
            s.state != RuntimeState::Unspecified as i32 && s.state != RuntimeState::Starting as i32
        })
        .await;
    assert_eq!(before.state(), RuntimeState::NotDeployed, "{before:?}");
    assert_eq!(before.drain(), DrainMethod::None, "{before:?}");
    assert_eq!(before.restarts, 0, "{before:?}");

    let r = env
        .coord
        .run(command("d/stop/1", "web", kinds::stop()))
        .await;
    assert_phase(&r, Phase::Succeeded, "stopped");
    let r = env
        .coord
        .run(command("d/deploy/1", "web", kinds::deploy("v1", &v1)))
        .await;
    assert_phase(
        &r,
        Phase::Succeeded,
        "deployed v1 (downloaded); after_deploy hook passed",
    );
    let rel = r.release.clone().expect("release");
    assert_eq!(
        (rel.version.as_str(), rel.digest.as_str()),
        ("v1", v1.as_str())
    );
    let progress: Vec<CommandUpdate> = env
        .coord
        .updates_for("d/deploy/1")
        .into_iter()
        .filter(|u| phase(u) == Phase::Progress && u.bytes_total > 0)
        .collect();
    let last = progress.last().expect("byte progress");
    assert_eq!(last.bytes_done, last.bytes_total);
    let offsets: Vec<u64> = env.coord.fetches.iter().map(|(_, o)| *o).collect();
    assert_eq!(offsets, vec![0, 150_000], "resumed after the cut");
    let release_dir = deploy_dir.join(format!("releases/v1-{}", &v1[..12]));
    assert_eq!(
        std::fs::read_to_string(env.path("after_deploy.log")).expect("hook"),
        format!("v1 {}\n", release_dir.display())
    );
    env.coord
        .status_where("the release reported", "web", |s| {
            s.release.as_ref().is_some_and(|r| r.version == "v1")
        })
        .await;

    let r = env
        .coord
        .run(command("d/start/1", "web", kinds::start()))
        .await;
    assert_phase(&r, Phase::Succeeded, "running");
    let log = env.path("starts.log");
    wait_until_async(
        DEADLINE,
        "the instance to log its start",
        async || std::fs::read_to_string(&log).is_ok_and(|t| t.contains("started v1")),
        String::new,
    )
    .await;
    // `{current}` was resolved to the release directory at start time.
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(
        text.contains(&format!("started v1 from {}", release_dir.display())),
        "{text}"
    );

    // v2, then a checksum mismatch that leaves v2 in place.
    env.coord
        .run(command("d/stop/2", "web", kinds::stop()))
        .await;
    let r = env
        .coord
        .run(command("d/deploy/2", "web", kinds::deploy("v2", &v2)))
        .await;
    assert_phase(&r, Phase::Succeeded, "deployed v2");
    let bogus = common::sha256_hex(b"something else");
    env.coord.add_artifact_as(&bogus, release_archive("v3"));
    let r = env
        .coord
        .run(command("d/deploy/3", "web", kinds::deploy("v3", &bogus)))
        .await;
    assert_phase(&r, Phase::Failed, "checksum mismatch");
    assert_eq!(r.release.as_ref().map(|r| r.version.as_str()), Some("v2"));
    assert_eq!(
        common::current(&deploy_dir),
        Some(format!("releases/v2-{}", &v2[..12]))
    );
    let r = env
        .coord
        .run(command("d/start/2", "web", kinds::start()))
        .await;
    assert_phase(&r, Phase::Succeeded, "running");
    wait_until_async(
        DEADLINE,
        "v2 to start",
        async || std::fs::read_to_string(&log).is_ok_and(|t| t.contains("started v2")),
        String::new,
    )
    .await;
    // Rolling back to v1 uses the kept release: no fetch.
    let fetches = env.coord.fetches.len();
    let r = env
        .coord
        .run(command("d/deploy/4", "web", kinds::deploy("v1", &v1)))
        .await;
    assert_phase(&r, Phase::Succeeded, "release directory already unpacked");
    assert_eq!(env.coord.fetches.len(), fetches);
    agent.stop().await;
}

#[tokio::test]
async fn unfinished_steps_after_a_restart_are_failed_or_redone_never_blindly_repeated() {
    let mut env = Env::new().await;
    let v1 = env.coord.add_artifact(release_archive("v1"));
    let instances = r#"
[[instance]]
name = "web"
command = "/bin/sleep"
args = ["1000"]
deploy_dir = "@/srv/web"
[instance.hooks]
after_deploy = ["/bin/sh", "-c", "touch @/hook-started; exec sleep 1000"]
[[instance]]
name = "api"
command = "/bin/sleep"
args = ["1000"]
[instance.drain]
type = "exec"
drain = ["/bin/sh", "-c", "[ -f @/drain-started ] && exit 0; touch @/drain-started; exec sleep 1000"]
undrain = ["/bin/true"]
"#;
    let agent = env.agent(instances);
    let _kill = KillInstances::of(&agent.cfg);
    env.coord.hello().await;
    env.coord
        .send(command("u/deploy/1", "web", kinds::deploy("v1", &v1)))
        .await;
    env.coord
        .send(command("u/drain/1", "api", kinds::drain()))
        .await;
    let (hook, drain) = (env.path("hook-started"), env.path("drain-started"));
    wait_until_async(
        DEADLINE,
        "the after_deploy hook and the drain to hang",
        async || hook.exists() && drain.exists(),
        String::new,
    )
    .await;
    let cfg = agent.stop().await;

    let agent = Agent::start(cfg);
    env.coord.hello().await;
    let r = env
        .coord
        .run(command("u/deploy/1", "web", kinds::deploy("v1", &v1)))
        .await;
    assert_phase(
        &r,
        Phase::Failed,
        "agent restarted during the step (in after_deploy",
    );
    // A drain is safe to redo, and is.
    let r = env
        .coord
        .run(command("u/drain/1", "api", kinds::drain()))
        .await;
    assert_phase(&r, Phase::Succeeded, "drain command succeeded");
    let executions = env.executions();
    assert_eq!(
        executions.iter().filter(|e| *e == "u/deploy/1").count(),
        1,
        "{executions:?}"
    );
    assert_eq!(
        executions.iter().filter(|e| *e == "u/drain/1").count(),
        2,
        "{executions:?}"
    );
    // The deploy itself had completed: v1 is current and complete.
    let deploy_dir = env.path("srv/web");
    assert_eq!(
        common::current(&deploy_dir),
        Some(format!("releases/v1-{}", &v1[..12]))
    );
    agent.stop().await;
}

/// The agent never reads anything but its config from the environment of
/// a command; a sanity check that `{current}` without a deploy_dir is
/// refused at config time, naming the field.
#[test]
fn current_placeholder_needs_a_deploy_dir() {
    let text = common::config_text(
        Path::new("/var/lib/drover-agent"),
        "127.0.0.1:1",
        "[[instance]]\nname = \"web\"\ncommand = \"/bin/sh\"\nargs = [\"-c\", \"cat {current}/VERSION\"]\n",
    );
    let err = drover_agent::config::Config::parse(&text, Path::new("agent.toml"))
        .expect_err("refused")
        .to_string();
    assert!(
        err.contains("field `args[1]`") && err.contains("deploy_dir"),
        "{err}"
    );
}
