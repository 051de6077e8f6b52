//! drover's traces: the log subscriber every binary installs, plus, when
//! configured, an OpenTelemetry layer that exports drover's spans over
//! OTLP/gRPC.
//!
//! Off by default, and off costs nothing: without an endpoint no exporter,
//! no batch thread and no OpenTelemetry layer exist, and drover's spans
//! (all under the target [`TARGET`]) are disabled at their call sites, so
//! creating one is a cached check. The log output never shows them either
//! way: they are for the trace backend, the logs keep their own form.
//!
//! Where the settings come from, later ones winning: the config file's
//! `[tracing]` table, then the standard variables
//! (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`,
//! `OTEL_EXPORTER_OTLP_PROTOCOL`, `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`,
//! `OTEL_SERVICE_NAME`); `OTEL_SDK_DISABLED=true` turns tracing off
//! whatever else says. The trace context crosses processes as W3C
//! `traceparent` text ([`traceparent`], [`set_parent`]).

use std::collections::HashMap;
use std::time::Duration;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use serde::Deserialize;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// The tracing target of every span meant for the trace backend. Only
/// spans of this target are exported, and the log output leaves them out.
pub const TARGET: &str = "drover_trace";

/// How long a shutdown waits for the last spans to reach the collector.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Attribute keys drover's spans carry: stable, documented in the README.
pub mod keys {
    pub const SERVICE: &str = "drover.service";
    pub const HOST: &str = "drover.host";
    pub const INSTANCE: &str = "drover.instance";
    pub const RELEASE: &str = "drover.release";
    pub const STEP: &str = "drover.step";
    pub const OUTCOME: &str = "drover.outcome";
    pub const CAPACITY: &str = "drover.capacity";
    pub const FLOOR: &str = "drover.floor";
}

/// `[tracing]` in the coordinator's and the agent's config files.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// Where to send spans, e.g. `http://127.0.0.1:4317`. Unset (and no
    /// OTLP variable set): tracing is off.
    pub otlp_endpoint: Option<String>,
    /// Only `grpc` is built in.
    #[serde(default)]
    pub protocol: Protocol,
    /// The `service.name` of the exported spans; defaults to the binary's
    /// name (`drover-coordinator`, `drover-agent`).
    pub service_name: Option<String>,
    /// Share of new traces kept, 0.0 to 1.0. A trace started elsewhere
    /// (an agent's spans under a coordinator's) follows its parent's choice.
    #[serde(default = "one")]
    pub sampling_ratio: f64,
}

impl Default for TracingConfig {
    fn default() -> Self {
        TracingConfig {
            otlp_endpoint: None,
            protocol: Protocol::Grpc,
            service_name: None,
            sampling_ratio: 1.0,
        }
    }
}

fn one() -> f64 {
    1.0
}

/// The OTLP transport.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum Protocol {
    /// OTLP over gRPC (port 4317 by convention).
    #[default]
    #[serde(rename = "grpc")]
    Grpc,
}

/// A `[tracing]` value that cannot work: the field (under `tracing.`) and
/// what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("field `{field}`: {expected}")]
pub struct FieldError {
    pub field: &'static str,
    pub expected: String,
}

impl TracingConfig {
    /// Checks every value; the config loaders prefix the file name.
    pub fn validate(&self) -> Result<(), FieldError> {
        if let Some(e) = &self.otlp_endpoint {
            check_endpoint(e).map_err(|expected| FieldError {
                field: "tracing.otlp_endpoint",
                expected,
            })?;
        }
        if !(0.0..=1.0).contains(&self.sampling_ratio) {
            return Err(FieldError {
                field: "tracing.sampling_ratio",
                expected: format!(
                    "a share from 0.0 to 1.0 (1.0 keeps every trace), got {}",
                    self.sampling_ratio
                ),
            });
        }
        if let Some(name) = &self.service_name
            && name.trim().is_empty()
        {
            return Err(FieldError {
                field: "tracing.service_name",
                expected: "must not be empty (leave it out for the binary's name)".into(),
            });
        }
        Ok(())
    }
}

fn check_endpoint(e: &str) -> Result<(), String> {
    let rest = e
        .strip_prefix("http://")
        .or_else(|| e.strip_prefix("https://"));
    match rest {
        Some(r) if !r.is_empty() && !r.starts_with('/') => Ok(()),
        _ => Err(format!(
            "an http:// URL of an OTLP/gRPC receiver, like \"http://127.0.0.1:4317\", got {e:?}"
        )),
    }
}

