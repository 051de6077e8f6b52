//! `drover ui`: a local, read-only web view of the fleet, the rollouts and
//! the drills, for an operator who would rather look than read.
//!
//! It is a small HTTP server on loopback that asks the coordinator with
//! the operator's own credentials (the same connection as every other
//! command, so it follows the leader under HA) and renders HTML on the
//! server. One stylesheet and one small script are compiled into the
//! binary; the script follows live pages through server-sent events
//! (`/rollouts/ID/events` and the like), each event the page's live part
//! rendered again. Nothing is built with Node, nothing comes from a CDN.
//!
//! Whoever reaches the listener reads what the operator's certificate may
//! read, so it listens on loopback unless `--allow-remote` says otherwise,
//! and refuses requests whose `Host` is not a loopback name (a web page
//! elsewhere cannot rebind its own name to 127.0.0.1 and read the fleet).

mod drill;
mod fleet;
mod html;
mod rollout;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html as HtmlResponse, IntoResponse, Response};
use axum::routing::get;
use clap::Args;
use drover_proto::v1::drill_service_client::DrillServiceClient;
use drover_proto::v1::{
    GetDrillRequest, GetRolloutAnalysisRequest, GetRolloutRequest, ListDrillsRequest,
    ListHostsRequest, ListRolloutsRequest, Rollout, RolloutAnalysis,
};
use futures::Stream;
use serde::Deserialize;
use tokio::sync::watch;

use fleet::urlencode;
use html::{Html, Nav, page};

use crate::commands::Ctx;
use crate::conn::Session;
use crate::error::usage;
use crate::output::now_ms;

const CSS: &str = include_str!("../ui/ui.css");
const JS: &str = include_str!("../ui/ui.js");

/// How often a live page asks the coordinator again.
const ROLLOUT_EVERY: Duration = Duration::from_secs(1);
const FLEET_EVERY: Duration = Duration::from_secs(2);
/// Rollouts the list shows.
const LIST_LIMIT: u32 = 100;
/// How long a shutdown waits for open pages to let go.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Args)]
pub struct UiArgs {
    /// Where to serve the web view; port 0 picks a free port (printed)
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:8088")]
    pub listen: SocketAddr,
    /// Open the web view in the desktop's browser (xdg-open)
    #[arg(long)]
    pub open: bool,
    /// Listen on an address other than loopback. Anyone who reaches it
    /// reads the fleet, rollouts and drills with YOUR certificate, without
    /// one of their own: put an authenticating proxy in front of it
    #[arg(long)]
    pub allow_remote: bool,
}

/// What every handler needs.
struct App {
    session: Session,
    /// `operator/alice at c1:7443`, for the page header.
    who: String,
    /// Whether any `Host` may ask (`--allow-remote`).
    any_host: bool,
    port: u16,
    shutdown: watch::Receiver<bool>,
}

type Shared = Arc<App>;

/// Refuses a listen address that would show the fleet to the network,
/// unless the operator said so.
fn check_listen(args: &UiArgs) -> anyhow::Result<()> {
    if args.listen.ip().is_loopback() || args.allow_remote {
        return Ok(());
    }
    Err(usage(format!(
        "--listen {} is not a loopback address: whoever reaches it would read the fleet with \
         your certificate, without one of their own. Listen on 127.0.0.1 (the default), or \
         pass --allow-remote behind a proxy that authenticates",
        args.listen
    )))
}

