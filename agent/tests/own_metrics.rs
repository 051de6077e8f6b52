//! The agent's own /metrics (`[metrics] listen`) on a real agent against a
//! fake coordinator over real mutual TLS: what it ran, refused and reported
//! shows there; a taken address stops the agent before it starts anything.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Agent, Ca, Coordinator, DEADLINE, KillInstances, command, kinds};
use drover_agent::config::Config;
use drover_proto::v1::Command;
use drover_proto::v1::command_update::Phase;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SLEEPER: &str = r#"
[[instance]]
name = "web"
command = "/bin/sleep"
args = ["1000"]
stop_timeout = "2s"
"#;

fn config(data_dir: &Path, coordinator: &str, listen: &str) -> Config {
    let text = format!(
        "{}\n[metrics]\nlisten = \"{listen}\"\n",
        common::config_text(data_dir, coordinator, SLEEPER)
    );
    Config::parse(&text, Path::new("agent.toml")).expect("valid test config")
}

/// A loopback address nothing listens on now.
async fn free_addr() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    l.local_addr().expect("addr").to_string()
}

/// `GET /metrics`, the body once it answers 200.
async fn scrape(addr: &str) -> Option<String> {
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: agent\r\n\r\n")
        .await
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200 ").then(|| body.to_string())
}

/// Waits until a scrape has every line of `lines`; returns it.
async fn scrape_until(addr: &str, lines: &[&str]) -> String {
    drover_testkit::wait_until_async(
        DEADLINE,
        &format!("the agent's /metrics has {lines:?}"),
        async || {
            let text = scrape(addr).await?;
            let all = lines.iter().all(|want| text.lines().any(|l| l == *want));
            all.then_some(text)
        },
        String::new,
    )
    .await
}

fn at_epoch(mut cmd: Command, epoch: u64) -> Command {
    cmd.epoch = epoch;
    cmd
}

#[tokio::test]
async fn the_agents_own_metrics_show_its_commands_refusals_session_and_instances() {
    let ca = Ca::new("test CA");
    let mut coord = Coordinator::start(&ca).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("agent");
    common::enrol_directly(&ca, &data_dir, "h1", Duration::from_secs(3600));
    let listen = free_addr().await;
    let agent = Agent::start(config(&data_dir, &coord.addr, &listen));
    let _kill = KillInstances::of(&agent.cfg);
    coord.hello().await;

    let ran = coord
        .run(at_epoch(
            command("r1/web@h1/stop/1", "web", kinds::stop()),
            5,
        ))
        .await;
    assert_eq!(ran.phase(), Phase::Succeeded, "{ran:?}");
    let ran = coord
        .run(command("r1/web@h1/start/1", "web", kinds::start()))
        .await;
    assert_eq!(ran.phase(), Phase::Succeeded, "{ran:?}");
    let fenced = coord
        .run(at_epoch(
            command("r0/web@h1/stop/1", "web", kinds::stop()),
            3,
        ))
        .await;
    assert_eq!(fenced.phase(), Phase::Failed, "{fenced:?}");
    let unknown = coord
        .run(command("r1/db@h1/stop/1", "db", kinds::stop()))
        .await;
    assert_eq!(unknown.phase(), Phase::Failed, "{unknown:?}");

    let text = scrape_until(
        &listen,
        &[
            "drover_agent_commands_total{step=\"stop\",outcome=\"succeeded\"} 1",
            "drover_agent_commands_total{step=\"start\",outcome=\"succeeded\"} 1",
            "drover_agent_command_duration_seconds_count{step=\"stop\",outcome=\"succeeded\"} 1",
            "drover_agent_commands_refused_total{reason=\"fenced\"} 1",
            "drover_agent_commands_refused_total{reason=\"invalid\"} 1",
            "drover_agent_fenced_total 1",
            "drover_agent_epoch 5",
            "drover_agent_session_connected 1",
            "drover_agent_sessions_total{result=\"established\"} 1",
            "drover_agent_instance_running{id=\"web@h1\",service=\"web\"} 1",
            "drover_agent_instance_healthy{id=\"web@h1\",service=\"web\"} 1",
        ],
    )
    .await;
    assert!(
        text.lines()
            .any(|l| l.starts_with("drover_agent_reports_sent_total ") && !l.ends_with(" 0")),
        "{text}"
    );

    // The coordinator goes away: the session is down, and the attempts to
    // reconnect count as failed.
    coord.end_session();
    drop(coord);
    let text = scrape_until(&listen, &["drover_agent_session_connected 0"]).await;
    assert!(
        text.contains("drover_agent_sessions_total{result=\"established\"} 1"),
        "{text}"
    );
    agent.stop().await;
    assert!(
        tokio::net::TcpStream::connect(&listen).await.is_err(),
        "the listener closes with the agent"
    );
}

#[tokio::test]
async fn a_taken_metrics_address_stops_the_agent_before_it_starts_anything() {
    let ca = Ca::new("test CA");
    let coord = Coordinator::start(&ca).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let data_dir = dir.path().join("agent");
    common::enrol_directly(&ca, &data_dir, "h1", Duration::from_secs(3600));
    let taken = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let cfg = config(&data_dir, &coord.addr, &addr);
    let _kill = KillInstances::of(&cfg);
    let shutdown = tokio_util::sync::CancellationToken::new();
    let e = tokio::time::timeout(DEADLINE, drover_agent::run(cfg.clone(), shutdown))
        .await
        .expect("run returns at once")
        .expect_err("the address is taken");
    assert_eq!(e.exit_code(), 2, "{e}");
    let text = e.to_string();
    assert!(
        text.contains(&addr) && text.contains("[metrics] listen"),
        "{text}"
    );
    assert!(
        drover_agent::runtime::process::read_pid(&cfg.instance_dir("web")).is_none(),
        "no instance was started"
    );
    assert!(!coord.has_session(), "no session was opened");
}
