//! The fleet page: every host with its status, labels, instances and
//! their health and release, the releases each service runs, and a
//! selector filter in the CLI's syntax (`drover agents -l`).

use std::collections::BTreeMap;

use drover_proto::v1::{HealthState, Host, HostStatus, InstanceStatus, RuntimeState};

use super::html::Html;
use crate::output::host::instances_summary;
use crate::output::{bytes, relative};

/// How a host reads at a glance: `ok` when it is connected and every
/// instance serves (healthy, or running without a check), `degraded`
/// when one does not, else its status (`lost`, `enrolled`, `revoked`).
pub fn host_health(h: &Host) -> &'static str {
    match h.status() {
        HostStatus::Connected => {
            let serving = |i: &InstanceStatus| {
                i.health() == HealthState::Healthy
                    || (i.health() == HealthState::None && i.state() == RuntimeState::Running)
            };
            if h.instances.iter().all(serving) {
                "ok"
            } else {
                "degraded"
            }
        }
        other => other.as_text(),
    }
}

fn version(i: &InstanceStatus) -> String {
    match &i.release {
        Some(r) if !r.version.is_empty() => r.version.clone(),
        Some(r) if !r.digest.is_empty() => {
            format!("sha256:{}", r.digest.get(..12).unwrap_or(&r.digest))
        }
        _ => "none".to_string(),
    }
}

/// The selector form; `error` says why the last selector was refused.
fn filter_form(h: &mut Html, selector: &str, error: Option<&str>) {
    h.open(
        "form",
        &[("class", "filter"), ("method", "get"), ("action", "/")],
    )
    .elem("label", &[("for", "selector")], "Selector")
    .void(
        "input",
        &[
            ("id", "selector"),
            ("name", "selector"),
            ("value", selector),
            ("placeholder", "env=prod,zone in (a,b),!canary"),
            ("size", "40"),
        ],
    )
    .elem("button", &[("type", "submit")], "Filter")
    .close("form");
    if let Some(e) = error {
        h.elem("p", &[("class", "error"), ("id", "selector-error")], e);
    }
}

/// The page's body: the filter, the releases per service, then the hosts
/// (already sorted). The part inside `#live` is what live updates replace.
pub fn fleet_page(hosts: &[Host], selector: &str, error: Option<&str>, now_ms: i64) -> Html {
    let mut h = Html::new();
    h.elem("h1", &[], "Fleet");
    filter_form(&mut h, selector, error);
    let live = if error.is_some() {
        String::new()
    } else {
        format!("/fleet/events?selector={}", urlencode(selector))
    };
    h.open("section", &[("id", "live"), ("data-live", &live)])
        .append(fleet_live(hosts, selector, now_ms))
        .close("section");
    h
}

/// `selector` for a query string.
pub fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(b))
            }
            b => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// What live updates replace: the counts, releases and host table.
