//! The load balancers' view of this host's instances: whether HAProxy has
//! each one UP, DOWN, drained or in maintenance, and at what weight. An
//! instance passes its own health check well before HAProxy routes to it
//! again (`rise` x `inter` later), so the coordinator counts capacity from
//! this view too, not from the agent's check alone.
//!
//! One task per HAProxy runtime API address reads every server with one
//! `show stat` per round, however many instances stand behind it, bounded
//! by a timeout: a slow or dead socket delays only its own views and
//! makes them UNKNOWN, never UP. The views go onto the [`StatusBoard`],
//! where a change of state or weight wakes the session like a change of
//! health does.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use drover_proto::v1::{LoadBalancerState, LoadBalancerView, TrafficCounters};
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::haproxy::{self, HaproxyError, ServerStat, Snapshot};
use crate::config::{DrainConfig, HaproxyAddr, HaproxyDrain, InstanceConfig};
use crate::supervisor::{StatusBoard, ViewUpdate};

/// Longest spacing of two reads of one HAProxy: with a long report
/// interval a change still reaches the coordinator within about this.
pub const MAX_PERIOD: Duration = Duration::from_secs(1);
/// Longest one read may take before its views turn UNKNOWN.
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest status text kept (error messages can be long).
const MAX_STATUS: usize = 200;

/// The views an instance starts with, before anything was read: one
/// UNKNOWN per load balancer it is registered with, so that it is never
/// counted in service on the strength of a view not yet read.
pub fn unread(drain: &DrainConfig) -> Vec<LoadBalancerView> {
    match drain {
        DrainConfig::Haproxy(h) => h
            .sockets
            .iter()
            .map(|addr| {
                unknown(
                    addr,
                    &h.backend,
                    &h.server,
                    "not read yet".to_string(),
                    unix_ms(),
                )
            })
            .collect(),
        DrainConfig::None | DrainConfig::Exec(_) => Vec::new(),
    }
}

/// One HAProxy's view of BACKEND/SERVER from what one read of it gave.
pub fn from_answer(
    addr: &HaproxyAddr,
    backend: &str,
    server: &str,
    answer: &Result<Snapshot, HaproxyError>,
    read_at_ms: i64,
) -> LoadBalancerView {
    match answer {
        Ok(snap) => match snap.server(backend, server) {
            Some(s) => from_stat(addr, s, Some(snap), read_at_ms),
            None => unknown(
                addr,
                backend,
                server,
                format!("HAProxy lists no server {backend}/{server}"),
                read_at_ms,
            ),
        },
        Err(e) => unknown(addr, backend, server, e.to_string(), read_at_ms),
    }
}

/// The view a `show stat` row gives, with what the rest of the read
/// (`snap`: the backend's algorithm, the configured weight) adds.
pub fn from_stat(
    addr: &HaproxyAddr,
    s: &ServerStat,
    snap: Option<&Snapshot>,
    read_at_ms: i64,
) -> LoadBalancerView {
    let algorithm = snap
        .and_then(|snap| snap.backend(&s.backend))
        .map(|b| b.algorithm.name().to_string())
        .unwrap_or_default();
    LoadBalancerView {
        balancer: addr.to_string(),
        backend: s.backend.clone(),
        server: s.server.clone(),
        state: s.state as i32,
        status: s.status.clone(),
        weight: s.weight.unwrap_or(0),
        read_at_ms,
        counters: s.counters.map(|c| TrafficCounters {
            requests: c.requests,
            responses_5xx: c.responses_5xx,
            response_errors: c.response_errors,
            connection_errors: c.connection_errors,
            responses: c.responses,
            response_time_ms: c.response_time_ms,
        }),
        configured_weight: snap
            .and_then(|snap| snap.configured_weight(&s.backend, &s.server))
            .unwrap_or(0),
        algorithm_dynamic: snap.is_some_and(|snap| snap.weights_dynamic(&s.backend)),
        algorithm,
    }
}

fn unknown(
    addr: &HaproxyAddr,
    backend: &str,
    server: &str,
    mut why: String,
    read_at_ms: i64,
) -> LoadBalancerView {
    if why.len() > MAX_STATUS {
        let mut end = MAX_STATUS;
        while !why.is_char_boundary(end) {
            end -= 1;
        }
        why.truncate(end);
        why.push('…');
    }
    LoadBalancerView {
        balancer: addr.to_string(),
        backend: backend.to_string(),
        server: server.to_string(),
        state: LoadBalancerState::Unknown as i32,
        status: why,
        weight: 0,
        read_at_ms,
        ..LoadBalancerView::default()
    }
}