pub async fn run(ctx: &Ctx, args: UiArgs) -> anyhow::Result<()> {
    check_listen(&args)?;
    let session = ctx.session().await?;
    // One call now, so a refused certificate or a coordinator out of reach
    // is said here rather than in the browser.
    if let Err(status) = session
        .client
        .clone()
        .list_rollouts(ListRolloutsRequest {
            service: String::new(),
            limit: 1,
        })
        .await
    {
        return Err(session.rpc_error(status));
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listen on {} for the web view", args.listen))?;
    let local = listener
        .local_addr()
        .context("read the web view's listen address")?;
    let url = format!("http://{local}/");
    let who = format!("{} at {}", session.identity, session.addr());
    println!("drover ui: serving {url} (read-only, as {who}); Ctrl-C stops it");
    crate::output::print("")?;
    if args.open {
        open_browser(&url);
    }

    let (stop, shutdown) = watch::channel(false);
    let app = Arc::new(App {
        session,
        who,
        any_host: args.allow_remote,
        port: local.port(),
        shutdown,
    });
    let serve = axum::serve(listener, router(app)).with_graceful_shutdown(async move {
        stop_signal().await;
        eprintln!("drover ui: stopping");
        let _ = stop.send(true);
    });
    let mut serve = std::pin::pin!(serve.into_future());
    tokio::select! {
        r = &mut serve => r.context("serve the web view"),
        () = async {
            stop_signal().await;
            // The first signal starts the graceful stop inside `serve`;
            // if pages hold on past the grace, stop anyway.
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => Ok(()),
    }
}

async fn stop_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

fn open_browser(url: &str) {
    match tokio::process::Command::new("xdg-open")
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
    {
        Ok(mut child) => {
            tokio::spawn(async move {
                let _ = child.wait().await;
            });
        }
        Err(e) => {
            eprintln!("drover ui: cannot open a browser (xdg-open: {e}); open {url} yourself")
        }
    }
}

fn router(app: Shared) -> Router {
    Router::new()
        .route("/", get(fleet_page))
        .route("/fleet/events", get(fleet_events))
        .route("/rollouts", get(rollouts_page))
        .route("/rollouts/{id}", get(rollout_page))
        .route("/rollouts/{id}/events", get(rollout_events))
        .route("/drills", get(drills_page))
        .route("/drills/{id}", get(drill_page))
        .route("/drills/{id}/events", get(drill_events))
        .route("/assets/ui.css", get(css))
        .route("/assets/ui.js", get(js))
        // Browsers ask for it; there is none, and a 404 would be logged.
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(app.clone(), guard))
        .with_state(app)
}

/// Whether a `Host` header names this server on loopback: `localhost` or
/// a loopback IP, with the port it listens on.
fn loopback_host(host: &str, port: u16) -> bool {
    let (name, p) = match host.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((ip, tail)) => (ip, tail.strip_prefix(':')),
            None => return false,
        },
        None => match host.rsplit_once(':') {
            Some((name, p)) => (name, Some(p)),
            None => (host, None),
        },
    };
    let port_ok = match p {
        Some(p) => p.parse::<u16>().ok() == Some(port),
        None => port == 80,
    };
    let name_ok = name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    port_ok && name_ok
}

/// Refuses requests for another name (DNS rebinding) and sets the headers
/// that keep the pages to themselves: no inline script runs, no other
/// site frames them.
async fn guard(State(app): State<Shared>, req: Request, next: Next) -> Response {
    if !app.any_host {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        if !loopback_host(host, app.port) {
            return (
                StatusCode::MISDIRECTED_REQUEST,
                format!(
                    "drover ui answers only to localhost:{0} or 127.0.0.1:{0}, not to Host {host:?}\n",
                    app.port
                ),
            )
                .into_response();
        }
    }
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
             img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    resp
}

async fn css() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], CSS).into_response()
}

async fn js() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        JS,
    )
        .into_response()
}

fn html_page(app: &App, code: StatusCode, title: &str, nav: Nav, body: Html) -> Response {
    (code, HtmlResponse(page(title, nav, &app.who, body))).into_response()
}

fn status_code(status: &tonic::Status) -> StatusCode {
    match status.code() {
        tonic::Code::NotFound => StatusCode::NOT_FOUND,
        tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => StatusCode::FORBIDDEN,
        _ => StatusCode::BAD_GATEWAY,
    }
}

/// A failed call, as the CLI would explain it.
fn explain(app: &App, status: tonic::Status) -> String {
    crate::error::render(&app.session.rpc_error(status))
}

