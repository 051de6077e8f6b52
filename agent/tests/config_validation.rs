//! Config validation: every error names the file, the block, the field and
//! what was expected.

use std::path::Path;
use std::time::Duration;

use drover_agent::config::{
    CheckConfig, Config, ConfigError, HttpTarget, RuntimeConfig, Signal, SystemdConfig,
    parse_http_url,
};

const PATH: &str = "/etc/drover/agent.toml";

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new(PATH))
}

fn err(text: &str) -> String {
    match parse(text) {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(e) => e.to_string(),
    }
}

const BASE: &str = r#"
host_id = "h1"
data_dir = "/var/lib/drover-agent"
coordinators = ["127.0.0.1:7443"]
"#;

#[test]
fn parses_the_documented_example() {
    let text = r#"
host_id = "h1"
data_dir = "/var/lib/drover-agent"
coordinators = ["127.0.0.1:7443", "c2.example:7443"]
report_interval = "5s"
[labels]
env = "prod"
zone = "a"
[[instance]]
name = "web"
service = "web"
runtime = "process"
command = "/usr/local/bin/web"
args = ["--port", "8080"]
env = { VERSION = "v1" }
working_dir = "/srv/web"
stop_signal = "SIGTERM"
stop_timeout = "10s"
[instance.health]
type = "http"
url = "http://127.0.0.1:8080/healthz"
expect_status = 200
interval = "2s"
timeout = "1s"
rise = 2
fall = 3
[[instance]]
name = "db"
runtime = "systemd"
unit = "postgresql.service"
user = true
[instance.health]
type = "tcp"
address = "127.0.0.1:5432"
"#;
    let c = parse(text).expect("valid");
    assert_eq!(c.host_id, "h1");
    assert_eq!(c.coordinators.len(), 2);
    assert_eq!(c.report_interval, Duration::from_secs(5));
    assert_eq!(c.instances.len(), 2);
    let web = &c.instances[0];
    assert_eq!(web.id("h1"), "web@h1");
    let RuntimeConfig::Process(p) = &web.runtime else {
        panic!("process runtime expected");
    };
    assert_eq!(p.stop_signal, Signal::TERM);
    assert_eq!(p.env.get("VERSION").map(String::as_str), Some("v1"));
    let h = web.health.as_ref().expect("health");
    assert_eq!(
        h.check,
        CheckConfig::Http(HttpTarget {
            host: "127.0.0.1".into(),
            port: 8080,
            path: "/healthz".into(),
            expect_status: 200
        })
    );
    let db = &c.instances[1];
    assert_eq!(db.service, "db");
    assert_eq!(
        db.runtime,
        RuntimeConfig::Systemd(SystemdConfig {
            unit: "postgresql.service".into(),
            user: true
        })
    );
    assert_eq!(db.health.as_ref().map(|h| (h.rise, h.fall)), Some((2, 3)));
}

#[test]
fn missing_command_names_instance_and_field() {
    let e = err(&format!(
        "{BASE}[[instance]]\nname = \"web\"\nruntime = \"process\"\n"
    ));
    assert_eq!(
        e,
        "/etc/drover/agent.toml: instance[0] (web): field `command`: required when runtime = \"process\""
    );
}

#[test]
fn refuses_bad_top_level_fields() {
    assert!(
        err("data_dir = \"/x\"\ncoordinators = [\"a:1\"]\nhost_id = \"bad name\"")
            .contains("field `host_id`")
    );
    assert!(
        err("host_id = \"h\"\ncoordinators = [\"a:1\"]").contains("field `data_dir`: required")
    );
    assert!(
        err("host_id = \"h\"\ndata_dir = \"rel\"\ncoordinators = [\"a:1\"]").contains("absolute")
    );
    assert!(err("host_id = \"h\"\ndata_dir = \"/x\"").contains("field `coordinators`"));
    assert!(
        err("host_id = \"h\"\ndata_dir = \"/x\"\ncoordinators = [\"a:1\", \"nope\"]")
            .contains("field `coordinators[1]`")
    );
    assert!(
        err(&format!("{BASE}report_interval = \"0s\""))
            .contains("field `report_interval`: expected a duration greater than 0")
    );
    assert!(err(&format!("{BASE}[labels]\n\"bad key\" = \"x\"")).contains("labels.bad key"));
}

