//! HA coordinators from the agent's side, against fake coordinators over
//! real mutual TLS: a standby's refusal names the leader and the agent
//! follows it; commands from a deposed leader (a lower epoch) are refused,
//! not journaled, and counted; the epoch survives an agent restart.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Agent, Ca, Coordinator, Event, KillInstances, command, kinds};
use drover_agent::config::Config;
use drover_agent::deploy::fetch::{Cache, GrpcSource};
use drover_agent::fencing::EPOCH_FILE;
use drover_agent::journal;
use drover_net::transport::ConnectOptions;
use drover_proto::v1::command_update::Phase;
use drover_proto::v1::{Command, HealthReport};

const SLEEPER: &str = r#"
[[instance]]
name = "web"
command = "/bin/sleep"
args = ["1000"]
stop_timeout = "2s"
"#;

fn config(data_dir: &Path, coordinators: &[&str]) -> Config {
    let list: Vec<String> = coordinators.iter().map(|c| format!("\"{c}\"")).collect();
    let text = format!(
        "host_id = \"h1\"\ndata_dir = \"{}\"\ncoordinators = [{}]\nreport_interval = \"200ms\"\n{SLEEPER}",
        data_dir.display(),
        list.join(", ")
    );
    Config::parse(&text, Path::new("agent.toml")).expect("valid test config")
}

fn at_epoch(mut cmd: Command, epoch: u64) -> Command {
    cmd.epoch = epoch;
    cmd
}

/// The next report that satisfies `pred`.
async fn report_where(
    coord: &mut Coordinator,
    what: &str,
    pred: impl Fn(&HealthReport) -> bool,
) -> HealthReport {
    coord
        .expect(what, |e| match e {
            Event::Report(r) if pred(r) => Some(r.clone()),
            _ => None,
        })
        .await
}

/// Whether the journal file mentions `id` at all.
fn journaled(data_dir: &Path, id: &str) -> bool {
    std::fs::read_to_string(journal::Journal::dir(data_dir).join(journal::JOURNAL_FILE))
        .unwrap_or_default()
        .contains(id)
}

#[tokio::test]
async fn follows_the_leader_and_refuses_commands_from_a_deposed_one() {
    let ca = Ca::new("test CA");
    let mut leader = Coordinator::start(&ca).await;
    leader.set_epoch(57);
    let standby = Coordinator::start(&ca).await;
    standby.set_standby(Some(Some(leader.addr.clone())));
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("agent");
    common::enrol_directly(&ca, &data_dir, "h1", Duration::from_secs(3600));
    // Only the standby is configured: the agent finds the leader from its
    // refusal.
    let agent = Agent::start(config(&data_dir, &[&standby.addr]));
    let _kill = KillInstances::of(&agent.cfg);

    let hello = leader.hello().await;
    assert_eq!(hello.host_id, "h1");
    assert!(standby.refused() >= 1, "the standby was asked first");
    let r = report_where(&mut leader, "a report at epoch 57", |r| r.epoch == 57).await;
    assert_eq!(r.commands_fenced, 0);
    assert_eq!(
        std::fs::read_to_string(data_dir.join(EPOCH_FILE)).expect("epoch file"),
        "57\n",
        "the Welcome's epoch is on disk"
    );

    // A deposed leader's command (a lower epoch) is refused and not
    // journaled...
    let id = "r1/web@h1/drain/1";
    let refused = leader
        .run(at_epoch(command(id, "web", kinds::drain()), 41))
        .await;
    assert_eq!(refused.phase(), Phase::Failed, "{refused:?}");
    assert_eq!(
        refused.message,
        "fenced: command from epoch 41, this agent follows epoch 57 (a deposed coordinator)"
    );
    assert!(
        !journaled(&data_dir, id),
        "a fenced command is not journaled"
    );
    assert!(journal::read_executions(&data_dir).is_empty());
    let r = report_where(&mut leader, "a report counting the refusal", |r| {
        r.commands_fenced == 1
    })
    .await;
    assert_eq!(r.epoch, 57);

    // ...so the same id from the current leader runs.
    let ran = leader
        .run(at_epoch(command(id, "web", kinds::drain()), 57))
        .await;
    assert_eq!(ran.phase(), Phase::Succeeded, "{ran:?}");
    assert!(ran.message.contains("drained"), "{ran:?}");
    assert_eq!(journal::read_executions(&data_dir), vec![id.to_string()]);
    // Epoch 0 (no election) is always accepted.
    let undrain = "r1/web@h1/undrain/1";
    let ran = leader.run(command(undrain, "web", kinds::undrain())).await;
    assert_eq!(ran.phase(), Phase::Succeeded, "{ran:?}");

    // A command from a newer leader raises the epoch, on disk too.
    let drain2 = "r2/web@h1/drain/1";
    let ran = leader
        .run(at_epoch(command(drain2, "web", kinds::drain()), 60))
        .await;
    assert_eq!(ran.phase(), Phase::Succeeded, "{ran:?}");
    report_where(&mut leader, "a report at epoch 60", |r| r.epoch == 60).await;
    assert_eq!(
        std::fs::read_to_string(data_dir.join(EPOCH_FILE)).expect("epoch file"),
        "60\n"
    );

    // The epoch survives a restart: the coordinator that led epoch 57 is
    // refused by the restarted agent too.
    let cfg = agent.stop().await;
    leader.set_epoch(0);
    let _agent = Agent::start(cfg);
    leader.hello().await;
    let r = report_where(&mut leader, "a report after the restart", |r| r.epoch == 60).await;
    assert_eq!(r.commands_fenced, 0, "counted since the agent started");
    let late = "r1/web@h1/undrain/2";
    let refused = leader
        .run(at_epoch(command(late, "web", kinds::undrain()), 57))
        .await;
    assert_eq!(refused.phase(), Phase::Failed, "{refused:?}");
    assert!(
        refused
            .message
            .starts_with("fenced: command from epoch 57, this agent follows epoch 60"),
        "{refused:?}"
    );
    report_where(&mut leader, "a report counting the refusal", |r| {
        r.commands_fenced == 1
    })
    .await;
    assert!(!journaled(&data_dir, late));
}