pub fn fleet_live(hosts: &[Host], selector: &str, now_ms: i64) -> Html {
    let mut h = Html::new();
    let count = |s: HostStatus| hosts.iter().filter(|h| h.status() == s).count();
    let degraded = hosts
        .iter()
        .filter(|h| host_health(h) == "degraded")
        .count();
    let n = hosts.len().to_string();
    h.open("p", &[("class", "counts"), ("data-hosts", &n)])
        .text(&format!(
            "{} hosts{}: {} connected ({} degraded), {} lost, {} enrolled, {} revoked",
            hosts.len(),
            if selector.is_empty() {
                String::new()
            } else {
                format!(" matching {selector}")
            },
            count(HostStatus::Connected),
            degraded,
            count(HostStatus::Lost),
            count(HostStatus::Enrolled),
            count(HostStatus::Revoked),
        ))
        .close("p");

    // Service -> version -> instances on it.
    let mut releases: BTreeMap<&str, BTreeMap<String, usize>> = BTreeMap::new();
    for i in hosts.iter().flat_map(|h| &h.instances) {
        *releases
            .entry(i.service.as_str())
            .or_default()
            .entry(version(i))
            .or_default() += 1;
    }
    h.elem("h2", &[], "Releases");
    if releases.is_empty() {
        h.elem("p", &[("class", "empty")], "No instances.");
    } else {
        h.open("table", &[("class", "releases")])
            .header(&["Service", "Release", "Instances"]);
        for (service, versions) in &releases {
            for (v, n) in versions {
                let n = n.to_string();
                h.row(
                    &[
                        ("class", "release"),
                        ("data-service", service),
                        ("data-version", v),
                        ("data-instances", &n),
                    ],
                    &[service, v, &n],
                );
            }
        }
        h.close("table");
    }

    h.elem("h2", &[], "Hosts");
    if hosts.is_empty() {
        h.elem("p", &[("class", "empty")], "No host matches.");
        return h;
    }
    h.open("table", &[("class", "hosts")]).header(&[
        "Host",
        "Status",
        "Last seen",
        "CPU",
        "Memory",
        "Instances",
        "Labels",
    ]);
    for host in hosts {
        let status = host.status().as_text();
        let health = host_health(host);
        h.open(
            "tr",
            &[
                ("class", "host"),
                ("data-host", &host.host_id),
                ("data-status", status),
                ("data-health", health),
            ],
        )
        .elem("td", &[("class", "id")], &host.host_id)
        .open("td", &[])
        .elem("span", &[("class", &format!("badge h-{health}"))], status);
        if !host.status_reason.is_empty() {
            h.elem("div", &[("class", "note")], &host.status_reason);
        }
        h.close("td");
        let m = host.metrics.as_ref();
        h.elem("td", &[], &relative(now_ms, host.last_seen_ms))
            .elem(
                "td",
                &[],
                &m.map(|m| format!("{:.1}%", m.cpu_percent))
                    .unwrap_or_else(|| "-".into()),
            )
            .elem(
                "td",
                &[],
                &m.map(|m| format!("{} / {}", bytes(m.mem_used_bytes), bytes(m.mem_total_bytes)))
                    .unwrap_or_else(|| "-".into()),
            );
        h.open("td", &[])
            .elem("div", &[], &instances_summary(&host.instances))
            .open("ul", &[("class", "instances")]);
        for i in &host.instances {
            let v = version(i);
            let health = i.health().as_text();
            let state = i.state().as_text();
            let mut what = format!("{}: {state}, {health}, {v}", i.id);
            if i.drained {
                what.push_str(", drained");
            }
            h.elem(
                "li",
                &[
                    ("class", &format!("instance i-{health}")),
                    ("data-instance", &i.id),
                    ("data-state", state),
                    ("data-health", health),
                    ("data-release", &v),
                ],
                &what,
            );
        }
        h.close("ul").close("td");
        let labels: BTreeMap<&String, &String> = host.labels.iter().collect();
        h.open("td", &[("class", "labels")]);
        for (k, v) in labels {
            h.elem(
                "span",
                &[("class", "label"), ("data-key", k), ("data-value", v)],
                &format!("{k}={v}"),
            );
        }
        h.close("td").close("tr");
    }
    h.close("table");
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_proto::v1::Release;

    fn host(id: &str, status: HostStatus, label: (&str, &str)) -> Host {
        Host {
            host_id: id.to_string(),
            status: status as i32,
            labels: [(label.0.to_string(), label.1.to_string())].into(),
            instances: vec![InstanceStatus {
                id: format!("web@{id}"),
                service: "web".into(),
                state: RuntimeState::Running as i32,
                health: HealthState::Healthy as i32,
                release: Some(Release {
                    version: "v1".into(),
                    digest: String::new(),
                }),
                ..InstanceStatus::default()
            }],
            ..Host::default()
        }
    }

    #[test]
    fn hosts_labels_and_releases_are_in_the_dom_and_escaped() {
        let hosts = vec![
            host("h1", HostStatus::Connected, ("zone", "a")),
            host("h2", HostStatus::Lost, ("note", "<script>x()</script>")),
        ];
        let page = fleet_page(&hosts, "zone in (a,b)", None, 0).into_string();
        assert!(
            page.contains("data-host=\"h1\" data-status=\"connected\" data-health=\"ok\""),
            "{page}"
        );
        assert!(page.contains("data-host=\"h2\" data-status=\"lost\" data-health=\"lost\""));
        assert!(page.contains("data-service=\"web\" data-version=\"v1\" data-instances=\"2\""));
        assert!(page.contains("data-key=\"zone\" data-value=\"a\""));
        assert!(!page.contains("<script"), "{page}");
        assert!(
            page.contains("note=&lt;script&gt;x()&lt;/script&gt;"),
            "{page}"
        );
        assert!(
            page.contains("data-live=\"/fleet/events?selector=zone%20in%20%28a%2Cb%29\""),
            "{page}"
        );
    }

    #[test]
    fn a_refused_selector_is_shown_and_not_followed_live() {
        let page = fleet_page(&[], "zone in (a", Some("bad selector"), 0).into_string();
        assert!(
            page.contains("id=\"selector-error\">bad selector<"),
            "{page}"
        );
        assert!(page.contains("data-live=\"\""), "{page}");
        assert!(page.contains("value=\"zone in (a\""), "{page}");
    }
}