/// Where one instance's view of one HAProxy goes.
#[derive(Debug, Clone)]
struct Target {
    /// The instance's slot on the board.
    index: usize,
    /// The HAProxy's place in the instance's `load_balancers`.
    slot: usize,
    backend: String,
    server: String,
}

/// Reads every HAProxy the instances are registered with, each in its own
/// task, until cancelled.
#[derive(Debug)]
pub struct Watcher {
    sockets: Vec<(HaproxyAddr, Vec<Target>)>,
    board: StatusBoard,
    period: Duration,
}

impl Watcher {
    /// `instances[i]` publishes into `board[i]`; HAProxy is read every
    /// `report_interval`, at most [`MAX_PERIOD`] apart. None when no
    /// instance is registered with a load balancer.
    pub fn new(
        instances: &[InstanceConfig],
        board: StatusBoard,
        report_interval: Duration,
    ) -> Option<Watcher> {
        let drains: Vec<(usize, HaproxyDrain)> = instances
            .iter()
            .enumerate()
            .filter_map(|(i, inst)| match &inst.drain {
                DrainConfig::Haproxy(h) => Some((i, h.clone())),
                DrainConfig::None | DrainConfig::Exec(_) => None,
            })
            .collect();
        Watcher::for_drains(&drains, board, report_interval)
    }

    /// [`Watcher::new`] for `(board slot, haproxy drain)` pairs.
    pub fn for_drains(
        drains: &[(usize, HaproxyDrain)],
        board: StatusBoard,
        report_interval: Duration,
    ) -> Option<Watcher> {
        let mut sockets: Vec<(HaproxyAddr, Vec<Target>)> = Vec::new();
        for (index, h) in drains {
            for (slot, addr) in h.sockets.iter().enumerate() {
                let target = Target {
                    index: *index,
                    slot,
                    backend: h.backend.clone(),
                    server: h.server.clone(),
                };
                match sockets.iter_mut().find(|(a, _)| a == addr) {
                    Some((_, targets)) => targets.push(target),
                    None => sockets.push((addr.clone(), vec![target])),
                }
            }
        }
        (!sockets.is_empty()).then(|| Watcher {
            sockets,
            board,
            period: report_interval.min(MAX_PERIOD),
        })
    }

    /// Reads until `cancel`; returns once every reader has stopped.
    pub async fn run(self, cancel: CancellationToken) {
        let mut readers = JoinSet::new();
        let timeout = READ_TIMEOUT.min(self.period.max(Duration::from_millis(500)));
        for (addr, targets) in self.sockets {
            readers.spawn(read_loop(
                addr,
                targets,
                self.board.clone(),
                self.period,
                timeout,
                cancel.clone(),
            ));
        }
        while readers.join_next().await.is_some() {}
    }
}

async fn read_loop(
    addr: HaproxyAddr,
    targets: Vec<Target>,
    board: StatusBoard,
    period: Duration,
    timeout: Duration,
    cancel: CancellationToken,
) {
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut failing = false;
    // Per target: why setting its held weight again failed last time, so
    // that a lasting refusal is logged once, not every round.
    let mut refused: Vec<Option<String>> = vec![None; targets.len()];
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let asked = std::time::Instant::now();
        let answer = tokio::select! {
            _ = cancel.cancelled() => return,
            a = haproxy::read(&addr, timeout) => a,
        };
        match (&answer, failing) {
            (Err(e), false) => {
                tracing::warn!(haproxy = %addr, "cannot read HAProxy's view of its servers: {e}; reporting it as unknown");
                failing = true;
            }
            (Ok(_), true) => {
                tracing::info!(haproxy = %addr, "HAProxy's view of its servers can be read again");
                failing = false;
            }
            _ => {}
        }
        let now = unix_ms();
        let updates: Vec<ViewUpdate> = targets
            .iter()
            .map(|t| ViewUpdate {
                index: t.index,
                slot: t.slot,
                asked,
                view: from_answer(&addr, &t.backend, &t.server, &answer, now),
            })
            .collect();
        board.set_views(&updates);
        if let Ok(snap) = &answer {
            for (t, last) in targets.iter().zip(refused.iter_mut()) {
                let outcome = tokio::select! {
                    _ = cancel.cancelled() => return,
                    o = reassert(&addr, t, snap, &board, timeout) => o,
                };
                match outcome {
                    Reassert::Nothing => {}
                    Reassert::Done { shown, held } => {
                        tracing::warn!(haproxy = %addr, backend = %t.backend, server = %t.server, "HAProxy had weight {shown} instead of the held {held} (restarted or reloaded?); set it again");
                        *last = None;
                    }
                    Reassert::Failed(why) => {
                        if last.as_ref() != Some(&why) {
                            tracing::warn!(haproxy = %addr, backend = %t.backend, server = %t.server, "{why}");
                        }
                        *last = Some(why);
                    }
                }
            }
        }
    }
}

