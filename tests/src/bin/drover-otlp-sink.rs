//! `drover-otlp-sink [ADDR]`: a local OTLP/gRPC trace receiver for the
//! tracing benchmark (BENCHMARKS.md, "Tracing overhead"). It listens on
//! ADDR (default 127.0.0.1:4317, loopback only), keeps what arrives, and
//! on SIGINT or SIGTERM prints one JSON line: export calls, spans, and
//! spans per name. Not a collector for production use.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::ExitCode;

use drover_testkit::otlp::Collector;

fn main() -> ExitCode {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:4317".to_string());
    let addr: SocketAddr = match addr.parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: `{addr}` is not an address like 127.0.0.1:4317: {e}");
            return ExitCode::from(2);
        }
    };
    if !addr.ip().is_loopback() {
        eprintln!("error: {addr}: the sink listens on loopback only");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let collector = match Collector::start_on(addr).await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("error: listen on {addr}: {e}");
                return ExitCode::FAILURE;
            }
        };
        eprintln!(
            "drover-otlp-sink: receiving OTLP/gRPC on {}",
            collector.endpoint()
        );
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            eprintln!("error: cannot install signal handlers");
            return ExitCode::FAILURE;
        };
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        let spans = collector.spans();
        let mut names: BTreeMap<String, u64> = BTreeMap::new();
        for s in &spans {
            *names.entry(s.name.clone()).or_default() += 1;
        }
        let line = serde_json::json!({
            "requests": collector.requests(),
            "spans": spans.len(),
            "by_name": names,
        });
        println!("{line}");
        ExitCode::SUCCESS
    })
}