/// Why tracing cannot start: the setting (file field or variable) and what
/// to do.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error(
        "{var}={value:?}: this build exports traces over OTLP/gRPC only; set it to \"grpc\" (and the endpoint to the receiver's gRPC port, usually 4317) or unset it"
    )]
    Protocol { var: &'static str, value: String },
    #[error("{source_name}: {expected}")]
    Endpoint {
        source_name: &'static str,
        expected: String,
    },
    #[error("build the OTLP exporter for {endpoint}: {reason}")]
    Exporter { endpoint: String, reason: String },
}

/// What tracing will do, after the file and the environment.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    pub endpoint: String,
    pub service_name: String,
    pub sampling_ratio: f64,
}

/// Applies the standard variables (read through `env`) over the file's
/// `[tracing]`. `None`: tracing is off.
pub fn resolve(
    config: &TracingConfig,
    default_service: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<Resolved>, TelemetryError> {
    let var = |name: &str| {
        env(name)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Ok(None);
    }
    for name in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        if let Some(value) = var(name) {
            if value != "grpc" {
                return Err(TelemetryError::Protocol { var: name, value });
            }
            break;
        }
    }
    let from_env = [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .into_iter()
    .find_map(|name| var(name).map(|v| (name, v)));
    let (source_name, endpoint) = match (from_env, &config.otlp_endpoint) {
        (Some((name, v)), _) => (name, v),
        (None, Some(v)) => ("tracing.otlp_endpoint", v.clone()),
        (None, None) => return Ok(None),
    };
    check_endpoint(&endpoint).map_err(|expected| TelemetryError::Endpoint {
        source_name,
        expected,
    })?;
    let service_name = var("OTEL_SERVICE_NAME")
        .or_else(|| config.service_name.clone())
        .unwrap_or_else(|| default_service.to_string());
    Ok(Some(Resolved {
        endpoint,
        service_name,
        sampling_ratio: config.sampling_ratio,
    }))
}

/// The installed subscriber; hold it until the end and call
/// [`Telemetry::shutdown`] so the last spans are sent.
#[must_use = "keep it and call shutdown() at exit, or the last spans are lost"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    endpoint: Option<String>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// The log filter: `RUST_LOG` or `info`, never drover's trace spans.
fn log_filter() -> EnvFilter {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    match format!("{TARGET}=off").parse() {
        Ok(directive) => filter.add_directive(directive),
        Err(_) => filter,
    }
}

/// Installs the global subscriber: logs to stderr, and with `resolved`
/// an OpenTelemetry layer exporting drover's spans. Call it inside the
/// tokio runtime (the gRPC channel's worker runs on it) and once.
pub fn init(resolved: Option<Resolved>) -> Result<Telemetry, TelemetryError> {
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(log_filter());
    let Some(resolved) = resolved else {
        tracing_subscriber::registry().with(fmt).init();
        return Ok(Telemetry {
            provider: None,
            endpoint: None,
        });
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(resolved.endpoint.clone())
        .build()
        .map_err(|e| TelemetryError::Exporter {
            endpoint: resolved.endpoint.clone(),
            reason: e.to_string(),
        })?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(resolved.service_name.clone())
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            resolved.sampling_ratio,
        ))))
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("drover");
    let otel = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_location(false)
        .with_threads(false)
        .with_target(false)
        .with_tracked_inactivity(false)
        .with_filter(
            tracing_subscriber::filter::Targets::new().with_target(TARGET, tracing::Level::TRACE),
        );
    tracing_subscriber::registry().with(fmt).with(otel).init();
    tracing::info!(endpoint = %resolved.endpoint, service = %resolved.service_name, ratio = resolved.sampling_ratio, "exporting traces over OTLP/gRPC");
    Ok(Telemetry {
        provider: Some(provider),
        endpoint: Some(resolved.endpoint),
    })
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn enabled(&self) -> bool {
        self.provider.is_some()
    }

    /// Sends the spans still queued and stops the exporter, waiting at
    /// most [`FLUSH_TIMEOUT`]. Call it from inside the runtime the exporter
    /// was built in: the export runs on that runtime while this waits on a
    /// blocking thread.
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        let endpoint = self.endpoint.unwrap_or_default();
        let done = tokio::task::spawn_blocking(move || {
            let _ = provider.force_flush();
            provider.shutdown_with_timeout(FLUSH_TIMEOUT)
        })
        .await;
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                eprintln!("warning: flushing traces to {endpoint}: {e}");
            }
            Err(e) => eprintln!("warning: flushing traces to {endpoint}: {e}"),
        }
    }
}

/// The W3C `traceparent` of `span`, to send along with a command; `None`
/// when tracing is off or the span is not recorded.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    if span.is_disabled() {
        return None;
    }
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove("traceparent")
}

