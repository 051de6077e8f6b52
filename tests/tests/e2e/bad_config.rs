//! Done-when 6: a malformed or incomplete config exits 2 with a message that
//! names the file and the field; nothing starts half-configured.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use drover_tests::{CmdOutput, Pki, bin_path, run_cmd};
use tempfile::TempDir;

struct Setup {
    dir: TempDir,
    pki: Pki,
    coordinator_cert: PathBuf,
    coordinator_key: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("temp dir");
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).expect("create home");
    let pki = Pki::init(&dir.path().join("pki"), &home);
    let c = pki.issue("coordinator", "c1", &["127.0.0.1"], None);
    Setup {
        dir,
        pki,
        coordinator_cert: c.cert,
        coordinator_key: c.key,
    }
}

fn coordinator_toml(s: &Setup) -> String {
    format!(
        r#"name = "c1"
data_dir = "{data}"

[listen]
grpc = "127.0.0.1:0"
http = "127.0.0.1:0"

[tls]
ca_cert = "{ca}"
ca_key = "{ca_key}"
cert = "{cert}"
key = "{key}"

[agents]
lost_timeout = "15s"
cert_lifetime = "24h"
"#,
        data = s.dir.path().join("data").display(),
        ca = s.pki.ca_cert().display(),
        ca_key = s.pki.ca_key().display(),
        cert = s.coordinator_cert.display(),
        key = s.coordinator_key.display(),
    )
}

fn run_coordinator(s: &Setup, name: &str, toml: &str) -> (PathBuf, CmdOutput) {
    let path = s.dir.path().join(format!("{name}.toml"));
    std::fs::write(&path, toml).expect("write config");
    let ready = s.dir.path().join(format!("{name}.ready"));
    let mut cmd = Command::new(bin_path("drover-coordinator"));
    cmd.arg("--config")
        .arg(&path)
        .arg("--ready-file")
        .arg(&ready);
    let out = run_cmd(cmd, Duration::from_secs(20));
    assert!(
        !ready.exists(),
        "{name}: the coordinator became ready with a bad config:\n{out}"
    );
    (path, out)
}

/// Exit code 2 and a message naming the file and each of `fields`.
#[track_caller]
fn assert_config_error(
    what: &str,
    path: &Path,
    out: &CmdOutput,
    fields: &[&str],
) -> Option<String> {
    let mut problems = Vec::new();
    if out.code != Some(2) {
        problems.push(format!("exit code {:?}, want 2", out.code));
    }
    let path = path.display().to_string();
    if !out.stderr.contains(&path) {
        problems.push(format!("stderr does not name the file {path}"));
    }
    for field in fields {
        if !out.stderr.contains(field) {
            problems.push(format!("stderr does not name the field `{field}`"));
        }
    }
    (!problems.is_empty()).then(|| format!("{what}: {}\n{out}", problems.join("; ")))
}

#[test]
fn valid_coordinator_config_starts() {
    // The base the bad variants are made from is good, so each failure below
    // is down to the one field changed.
    let s = setup();
    let path = s.dir.path().join("good.toml");
    std::fs::write(&path, coordinator_toml(&s)).expect("write config");
    let ready = s.dir.path().join("good.ready");
    let mut cmd = Command::new(bin_path("drover-coordinator"));
    cmd.arg("--config")
        .arg(&path)
        .arg("--ready-file")
        .arg(&ready);
    let proc = drover_tests::Proc::spawn("drover-coordinator", cmd, &s.dir.path().join("good.log"));
    drover_tests::wait_until(
        Duration::from_secs(30),
        "the good config gets ready",
        || {
            if let Some(status) = proc.try_exit() {
                panic!("exited ({status}):\n{}", proc.describe(30));
            }
            ready.exists()
        },
    );
}

