//! Human views of a [`Host`]: the `drover agents` table (and its wide
//! form), the `drover agent show` page and the one-line form that `--watch`
//! prints when stdout is not a terminal. The JSON view is in `host_json`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use drover_proto::v1::{
    HealthState, Host, HostMetrics, InstanceStatus, LoadBalancerState, LoadBalancerView,
    RuntimeState,
};

use super::{align, bytes, percent, relative, rfc3339_ms, short_duration, table};

/// Hosts in the order every view shows them: by host id.
pub fn sorted(hosts: impl IntoIterator<Item = Host>) -> Vec<Host> {
    let mut hosts: Vec<Host> = hosts.into_iter().collect();
    hosts.sort_by(|a, b| a.host_id.cmp(&b.host_id));
    hosts
}

fn dash(s: String) -> String {
    if s.is_empty() { "-".into() } else { s }
}

/// `env=prod,zone=a`, sorted by key.
pub fn labels_text(labels: &std::collections::HashMap<String, String>) -> String {
    let sorted: BTreeMap<_, _> = labels.iter().collect();
    sorted
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Counts instances that serve: healthy ones, or running ones without a
/// health check. Hosts whose instances have no checks say `running`
/// rather than claiming health nobody measured.
pub fn instances_summary(instances: &[InstanceStatus]) -> String {
    if instances.is_empty() {
        return "-".into();
    }
    let checked = instances.iter().any(|i| i.health() != HealthState::None);
    let ok = instances
        .iter()
        .filter(|i| {
            i.health() == HealthState::Healthy
                || (i.health() == HealthState::None && i.state() == RuntimeState::Running)
        })
        .count();
    let word = if checked { "healthy" } else { "running" };
    let mut text = format!("{ok}/{} {word}", instances.len());
    let undeployed = instances.iter().filter(|i| not_deployed(i)).count();
    if undeployed > 0 {
        let _ = write!(text, ", {undeployed} not deployed");
    }
    text
}

/// Highest use across mounts, as a whole percentage.
pub fn disk_max(m: &HostMetrics) -> Option<f64> {
    m.disks
        .iter()
        .filter_map(|d| percent(d.used_bytes, d.total_bytes))
        .reduce(f64::max)
}

const HEADER: [&str; 8] = [
    "HOST",
    "STATUS",
    "LAST SEEN",
    "CPU",
    "MEM",
    "DISK",
    "INSTANCES",
    "LABELS",
];
const WIDE_EXTRA: [&str; 3] = ["AGENT VERSION", "CERT EXPIRES", "LOAD"];

fn row(h: &Host, now_ms: i64, wide: bool) -> Vec<String> {
    let m = h.metrics.as_ref();
    let mut row = vec![
        h.host_id.clone(),
        h.status().as_text().to_string(),
        relative(now_ms, h.last_seen_ms),
        m.map(|m| format!("{:.1}%", m.cpu_percent))
            .unwrap_or_else(|| "-".into()),
        m.map(|m| format!("{}/{}", bytes(m.mem_used_bytes), bytes(m.mem_total_bytes)))
            .unwrap_or_else(|| "-".into()),
        m.and_then(disk_max)
            .map(|p| format!("{p:.0}%"))
            .unwrap_or_else(|| "-".into()),
        instances_summary(&h.instances),
        dash(labels_text(&h.labels)),
    ];
    if wide {
        row.push(dash(h.agent_version.clone()));
        row.push(if h.cert_not_after_ms > 0 {
            relative(now_ms, h.cert_not_after_ms)
        } else {
            "-".into()
        });
        row.push(
            m.map(|m| format!("{:.2} {:.2} {:.2}", m.load1, m.load5, m.load15))
                .unwrap_or_else(|| "-".into()),
        );
    }
    row
}

/// An instance whose command runs from a release and none was deployed
/// yet: neither crashed nor unhealthy, just waiting for a first rollout.
fn not_deployed(i: &InstanceStatus) -> bool {
    i.state() == RuntimeState::NotDeployed
}

/// The state in words (`not deployed` where JSON says `not_deployed`).
fn state_text(i: &InstanceStatus) -> &'static str {
    if not_deployed(i) {
        "not deployed"
    } else {
        i.state().as_text()
    }
}

