//! The two sites' plumbing: routes between the namespaces, and each
//! coordinator's own way to etcd.

use std::net::{IpAddr, SocketAddr};
use std::process::Command;

use drover_testkit::netns::Netns;
use drover_testkit::tcp_proxy::TcpProxy;

use super::super::etcd::EtcdCluster;

/// Lets processes in `ns` reach beyond the test's side of its pair (the
/// other site): a default route to `host_ip`, and forwarding on the
/// test's end of the pair (that interface only; it goes with the pair).
pub(super) fn route_through_test_namespace(ns: &Netns) {
    default_route(ns);
    let via = ns.host_ip().to_string();
    let out = run_ip(&["-o", "-4", "addr", "show", "to", &format!("{via}/32")]);
    // `7: drvh12@if6    inet 10.200.0.49/30 scope global drvh12 ...`
    let dev = (out.split_whitespace().nth(1))
        .and_then(|d| d.split('@').next())
        .map(|d| d.trim_end_matches(':').to_string())
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| panic!("no interface holds {via}: `ip addr show to` printed {out:?}"));
    let knob = format!("/proc/sys/net/ipv4/conf/{dev}/forwarding");
    std::fs::write(&knob, "1").unwrap_or_else(|e| panic!("switch on forwarding ({knob}): {e}"));
}

/// The namespace's default route, to `host_ip`. The kernel drops it when
/// the link goes down: `TwoSites::restore_site` sets it again.
pub(super) fn default_route(ns: &Netns) {
    let via = ns.host_ip().to_string();
    run_ip(&["-n", ns.name(), "route", "replace", "default", "via", &via]);
}

fn run_ip(args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run `ip {}`: {e} (is iproute2 installed?)", args.join(" ")));
    if !out.status.success() {
        panic!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A proxy on `ns.host_ip()` to each etcd member, for the coordinator in
/// `ns`.
pub(super) fn etcd_proxies(etcd: &EtcdCluster, ns: &Netns) -> Vec<TcpProxy> {
    (etcd.endpoints().iter())
        .map(|e| {
            let target: SocketAddr = (e.trim_start_matches("http://").parse())
                .unwrap_or_else(|err| panic!("etcd endpoint {e}: {err}"));
            TcpProxy::start(IpAddr::V4(ns.host_ip()), target)
        })
        .collect()
}
