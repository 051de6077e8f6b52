//! Following a rollout (`drover rollout watch`, and `start` unless
//! `--detach`): live bars on a terminal, one line per event in a pipe or log,
//! or with `-o json` only the final rollout object. Exits 0 only when the
//! rollout succeeded.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use drover_proto::v1::{
    Direction, Rollout, RolloutEvent, RolloutInstance, RolloutPhase, WatchRolloutRequest,
};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::conn::{Session, is_connectivity, status_text};
use crate::error::LostContact;
use crate::output::rollout::traffic::traffic_line;
use crate::output::rollout::{
    RolloutFormat, RolloutJson, clock, event_line, in_flight, is_terminal, summary, to_json,
};
use crate::output::{now_ms, print};

/// How progress is shown while the stream runs.
enum View {
    /// `-o json`: nothing until the end.
    Quiet,
    /// Not a terminal: one line per event on stdout, and one where a
    /// canary's traffic step or stage changes.
    Lines(TrafficSeen),
    /// A terminal: bars on stderr, events scrolling above them.
    Live(Live),
}

impl View {
    fn new(format: RolloutFormat) -> View {
        match format {
            RolloutFormat::Json => View::Quiet,
            RolloutFormat::Table if std::io::stderr().is_terminal() => View::Live(Live::new()),
            RolloutFormat::Table => View::Lines(TrafficSeen::default()),
        }
    }

    fn show(&mut self, events: &[RolloutEvent], rollout: Option<&Rollout>) -> anyhow::Result<()> {
        match self {
            View::Quiet => Ok(()),
            View::Lines(seen) => {
                let mut text = String::new();
                for e in events {
                    text.push_str(&event_line(e));
                    text.push('\n');
                }
                if let Some(line) = rollout.and_then(|r| seen.line(r, now_ms())) {
                    text.push_str(&line);
                    text.push('\n');
                }
                if text.is_empty() {
                    Ok(())
                } else {
                    print(&text)
                }
            }
            View::Live(live) => {
                for e in events {
                    live.println(&event_line(e));
                }
                if let Some(r) = rollout {
                    live.update(r);
                }
                Ok(())
            }
        }
    }

    /// A line about the watch itself (not the rollout), on stderr so that
    /// the event lines on stdout stay one kind.
    fn note(&self, line: &str) {
        match self {
            View::Live(live) => live.println(line),
            View::Quiet | View::Lines(_) => eprintln!("{line}"),
        }
    }

    fn clear(&mut self) {
        if let View::Live(live) = self {
            live.clear();
        }
    }
}

/// Where a canary's traffic was when last printed into a pipe: its step,
/// stage and finished steps.
#[derive(Debug, Default)]
struct TrafficSeen(Option<(u32, i32, usize)>);

impl TrafficSeen {
    /// The traffic line in the shape of a rollout event
    /// (`HH:MM:SS  -  -  capacity C/floor F  traffic: ...`), when the
    /// step or its stage changed since the last one.
    fn line(&mut self, r: &Rollout, now_ms: i64) -> Option<String> {
        let t = r.traffic.as_ref()?;
        let key = (t.step, t.stage, t.results.len());
        if self.0 == Some(key) {
            return None;
        }
        self.0 = Some(key);
        Some(format!(
            "{}  -  -  capacity {}/floor {}  traffic: {}",
            clock(now_ms),
            r.capacity,
            r.floor,
            traffic_line(t, now_ms)
        ))
    }
}

/// Spinners drawn at most: a batch of a big fleet has hundreds in flight.
const MAX_SPINNERS: usize = 10;

/// The instances in flight a live view draws (the first [`MAX_SPINNERS`]
/// by id) and how many more there are.
fn shown_in_flight(r: &Rollout) -> (BTreeMap<&str, &RolloutInstance>, usize) {
    let mut flying: BTreeMap<&str, &RolloutInstance> = (r.instances.iter())
        .filter(|i| in_flight(i.step_kind()))
        .map(|i| (i.id.as_str(), i))
        .collect();
    let more = flying.len().saturating_sub(MAX_SPINNERS);
    while flying.len() > MAX_SPINNERS {
        flying.pop_last();
    }
    (flying, more)
}

fn more_text(more: usize) -> String {
    match more {
        0 => String::new(),
        n => format!("... and {n} more in progress"),
    }
}