/// Health as a column: nothing to check on an instance never deployed.
fn health_text(i: &InstanceStatus) -> &'static str {
    if not_deployed(i) {
        "-"
    } else {
        i.health().as_text()
    }
}

fn release_text(i: &InstanceStatus) -> String {
    match &i.release {
        Some(r) if !r.version.is_empty() => r.version.clone(),
        Some(r) if !r.digest.is_empty() => {
            format!("sha256:{}", &r.digest[..r.digest.len().min(12)])
        }
        _ => "-".into(),
    }
}

fn instance_row(i: &InstanceStatus) -> Vec<String> {
    let mut health = health_text(i).to_string();
    if i.drained {
        health.push_str(", drained");
    }
    // What a load balancer that does not route to it says.
    if let Some(lb) = i.load_balancers.iter().find(|lb| !routed(lb)) {
        let _ = write!(health, ", lb {}", lb_state_text(lb));
    }
    vec![
        format!("  - {}", i.id),
        state_text(i).to_string(),
        health,
        format!("restarts {}", i.restarts),
        format!("release {}", release_text(i)),
    ]
}

/// The `drover agents` table; `wide` adds columns and a line per instance.
/// Hosts must already be sorted.
pub fn hosts_table(hosts: &[Host], now_ms: i64, wide: bool) -> String {
    let mut header: Vec<&str> = HEADER.to_vec();
    if wide {
        header.extend(WIDE_EXTRA);
    }
    let rows: Vec<Vec<String>> = hosts.iter().map(|h| row(h, now_ms, wide)).collect();
    let text = table(&header, &rows);
    if !wide {
        return text;
    }
    // Instance lines are aligned among themselves, across all hosts.
    let inst_rows: Vec<Vec<String>> = hosts
        .iter()
        .flat_map(|h| h.instances.iter().map(instance_row))
        .collect();
    let mut inst_lines = align(&inst_rows).into_iter();
    let mut out = String::new();
    let mut lines = text.lines();
    if let Some(header) = lines.next() {
        out.push_str(header);
        out.push('\n');
    }
    for (h, line) in hosts.iter().zip(lines) {
        out.push_str(line);
        out.push('\n');
        for _ in &h.instances {
            if let Some(l) = inst_lines.next() {
                out.push_str(&l);
                out.push('\n');
            }
        }
    }
    out
}

/// One line per host change, for `--watch` into a pipe or file.
pub fn event_line(event: &str, h: &Host, now_ms: i64) -> String {
    let cells = row(h, now_ms, false);
    let mut line = format!("{event} {} {}", cells[0], cells[1]);
    if !h.status_reason.is_empty() {
        let _ = write!(line, " ({})", h.status_reason);
    }
    let _ = write!(
        line,
        " last_seen={}",
        rfc3339_ms(h.last_seen_ms).unwrap_or_else(|| "never".into())
    );
    let _ = write!(
        line,
        " cpu={} mem={} disk={} instances=\"{}\" labels={}",
        cells[3], cells[4], cells[5], cells[6], cells[7]
    );
    line
}

fn when(now_ms: i64, ms: i64) -> String {
    match rfc3339_ms(ms) {
        Some(t) => format!("{t} ({})", relative(now_ms, ms)),
        None => "never".into(),
    }
}