#[tokio::test]
async fn a_standby_that_knows_no_leader_sends_the_agent_to_the_next_address() {
    let ca = Ca::new("test CA");
    let standby = Coordinator::start(&ca).await;
    standby.set_standby(Some(None));
    let mut leader = Coordinator::start(&ca).await;
    leader.set_epoch(3);
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("agent");
    common::enrol_directly(&ca, &data_dir, "h1", Duration::from_secs(3600));
    let agent = Agent::start(config(&data_dir, &[&standby.addr, &leader.addr]));
    let _kill = KillInstances::of(&agent.cfg);
    leader.hello().await;
    assert!(standby.refused() >= 1);
    report_where(&mut leader, "a report at epoch 3", |r| r.epoch == 3).await;
}

#[tokio::test]
async fn a_welcome_from_a_deposed_leader_sends_the_agent_elsewhere() {
    let ca = Ca::new("test CA");
    let mut deposed = Coordinator::start(&ca).await;
    deposed.set_epoch(41);
    let mut leader = Coordinator::start(&ca).await;
    leader.set_epoch(57);
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("agent");
    common::enrol_directly(&ca, &data_dir, "h1", Duration::from_secs(3600));
    std::fs::write(data_dir.join(EPOCH_FILE), "57\n").expect("epoch file");
    let agent = Agent::start(config(&data_dir, &[&deposed.addr, &leader.addr]));
    let _kill = KillInstances::of(&agent.cfg);
    // The deposed one gets a Hello, but the agent leaves at its Welcome
    // and settles with the leader.
    deposed.hello().await;
    leader.hello().await;
    report_where(&mut leader, "a report at epoch 57", |r| r.epoch == 57).await;
}

#[tokio::test]
async fn artifacts_are_fetched_from_the_leader_a_standby_names() {
    let ca = Ca::new("test CA");
    let mut leader = Coordinator::start(&ca).await;
    let digest = leader.add_artifact(b"release bytes".to_vec());
    let standby = Coordinator::start(&ca).await;
    standby.set_standby(Some(Some(leader.addr.clone())));
    let dir = tempfile::tempdir().expect("tempdir");
    let files = common::enrol_directly(&ca, dir.path(), "h1", Duration::from_secs(3600));
    let source = GrpcSource::new(files, vec![standby.addr.clone()], ConnectOptions::default());
    let cache = Cache::new(dir.path());
    let (path, downloaded) = cache
        .get(&digest, &source, &|_| {})
        .await
        .expect("fetched through the standby's hint");
    assert!(downloaded);
    assert_eq!(std::fs::read(&path).expect("read"), b"release bytes");
    assert_eq!(standby.refused(), 1);
    leader
        .expect("the fetch at the leader", |e| match e {
            Event::Fetch { offset, .. } => Some(*offset),
            _ => None,
        })
        .await;
}