/// The terminal view: an overall bar, the current batch, capacity against
/// the floor (with the wait reason), and a spinner per instance in flight
/// (up to [`MAX_SPINNERS`], then a count of the rest).
struct Live {
    multi: MultiProgress,
    overall: ProgressBar,
    batch: ProgressBar,
    capacity: ProgressBar,
    /// A canary's traffic line, drawn under the capacity once the rollout
    /// has traffic steps; never for a rolling update.
    traffic: Option<ProgressBar>,
    more: ProgressBar,
    instances: BTreeMap<String, ProgressBar>,
}

fn line_style() -> ProgressStyle {
    ProgressStyle::with_template("  {msg}").unwrap_or_else(|_| ProgressStyle::default_spinner())
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("  {spinner} {msg}")
        .unwrap_or_else(|_| ProgressStyle::default_spinner())
}

impl Live {
    fn new() -> Live {
        let multi = MultiProgress::new();
        let overall = multi.add(ProgressBar::new(0));
        overall.set_style(
            ProgressStyle::with_template("{bar:40.cyan/blue} {pos}/{len} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        let batch = multi.add(ProgressBar::new(0).with_style(line_style()));
        let capacity = multi.add(ProgressBar::new(0).with_style(line_style()));
        let more = multi.add(ProgressBar::new(0).with_style(line_style()));
        Live {
            multi,
            overall,
            batch,
            capacity,
            traffic: None,
            more,
            instances: BTreeMap::new(),
        }
    }

    fn println(&self, line: &str) {
        // Drawing is best effort; the summary at the end is what counts.
        let _ = self.multi.println(line);
    }

    fn update(&mut self, r: &Rollout) {
        let c = r.counts.unwrap_or_default();
        self.overall.set_length(u64::from(c.total));
        self.overall.set_position(u64::from(finished(r)));
        self.overall.set_message(overall_text(r));
        self.batch.set_message(batch_text(r));
        self.capacity.set_message(capacity_text(r));
        if let Some(t) = &r.traffic {
            let bar = self.traffic.get_or_insert_with(|| {
                self.multi
                    .insert_after(&self.capacity, ProgressBar::new(0).with_style(line_style()))
            });
            bar.set_message(format!("traffic: {}", traffic_line(t, now_ms())));
        }

        let (flying, more) = shown_in_flight(r);
        self.more.set_message(more_text(more));
        self.instances.retain(|id, bar| {
            let keep = flying.contains_key(id.as_str());
            if !keep {
                bar.finish_and_clear();
                self.multi.remove(bar);
            }
            keep
        });
        for (id, i) in flying {
            let bar = self.instances.entry(id.to_string()).or_insert_with(|| {
                let bar = self
                    .multi
                    .add(ProgressBar::new_spinner().with_style(spinner_style()));
                bar.enable_steady_tick(Duration::from_millis(120));
                bar
            });
            bar.set_message(instance_text(i));
        }
    }

    fn clear(&mut self) {
        for bar in self.instances.values() {
            bar.finish_and_clear();
        }
        let lines = [&self.overall, &self.batch, &self.capacity, &self.more];
        for bar in lines.into_iter().chain(self.traffic.as_ref()) {
            bar.finish_and_clear();
        }
        let _ = self.multi.clear();
    }
}

/// Instances that will not change any more in this direction.
fn finished(r: &Rollout) -> u32 {
    let c = r.counts.unwrap_or_default();
    c.done + c.failed + c.skipped + c.rolled_back
}

fn overall_text(r: &Rollout) -> String {
    let version = r.target.as_ref().map(|t| t.version.as_str()).unwrap_or("");
    let mut text = format!("{} to {}: {}", r.service, version, r.phase_kind().as_text());
    if !r.reason.is_empty() {
        text.push_str(&format!(" ({})", r.reason));
    }
    text
}

fn batch_text(r: &Rollout) -> String {
    let c = r.counts.unwrap_or_default();
    let batch = if r.batch == 0 {
        "not started".to_string()
    } else {
        format!("batch {}", r.batch)
    };
    format!(
        "{batch}: {} in progress, {} pending, {} done, {} failed, {} skipped",
        c.in_progress, c.pending, c.done, c.failed, c.skipped
    )
}

fn capacity_text(r: &Rollout) -> String {
    let mut text = format!(
        "capacity {}/floor {} (lowest {})",
        r.capacity, r.floor, r.lowest_capacity
    );
    if !r.wait_reason.is_empty() {
        text.push_str(&format!("  {}", r.wait_reason));
    }
    text
}

fn instance_text(i: &RolloutInstance) -> String {
    let mut text = format!("{}  {}", i.id, i.step_kind().as_text());
    if i.direction_kind() == Direction::Back {
        text.push_str(" (rolling back)");
    }
    if !i.reachable {
        text.push_str(" (host unreachable)");
    }
    if !i.progress.is_empty() {
        text.push_str(&format!("  {}", i.progress));
    }
    text
}

/// How long `watch` tries to reach the coordinator again, unless
/// `--reconnect-for` says otherwise: a coordinator restart takes seconds, a
/// host reboot a few minutes.
pub const DEFAULT_RECONNECT_FOR: &str = "5m";

/// clap value parser for `--reconnect-for`: a duration, `0s` for never.
pub fn parse_reconnect_for(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{e}; expected a duration like 30s, 5m or 1h (0s: never reconnect)"))
}

/// First and largest pause between two attempts to reach the coordinator.
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_CAP: Duration = Duration::from_secs(5);

/// A number in `0..=max` that differs from call to call. Jitter only needs
/// to keep many watchers from retrying in step; std's per-map random keys
/// are enough for that, without a random number crate.
fn jitter(max: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default(),
    );
    h.finish() % max.saturating_add(1)
}

/// When to try again after losing the coordinator, and when to give up.
/// Time comes in as an argument, so the rules are tested without waiting.
#[derive(Debug)]
struct Reconnect {
    budget: Duration,
    step: Duration,
    /// When contact was lost, while it is.
    lost_since: Option<Instant>,
}

impl Reconnect {
    fn new(budget: Duration) -> Reconnect {
        Reconnect {
            budget,
            step: RETRY_FIRST,
            lost_since: None,
        }
    }