#[test]
fn bad_coordinator_configs_exit_2_naming_file_and_field() {
    let s = setup();
    let base = coordinator_toml(&s);
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "missing data_dir",
            base.lines()
                .filter(|l| !l.starts_with("data_dir"))
                .collect::<Vec<_>>()
                .join("\n"),
            vec!["data_dir"],
        ),
        (
            "bad duration",
            base.replace("lost_timeout = \"15s\"", "lost_timeout = \"soon\""),
            vec!["lost_timeout"],
        ),
        (
            "unknown field",
            base.replace("[agents]\n", "[agents]\ncolour = \"blue\"\n"),
            vec!["colour"],
        ),
        (
            "bad listen address",
            base.replace("grpc = \"127.0.0.1:0\"", "grpc = \"not an address\""),
            vec!["grpc"],
        ),
        (
            "wrong type",
            base.replace("lost_timeout = \"15s\"", "lost_timeout = 15"),
            vec!["lost_timeout"],
        ),
    ];
    let mut failures = Vec::new();
    for (i, (what, toml, fields)) in cases.iter().enumerate() {
        let (path, out) = run_coordinator(&s, &format!("bad{i}"), toml);
        failures.extend(assert_config_error(what, &path, &out, fields));
    }
    // Not TOML at all, and a file that does not exist.
    let (path, out) = run_coordinator(&s, "garbage", "this is [ not toml");
    failures.extend(assert_config_error("not TOML", &path, &out, &[]));
    let missing = s.dir.path().join("missing.toml");
    let mut cmd = Command::new(bin_path("drover-coordinator"));
    cmd.arg("--config").arg(&missing);
    let out = run_cmd(cmd, Duration::from_secs(20));
    failures.extend(assert_config_error("missing file", &missing, &out, &[]));
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

fn agent_toml(dir: &Path) -> String {
    format!(
        r#"host_id = "h1"
data_dir = "{data}"
coordinators = ["127.0.0.1:7443"]
report_interval = "5s"

[labels]
env = "prod"

[[instance]]
name = "web"
service = "web"
runtime = "process"
command = "/bin/true"
stop_timeout = "5s"

[instance.health]
type = "http"
url = "http://127.0.0.1:8080/healthz"
interval = "2s"
"#,
        data = dir.join("agent-data").display()
    )
}

fn run_agent(dir: &Path, name: &str, toml: &str) -> (PathBuf, CmdOutput) {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, toml).expect("write config");
    let mut cmd = Command::new(bin_path("drover-agent"));
    cmd.arg("--config").arg(&path).arg("run");
    let out = run_cmd(cmd, Duration::from_secs(20));
    (path, out)
}

#[test]
fn bad_agent_configs_exit_2_naming_file_and_field() {
    let dir = tempfile::tempdir().expect("temp dir");
    let base = agent_toml(dir.path());
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "process runtime without command",
            base.replace("command = \"/bin/true\"\n", ""),
            vec!["command"],
        ),
        (
            "bad host_id",
            base.replace("host_id = \"h1\"", "host_id = \"not a host!\""),
            vec!["host_id"],
        ),
        (
            "unknown field",
            base.replace(
                "report_interval = \"5s\"",
                "report_interval = \"5s\"\ncolour = \"blue\"",
            ),
            vec!["colour"],
        ),
        (
            "bad health url",
            base.replace("http://127.0.0.1:8080/healthz", "not a url"),
            vec!["url"],
        ),
        (
            "bad duration",
            base.replace("report_interval = \"5s\"", "report_interval = \"often\""),
            vec!["report_interval"],
        ),
        (
            "missing data_dir",
            base.lines()
                .filter(|l| !l.starts_with("data_dir"))
                .collect::<Vec<_>>()
                .join("\n"),
            vec!["data_dir"],
        ),
    ];
    let mut failures = Vec::new();
    for (i, (what, toml, fields)) in cases.iter().enumerate() {
        let (path, out) = run_agent(dir.path(), &format!("bad{i}"), toml);
        failures.extend(assert_config_error(what, &path, &out, fields));
    }
    assert!(
        !dir.path().join("agent-data").join("instances").exists(),
        "an agent with a bad config started instances"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn agent_run_without_enrolment_exits_2() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (_, out) = run_agent(dir.path(), "good", &agent_toml(dir.path()));
    assert_eq!(out.code, Some(2), "{out}");
    assert!(
        out.stderr.contains("not enrolled") && out.stderr.contains("drover-agent enroll"),
        "{out}"
    );
}

#[test]
fn cli_usage_errors_exit_2() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut failures = Vec::new();
    for args in [
        vec!["agents", "-o", "yaml-please"],
        vec!["no-such-command"],
        vec![
            "cert",
            "issue",
            "--role",
            "emperor",
            "--name",
            "x",
            "--ca-dir",
            "/nonexistent",
        ],
    ] {
        let out = drover_tests::harness::pki::run_drover(dir.path(), &args);
        if out.code != Some(2) {
            failures.push(format!("want exit 2:\n{out}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