/// The `drover agent show` page.
pub fn host_detail(h: &Host, now_ms: i64) -> String {
    let mut fields: Vec<Vec<String>> = Vec::new();
    let mut field = |k: &str, v: String| fields.push(vec![format!("{k}:"), v]);
    field("Host", h.host_id.clone());
    let mut status = h.status().as_text().to_string();
    if !h.status_reason.is_empty() {
        let _ = write!(status, " ({})", h.status_reason);
    }
    field("Status", status);
    field("Labels", dash(labels_text(&h.labels).replace(',', ", ")));
    field("Agent version", dash(h.agent_version.clone()));
    field("Last seen", when(now_ms, h.last_seen_ms));
    field("Peer address", dash(h.peer_addr.clone()));
    field("Enrolled", when(now_ms, h.enrolled_at_ms));
    field(
        "Certificate",
        if h.cert_serial.is_empty() && h.cert_not_after_ms <= 0 {
            "-".into()
        } else {
            let expiry = match rfc3339_ms(h.cert_not_after_ms) {
                Some(t) if h.cert_not_after_ms < now_ms => {
                    format!("expired {t} ({})", relative(now_ms, h.cert_not_after_ms))
                }
                Some(t) => format!("expires {t} ({})", relative(now_ms, h.cert_not_after_ms)),
                None => "expiry unknown".into(),
            };
            format!("serial {}, {expiry}", dash(h.cert_serial.clone()))
        },
    );
    let mut out = align(&fields).join("\n");
    out.push_str("\n\n");

    match &h.metrics {
        None => out.push_str("Metrics: no report yet\n"),
        Some(m) => {
            out.push_str("Metrics:\n");
            let mut rows = vec![
                vec![
                    "  CPU:".into(),
                    format!(
                        "{:.1}% of {} cores, load {:.2} {:.2} {:.2}",
                        m.cpu_percent, m.cpu_count, m.load1, m.load5, m.load15
                    ),
                ],
                vec![
                    "  Memory:".into(),
                    used_of(m.mem_used_bytes, m.mem_total_bytes),
                ],
                vec![
                    "  Swap:".into(),
                    used_of(m.swap_used_bytes, m.swap_total_bytes),
                ],
                vec![
                    "  Uptime:".into(),
                    short_duration(m.uptime_secs.saturating_mul(1000)),
                ],
            ];
            if m.disks.is_empty() {
                rows.push(vec!["  Disks:".into(), "-".into()]);
            }
            out.push_str(&align(&rows).join("\n"));
            out.push('\n');
            if !m.disks.is_empty() {
                out.push_str("  Disks:\n");
                let disk_rows: Vec<Vec<String>> = m
                    .disks
                    .iter()
                    .map(|d| {
                        vec![
                            format!("    {}", d.mount),
                            bytes(d.used_bytes),
                            bytes(d.total_bytes),
                            percent(d.used_bytes, d.total_bytes)
                                .map(|p| format!("{p:.0}%"))
                                .unwrap_or_else(|| "-".into()),
                        ]
                    })
                    .collect();
                let mut all = vec![vec![
                    "    MOUNT".to_string(),
                    "USED".into(),
                    "TOTAL".into(),
                    "USE%".into(),
                ]];
                all.extend(disk_rows);
                out.push_str(&align(&all).join("\n"));
                out.push('\n');
            }
        }
    }
    out.push('\n');

    if h.instances.is_empty() {
        out.push_str("Instances: none\n");
        return out;
    }
    out.push_str("Instances:\n");
    for i in &h.instances {
        let _ = writeln!(out, "  {}", i.id);
        let mut rows = vec![
            vec![
                "    Service:".to_string(),
                format!(
                    "{} (name {}, runtime {})",
                    dash(i.service.clone()),
                    dash(i.name.clone()),
                    dash(i.runtime.clone())
                ),
            ],
            vec![
                "    State:".into(),
                format!(
                    "{}{}, {} restart{}",
                    state_text(i),
                    if i.pid > 0 {
                        format!(" (pid {})", i.pid)
                    } else {
                        String::new()
                    },
                    i.restarts,
                    if i.restarts == 1 { "" } else { "s" }
                ),
            ],
            vec!["    Health:".into(), health_detail(i)],
            vec!["    Release:".into(), release_detail(i)],
            vec![
                "    Drained:".into(),
                if i.drained { "yes" } else { "no" }.into(),
            ],
            vec!["    Drain method:".into(), i.drain().as_text().into()],
        ];
        for lb in &i.load_balancers {
            rows.push(vec![
                "    Load balancer:".into(),
                format!(
                    "{}, weight {}, {}/{} on {} (read {})",
                    lb_state_text(lb),
                    lb.weight,
                    lb.backend,
                    lb.server,
                    lb.balancer,
                    relative(now_ms, lb.read_at_ms)
                ),
            ]);
        }
        if !i.last_check_error.is_empty() {
            rows.push(vec![
                "    Last check error:".into(),
                i.last_check_error.clone(),
            ]);
        }
        out.push_str(&align(&rows).join("\n"));
        out.push('\n');
    }
    out
}

fn used_of(used: u64, total: u64) -> String {
    match percent(used, total) {
        Some(p) => format!("{} of {} ({p:.0}%)", bytes(used), bytes(total)),
        None => format!("{} of {}", bytes(used), bytes(total)),
    }
}

/// Whether the load balancer sends the instance new traffic.
fn routed(lb: &LoadBalancerView) -> bool {
    lb.state() == LoadBalancerState::Up && lb.weight > 0
}