/// What [`reassert`] did.
enum Reassert {
    /// Nothing to do (no weight held, HAProxy shows it, the server is
    /// not listed, or a SetWeight step has the instance).
    Nothing,
    Done {
        shown: u32,
        held: u32,
    },
    Failed(String),
}

/// Sets the weight held for `t`'s instance again when `snap` (read
/// before the held weight is looked at) shows another: HAProxy restarted
/// or reloaded and lost its runtime weights, or was unreachable when the
/// weight was set. A SetWeight step under way has the instance's weight
/// lock and sets the weight itself; then nothing is done this round.
async fn reassert(
    addr: &HaproxyAddr,
    t: &Target,
    snap: &Snapshot,
    board: &StatusBoard,
    timeout: Duration,
) -> Reassert {
    let Some(lock) = board.weight_lock(t.index) else {
        return Reassert::Nothing;
    };
    let Ok(_guard) = lock.try_lock() else {
        return Reassert::Nothing;
    };
    let Some(held) = board.desired_weight(t.index) else {
        return Reassert::Nothing;
    };
    let Some(shown) = snap.server(&t.backend, &t.server).and_then(|s| s.uweight) else {
        return Reassert::Nothing;
    };
    if shown == held {
        return Reassert::Nothing;
    }
    let weight = haproxy::Weight::Absolute(held);
    match haproxy::set_weight_within(addr, &t.backend, &t.server, weight, timeout).await {
        Ok(()) => {
            board.count_reasserted(t.index);
            Reassert::Done { shown, held }
        }
        Err(e) => Reassert::Failed(format!(
            "HAProxy has weight {shown} instead of the held {held}, and setting it again failed: {e}"
        )),
    }
}