/// The trace id of `span` as 32 hex digits; `None` when tracing is off.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    if span.is_disabled() {
        return None;
    }
    let sc = span.context().span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

/// The trace id inside a `traceparent`, or `None` if it is not one.
pub fn trace_id_of(traceparent: &str) -> Option<String> {
    let sc = extract(traceparent)?;
    Some(sc.trace_id().to_string())
}

fn extract(traceparent: &str) -> Option<opentelemetry::trace::SpanContext> {
    let carrier = HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    let sc = cx.span().span_context().clone();
    sc.is_valid().then_some(sc)
}

/// Makes `span` a child of the remote span named by `traceparent` (a
/// command's, or a rollout root stored before a restart). Call it before
/// the span is entered or its context read. A missing or malformed value
/// leaves the span where it was.
pub fn set_parent(span: &tracing::Span, traceparent: &str) {
    if span.is_disabled() || traceparent.is_empty() {
        return;
    }
    let carrier = HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// Adds a link from `span` to the span named by `traceparent`.
pub fn add_link(span: &tracing::Span, traceparent: &str) {
    if span.is_disabled() {
        return;
    }
    if let Some(sc) = extract(traceparent) {
        span.add_link(sc);
    }
}

/// Sets the OpenTelemetry status of `span` to an error with `message`.
pub fn set_error(span: &tracing::Span, message: &str) {
    if span.is_disabled() {
        return;
    }
    span.set_status(opentelemetry::trace::Status::error(message.to_string()));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn off_unless_the_file_or_a_variable_names_an_endpoint() {
        let cfg = TracingConfig::default();
        assert_eq!(resolve(&cfg, "drover-agent", env(&[])).ok(), Some(None));
        let on = resolve(
            &cfg,
            "drover-agent",
            env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")]),
        );
        let on = on.ok().flatten().expect("on");
        assert_eq!(on.endpoint, "http://127.0.0.1:4317");
        assert_eq!(on.service_name, "drover-agent");
    }

    #[test]
    fn variables_win_over_the_file_and_disabled_wins_over_all() {
        let cfg = TracingConfig {
            otlp_endpoint: Some("http://file:4317".into()),
            service_name: Some("from-file".into()),
            ..TracingConfig::default()
        };
        let got = resolve(
            &cfg,
            "x",
            env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://general:4317"),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4317"),
                ("OTEL_SERVICE_NAME", "from-env"),
            ]),
        )
        .ok()
        .flatten()
        .expect("on");
        assert_eq!(got.endpoint, "http://traces:4317");
        assert_eq!(got.service_name, "from-env");
        let off = resolve(&cfg, "x", env(&[("OTEL_SDK_DISABLED", "true")]));
        assert_eq!(off.ok(), Some(None));
    }

    #[test]
    fn an_http_protocol_is_refused_naming_the_variable() {
        let cfg = TracingConfig {
            otlp_endpoint: Some("http://127.0.0.1:4318".into()),
            ..TracingConfig::default()
        };
        let err = resolve(
            &cfg,
            "x",
            env(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")]),
        )
        .expect_err("refused");
        assert!(
            err.to_string().contains("OTEL_EXPORTER_OTLP_PROTOCOL"),
            "{err}"
        );
    }

    #[test]
    fn bad_file_values_name_their_field() {
        let bad = |cfg: TracingConfig| cfg.validate().expect_err("refused").field;
        let ratio = TracingConfig {
            sampling_ratio: 1.5,
            ..TracingConfig::default()
        };
        assert_eq!(bad(ratio), "tracing.sampling_ratio");
        let url = TracingConfig {
            otlp_endpoint: Some("127.0.0.1:4317".into()),
            ..TracingConfig::default()
        };
        assert_eq!(bad(url), "tracing.otlp_endpoint");
        let parsed: Result<TracingConfig, _> = toml::from_str("protocol = \"http/protobuf\"");
        assert!(parsed.is_err());
    }

    #[test]
    fn a_traceparent_round_trips_its_trace_id() {
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        assert_eq!(
            trace_id_of(tp).as_deref(),
            Some("0af7651916cd43dd8448eb211c80319c")
        );
        assert_eq!(trace_id_of("garbage"), None);
    }

    #[test]
    fn spans_are_free_and_carry_no_context_when_off() {
        // No subscriber at all in this test: a drover span is disabled.
        let span = tracing::info_span!(target: TARGET, "rollout");
        assert!(span.is_disabled());
        assert_eq!(traceparent(&span), None);
        assert_eq!(trace_id(&span), None);
    }
}
