//! The real `drover-agent` binary SIGKILLed mid-deploy, twice (during the
//! download, then during the unpack), and restarted: the instance ends on
//! exactly one complete release, `current` never points at anything else,
//! the download resumes, and leftovers are cleaned at start-up.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use common::{Ca, Coordinator, Entry, FetchBehaviour, KillInstances, command, gz, kinds, tar};
use drover_proto::v1::command_update::Phase;
use drover_testkit::wait_until_async_every;

const DEADLINE: Duration = Duration::from_secs(60);

struct AgentProcess {
    child: Child,
    log: PathBuf,
}

impl AgentProcess {
    fn spawn(config: &Path, log: &Path) -> AgentProcess {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log");
        let err = out.try_clone().expect("log");
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_drover-agent"))
            .arg("--config")
            .arg(config)
            .arg("run")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("start drover-agent");
        AgentProcess {
            child,
            log: log.to_path_buf(),
        }
    }

    fn sigkill(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn log_of(p: &AgentProcess) -> String {
    std::fs::read_to_string(&p.log).unwrap_or_default()
}

/// Polls fast: each wait catches a short window (mid-download,
/// mid-unpack) to kill the agent in.
const KILL_POLL: Duration = Duration::from_millis(2);

/// Whatever `current` points at must be a complete release.
fn assert_current_is_complete_or_absent(deploy_dir: &Path) {
    let current = deploy_dir.join("current");
    if std::fs::symlink_metadata(&current).is_ok() {
        assert!(
            current.join("release.json").exists(),
            "current points at an incomplete release"
        );
    }
}

fn tmp_leftovers(deploy_dir: &Path) -> Vec<String> {
    let mut v = Vec::new();
    for dir in [deploy_dir.join("releases"), deploy_dir.to_path_buf()] {
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with(".tmp-") || n.starts_with("current.tmp-") {
                    v.push(n);
                }
            }
        }
    }
    v
}