/// `UP`, `DOWN, 1/3 checks`, `unknown (why)`: the load balancer's words.
fn lb_state_text(lb: &LoadBalancerView) -> String {
    match lb.state() {
        LoadBalancerState::Unknown | LoadBalancerState::Unspecified => {
            format!("unknown ({})", dash(lb.status.clone()))
        }
        LoadBalancerState::Up if lb.weight == 0 => format!("{} (weight 0)", lb.status),
        _ => match lb.status.split_once(' ') {
            Some((word, checks)) if checks.contains('/') => format!("{word}, {checks} checks"),
            _ => lb.status.clone(),
        },
    }
}

fn health_detail(i: &InstanceStatus) -> String {
    if not_deployed(i) {
        return "- (nothing deployed yet: a first rollout deploys it, see \
                `drover rollout start --initial`)"
            .into();
    }
    match i.health() {
        HealthState::None => "none (no health check configured)".into(),
        h => format!(
            "{} ({} passed and {} failed in a row, last check took {} ms)",
            h.as_text(),
            i.consecutive_successes,
            i.consecutive_failures,
            i.last_check_latency_ms
        ),
    }
}

fn release_detail(i: &InstanceStatus) -> String {
    match &i.release {
        Some(r) if !r.version.is_empty() || !r.digest.is_empty() => {
            let version = dash(r.version.clone());
            if r.digest.is_empty() {
                version
            } else {
                format!("{version} (sha256:{})", r.digest)
            }
        }
        _ => "-".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::fixtures::{NOW, bare_host, host, instance};
    use drover_proto::v1::HostStatus;

    /// Splits a table line into cells on runs of 2+ spaces.
    fn cells(line: &str) -> Vec<&str> {
        line.split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect()
    }

    #[test]
    fn table_shows_what_an_operator_needs() {
        let hosts = sorted(vec![host("h2"), bare_host("h1")]);
        let text = hosts_table(&hosts, NOW, false);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(
            cells(lines[0]),
            [
                "HOST",
                "STATUS",
                "LAST SEEN",
                "CPU",
                "MEM",
                "DISK",
                "INSTANCES",
                "LABELS"
            ]
        );
        assert_eq!(
            cells(lines[1]),
            ["h1", "enrolled", "never", "-", "-", "-", "-", "-"]
        );
        assert_eq!(
            cells(lines[2]),
            [
                "h2",
                "connected",
                "3s ago",
                "12.3%",
                "3.0GiB/8.0GiB",
                "90%",
                "1/2 healthy",
                "env=prod,zone=a"
            ]
        );
        // Columns line up: every value starts where its header does.
        let col = lines[0].find("INSTANCES").expect("header");
        assert_eq!(lines[2].find("1/2 healthy"), Some(col));
    }

    #[test]
    fn instances_without_checks_count_as_running() {
        let mut h = host("h1");
        h.instances = vec![
            instance("a@h1", RuntimeState::Running, HealthState::None),
            instance("b@h1", RuntimeState::Stopped, HealthState::None),
        ];
        assert_eq!(instances_summary(&h.instances), "1/2 running");
        h.instances[1] = instance("b@h1", RuntimeState::Running, HealthState::Healthy);
        assert_eq!(instances_summary(&h.instances), "2/2 healthy");
    }

    #[test]
    fn never_deployed_instances_say_so() {
        let mut h = host("h1");
        for i in &mut h.instances {
            i.state = RuntimeState::NotDeployed as i32;
            i.health = HealthState::Unhealthy as i32;
            i.release = None;
            i.pid = 0;
            i.restarts = 0;
        }
        assert_eq!(
            instances_summary(&h.instances),
            "0/2 healthy, 2 not deployed"
        );
        let text = hosts_table(std::slice::from_ref(&h), NOW, true);
        let line = text.lines().nth(2).unwrap_or_default();
        assert_eq!(
            cells(line),
            ["- web@h1", "not deployed", "-", "restarts 0", "release -"]
        );
        assert!(
            !text.contains("crashed") && !text.contains("unhealthy"),
            "{text}"
        );
        let page = host_detail(&h, NOW);
        assert!(page.contains("not deployed, 0 restarts"), "{page}");
        assert!(page.contains("nothing deployed yet"), "{page}");
        assert!(page.contains("Drain method:"), "{page}");
    }

    #[test]
    fn wide_table_adds_columns_and_instances() {
        let mut h2 = host("h2");
        h2.instances[0].drained = true;
        let hosts = sorted(vec![h2, host("h1")]);
        let text = hosts_table(&hosts, NOW, true);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 7, "{text}");
        let header = cells(lines[0]);
        assert_eq!(&header[8..], ["AGENT VERSION", "CERT EXPIRES", "LOAD"]);
        let h1 = cells(lines[1]);
        assert_eq!(h1[0], "h1");
        assert_eq!(&h1[8..], ["0.1.0", "in 20h", "0.50 0.25 0.12"]);
        assert_eq!(
            cells(lines[2]),
            [
                "- web@h1",
                "running",
                "healthy",
                "restarts 1",
                "release v1.2.3"
            ]
        );
        assert_eq!(
            cells(lines[3]),
            [
                "- api@h1",
                "crashed",
                "unhealthy",
                "restarts 1",
                "release v1.2.3"
            ]
        );
        assert!(lines[4].starts_with("h2 "), "{text}");
        assert_eq!(cells(lines[5])[2], "healthy, drained");
    }

    #[test]
    fn the_load_balancers_view_shows_when_it_does_not_route() {
        let view = |state: LoadBalancerState, status: &str, weight| LoadBalancerView {
            balancer: "/run/haproxy.sock".into(),
            backend: "web".into(),
            server: "h1".into(),
            state: state as i32,
            status: status.into(),
            weight,
            read_at_ms: NOW - 1_000,
            ..LoadBalancerView::default()
        };
        let mut h = host("h1");
        h.instances[0].load_balancers = vec![view(LoadBalancerState::Up, "UP", 1)];
        h.instances[1].load_balancers = vec![view(LoadBalancerState::Down, "DOWN 1/3", 1)];
        let text = hosts_table(&[h.clone()], NOW, true);
        assert!(text.contains("healthy, lb DOWN, 1/3 checks"), "{text}");
        assert!(!text.contains("lb UP"), "{text}");
        let detail = host_detail(&h, NOW);
        assert!(
            detail.contains("UP, weight 1, web/h1 on /run/haproxy.sock (read 1s ago)"),
            "{detail}"
        );
        assert!(detail.contains("DOWN, 1/3 checks, weight 1"), "{detail}");
        let unknown = view(LoadBalancerState::Unknown, "no answer within 2s", 0);
        assert_eq!(lb_state_text(&unknown), "unknown (no answer within 2s)");
        assert_eq!(
            lb_state_text(&view(LoadBalancerState::Up, "UP", 0)),
            "UP (weight 0)"
        );
    }

    #[test]
    fn detail_page_shows_everything() {
        let mut h = host("h1");
        h.status = HostStatus::Lost as i32;
        h.status_reason = "no report for 15s".into();
        h.instances[1].last_check_error = "connection refused".into();
        let text = host_detail(&h, NOW);
        for want in [
            "Host:",
            "lost (no report for 15s)",
            "env=prod, zone=a",
            "2026-09-21T14:13:17Z (3s ago)",
            "serial 4a01, expires 2026-09-22T10:13:20Z (in 20h)",
            "12.3% of 4 cores, load 0.50 0.25 0.12",
            "3.0GiB of 8.0GiB (38%)",
            "Uptime:",
            "3d5h",
            "/var",
            "90%",
            "web@h1",
            "running (pid 4242), 1 restart",
            "healthy (5 passed and 0 failed in a row, last check took 2 ms)",
            &format!("v1.2.3 (sha256:{})", "ab".repeat(32)),
            "Last check error:",
            "connection refused",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        let bare = host_detail(&bare_host("h3"), NOW);
        assert!(bare.contains("Metrics: no report yet"), "{bare}");
        assert!(bare.contains("Instances: none"), "{bare}");
        assert!(bare.contains("Last seen:"), "{bare}");
    }

    #[test]
    fn event_lines_are_single_lines() {
        let line = event_line("updated", &host("h1"), NOW);
        assert!(!line.contains('\n'));
        assert!(
            line.starts_with("updated h1 connected last_seen=2026-09-21T14:13:17Z cpu=12.3%"),
            "{line}"
        );
        assert!(line.contains("instances=\"1/2 healthy\""), "{line}");
    }
}
