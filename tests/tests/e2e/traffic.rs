//! What canary analysis reads (issue 11), end to end: the real agent
//! binary reads a real HAProxy's per-server counters and the instance's
//! own /metrics (drover-sample with its error-rate and latency knobs) and
//! reports them; the real coordinator hands them out unchanged in
//! `ControlService.GetHost`.

use std::path::Path;
use std::time::Duration;

use drover_net::transport::{ClientTls, ConnectOptions, Trust, connect, error_chain};
use drover_proto::v1::control_service_client::ControlServiceClient;
use drover_proto::v1::{GetHostRequest, InstanceStatus};
use drover_tests::harness::agent::{AgentSpec, InstanceSpec};
use drover_tests::harness::free_port;
use drover_tests::harness::haproxy::{Haproxy, Server};
use drover_tests::{CertPair, Fleet, http_get, wait_until_with};

fn tls(ca: &Path, identity: &CertPair) -> ClientTls {
    let read = |p: &Path| std::fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
    let cas = drover_net::transport::certs_from_pem("CA", &read(ca)).expect("parse CA");
    let chain = drover_net::transport::certs_from_pem("client certificate", &read(&identity.cert))
        .expect("parse client certificate");
    let key = drover_net::transport::key_from_pem("client key", &read(&identity.key))
        .expect("parse client key");
    ClientTls::new(Trust::Ca(cas), Some((chain, key))).expect("client TLS")
}

/// `GetHost` as the operator: the instance `name` as the coordinator
/// has it from the agent's last report.
fn instance(fleet: &Fleet, host: &str, name: &str) -> Result<InstanceStatus, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let call = async {
            let ch = connect(
                &fleet.coordinator.grpc_addr(),
                &tls(&fleet.pki.ca_cert(), &fleet.operator_cert),
                &ConnectOptions::default(),
            )
            .await
            .map_err(|e| format!("connect: {}", error_chain(&e)))?;
            let host = ControlServiceClient::new(ch)
                .get_host(GetHostRequest {
                    host_id: host.to_string(),
                })
                .await
                .map_err(|s| format!("GetHost: {:?}: {}", s.code(), s.message()))?
                .into_inner();
            let id = host.host_id.clone();
            host.instances
                .into_iter()
                .find(|i| i.name == name)
                .ok_or_else(|| format!("host {id} has no instance {name}"))
        };
        tokio::time::timeout(Duration::from_secs(20), call)
            .await
            .unwrap_or_else(|_| Err("GetHost: no answer in time".to_string()))
    })
}

#[test]
fn haproxy_counters_and_the_instances_metrics_reach_the_coordinator() {
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let haproxy = Haproxy::start(
        &dir.path().join("haproxy"),
        "web",
        &[Server::new("h1", port)],
    );
    let mut web = InstanceSpec::sample("web", port, "v1");
    web.args
        .extend(["--error-rate", "0.25", "--latency", "20ms"].map(String::from));
    web.extra_toml = format!(
        "[instance.drain]\ntype = \"haproxy\"\nsockets = [\"{}\"]\nbackend = \"web\"\nserver = \"h1\"\n\
[instance.metrics]\nurl = \"http://127.0.0.1:{port}/metrics\"",
        haproxy.socket().display()
    );
    let mut spec = AgentSpec::new("h1");
    spec.instances = vec![web];
    spec.extra_top = "traffic_interval = \"1s\"".to_string();
    let fleet = Fleet::builder()
        .dir(&dir.path().join("fleet"))
        .agent(spec)
        .start();
    haproxy.wait_serving(1, Duration::from_secs(30));

    // 8 requests through HAProxy, every 4th answered 500 by the sample.
    let codes: Vec<u16> = (0..8)
        .map(|_| {
            http_get(&haproxy.frontend_addr(), "/")
                .map(|(code, _)| code)
                .unwrap_or(0)
        })
        .collect();
    assert_eq!(codes.iter().filter(|c| **c == 500).count(), 2, "{codes:?}");

    let last = std::cell::RefCell::new(Err(String::new()));
    let web = wait_until_with(
        Duration::from_secs(30),
        "the coordinator has the counters of the 8 requests from HAProxy and the instance",
        || {
            let got = instance(&fleet, "h1", "web");
            let ready = got.as_ref().ok().filter(|i| {
                let from_haproxy = (i.load_balancers.first())
                    .and_then(|lb| lb.counters)
                    .is_some_and(|c| c.requests >= 8);
                let from_app = i.app_metrics.as_ref().is_some_and(|m| m.requests >= 8);
                from_haproxy && from_app
            });
            let ready = ready.cloned();
            *last.borrow_mut() = got;
            ready
        },
        || {
            format!(
                "last GetHost: {:#?}\n{}",
                last.borrow(),
                fleet.diagnostics()
            )
        },
    );
    let lb = &web.load_balancers[0];
    let c = lb.counters.expect("counters");
    assert_eq!(
        (
            c.requests,
            c.responses_5xx,
            c.connection_errors,
            c.response_errors
        ),
        (8, 2, 0, 0),
        "{lb:?}"
    );
    assert!(
        c.response_time_ms >= 20,
        "rtime includes the latency: {c:?}"
    );
    assert_eq!(
        (
            lb.algorithm.as_str(),
            lb.algorithm_dynamic,
            lb.configured_weight
        ),
        ("roundrobin", true, 1)
    );
    let m = web.app_metrics.as_ref().expect("metrics");
    assert_eq!(
        (m.error.as_str(), m.requests, m.errors),
        ("", 8, 2),
        "{m:?}"
    );
    assert_eq!(m.latency_count, 8);
    // Every request took at least the 20 ms latency: none is under 10 ms.
    let le = |bound: f64| {
        m.latency_buckets
            .iter()
            .find(|b| b.le == bound)
            .map(|b| b.count)
    };
    assert_eq!((le(0.01), le(f64::INFINITY)), (Some(0), Some(8)), "{m:?}");
    assert!(!web.weight_held && web.color.is_empty(), "{web:?}");
    drop(fleet);
}