#[tokio::test]
async fn an_agent_killed_mid_deploy_ends_on_exactly_one_complete_release() {
    let ca = Ca::new("test CA");
    let mut coord = Coordinator::start(&ca).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("agent");
    common::enrol_directly(&ca, &data_dir, "h1", Duration::from_secs(3600));
    let deploy_dir = dir.path().join("srv/web");

    // Many small files make the unpack long enough to be interrupted.
    let names: Vec<String> = (0..4000).map(|i| format!("./files/f{i:05}")).collect();
    let mut entries = vec![
        Entry::Dir("./"),
        Entry::Dir("./files"),
        Entry::File("./VERSION", b"v1"),
    ];
    entries.extend(
        names
            .iter()
            .map(|n| Entry::File(n, b"some bytes of a release file\n")),
    );
    let artifact = gz(&tar(&entries));
    let digest = coord.add_artifact(artifact.clone());
    coord.set_fetch(FetchBehaviour {
        cut_first_after: None,
        chunk: Some(4 * 1024),
        chunk_delay: Some(Duration::from_millis(30)),
    });

    let instances = format!(
        "[[instance]]\nname = \"web\"\ncommand = \"/bin/sleep\"\nargs = [\"1000\"]\ndeploy_dir = \"{}\"\n",
        deploy_dir.display()
    );
    let config_path = dir.path().join("agent.toml");
    std::fs::write(
        &config_path,
        common::config_text(&data_dir, &coord.addr, &instances),
    )
    .expect("config");
    let cfg = common::config(&data_dir, &coord.addr, &instances);
    let _kill = KillInstances::of(&cfg);
    let log = dir.path().join("agent.log");
    let id = "k/web@h1/deploy/1";
    let deploy = || {
        let mut c = command(id, "web", kinds::deploy("v1", &digest));
        c.timeout_ms = 120_000;
        c
    };

    // 1. Killed during the download.
    let mut agent = AgentProcess::spawn(&config_path, &log);
    let hello = coord.hello().await;
    let instance_pid = coord
        .status_where("the instance running", "web", |s| s.pid > 0)
        .await
        .pid;
    assert_eq!(hello.host_id, "h1");
    coord.send(deploy()).await;
    let partial = data_dir.join("cache").join(format!("{digest}.partial"));
    wait_until_async_every(
        KILL_POLL,
        DEADLINE,
        "part of the artifact on disk",
        async || std::fs::metadata(&partial).is_ok_and(|m| m.len() >= 8 * 1024),
        || log_of(&agent),
    )
    .await;
    agent.sigkill();
    let kept = std::fs::metadata(&partial).expect("partial kept").len();
    assert!(kept < artifact.len() as u64, "killed before the end");
    assert_current_is_complete_or_absent(&deploy_dir);

    // 2. Restarted, asked again, killed during the unpack.
    coord.set_fetch(FetchBehaviour::default());
    let mut agent = AgentProcess::spawn(&config_path, &log);
    coord.hello().await;
    coord.send(deploy()).await;
    let releases = deploy_dir.join("releases");
    wait_until_async_every(
        KILL_POLL,
        DEADLINE,
        "the unpack to be under way",
        async || {
            std::fs::read_dir(&releases).is_ok_and(|rd| {
                rd.flatten().any(|e| {
                    e.file_name().to_string_lossy().starts_with(".tmp-")
                        && std::fs::read_dir(e.path().join("files")).is_ok_and(|f| f.count() > 10)
                })
            })
        },
        || log_of(&agent),
    )
    .await;
    agent.sigkill();
    assert_current_is_complete_or_absent(&deploy_dir);
    assert!(!tmp_leftovers(&deploy_dir).is_empty(), "killed mid-unpack");
    let resumed_from = coord
        .expect("the resumed fetch", |e| match e {
            common::Event::Fetch { offset, .. } if *offset > 0 => Some(*offset),
            _ => None,
        })
        .await;
    assert_eq!(resumed_from, kept, "resumed from what was kept on disk");

    // 3. Restarted: leftovers are gone before anything runs, and the
    // same id completes from the cached artifact.
    let agent = AgentProcess::spawn(&config_path, &log);
    coord.hello().await;
    wait_until_async_every(
        KILL_POLL,
        DEADLINE,
        "start-up cleaning",
        async || tmp_leftovers(&deploy_dir).is_empty(),
        || log_of(&agent),
    )
    .await;
    let fetches = coord.fetches.len();
    coord.send(deploy()).await;
    let result = coord.result(id).await;
    assert_eq!(
        result.phase(),
        Phase::Succeeded,
        "{result:?}\n{}",
        log_of(&agent)
    );
    assert!(
        result.message.contains("from the agent's cache"),
        "{result:?}"
    );
    assert_eq!(
        coord.fetches.len(),
        fetches,
        "no download after it completed"
    );

    let name = format!("v1-{}", &digest[..12]);
    assert_eq!(common::releases(&deploy_dir), vec![name.clone()]);
    assert_eq!(
        common::current(&deploy_dir),
        Some(format!("releases/{name}"))
    );
    assert_eq!(
        std::fs::read_to_string(deploy_dir.join("current/VERSION")).expect("VERSION"),
        "v1"
    );
    assert_eq!(
        std::fs::read_dir(deploy_dir.join("current/files"))
            .expect("files")
            .count(),
        names.len()
    );
    assert!(tmp_leftovers(&deploy_dir).is_empty());
    // The instance outlived every agent.
    let now = coord
        .status_where("the instance reported", "web", |s| s.pid > 0)
        .await;
    assert_eq!(now.pid, instance_pid);
    assert_eq!(now.release.as_ref().map(|r| r.version.as_str()), Some("v1"));
    // Each agent that got the id ran it (the step is safe to redo), and
    // the journal holds one outcome.
    let runs = drover_agent::journal::read_executions(&data_dir);
    assert_eq!(runs, vec![id, id, id]);
    drop(agent);
}