    /// Contact failed at `now`: the pause before the next attempt (drawn
    /// from the upper half of a doubling step, capped, and never past the
    /// budget), or None when the budget is spent.
    fn lost(&mut self, now: Instant, jitter: impl FnOnce(u64) -> u64) -> Option<Duration> {
        let since = *self.lost_since.get_or_insert(now);
        let left = self
            .budget
            .checked_sub(now.saturating_duration_since(since))?;
        if left.is_zero() {
            return None;
        }
        let step = self.step;
        self.step = (self.step * 2).min(RETRY_CAP);
        let half = step / 2;
        let extra = jitter(u64::try_from(half.as_millis()).unwrap_or(u64::MAX));
        Some((half + Duration::from_millis(extra)).min(left))
    }

    /// An update arrived: contact is back. True if it had been lost.
    fn back(&mut self) -> bool {
        self.step = RETRY_FIRST;
        self.lost_since.take().is_some()
    }
}

/// How many of an update's events were printed already. Each new stream
/// starts with the whole history, so after a reconnect the first `printed`
/// events of the stream are skipped; `seen` counts the events this stream
/// delivered before this update.
fn already_printed(printed: usize, seen: usize, events: usize) -> usize {
    printed.saturating_sub(seen).min(events)
}

/// How one WatchRollout stream ended.
enum Watched {
    /// The rollout reached a terminal phase.
    Ended(Box<Rollout>),
    /// The coordinator could not be reached or the stream was cut: why.
    Lost(String),
}

/// One WatchRollout call, shown on `view` until the rollout ends or the
/// connection is lost. `printed` counts the events shown over every call;
/// an answer that is not about connectivity is an error.
async fn watch_once(
    session: &mut Session,
    id: &str,
    view: &mut View,
    printed: &mut usize,
    reconnect: &mut Reconnect,
) -> anyhow::Result<Watched> {
    let req = WatchRolloutRequest { id: id.to_string() };
    let mut stream = match session.client.watch_rollout(req).await {
        Ok(r) => r.into_inner(),
        Err(status) if is_connectivity(&status) => return Ok(Watched::Lost(status_text(&status))),
        Err(status) => return Err(session.rpc_error(status)),
    };
    let mut seen = 0usize;
    loop {
        let update = match stream.message().await {
            Ok(Some(update)) => update,
            Ok(None) => {
                return Ok(Watched::Lost(
                    "the coordinator ended the watch before the rollout finished".into(),
                ));
            }
            Err(status) if is_connectivity(&status) => {
                return Ok(Watched::Lost(status_text(&status)));
            }
            Err(status) => return Err(session.rpc_error(status)),
        };
        if reconnect.back() {
            view.note(&format!(
                "reconnected to the coordinator at {}; following rollout {id} again",
                session.addr()
            ));
        }
        let skip = already_printed(*printed, seen, update.events.len());
        seen += update.events.len();
        *printed = (*printed).max(seen);
        view.show(&update.events[skip..], update.rollout.as_ref())?;
        if let Some(r) = update.rollout.filter(|r| is_terminal(r.phase_kind())) {
            return Ok(Watched::Ended(Box::new(r)));
        }
    }
}

/// Dials the coordinator to follow rollout `id`. A coordinator that is down
/// or restarting is dialled again, as a lost watch is, for up to
/// `reconnect_for`; then [`LostContact`] (exit 3). A certificate problem,
/// a bad address or a bad config fails at once.
pub async fn dial(
    ctx: &crate::commands::Ctx,
    id: &str,
    reconnect_for: Duration,
) -> anyhow::Result<Session> {
    let mut reconnect = Reconnect::new(reconnect_for);
    loop {
        let e = match ctx.session().await {
            Ok(s) => return Ok(s),
            Err(e) => e,
        };
        let Some(down) = e
            .downcast_ref::<crate::conn::Unreachable>()
            .filter(|u| !u.trust)
        else {
            return Err(e);
        };
        let first = reconnect.lost_since.is_none();
        let Some(pause) = reconnect.lost(Instant::now(), jitter) else {
            return Err(LostContact(format!(
                "could not reach the coordinator at {} within {} to follow rollout {id} \
                 ({}); see `drover rollout status {id}` once it is up",
                down.addr,
                humantime::format_duration(reconnect_for),
                down.chain
            ))
            .into());
        };
        if first {
            eprintln!(
                "cannot reach the coordinator at {} ({}); trying again for up to {}",
                down.addr,
                down.chain,
                humantime::format_duration(reconnect_for)
            );
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Err(stopped(id)),
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// What Ctrl-C while following says.
fn stopped(id: &str) -> anyhow::Error {
    anyhow!(
        "stopped watching rollout {id}; it goes on without you: follow it with \
         `drover rollout watch {id}`, stop it with `drover rollout pause|abort {id}`"
    )
}

/// Follows rollout `id` until it finishes; Ok only if it succeeded. When
/// the coordinator restarts, the connection drops or the leader changes
/// (each attempt dials the configured coordinators afresh and follows the
/// leader), tries again for up to
/// `reconnect_for` (counted from the loss of contact) and carries on where
/// it was; then gives up with [`LostContact`] (exit 3). Refusals and
/// certificate problems fail at once.
pub async fn follow(
    ctx: &crate::commands::Ctx,
    session: &mut Session,
    id: &str,
    format: RolloutFormat,
    reconnect_for: Duration,
) -> anyhow::Result<()> {
    let mut view = View::new(format);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut printed = 0usize;
    let mut reconnect = Reconnect::new(reconnect_for);
    let r = loop {
        let watched = tokio::select! {
            _ = &mut ctrl_c => None,
            w = watch_once(session, id, &mut view, &mut printed, &mut reconnect) => Some(w),
        };
        let reason = match watched {
            None => break Err(stopped(id)),
            Some(Err(e)) => break Err(e),
            Some(Ok(Watched::Ended(r))) => break Ok(*r),
            Some(Ok(Watched::Lost(reason))) => reason,
        };
        let first = reconnect.lost_since.is_none();
        let Some(pause) = reconnect.lost(Instant::now(), jitter) else {
            break Err(LostContact(format!(
                "lost contact with the coordinator at {} while following rollout {id} and \
                 could not reach it again within {} ({reason}); the rollout goes on without \
                 you and its outcome is unknown: see `drover rollout status {id}`",
                session.addr(),
                humantime::format_duration(reconnect_for)
            ))
            .into());
        };
        if first {
            view.note(&format!(
                "lost contact with the coordinator at {} ({reason}); trying again for up to {}",
                session.addr(),
                humantime::format_duration(reconnect_for)
            ));
        }
        tokio::select! {
            _ = &mut ctrl_c => break Err(stopped(id)),
            _ = tokio::time::sleep(pause) => {}
        }
        // Dial afresh, through every configured coordinator: the one that
        // led may be gone for good and another lead now (HA failover).
        // While none answers, the old session's next attempt fails fast
        // and counts against the budget like any other.
        let redial = tokio::select! {
            _ = &mut ctrl_c => break Err(stopped(id)),
            s = ctx.session() => s,
        };
        match redial {
            Ok(s) => *session = s,
            Err(e)
                if e.downcast_ref::<crate::conn::Unreachable>()
                    .is_some_and(|u| !u.trust) => {}
            Err(e) => break Err(e),
        }
    };
    view.clear();
    let r = r?;
    match format {
        RolloutFormat::Json => print(&to_json(&RolloutJson::from(&r))?)?,
        RolloutFormat::Table => print(&summary(&r, now_ms()))?,
    }
    outcome(&r, &session.addr())
}

/// Ok for a succeeded rollout; otherwise the error `drover` exits 1 with.
pub fn outcome(r: &Rollout, addr: &str) -> anyhow::Result<()> {
    let phase = r.phase_kind();
    match phase {
        RolloutPhase::Succeeded => Ok(()),
        _ if is_terminal(phase) => {
            let reason = if r.reason.is_empty() {
                String::new()
            } else {
                format!(": {}", r.reason)
            };
            Err(anyhow!("rollout {} {}{reason}", r.id, phase.as_text()))
        }
        _ => Err(anyhow!(
            "coordinator at {addr} ended the watch of rollout {} while it was {}; \
             see `drover rollout status {}`",
            r.id,
            phase.as_text(),
            r.id
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::rollout::fixtures::rollout;

    #[test]
    fn live_lines_say_where_the_rollout_is() {
        let mut r = rollout();
        assert_eq!(overall_text(&r), "web to v2: running");
        assert_eq!(
            batch_text(&r),
            "batch 2: 1 in progress, 1 pending, 1 done, 0 failed, 0 skipped"
        );
        assert_eq!(capacity_text(&r), "capacity 2/floor 2 (lowest 2)");
        r.wait_reason = "waiting: 1 healthy, floor 2".into();
        assert_eq!(
            capacity_text(&r),
            "capacity 2/floor 2 (lowest 2)  waiting: 1 healthy, floor 2"
        );
        assert_eq!(
            instance_text(&r.instances[1]),
            "web@h2  deploying  unpacking 40%"
        );
        r.instances[1].set_direction(Direction::Back);
        r.instances[1].reachable = false;
        r.instances[1].progress.clear();
        assert_eq!(
            instance_text(&r.instances[1]),
            "web@h2  deploying (rolling back) (host unreachable)"
        );
        assert_eq!(finished(&r), 1);
    }

    #[test]
    fn a_pipe_gets_a_traffic_line_when_the_step_or_stage_changes() {
        use crate::output::fixtures::NOW;
        use crate::output::rollout::fixtures::canary;
        use drover_proto::v1::rollout_traffic::Stage;
        let mut seen = TrafficSeen::default();
        assert_eq!(seen.line(&rollout(), NOW), None, "a rolling update");
        let mut r = canary();
        assert_eq!(
            seen.line(&r, NOW).as_deref(),
            Some(
                "14:13:20  -  -  capacity 2/floor 2  traffic: step 2/4 (25%) baking, 3 looks, \
                 ends in 12m — last: errors canary 3/612 (0.49%) vs baseline 9/2,390 (0.38%): pass"
            )
        );
        // Another look in the same bake: nothing new to say in a log.
        if let Some(t) = r.traffic.as_mut() {
            t.looks = 4;
        }
        assert_eq!(seen.line(&r, NOW + 10_000), None);
        if let Some(t) = r.traffic.as_mut() {
            t.set_stage(Stage::Held);
        }
        let held = seen.line(&r, NOW + 20_000).expect("held");
        assert!(
            held.contains("traffic: step 2/4 (25%) held: inconclusive"),
            "{held}"
        );
    }

    #[test]
    fn a_terminal_draws_a_traffic_line_for_a_canary_only() {
        use crate::output::rollout::fixtures::canary;
        let mut rolling = Live::new();
        rolling.update(&rollout());
        assert!(rolling.traffic.is_none());
        rolling.clear();
        let mut live = Live::new();
        live.update(&canary());
        let msg = live.traffic.as_ref().map(ProgressBar::message);
        assert!(
            msg.as_deref()
                .is_some_and(|m| m.starts_with("traffic: step 2/4 (25%) baking, 3 looks, ")),
            "{msg:?}"
        );
        live.clear();
    }

    #[test]
    fn a_big_batch_draws_ten_spinners_and_counts_the_rest() {
        let mut r = rollout();
        let template = r.instances[1].clone();
        r.instances = (1..=250)
            .map(|n| RolloutInstance {
                id: format!("web@h{n:03}"),
                host: format!("h{n:03}"),
                ..template.clone()
            })
            .collect();
        let (shown, more) = shown_in_flight(&r);
        assert_eq!(shown.len(), MAX_SPINNERS);
        assert_eq!(shown.keys().next(), Some(&"web@h001"));
        assert_eq!(more, 240);
        assert_eq!(more_text(more), "... and 240 more in progress");
        r.instances.truncate(3);
        let (shown, more) = shown_in_flight(&r);
        assert_eq!((shown.len(), more_text(more)), (3, String::new()));
    }

    #[test]
    fn reconnects_back_off_with_jitter_and_give_up_after_the_budget() {
        let t0 = Instant::now();
        let mut r = Reconnect::new(Duration::from_secs(30));
        let top = |_: u64| u64::MAX;
        let mut pauses = Vec::new();
        let mut now = t0;
        while let Some(p) = r.lost(now, |half| half) {
            pauses.push(p);
            now += p;
        }
        // Doubling from 200 ms, capped at 5 s, the last one cut to what is
        // left, and the total exactly the budget.
        assert_eq!(
            pauses[..6],
            [200, 400, 800, 1600, 3200, 5000].map(Duration::from_millis)
        );
        assert!(pauses.iter().all(|p| *p <= RETRY_CAP), "{pauses:?}");
        assert_eq!(now - t0, Duration::from_secs(30));
        assert_eq!(r.lost(now, top), None, "no time left");
        // The jitter draws from the upper half of the step.
        let mut r = Reconnect::new(Duration::from_secs(30));
        assert_eq!(r.lost(t0, |_| 0), Some(Duration::from_millis(100)));
        assert_eq!(r.lost(t0, |_| 0), Some(Duration::from_millis(200)));
        // Contact back: the budget and the step start again.
        assert!(r.back());
        assert!(!r.back());
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(r.lost(later, |_| 0), Some(Duration::from_millis(100)));
        // 0s: never reconnect.
        assert_eq!(Reconnect::new(Duration::ZERO).lost(t0, top), None);
        for _ in 0..100 {
            assert!(jitter(7) <= 7);
        }
        assert_eq!(jitter(0), 0);
    }

    #[test]
    fn events_printed_before_a_reconnect_are_not_printed_again() {
        // First stream: 3 events, then 2 more; then it breaks.
        assert_eq!(already_printed(0, 0, 3), 0);
        assert_eq!(already_printed(3, 3, 2), 0);
        // Second stream: the whole history (5) plus 1 new in its first
        // update, then 1 more.
        assert_eq!(already_printed(5, 0, 6), 5);
        assert_eq!(already_printed(6, 6, 1), 0);
        // A first update that holds less than was printed (updates split
        // differently): skip all of it, and the rest of the overlap next.
        assert_eq!(already_printed(6, 0, 4), 4);
        assert_eq!(already_printed(6, 4, 3), 2);
    }

    #[test]
    fn reconnect_for_takes_durations_and_zero() {
        assert_eq!(parse_reconnect_for("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_reconnect_for("0s"), Ok(Duration::ZERO));
        assert!(
            parse_reconnect_for("soon")
                .expect_err("bad")
                .contains("0s: never")
        );
    }

    #[test]
    fn only_success_exits_0() {
        let mut r = rollout();
        r.set_phase(RolloutPhase::Succeeded);
        assert!(outcome(&r, "c:1").is_ok());
        r.set_phase(RolloutPhase::RolledBack);
        r.reason = "web@h2 failed".into();
        assert_eq!(
            outcome(&r, "c:1").expect_err("fails").to_string(),
            "rollout r7 rolled_back: web@h2 failed"
        );
        r.set_phase(RolloutPhase::Running);
        let msg = outcome(&r, "c:1").expect_err("broken").to_string();
        assert!(msg.contains("while it was running"), "{msg}");
    }
}
