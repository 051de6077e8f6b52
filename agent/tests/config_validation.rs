//! Config validation: every error names the file, the block, the field and
//! what was expected.

use std::path::Path;
use std::time::Duration;

use drover_agent::config::{
    CheckConfig, Color, Config, ConfigError, DrainConfig, HaproxyAddr, HooksConfig, HttpTarget,
    RuntimeConfig, Signal, SystemdConfig, parse_http_url,
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
    let bad = health("type = \"tcp\"\naddress = \"nope\"");
    assert!(bad.contains("field `health.address`"), "{bad}");
    assert!(bad.contains("got `nope`"), "{bad}");
    assert!(!bad.contains("coordinator"), "{bad}");
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

#[test]
fn parses_deploy_drain_and_hooks() {
    let text = format!(
        r#"{BASE}
[[instance]]
name = "web"
command = "{{current}}/bin/web"
args = ["--version-file", "{{current}}/VERSION"]
env = {{ ROOT = "{{current}}" }}
working_dir = "{{current}}"
deploy_dir = "/srv/web"
keep_releases = 3
max_unpacked_bytes = 1000000
max_entries = 500
[instance.drain]
type = "haproxy"
sockets = ["/run/haproxy/admin.sock", "127.0.0.1:9999"]
backend = "web"
server = "h1-web"
timeout = "45s"
[instance.hooks]
before_stop = ["/bin/true"]
after_deploy = ["/usr/local/bin/warm", "--fast"]
validate = ["/bin/true"]
timeout = "10s"
[[instance]]
name = "api"
command = "/bin/api"
[instance.drain]
type = "exec"
drain = ["/bin/lb", "out"]
undrain = ["/bin/lb", "in"]
"#
    );
    let c = parse(&text).expect("valid");
    let web = &c.instances[0];
    let d = web.deploy.as_ref().expect("deploy");
    assert_eq!(
        (
            d.dir.as_path(),
            d.keep_releases,
            d.max_unpacked_bytes,
            d.max_entries
        ),
        (Path::new("/srv/web"), 3, 1_000_000, 500)
    );
    assert_eq!(d.current_link(), Path::new("/srv/web/current"));
    let DrainConfig::Haproxy(h) = &web.drain else {
        panic!("haproxy drain expected");
    };
    assert_eq!(
        h.sockets,
        vec![
            HaproxyAddr::Unix("/run/haproxy/admin.sock".into()),
            HaproxyAddr::Tcp {
                host: "127.0.0.1".into(),
                port: 9999
            }
        ]
    );
    assert_eq!((h.backend.as_str(), h.server.as_str()), ("web", "h1-web"));
    assert_eq!(h.timeout, Duration::from_secs(45));
    assert_eq!(web.hooks.timeout, Duration::from_secs(10));
    assert_eq!(
        web.hooks.after_deploy,
        Some(vec![
            "/usr/local/bin/warm".to_string(),
            "--fast".to_string()
        ])
    );
    let RuntimeConfig::Process(p) = &web.runtime else {
        panic!("process runtime expected");
    };
    assert!(p.uses_current());
    let x = p.expanded(Path::new("/srv/web/releases/v2-abc"));
    assert_eq!(x.command, Path::new("/srv/web/releases/v2-abc/bin/web"));
    assert_eq!(x.args[1], "/srv/web/releases/v2-abc/VERSION");
    assert_eq!(
        x.env.get("ROOT").map(String::as_str),
        Some("/srv/web/releases/v2-abc")
    );
    assert_eq!(
        x.working_dir.as_deref(),
        Some(Path::new("/srv/web/releases/v2-abc"))
    );
    let api = &c.instances[1];
    assert!(api.deploy.is_none());
    assert!(matches!(&api.drain, DrainConfig::Exec(e) if e.undrain == ["/bin/lb", "in"]));
    assert_eq!(api.hooks, HooksConfig::default());
}

#[test]
fn refuses_bad_deploy_drain_and_hook_fields() {
    let inst = |body: &str| {
        err(&format!(
            "{BASE}[[instance]]\nname = \"web\"\ncommand = \"/x\"\n{body}\n"
        ))
    };
    let cases = [
        (
            "deploy_dir = \"srv/web\"",
            "field `deploy_dir`: expected an absolute path",
        ),
        (
            "keep_releases = 3",
            "field `keep_releases`: only used together with deploy_dir",
        ),
        (
            "deploy_dir = \"/srv/web\"\nkeep_releases = 0",
            "field `keep_releases`",
        ),
        (
            "deploy_dir = \"/srv/web\"\nmax_unpacked_bytes = 0",
            "field `max_unpacked_bytes`",
        ),
        (
            "deploy_dir = \"/srv/web\"\nmax_entries = 0",
            "field `max_entries`",
        ),
        (
            "args = [\"{current}/x\"]",
            "field `args[0]`: uses {current}, which needs deploy_dir",
        ),
        (
            "working_dir = \"{current}\"",
            "field `working_dir`: uses {current}",
        ),
        (
            "[instance.drain]\ntype = \"haproxy\"\nbackend = \"web\"\nserver = \"s\"",
            "field `drain.sockets`: required",
        ),
        (
            "[instance.drain]\ntype = \"haproxy\"\nsockets = [\"nope\"]\nbackend = \"web\"\nserver = \"s\"",
            "field `drain.sockets[0]`",
        ),
        (
            "[instance.drain]\ntype = \"haproxy\"\nsockets = [\"/s\", \"/s\"]\nbackend = \"web\"\nserver = \"s\"",
            "field `drain.sockets[1]`: `/s` is listed twice",
        ),
        (
            "[instance.drain]\ntype = \"haproxy\"\nsockets = [\"/s\"]\nserver = \"s\"",
            "field `drain.backend`: required",
        ),
        (
            "[instance.drain]\ntype = \"haproxy\"\nsockets = [\"/s\"]\nbackend = \"web\\nshow info\"\nserver = \"s\"",
            "field `drain.backend`: invalid name",
        ),
        (
            "[instance.drain]\ntype = \"haproxy\"\nsockets = [\"/s\"]\nbackend = \"web\"\nserver = \"s;x\"",
            "field `drain.server`: invalid name",
        ),
        (
            "[instance.drain]\ntype = \"haproxy\"\nsockets = [\"/s\"]\nbackend = \"web\"\nserver = \"s\"\ndrain = [\"/x\"]",
            "field `drain.drain`: not used by a drain of type haproxy",
        ),
        (
            "[instance.drain]\ntype = \"exec\"\ndrain = [\"/bin/out\"]",
            "field `drain.undrain`: expected a command",
        ),
        (
            "[instance.drain]\ntype = \"exec\"\ndrain = [\"out\"]\nundrain = [\"/bin/in\"]",
            "field `drain.drain`: expected an absolute program path",
        ),
        (
            "[instance.drain]\ntype = \"none\"\nbackend = \"web\"",
            "field `drain.backend`: not used by a drain of type none",
        ),
        (
            "[instance.drain]\ntype = \"haproxy\"\nsockets = [\"/s\"]\nbackend = \"w\"\nserver = \"s\"\ntimeout = \"0s\"",
            "field `drain.timeout`",
        ),
        (
            "[instance.hooks]\nbefore_stop = []",
            "field `hooks.before_stop`: expected a command",
        ),
        (
            "[instance.hooks]\nvalidate = [\"check.sh\"]",
            "field `hooks.validate`: expected an absolute program path",
        ),
        (
            "[instance.hooks]\ntimeout = \"0s\"",
            "field `hooks.timeout`",
        ),
    ];
    for (body, want) in cases {
        let e = inst(body);
        assert!(
            e.contains("instance[0] (web): ") && e.contains(want),
            "{body}\n=> {e}"
        );
    }
    let e = inst("[instance.hooks]\nafter_deploy_typo = [\"/x\"]");
    assert!(e.contains("after_deploy_typo"), "{e}");
    let e = inst("[instance.drain]\ntype = \"f5\"");
    assert!(e.contains("f5"), "{e}");
    let dup = err(&format!(
        "{BASE}[[instance]]\nname = \"a\"\ncommand = \"/x\"\ndeploy_dir = \"/srv/a\"\n[[instance]]\nname = \"b\"\ncommand = \"/x\"\ndeploy_dir = \"/srv/a\"\n"
    ));
    assert!(
        dup.contains("instance[1] (b): field `deploy_dir`: `/srv/a` is used by another instance"),
        "{dup}"
    );
}

/// Two instances of `web`, blue and green, as the README shows them.
const BLUE_GREEN: &str = r#"
traffic_interval = "5s"
[[instance]]
name = "web-blue"
service = "web"
color = "blue"
command = "{current}/bin/web"
env = { PORT = "8080" }
deploy_dir = "/srv/web-blue"
[instance.health]
type = "http"
url = "http://127.0.0.1:8080/healthz"
[instance.drain]
type = "haproxy"
sockets = ["/run/haproxy/admin.sock"]
backend = "web"
server = "h1-blue"
[instance.metrics]
url = "http://127.0.0.1:8080/metrics"
[[instance]]
name = "web-green"
service = "web"
color = "green"
command = "{current}/bin/web"
env = { PORT = "8081" }
deploy_dir = "/srv/web-green"
[instance.health]
type = "http"
url = "http://127.0.0.1:8081/healthz"
[instance.drain]
type = "haproxy"
sockets = ["/run/haproxy/admin.sock"]
backend = "web"
server = "h1-green"
[instance.metrics]
url = "http://127.0.0.1:8081/metrics"
requests = "app_requests_total"
latency = "app_latency_seconds"
timeout = "500ms"
"#;

#[test]
fn parses_colors_metrics_and_the_traffic_interval() {
    let c = parse(&format!("{BASE}{BLUE_GREEN}")).expect("valid");
    assert_eq!(c.traffic_interval, Duration::from_secs(5));
    let colors: Vec<_> = c
        .instances
        .iter()
        .map(|i| i.color.map(Color::as_str))
        .collect();
    assert_eq!(colors, vec![Some("blue"), Some("green")]);
    let m = c.instances[0].metrics.as_ref().expect("metrics");
    assert_eq!(
        (
            m.target.port,
            m.target.path.as_str(),
            m.requests.as_str(),
            m.latency.as_str()
        ),
        (
            8080,
            "/metrics",
            "http_requests_total",
            "http_request_duration_seconds"
        )
    );
    assert_eq!(m.timeout, Duration::from_secs(2));
    let m = c.instances[1].metrics.as_ref().expect("metrics");
    assert_eq!(
        (m.requests.as_str(), m.latency.as_str(), m.timeout),
        (
            "app_requests_total",
            "app_latency_seconds",
            Duration::from_millis(500)
        )
    );
    assert!(c.has_traffic());
    // Defaults: 10 s, no colors, no metrics.
    let plain = parse(&format!(
        "{BASE}[[instance]]\nname = \"web\"\ncommand = \"/bin/web\"\n"
    ))
    .expect("valid");
    assert_eq!(plain.traffic_interval, Duration::from_secs(10));
    assert_eq!(
        (
            plain.instances[0].color,
            plain.instances[0].metrics.as_ref()
        ),
        (None, None)
    );
    assert!(!plain.has_traffic());
}

#[test]
fn refuses_colors_that_do_not_make_one_blue_and_one_green() {
    let bg = |from: &str, to: &str| format!("{BASE}{}", BLUE_GREEN.replacen(from, to, 1));
    let e = err(&bg("color = \"green\"", "color = \"blue\""));
    assert!(
        e.starts_with(PATH)
            && e.contains("instance[1] (web-green): field `color`")
            && e.contains("two blue instances on this host (web-blue and web-green)"),
        "{e}"
    );
    let e = err(&bg("color = \"green\"\n", ""));
    assert!(
        e.contains("instance[1] (web-green): field `color`") && e.contains("missing"),
        "{e}"
    );
    let e = err(&format!(
        "{BASE}{}",
        BLUE_GREEN
            .split("[[instance]]\nname = \"web-green\"")
            .next()
            .unwrap_or("")
    ));
    assert!(e.contains("service web has no green instance"), "{e}");
    let e = err(&bg("color = \"green\"", "color = \"red\""));
    assert!(
        e.starts_with(PATH) && e.contains("unknown variant `red`"),
        "{e}"
    );
    let e = err(&bg("8081/healthz", "8080/healthz"));
    assert!(
        e.contains("instance[1] (web-green): field `color`")
            && e.contains("both serve on port 8080"),
        "{e}"
    );
    let e = err(&bg("server = \"h1-green\"", "server = \"h1-blue\""));
    assert!(
        e.contains("field `drain.server`") && e.contains("web-blue (blue)'s server too"),
        "{e}"
    );
    let e = err(&bg(
        "backend = \"web\"\nserver = \"h1-green\"",
        "backend = \"other\"\nserver = \"h1-green\"",
    ));
    assert!(
        e.contains("field `drain.backend`") && e.contains("same HAProxy backend"),
        "{e}"
    );
    let e = err(&bg("deploy_dir = \"/srv/web-green\"\n", "").replace(
        "{current}/bin/web\"\nenv = { PORT = \"8081\" }",
        "/bin/web\"\nenv = { PORT = \"8081\" }",
    ));
    assert!(
        e.contains("instance[1] (web-green): field `deploy_dir`")
            && e.contains("required for a blue or green"),
        "{e}"
    );
    // Another service without colors is fine beside them.
    parse(&format!(
        "{BASE}{BLUE_GREEN}[[instance]]\nname = \"api\"\ncommand = \"/bin/api\"\n"
    ))
    .expect("a service without colors");
}

#[test]
fn refuses_bad_metrics() {
    let with = |metrics: &str| {
        format!(
            "{BASE}[[instance]]\nname = \"web\"\ncommand = \"/bin/web\"\n[instance.metrics]\n{metrics}"
        )
    };
    for (metrics, field, what) in [
        ("", "metrics.url", "required"),
        (
            "url = \"https://127.0.0.1/metrics\"",
            "metrics.url",
            "https is not supported",
        ),
        (
            "url = \"http://example.com/metrics\"",
            "metrics.url",
            "loopback or IP address of this host",
        ),
        (
            "url = \"http://127.0.0.1:8080/metrics\"\nrequests = \"bad-name\"",
            "metrics.requests",
            "invalid metric name",
        ),
        (
            "url = \"http://127.0.0.1:8080/metrics\"\nlatency = \"1x\"",
            "metrics.latency",
            "invalid metric name",
        ),
        (
            "url = \"http://127.0.0.1:8080/metrics\"\ntimeout = \"0s\"",
            "metrics.timeout",
            "greater than 0",
        ),
    ] {
        let e = err(&with(metrics));
        assert!(
            e.starts_with(PATH)
                && e.contains(&format!("instance[0] (web): field `{field}`"))
                && e.contains(what),
            "{metrics:?}: {e}"
        );
    }
    let e = err(&with("url = \"http://127.0.0.1/m\"\nport = 1"));
    assert!(e.contains("unknown field `port`"), "{e}");
    let e = err(&format!("{BASE}traffic_interval = \"0s\"\n"));
    assert!(e.contains("field `traffic_interval`"), "{e}");
}

#[test]
fn the_agents_own_metrics_are_off_unless_metrics_listen_names_an_address() {
    assert_eq!(parse(BASE).expect("base").metrics_listen, None);
    let on = parse(&format!("{BASE}[metrics]\nlisten = \"127.0.0.1:9464\"\n")).expect("on");
    assert_eq!(
        on.metrics_listen,
        Some("127.0.0.1:9464".parse().expect("addr"))
    );
    let v6 = parse(&format!("{BASE}[metrics]\nlisten = \"[::1]:9464\"\n")).expect("v6");
    assert_eq!(v6.metrics_listen, Some("[::1]:9464".parse().expect("addr")));
    for (toml, expected) in [
        (
            "[metrics]\n",
            "field `metrics.listen`: required in [metrics]",
        ),
        (
            "[metrics]\nlisten = \"localhost:9464\"\n",
            "field `metrics.listen`: expected IP:PORT",
        ),
        (
            "[metrics]\nlisten = \"127.0.0.1\"\n",
            "field `metrics.listen`: expected IP:PORT",
        ),
        (
            "[metrics]\nlisten = \"127.0.0.1:0\"\n",
            "field `metrics.listen`: expected a port from 1 to 65535",
        ),
    ] {
        let e = err(&format!("{BASE}{toml}"));
        assert!(e.starts_with(PATH), "{e}");
        assert!(e.contains(expected), "{toml}: {e}");
    }
    let e = err(&format!(
        "{BASE}[metrics]\nlisten = \"127.0.0.1:9464\"\npath = \"/m\"\n"
    ));
    assert!(e.contains("unknown field `path`"), "{e}");
}