/// Now, in unix milliseconds.
pub fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn addr() -> HaproxyAddr {
        HaproxyAddr::Unix(PathBuf::from("/run/haproxy.sock"))
    }

    #[test]
    fn a_server_missing_or_unreadable_is_unknown_never_up() {
        let csv = include_str!("testdata/show-stat-2.6.csv");
        let answer = haproxy::parse_servers(csv)
            .map(|servers| Snapshot {
                servers,
                ..Snapshot::default()
            })
            .map_err(|what| HaproxyError::Protocol {
                addr: addr().to_string(),
                what,
            });
        let v = from_answer(&addr(), "web", "down", &answer, 7);
        assert_eq!(
            (v.state(), v.status.as_str(), v.weight, v.read_at_ms),
            (LoadBalancerState::Down, "DOWN 1/3", 1, 7)
        );
        assert_eq!(v.balancer, "/run/haproxy.sock");
        let v = from_answer(&addr(), "web", "w0", &answer, 7);
        assert_eq!((v.state(), v.weight), (LoadBalancerState::Up, 0));

        let v = from_answer(&addr(), "web", "gone", &answer, 7);
        assert_eq!(v.state(), LoadBalancerState::Unknown);
        assert!(v.status.contains("no server web/gone"), "{}", v.status);

        let refused: Result<Snapshot, HaproxyError> = Err(HaproxyError::Unreachable {
            addr: addr().to_string(),
            reason: "x".repeat(1000),
        });
        let v = from_answer(&addr(), "web", "down", &refused, 7);
        assert_eq!((v.state(), v.weight), (LoadBalancerState::Unknown, 0));
        assert!(
            v.status.len() <= MAX_STATUS + '…'.len_utf8(),
            "{}",
            v.status
        );
    }

    #[test]
    fn an_older_read_never_replaces_a_newer_one_and_only_changes_wake() {
        let board = StatusBoard::new(vec![drover_proto::v1::InstanceStatus {
            load_balancers: unread(&DrainConfig::Haproxy(HaproxyDrain {
                sockets: vec![addr()],
                backend: "web".into(),
                server: "h1".into(),
                timeout: Duration::from_secs(1),
            })),
            ..Default::default()
        }]);
        let mut rx = board.subscribe();
        rx.borrow_and_update();
        let stat = |status: &str, weight, read_at: i64| ServerStat {
            backend: "web".into(),
            server: "h1".into(),
            scur: 0,
            status: status.into(),
            state: haproxy::state_of(status),
            weight: Some(weight),
            uweight: Some(weight),
            counters: Some(haproxy::Counters {
                requests: read_at as u64,
                ..Default::default()
            }),
        };
        let update = |asked, status: &str, weight, read_at| ViewUpdate {
            index: 0,
            slot: 0,
            asked,
            view: from_stat(&addr(), &stat(status, weight, read_at), None, read_at),
        };
        let state = |b: &StatusBoard| b.get(0).expect("slot").load_balancers[0].status.clone();
        let early = std::time::Instant::now();
        let late = early + Duration::from_millis(5);
        // An undrain saw it UP; a read asked for earlier answers later.
        board.set_views(&[update(late, "UP", 1, 2)]);
        assert!(rx.has_changed().expect("open"), "UNKNOWN -> UP wakes");
        rx.borrow_and_update();
        board.set_views(&[update(early, "DRAIN", 1, 3)]);
        assert_eq!(state(&board), "UP");
        assert!(!rx.has_changed().expect("open"));
        // A newer read time and new counters alone are no news; a new
        // weight is.
        board.set_views(&[update(late, "UP", 1, 4)]);
        let now = board.get(0).expect("slot").load_balancers[0].clone();
        assert_eq!(now.read_at_ms, 4);
        assert_eq!(now.counters.map(|c| c.requests), Some(4));
        assert!(!rx.has_changed().expect("open"));
        board.set_views(&[update(late + Duration::from_millis(1), "UP", 0, 5)]);
        assert!(rx.has_changed().expect("open"), "a weight change wakes");
    }

    #[test]
    fn the_view_carries_counters_algorithm_and_configured_weight() {
        let snap = Snapshot {
            servers: haproxy::parse_servers(include_str!("testdata/show-stat-traffic-2.6.csv"))
                .expect("servers"),
            backends: haproxy::parse_backends(include_str!("testdata/show-stat-traffic-2.6.csv"))
                .expect("backends"),
            configured: haproxy::parse_servers_state(include_str!(
                "testdata/servers-state-2.6.txt"
            )),
        };
        let answer = Ok(snap);
        let v = from_answer(&addr(), "web", "h2", &answer, 9);
        assert_eq!(
            (
                v.weight,
                v.configured_weight,
                v.algorithm.as_str(),
                v.algorithm_dynamic
            ),
            (25, 100, "roundrobin", true)
        );
        let c = v.counters.expect("counters");
        assert_eq!(
            (
                c.requests,
                c.responses,
                c.responses_5xx,
                c.response_errors,
                c.connection_errors,
                c.response_time_ms
            ),
            (12, 12, 2, 0, 0, 2)
        );
        let v = from_answer(&addr(), "web", "gone", &answer, 9);
        assert_eq!(v.counters.map(|c| c.connection_errors), Some(48));
        let v = from_answer(&addr(), "srr", "h1", &answer, 9);
        assert_eq!(
            (v.algorithm.as_str(), v.algorithm_dynamic),
            ("static-rr", false)
        );
        // Hashing: map-based and consistent read the same; only a weight
        // HAProxy accepted (4 of configured 10) shows srcc is consistent.
        let v = from_answer(&addr(), "src", "h1", &answer, 9);
        assert_eq!(
            (v.algorithm.as_str(), v.algorithm_dynamic),
            ("source", false)
        );
        let v = from_answer(&addr(), "srcc", "h1", &answer, 9);
        assert_eq!(
            (v.algorithm.as_str(), v.algorithm_dynamic),
            ("source", true)
        );
        let v = from_answer(&addr(), "rnd", "h1", &answer, 9);
        assert_eq!(
            (v.algorithm.as_str(), v.algorithm_dynamic),
            ("random", true)
        );
        let v = from_answer(&addr(), "fst", "h1", &answer, 9);
        assert_eq!(
            (v.algorithm.as_str(), v.algorithm_dynamic),
            ("first", false)
        );
        // UNKNOWN has no counters.
        let v = from_answer(&addr(), "web", "nope", &answer, 9);
        assert_eq!((v.state(), v.counters), (LoadBalancerState::Unknown, None));
    }
}