fn error_page(app: &App, nav: Nav, status: tonic::Status) -> Response {
    let code = status_code(&status);
    let mut body = Html::new();
    body.elem("h1", &[], "The coordinator did not answer that")
        .elem("p", &[("class", "error")], &explain(app, status));
    html_page(app, code, "error", nav, body)
}

async fn not_found(State(app): State<Shared>) -> Response {
    let mut body = Html::new();
    body.elem("h1", &[], "Not found").elem(
        "p",
        &[],
        "No such page: try the fleet, rollouts or drills above.",
    );
    html_page(&app, StatusCode::NOT_FOUND, "not found", Nav::Fleet, body)
}

#[derive(Debug, Default, Deserialize)]
struct FleetQuery {
    #[serde(default)]
    selector: String,
}

async fn fleet_page(State(app): State<Shared>, Query(q): Query<FleetQuery>) -> Response {
    let selector = q.selector.trim().to_string();
    if let Err(e) = crate::labels::parse_selector(&selector) {
        let body = fleet::fleet_page(&[], &selector, Some(&e), now_ms());
        return html_page(&app, StatusCode::BAD_REQUEST, "fleet", Nav::Fleet, body);
    }
    match list_hosts(&app, &selector).await {
        Ok(hosts) => {
            let body = fleet::fleet_page(&hosts, &selector, None, now_ms());
            html_page(&app, StatusCode::OK, "fleet", Nav::Fleet, body)
        }
        Err(status) => {
            let code = status_code(&status);
            let e = explain(&app, status);
            let body = fleet::fleet_page(&[], &selector, Some(&e), now_ms());
            html_page(&app, code, "fleet", Nav::Fleet, body)
        }
    }
}

async fn list_hosts(
    app: &App,
    selector: &str,
) -> Result<Vec<drover_proto::v1::Host>, tonic::Status> {
    let hosts = app
        .session
        .client
        .clone()
        .list_hosts(ListHostsRequest {
            selector: selector.to_string(),
        })
        .await?
        .into_inner()
        .hosts;
    Ok(crate::output::host::sorted(hosts))
}

async fn fleet_events(State(app): State<Shared>, Query(q): Query<FleetQuery>) -> Response {
    let selector = q.selector.trim().to_string();
    let a = app.clone();
    live(app, FLEET_EVERY, move || {
        let (a, selector) = (a.clone(), selector.clone());
        async move {
            match list_hosts(&a, &selector).await {
                Ok(hosts) => Ok((
                    fleet::fleet_live(&hosts, &selector, now_ms()).into_string(),
                    false,
                )),
                Err(status) => Err(explain(&a, status)),
            }
        }
    })
}

async fn rollouts_page(State(app): State<Shared>) -> Response {
    match app
        .session
        .client
        .clone()
        .list_rollouts(ListRolloutsRequest {
            service: String::new(),
            limit: LIST_LIMIT,
        })
        .await
    {
        Ok(r) => {
            let body = rollout::rollouts_page(&r.into_inner().rollouts, now_ms());
            html_page(&app, StatusCode::OK, "rollouts", Nav::Rollouts, body)
        }
        Err(status) => error_page(&app, Nav::Rollouts, status),
    }
}

/// The rollout with its events and, for a canary, its analysis (left out,
/// with a warning, when only the analysis cannot be had).
async fn get_rollout(
    app: &App,
    id: &str,
) -> Result<(Rollout, Option<RolloutAnalysis>), tonic::Status> {
    let mut client = app.session.client.clone();
    let r = client
        .get_rollout(GetRolloutRequest {
            id: id.to_string(),
            include_events: true,
        })
        .await?
        .into_inner();
    let analysis = if r.traffic.is_some() {
        match client
            .get_rollout_analysis(GetRolloutAnalysisRequest { id: id.to_string() })
            .await
        {
            Ok(a) => Some(a.into_inner()),
            Err(status) => {
                tracing::warn!(
                    rollout = id,
                    "cannot get the analysis: {}",
                    status.message()
                );
                None
            }
        }
    } else {
        None
    };
    Ok((r, analysis))
}