#[test]
fn unknown_fields_and_syntax_errors_carry_the_path_and_line() {
    let e = err(&format!("{BASE}report_intervall = \"5s\"\n"));
    assert!(
        e.starts_with("/etc/drover/agent.toml: TOML parse error at line 5"),
        "{e}"
    );
    assert!(e.contains("report_intervall"), "{e}");
    let e = err(&format!("{BASE}report_interval = \"5 parsecs\"\n"));
    assert!(e.contains("line 5"), "{e}");
    let e = err(&format!(
        "{BASE}[[instance]]\nname = \"web\"\nruntime = \"docker\"\n"
    ));
    assert!(e.contains("line 7") && e.contains("docker"), "{e}");
}

#[test]
fn refuses_bad_instances() {
    let inst = |body: &str| err(&format!("{BASE}[[instance]]\n{body}\n"));
    assert!(inst("command = \"/bin/true\"").contains("instance[0]: field `name`: required"));
    assert!(inst("name = \"a b\"\ncommand = \"/bin/true\"").contains("field `name`: invalid name"));
    let dup = err(&format!(
        "{BASE}[[instance]]\nname = \"a\"\ncommand = \"/bin/true\"\n[[instance]]\nname = \"a\"\ncommand = \"/bin/true\"\n"
    ));
    assert!(
        dup.contains("instance[1] (a): field `name`: duplicate"),
        "{dup}"
    );
    assert!(
        inst("name = \"a\"\ncommand = \"/bin/true\"\nstop_signal = \"SIGFOO\"")
            .contains("field `stop_signal`: unknown signal")
    );
    assert!(
        inst("name = \"a\"\ncommand = \"/bin/true\"\nstop_timeout = \"0s\"")
            .contains("field `stop_timeout`")
    );
    assert!(inst("name = \"a\"\nruntime = \"systemd\"").contains("field `unit`: required"));
    assert!(
        inst("name = \"a\"\nruntime = \"systemd\"\nunit = \"a.service\"\ncommand = \"/x\"")
            .contains("field `command`: only used")
    );
    assert!(
        inst("name = \"a\"\ncommand = \"/x\"\nunit = \"a.service\"")
            .contains("field `unit`: only used")
    );
    assert!(
        inst("name = \"a\"\ncommand = \"/x\"\nworking_dir = \"rel\"")
            .contains("field `working_dir`")
    );
    assert_eq!(
        Signal::from_name("term").map(|s| s.number),
        Some(libc::SIGTERM)
    );
}

#[test]
fn refuses_bad_health_checks() {
    let health = |body: &str| {
        err(&format!(
            "{BASE}[[instance]]\nname = \"web\"\ncommand = \"/x\"\n[instance.health]\n{body}\n"
        ))
    };
    let e = health("type = \"http\"\nurl = \"https://127.0.0.1/\"");
    assert!(
        e.contains("instance[0] (web): field `health.url`: expected http://HOST:PORT/PATH"),
        "{e}"
    );
    assert!(health("type = \"http\"").contains("field `health.url`: required"));
    assert!(health("type = \"http\"\nurl = \"http://:80/\"").contains("empty host"));
    assert!(health("type = \"http\"\nurl = \"http://h:99999/\"").contains("port"));
    assert!(
        health("type = \"http\"\nurl = \"http://h/\"\nrise = 0").contains("field `health.rise`")
    );
    assert!(
        health("type = \"http\"\nurl = \"http://h/\"\nfall = 0").contains("field `health.fall`")
    );
    assert!(
        health("type = \"http\"\nurl = \"http://h/\"\ninterval = \"0s\"")
            .contains("field `health.interval`")
    );
    assert!(
        health("type = \"http\"\nurl = \"http://h/\"\naddress = \"h:1\"")
            .contains("field `health.address`: not used")
    );
    assert!(health("type = \"tcp\"").contains("field `health.address`: required"));
    assert!(health("type = \"tcp\"\naddress = \"nope\"").contains("field `health.address`"));
    assert!(health("type = \"exec\"\ncommand = []").contains("field `health.command`"));
    assert!(health("type = \"smtp\"").contains("smtp"));
}

#[test]
fn parses_http_urls() {
    let t = parse_http_url("http://[::1]:8080/a?b=c#frag", 204).expect("valid");
    assert_eq!(
        (t.host.as_str(), t.port, t.path.as_str()),
        ("::1", 8080, "/a?b=c")
    );
    assert_eq!(t.host_header(), "[::1]:8080");
    let t = parse_http_url("http://web", 200).expect("valid");
    assert_eq!(
        (t.port, t.path.as_str(), t.host_header()),
        (80, "/", "web".to_string())
    );
    assert!(parse_http_url("http://u:p@h/", 200).is_err());
    assert!(parse_http_url("ftp://h/", 200).is_err());
}
