//! What `rollout start` checks on the instances a spec targets before it
//! asks the coordinator: that `--initial` really is a first deploy, and
//! which instances would drop requests in flight because nothing drains
//! them. The CLI reads the hosts (ListHosts) rather than widening the
//! coordinator's plan for it; the coordinator's own checks still decide.

use drover_proto::v1::{DrainMethod, Host, HostStatus, InstanceStatus, RuntimeState};

/// Instances named in a message at most; the rest are counted.
const NAMED: usize = 5;

/// The instances of `service` on `hosts` (already selected by the spec's
/// selector), as the coordinator would target them: revoked hosts left out.
pub fn target_instances(hosts: &[Host], service: &str) -> Vec<InstanceStatus> {
    hosts
        .iter()
        .filter(|h| h.status() != HostStatus::Revoked)
        .flat_map(|h| h.instances.iter())
        .filter(|i| i.service == service)
        .cloned()
        .collect()
}

/// `a, b, c and 4 more`.
fn names(ids: &[&str]) -> String {
    let mut text = ids[..ids.len().min(NAMED)].join(", ");
    if ids.len() > NAMED {
        text.push_str(&format!(" and {} more", ids.len() - NAMED));
    }
    text
}

fn serving_release(i: &InstanceStatus) -> bool {
    i.state() == RuntimeState::Running && i.release.as_ref().is_some_and(|r| !r.version.is_empty())
}

/// Why `--initial` (a floor of 0) is refused: some target instance serves a
/// release already, and a floor of 0 would let drover take them all down.
pub fn initial_refusal(service: &str, instances: &[InstanceStatus]) -> Option<String> {
    let serving: Vec<&InstanceStatus> = instances.iter().filter(|i| serving_release(i)).collect();
    let first = serving.first()?;
    let ids: Vec<&str> = serving.iter().map(|i| i.id.as_str()).collect();
    let version = first
        .release
        .as_ref()
        .map(|r| r.version.as_str())
        .unwrap_or("");
    Some(format!(
        "--initial is for a first deploy, but {} of {service} already serve a release \
         ({} runs {version}); roll out with a floor (--min-healthy), or pass --min-healthy 0 \
         if taking every instance out of service at once is what you want",
        names(&ids),
        first.id
    ))
}

/// A warning when instances of a service that has several would be stopped
/// with requests in flight: their agents drain them by no method.
pub fn drain_warning(service: &str, instances: &[InstanceStatus]) -> Option<String> {
    if instances.len() < 2 {
        return None;
    }
    let undrained: Vec<&str> = (instances.iter())
        .filter(|i| i.drain() == DrainMethod::None)
        .map(|i| i.id.as_str())
        .collect();
    if undrained.is_empty() {
        return None;
    }
    let n = undrained.len();
    let (word, verb) = if n == 1 {
        ("instance", "has")
    } else {
        ("instances", "have")
    };
    Some(format!(
        "warning: {n} {word} of {service} {verb} no drain configured ({}): requests in flight \
         when each is stopped will fail; set [instance.drain] (type = \"haproxy\" or \"exec\") \
         in their agent.toml",
        names(&undrained)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_proto::v1::Release;

    fn inst(id: &str, state: RuntimeState, version: &str, drain: DrainMethod) -> InstanceStatus {
        InstanceStatus {
            id: id.into(),
            service: "web".into(),
            state: state as i32,
            release: Some(Release {
                version: version.into(),
                digest: String::new(),
            }),
            drain: drain as i32,
            ..InstanceStatus::default()
        }
    }

    #[test]
    fn targets_skip_revoked_hosts_and_other_services() {
        let mut api = inst("api@h1", RuntimeState::Running, "v1", DrainMethod::None);
        api.service = "api".into();
        let host = |id: &str, status: HostStatus, instances: Vec<InstanceStatus>| Host {
            host_id: id.into(),
            status: status as i32,
            instances,
            ..Host::default()
        };
        let web = |h: &str| {
            inst(
                &format!("web@{h}"),
                RuntimeState::Running,
                "v1",
                DrainMethod::None,
            )
        };
        let hosts = [
            host("h1", HostStatus::Connected, vec![web("h1"), api]),
            host("h2", HostStatus::Revoked, vec![web("h2")]),
            host("h3", HostStatus::Lost, vec![web("h3")]),
        ];
        let ids: Vec<String> = target_instances(&hosts, "web")
            .into_iter()
            .map(|i| i.id)
            .collect();
        assert_eq!(ids, ["web@h1", "web@h3"]);
    }

    #[test]
    fn initial_is_only_for_a_first_deploy() {
        let fresh: Vec<InstanceStatus> = (1..=3)
            .map(|n| {
                inst(
                    &format!("web@h{n}"),
                    RuntimeState::NotDeployed,
                    "",
                    DrainMethod::Haproxy,
                )
            })
            .collect();
        assert_eq!(initial_refusal("web", &fresh), None);
        // A release that crashed serves nothing: still a first deploy as far
        // as capacity goes.
        let mut crashed = fresh.clone();
        crashed[0] = inst("web@h1", RuntimeState::Crashed, "v1", DrainMethod::Haproxy);
        assert_eq!(initial_refusal("web", &crashed), None);
        let mut serving = fresh;
        serving[1] = inst("web@h2", RuntimeState::Running, "v1", DrainMethod::Haproxy);
        let msg = initial_refusal("web", &serving).expect("refused");
        assert!(
            msg.starts_with(
                "--initial is for a first deploy, but web@h2 of web already serve a release \
                 (web@h2 runs v1)"
            ),
            "{msg}"
        );
        assert!(msg.contains("--min-healthy 0"), "{msg}");
    }

    #[test]
    fn warns_when_instances_of_a_shared_service_have_no_drain() {
        let one = [inst(
            "web@h1",
            RuntimeState::Running,
            "v1",
            DrainMethod::None,
        )];
        assert_eq!(drain_warning("web", &one), None, "a single instance");
        let mut many: Vec<InstanceStatus> = (1..=8)
            .map(|n| {
                inst(
                    &format!("web@h{n}"),
                    RuntimeState::Running,
                    "v1",
                    DrainMethod::None,
                )
            })
            .collect();
        many[0].drain = DrainMethod::Haproxy as i32;
        many[1].drain = DrainMethod::Unspecified as i32;
        assert_eq!(
            drain_warning("web", &many).as_deref(),
            Some(
                "warning: 6 instances of web have no drain configured (web@h3, web@h4, web@h5, \
                 web@h6, web@h7 and 1 more): requests in flight when each is stopped will fail; \
                 set [instance.drain] (type = \"haproxy\" or \"exec\") in their agent.toml"
            )
        );
        for i in &mut many {
            i.drain = DrainMethod::Exec as i32;
        }
        assert_eq!(drain_warning("web", &many), None);
    }
}
