//! A small HTTP service for the end-to-end tests and the demo: it answers
//! `GET /` with its version, `GET /healthz` with its health, `GET /stats`
//! with request counters (JSON) and `GET /metrics` with Prometheus metrics
//! of its `GET /` traffic (`http_requests_total{code}` and the latency
//! histogram `http_request_duration_seconds`), and has knobs to misbehave
//! on purpose (failing health, slow start, errors, latency) that show in
//! both HAProxy's counters and its own metrics.
//!
//! SIGTERM or SIGINT stops accepting, lets in-flight requests finish (at most
//! `--grace`) and exits 0, as a well-behaved instance under drover should.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "drover-sample",
    about = "Sample HTTP service for drover tests and demos",
    disable_version_flag = true
)]
struct Args {
    /// Port to listen on; 0 picks a free one (printed on stdout).
    #[arg(long, env = "PORT", default_value_t = 8080)]
    port: u16,
    /// Address to bind.
    #[arg(long, env = "SAMPLE_BIND", default_value = "127.0.0.1")]
    bind: String,
    /// Version reported by `GET /` and the X-Version header.
    #[arg(long, env = "SAMPLE_VERSION", default_value = "dev")]
    version: String,
    /// Read the version from this file instead (e.g. a release's VERSION).
    #[arg(long, env = "SAMPLE_VERSION_FILE")]
    version_file: Option<PathBuf>,
    /// Answer /healthz with 503.
    #[arg(long, env = "SAMPLE_FAIL_HEALTH")]
    fail_health: bool,
    /// Answer /healthz with 503 while this file exists.
    #[arg(long, env = "SAMPLE_FAIL_HEALTH_FILE")]
    fail_health_file: Option<PathBuf>,
    /// Wait this long before listening (e.g. `2s`), like a slow start-up.
    #[arg(long, env = "SAMPLE_START_DELAY", value_parser = humantime::parse_duration)]
    start_delay: Option<Duration>,
    /// Share (0..1) of `GET /` requests answered 500, spread evenly.
    #[arg(long, env = "SAMPLE_ERROR_RATE", default_value_t = 0.0)]
    error_rate: f64,
    /// Added to every `GET /` response (e.g. `100ms`).
    #[arg(long, env = "SAMPLE_LATENCY", value_parser = humantime::parse_duration)]
    latency: Option<Duration>,
    /// How long in-flight requests may take to finish after SIGTERM.
    #[arg(long, env = "SAMPLE_GRACE", value_parser = humantime::parse_duration, default_value = "10s")]
    grace: Duration,
    /// Exit when this process is gone: the test harness passes its own PID
    /// so instances never outlive a test, even one that was killed.
    #[arg(long, env = "SAMPLE_WATCH_PID")]
    watch_pid: Option<u32>,
}

struct App {
    version: String,
    fail_health: bool,
    fail_health_file: Option<PathBuf>,
    error_rate: f64,
    latency: Option<Duration>,
    requests: AtomicU64,
    in_flight: AtomicU64,
    metrics: Metrics,
}

/// Upper bounds of the latency histogram's buckets, in seconds.
const BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// What `GET /metrics` shows of the `GET /` requests answered so far.
#[derive(Default)]
struct Metrics {
    ok: AtomicU64,
    errors: AtomicU64,
    /// Observations per bucket (not cumulative), the last for > 5 s.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    /// Sum of the durations, in microseconds.
    sum_micros: AtomicU64,
}

