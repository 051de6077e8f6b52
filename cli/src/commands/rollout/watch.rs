//! Following a rollout (`drover rollout watch`, and `start` unless
//! `--detach`): live bars on a terminal, one line per event in a pipe or log,
//! or with `-o json` only the final rollout object. Exits 0 only when the
//! rollout succeeded.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::Duration;

use anyhow::anyhow;
use drover_proto::v1::{Rollout, RolloutEvent, RolloutInstance, WatchRolloutRequest};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::conn::Session;
use crate::output::rollout::{
    RolloutFormat, RolloutJson, event_line, in_flight, is_terminal, summary, to_json,
};
use crate::output::{now_ms, print};

/// How progress is shown while the stream runs.
enum View {
    /// `-o json`: nothing until the end.
    Quiet,
    /// Not a terminal: one line per event on stdout.
    Lines,
    /// A terminal: bars on stderr, events scrolling above them.
    Live(Live),
}

impl View {
    fn new(format: RolloutFormat) -> View {
        match format {
            RolloutFormat::Json => View::Quiet,
            RolloutFormat::Table if std::io::stderr().is_terminal() => View::Live(Live::new()),
            RolloutFormat::Table => View::Lines,
        }
    }

    fn show(&mut self, events: &[RolloutEvent], rollout: Option<&Rollout>) -> anyhow::Result<()> {
        match self {
            View::Quiet => Ok(()),
            View::Lines => {
                let mut text = String::new();
                for e in events {
                    text.push_str(&event_line(e));
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

    fn clear(&mut self) {
        if let View::Live(live) = self {
            live.clear();
        }
    }
}

/// Spinners drawn at most: a batch of a big fleet has hundreds in flight.
const MAX_SPINNERS: usize = 10;

/// The instances in flight a live view draws (the first [`MAX_SPINNERS`]
/// by id) and how many more there are.
fn shown_in_flight(r: &Rollout) -> (BTreeMap<&str, &RolloutInstance>, usize) {
    let mut flying: BTreeMap<&str, &RolloutInstance> = (r.instances.iter())
        .filter(|i| in_flight(&i.step))
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
        for bar in [&self.overall, &self.batch, &self.capacity, &self.more] {
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
    let mut text = format!("{} to {}: {}", r.service, version, r.phase);
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
    let mut text = format!("{}  {}", i.id, i.step);
    if i.direction == "back" {
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

/// Follows rollout `id` until it finishes; Ok only if it succeeded.
pub async fn follow(session: &mut Session, id: &str, format: RolloutFormat) -> anyhow::Result<()> {
    let req = WatchRolloutRequest { id: id.to_string() };
    let mut stream = match session.client.watch_rollout(req).await {
        Ok(r) => r.into_inner(),
        Err(status) => return Err(session.rpc_error(status)),
    };
    let mut view = View::new(format);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut last: Option<Rollout> = None;
    loop {
        tokio::select! {
            _ = &mut ctrl_c => {
                view.clear();
                return Err(anyhow!(
                    "stopped watching rollout {id}; it goes on without you: follow it with \
                     `drover rollout watch {id}`, stop it with `drover rollout pause|abort {id}`"
                ));
            }
            msg = stream.message() => match msg {
                Ok(Some(update)) => {
                    view.show(&update.events, update.rollout.as_ref())?;
                    if let Some(r) = update.rollout {
                        let done = is_terminal(&r.phase);
                        last = Some(r);
                        if done {
                            break;
                        }
                    }
                }
                Ok(None) => break,
                Err(status) => {
                    view.clear();
                    return Err(session.rpc_error(status));
                }
            },
        }
    }
    view.clear();
    let Some(r) = last else {
        return Err(anyhow!(
            "coordinator at {} ended the watch of rollout {id} without sending its state",
            session.addr
        ));
    };
    match format {
        RolloutFormat::Json => print(&to_json(&RolloutJson::from(&r))?)?,
        RolloutFormat::Table if is_terminal(&r.phase) => print(&summary(&r, now_ms()))?,
        RolloutFormat::Table => {}
    }
    outcome(&r, &session.addr)
}

/// Ok for a succeeded rollout; otherwise the error `drover` exits 1 with.
pub fn outcome(r: &Rollout, addr: &str) -> anyhow::Result<()> {
    match r.phase.as_str() {
        "succeeded" => Ok(()),
        phase if is_terminal(phase) => {
            let reason = if r.reason.is_empty() {
                String::new()
            } else {
                format!(": {}", r.reason)
            };
            Err(anyhow!("rollout {} {phase}{reason}", r.id))
        }
        phase => Err(anyhow!(
            "coordinator at {addr} ended the watch of rollout {} while it was {phase}; \
             see `drover rollout status {}`",
            r.id,
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
        r.instances[1].direction = "back".into();
        r.instances[1].reachable = false;
        r.instances[1].progress.clear();
        assert_eq!(
            instance_text(&r.instances[1]),
            "web@h2  deploying (rolling back) (host unreachable)"
        );
        assert_eq!(finished(&r), 1);
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
    fn only_success_exits_0() {
        let mut r = rollout();
        r.phase = "succeeded".into();
        assert!(outcome(&r, "c:1").is_ok());
        r.phase = "rolled_back".into();
        r.reason = "web@h2 failed".into();
        assert_eq!(
            outcome(&r, "c:1").expect_err("fails").to_string(),
            "rollout r7 rolled_back: web@h2 failed"
        );
        r.phase = "running".into();
        let msg = outcome(&r, "c:1").expect_err("broken").to_string();
        assert!(msg.contains("while it was running"), "{msg}");
    }
}