async fn rollout_page(State(app): State<Shared>, Path(id): Path<String>) -> Response {
    match get_rollout(&app, &id).await {
        Ok((r, a)) => {
            let body = rollout::rollout_page(&r, a.as_ref(), now_ms());
            html_page(
                &app,
                StatusCode::OK,
                &format!("rollout {id}"),
                Nav::Rollouts,
                body,
            )
        }
        Err(status) => error_page(&app, Nav::Rollouts, status),
    }
}

async fn rollout_events(State(app): State<Shared>, Path(id): Path<String>) -> Response {
    let a = app.clone();
    live(app, ROLLOUT_EVERY, move || {
        let (a, id) = (a.clone(), id.clone());
        async move {
            match get_rollout(&a, &id).await {
                Ok((r, analysis)) => Ok((
                    rollout::rollout_live(&r, analysis.as_ref(), now_ms()).into_string(),
                    r.phase_kind().is_terminal(),
                )),
                Err(status) => Err(explain(&a, status)),
            }
        }
    })
}

fn drill_client(app: &App) -> DrillServiceClient<crate::leader::LeaderChannel> {
    DrillServiceClient::new(app.session.channel())
}

async fn drills_page(State(app): State<Shared>) -> Response {
    match drill_client(&app).list_drills(ListDrillsRequest {}).await {
        Ok(r) => {
            let body = drill::drills_page(&r.into_inner().drills, now_ms());
            html_page(&app, StatusCode::OK, "drills", Nav::Drills, body)
        }
        Err(status) => error_page(&app, Nav::Drills, status),
    }
}

async fn drill_page(State(app): State<Shared>, Path(id): Path<String>) -> Response {
    match drill_client(&app)
        .get_drill(GetDrillRequest { id: id.clone() })
        .await
    {
        Ok(d) => {
            let body = drill::drill_page(&d.into_inner());
            html_page(
                &app,
                StatusCode::OK,
                &format!("drill {id}"),
                Nav::Drills,
                body,
            )
        }
        Err(status) => error_page(&app, Nav::Drills, status),
    }
}

async fn drill_events(State(app): State<Shared>, Path(id): Path<String>) -> Response {
    let a = app.clone();
    live(app, ROLLOUT_EVERY, move || {
        let (a, id) = (a.clone(), id.clone());
        async move {
            match drill_client(&a).get_drill(GetDrillRequest { id }).await {
                Ok(d) => {
                    let d = d.into_inner();
                    let done = matches!(d.phase.as_str(), "succeeded" | "failed" | "aborted");
                    Ok((drill::drill_live(&d).into_string(), done))
                }
                Err(status) => Err(explain(&a, status)),
            }
        }
    })
}

/// Where a live stream is.
enum Step {
    /// Ask now (the first time) or after the period.
    Ask {
        first: bool,
    },
    /// The last update is sent: say so, then close.
    End,
    Closed,
}