impl Metrics {
    fn observe(&self, status: StatusCode, took: Duration) {
        if status.is_server_error() {
            &self.errors
        } else {
            &self.ok
        }
        .fetch_add(1, Ordering::SeqCst);
        let secs = took.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|le| secs <= *le)
            .unwrap_or(BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::SeqCst);
        self.sum_micros.fetch_add(
            u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            Ordering::SeqCst,
        );
    }

    /// The Prometheus text exposition (format 0.0.4).
    fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP http_requests_total Requests to / answered, by status code.\n");
        out.push_str("# TYPE http_requests_total counter\n");
        out.push_str(&format!(
            "http_requests_total{{code=\"200\"}} {}\n",
            self.ok.load(Ordering::SeqCst)
        ));
        out.push_str(&format!(
            "http_requests_total{{code=\"500\"}} {}\n",
            self.errors.load(Ordering::SeqCst)
        ));
        out.push_str(
            "# HELP http_request_duration_seconds Time to answer a request to /, including --latency.\n",
        );
        out.push_str("# TYPE http_request_duration_seconds histogram\n");
        let mut cumulative = 0u64;
        for (i, n) in self.buckets.iter().enumerate() {
            cumulative += n.load(Ordering::SeqCst);
            let le = BUCKETS
                .get(i)
                .map(|le| le.to_string())
                .unwrap_or_else(|| "+Inf".to_string());
            out.push_str(&format!(
                "http_request_duration_seconds_bucket{{le=\"{le}\"}} {cumulative}\n"
            ));
        }
        out.push_str(&format!(
            "http_request_duration_seconds_sum {}\n",
            self.sum_micros.load(Ordering::SeqCst) as f64 / 1e6
        ));
        out.push_str(&format!(
            "http_request_duration_seconds_count {cumulative}\n"
        ));
        out
    }
}

/// Counts a `GET /` as in flight until dropped (also when the client goes
/// away mid-request and the handler future is dropped).
struct InFlight<'a>(&'a AtomicU64);

impl<'a> InFlight<'a> {
    fn enter(counter: &'a AtomicU64) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        InFlight(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Waits without blocking the runtime. Latency and start delay are the
/// service's behaviour under test, not a test's synchronisation.
async fn delay(d: Duration) {
    let _ = tokio::time::timeout(d, std::future::pending::<()>()).await;
}

/// Whether request number `n` (from 0) fails: exactly floor(n * rate) of the
/// first n requests fail, so a 10% rate fails every tenth request.
fn fails(n: u64, rate: f64) -> bool {
    if rate <= 0.0 {
        return false;
    }
    let before = (n as f64 * rate).floor();
    let after = ((n + 1) as f64 * rate).floor();
    after > before
}

async fn root(State(app): State<Arc<App>>) -> Response {
    let started = std::time::Instant::now();
    let _in_flight = InFlight::enter(&app.in_flight);
    let n = app.requests.fetch_add(1, Ordering::SeqCst);
    if let Some(latency) = app.latency {
        delay(latency).await;
    }
    let (status, body) = if fails(n, app.error_rate) {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("drover-sample {} error\n", app.version),
        )
    } else {
        (StatusCode::OK, format!("drover-sample {}\n", app.version))
    };
    app.metrics.observe(status, started.elapsed());
    let mut resp = (status, body).into_response();
    let headers = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&app.version) {
        headers.insert("x-version", v);
    }
    headers.insert("x-pid", HeaderValue::from(std::process::id()));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

async fn healthz(State(app): State<Arc<App>>) -> (StatusCode, &'static str) {
    let failing = app.fail_health || app.fail_health_file.as_ref().is_some_and(|p| p.exists());
    if failing {
        (StatusCode::SERVICE_UNAVAILABLE, "failing\n")
    } else {
        (StatusCode::OK, "ok\n")
    }
}

/// Counters for tests: `{"version","pid","requests","in_flight"}`.
async fn stats(State(app): State<Arc<App>>) -> Response {
    let body = format!(
        "{{\"version\":{},\"pid\":{},\"requests\":{},\"in_flight\":{}}}\n",
        serde_json::Value::String(app.version.clone()),
        std::process::id(),
        app.requests.load(Ordering::SeqCst),
        app.in_flight.load(Ordering::SeqCst),
    );
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// Prometheus metrics of the `GET /` traffic.
async fn metrics(State(app): State<Arc<App>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.metrics.render(),
    )
        .into_response()
}

async fn shutdown_signal() -> Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

/// Resolves once `pid` no longer exists.
async fn watch_pid(pid: u32) {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        if !proc_dir.exists() {
            return;
        }
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !(0.0..=1.0).contains(&args.error_rate) {
        bail!(
            "--error-rate must be between 0 and 1, got {}",
            args.error_rate
        );
    }
    let version = match &args.version_file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("read version file {}", path.display()))?
            .trim()
            .to_string(),
        None => args.version.clone(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start tokio runtime")?;
    runtime.block_on(serve(args, version))
}

async fn serve(args: Args, version: String) -> Result<()> {
    if let Some(pid) = args.watch_pid {
        tokio::spawn(async move {
            watch_pid(pid).await;
            eprintln!("drover-sample: watched process {pid} is gone, exiting");
            std::process::exit(0);
        });
    }
    let signal = tokio::spawn(shutdown_signal());
    if let Some(d) = args.start_delay {
        delay(d).await;
    }
    let app = Arc::new(App {
        version: version.clone(),
        fail_health: args.fail_health,
        fail_health_file: args.fail_health_file.clone(),
        error_rate: args.error_rate,
        latency: args.latency,
        requests: AtomicU64::new(0),
        in_flight: AtomicU64::new(0),
        metrics: Metrics::default(),
    });
    let router = Router::new()
        .route("/", get(root))
        .route("/healthz", get(healthz))
        .route("/stats", get(stats))
        .route("/metrics", get(metrics))
        .with_state(app);
    let listener = tokio::net::TcpListener::bind((args.bind.as_str(), args.port))
        .await
        .with_context(|| format!("bind {}:{}", args.bind, args.port))?;
    let local: SocketAddr = listener.local_addr().context("read bound address")?;
    println!("listening on {local}");
    eprintln!("drover-sample {version} listening on {local}");

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut server = tokio::spawn(
        axum::serve(listener, router)
            .with_graceful_shutdown(async {
                let _ = stop_rx.await;
            })
            .into_future(),
    );
    let which = tokio::select! {
        res = &mut server => {
            res.context("join server")?.context("serve HTTP")?;
            return Ok(());
        }
        which = signal => which.context("join signal handler")??,
    };
    eprintln!("drover-sample: {which}, finishing in-flight requests");
    let _ = stop_tx.send(());
    match tokio::time::timeout(args.grace, &mut server).await {
        Ok(res) => res.context("join server")?.context("serve HTTP")?,
        Err(_) => eprintln!(
            "drover-sample: requests still in flight after {:?}, exiting",
            args.grace
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{Duration, Metrics, StatusCode, fails};

    #[test]
    fn metrics_are_cumulative_buckets_by_code() {
        let m = Metrics::default();
        m.observe(StatusCode::OK, Duration::from_millis(3));
        m.observe(StatusCode::OK, Duration::from_millis(120));
        m.observe(StatusCode::INTERNAL_SERVER_ERROR, Duration::from_secs(9));
        let text = m.render();
        for line in [
            "http_requests_total{code=\"200\"} 2",
            "http_requests_total{code=\"500\"} 1",
            "http_request_duration_seconds_bucket{le=\"0.005\"} 1",
            "http_request_duration_seconds_bucket{le=\"0.1\"} 1",
            "http_request_duration_seconds_bucket{le=\"0.25\"} 2",
            "http_request_duration_seconds_bucket{le=\"5\"} 2",
            "http_request_duration_seconds_bucket{le=\"+Inf\"} 3",
            "http_request_duration_seconds_sum 9.123",
            "http_request_duration_seconds_count 3",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line:?} missing in:\n{text}"
            );
        }
    }

    #[test]
    fn error_rate_is_spread_evenly() {
        let failed = (0..100).filter(|n| fails(*n, 0.1)).count();
        assert_eq!(failed, 10);
        assert!(!(0..100).any(|n| fails(n, 0.0)));
        assert!((0..100).all(|n| fails(n, 1.0)));
        let failed = (0..1000).filter(|n| fails(*n, 0.25)).count();
        assert_eq!(failed, 250);
    }
}