/// A server-sent event stream that asks `fetch` every `every` and sends
/// its HTML as an `update` event (a failure as a `problem` event, and
/// asks again); once `fetch` says it is finished, an `end` event, and
/// the stream closes. It lives as long as the page keeps it open, and
/// ends when the server stops.
fn live<F, Fut>(app: Shared, every: Duration, fetch: F) -> Response
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(String, bool), String>> + Send + 'static,
{
    let shutdown = app.shutdown.clone();
    let stream = events(every, fetch, shutdown);
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn events<F, Fut>(
    every: Duration,
    fetch: F,
    shutdown: watch::Receiver<bool>,
) -> impl Stream<Item = Result<Event, Infallible>>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(String, bool), String>> + Send + 'static,
{
    futures::stream::unfold(
        (Step::Ask { first: true }, fetch, shutdown),
        move |(step, mut fetch, mut shutdown)| async move {
            match step {
                Step::Closed => None,
                Step::End => Some((
                    Ok(Event::default().event("end").data("finished")),
                    (Step::Closed, fetch, shutdown),
                )),
                Step::Ask { first } => {
                    if !first {
                        tokio::select! {
                            () = tokio::time::sleep(every) => {}
                            _ = shutdown.wait_for(|stop| *stop) => return None,
                        }
                    }
                    if *shutdown.borrow() {
                        return None;
                    }
                    let (event, next) = match fetch().await {
                        Ok((html, finished)) => (
                            Event::default().event("update").data(html),
                            if finished {
                                Step::End
                            } else {
                                Step::Ask { first: false }
                            },
                        ),
                        Err(text) => (
                            Event::default()
                                .event("problem")
                                .data(text.replace(['\r', '\n'], " ")),
                            Step::Ask { first: false },
                        ),
                    };
                    Some((Ok(event), (next, fetch, shutdown)))
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[test]
    fn only_loopback_listens_without_allow_remote() {
        let args = |listen: &str, allow_remote| UiArgs {
            listen: listen.parse().expect("addr"),
            open: false,
            allow_remote,
        };
        assert!(check_listen(&args("127.0.0.1:8088", false)).is_ok());
        assert!(check_listen(&args("[::1]:0", false)).is_ok());
        let err = check_listen(&args("0.0.0.0:8088", false)).expect_err("refused");
        assert_eq!(crate::error::exit_code(&err), crate::error::EXIT_USAGE);
        assert!(err.to_string().contains("--allow-remote"), "{err}");
        assert!(check_listen(&args("0.0.0.0:8088", true)).is_ok());
    }

    #[test]
    fn only_loopback_names_with_our_port_are_served() {
        for ok in [
            "127.0.0.1:8088",
            "localhost:8088",
            "[::1]:8088",
            "LOCALHOST:8088",
        ] {
            assert!(loopback_host(ok, 8088), "{ok}");
        }
        for bad in [
            "evil.example:8088",
            "127.0.0.1:9999",
            "127.0.0.1",
            "10.0.0.1:8088",
            "[::1]",
            "[::1",
            "",
        ] {
            assert!(!loopback_host(bad, 8088), "{bad}");
        }
        assert!(loopback_host("localhost", 80));
    }

    #[tokio::test]
    async fn a_live_stream_sends_updates_then_says_it_ended() {
        let (_stop, shutdown) = watch::channel(false);
        let mut n = 0;
        let stream = events(
            Duration::from_millis(1),
            move || {
                n += 1;
                let k = n;
                async move {
                    match k {
                        1 => Err("coordinator\r\nunreachable".to_string()),
                        2 => Ok(("<p>2</p>".to_string(), false)),
                        _ => Ok(("<p>3\nlines</p>".to_string(), true)),
                    }
                }
            },
            shutdown,
        );
        let got: Vec<String> = stream
            .map(|e| format!("{:?}", e.expect("infallible")))
            .collect()
            .await;
        assert_eq!(got.len(), 4, "{got:#?}");
        assert!(
            got[0].contains("problem") && got[0].contains("coordinator  unreachable"),
            "{got:#?}"
        );
        assert!(
            got[1].contains("update") && got[1].contains("<p>2</p>"),
            "{got:#?}"
        );
        assert!(got[3].contains("end"), "{got:#?}");
    }

    #[tokio::test]
    async fn a_live_stream_ends_when_the_server_stops() {
        let (stop, shutdown) = watch::channel(false);
        let stream = events(
            Duration::from_secs(3600),
            || async { Ok(("<p>x</p>".to_string(), false)) },
            shutdown,
        );
        let mut stream = std::pin::pin!(stream);
        assert!(
            stream.next().await.is_some(),
            "the first update comes at once"
        );
        stop.send(true).expect("send");
        assert!(stream.next().await.is_none(), "the stream ends on shutdown");
    }
}
