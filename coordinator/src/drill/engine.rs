//! The drill engine: where a drill, a fail-back or a real failover is, and
//! what it does next. Pure: the runner ([`super::runner`]) carries out the
//! [`Action`]s and feeds back what came of them; nothing here waits, reads a
//! clock or touches the network. Every state change is returned to be
//! persisted before the next action, so a coordinator that dies anywhere
//! resumes from the last stored state and runs the step it was in again
//! (plan commands must be safe to run twice, as the example ones are).
//!
//! The steps, in order (a plan without a database skips its three):
//!
//! 1. `approval`: a graceful run whose plan asks for it waits for
//!    `drover drill approve` by an operator other than the starter.
//! 2. `stop_writes` (graceful, when the plan has one): the primary's
//!    database stops taking writes.
//! 3. `catch_up` (graceful): the lag command until the replica is 0 bytes
//!    behind, within `catch_up_timeout`. Ungraceful: one measurement,
//!    which may fail (the primary is gone); the lag at cutover is what it
//!    said. When it fails and the plan has a `replayed` command, the DR
//!    replica is asked instead what it last replayed: the data-loss
//!    window is measured from there ([`LossWindow`]).
//! 4. `promote`: the DR replica becomes the primary.
//! 5. `switch`: traffic moves to the DR site (HAProxy weights, or the
//!    plan's switch command).
//! 6. `verify`: every DR instance healthy and routed to, continuously for
//!    `verify.hold`, within `verify.timeout`.
//!
//! The recovery time runs from the first step after the approval to the
//! moment the DR site was first seen serving whole (the start of the hold
//! that then held). A failed step ends the drill `failed` with its reason;
//! traffic that had moved stays where it is until `drover drill abort`,
//! which moves it back (the database's promotion cannot be undone by
//! drover: the report says so).

use std::collections::BTreeMap;
use std::time::Duration;

use drover_model::drill::{DrillPlan, Lag, Replayed, TrafficVia};
use serde::{Deserialize, Serialize};

/// Unix milliseconds.
pub type Ms = i64;

fn ms(d: Duration) -> Ms {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 4)
}

/// What the operation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A rehearsal: primary to DR, measured and reported.
    Drill,
    /// The real emergency: the same steps, recorded as an incident.
    Failover,
    /// Back from DR to the primary.
    Failback,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Drill => "drill",
            Kind::Failover => "failover",
            Kind::Failback => "failback",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// The primary is up: writes stop and the replica catches up first.
    Graceful,
    /// The primary is assumed gone: nothing waits for it.
    Ungraceful,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepName {
    Approval,
    StopWrites,
    CatchUp,
    Promote,
    Switch,
    Verify,
}

impl StepName {
    pub fn as_str(self) -> &'static str {
        match self {
            StepName::Approval => "approval",
            StepName::StopWrites => "stop_writes",
            StepName::CatchUp => "catch_up",
            StepName::Promote => "promote",
            StepName::Switch => "switch",
            StepName::Verify => "verify",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    Pending,
    Running,
    Done,
    Failed,
    Skipped,
}

/// One step's record, for the timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    pub name: StepName,
    pub state: StepState,
    pub started_ms: Option<Ms>,
    pub ended_ms: Option<Ms>,
    /// Runs of its command (or looks, for catch_up and verify).
    pub attempts: u32,
    /// What its command said last, or what was seen.
    pub output: String,
}

impl StepRecord {
    fn new(name: StepName) -> StepRecord {
        StepRecord {
            name,
            state: StepState::Pending,
            started_ms: None,
            ended_ms: None,
            attempts: 0,
            output: String::new(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Waiting for the approval.
    Approval,
    Running,
    Succeeded,
    Failed,
    /// `drill abort`: traffic moving back.
    Aborting,
    Aborted,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Approval => "awaiting_approval",
            Phase::Running => "running",
            Phase::Succeeded => "succeeded",
            Phase::Failed => "failed",
            Phase::Aborting => "aborting",
            Phase::Aborted => "aborted",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed | Phase::Aborted)
    }
}

/// Which way traffic goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Toward {
    /// To the site the operation moves to.
    Target,
    /// Back to the site it moves from.
    Source,
}

/// A timestamped line of what happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub at_ms: Ms,
    pub message: String,
}

/// A pre-check as recorded at the start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckRecord {
    pub name: String,
    pub passed: bool,
    pub value: String,
    pub want: String,
    pub detail: String,
}

/// The whole persisted operation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Drill {
    pub id: String,
    pub kind: Kind,
    pub mode: Mode,
    pub plan_text: String,
    pub plan: DrillPlan,
    pub plan_digest: String,
    pub started_by: String,
    pub started_ms: Ms,
    /// `--force REASON`: pre-checks that failed were overridden.
    pub forced: Option<String>,
    pub prechecks: Vec<CheckRecord>,
    pub approved_by: Option<String>,
    pub approved_ms: Option<Ms>,
    pub phase: Phase,
    pub steps: Vec<StepRecord>,
    /// Where `steps` is.
    pub current: usize,
    /// The first step after the approval began: the recovery clock starts.
    pub switch_started_ms: Option<Ms>,
    /// The target site first seen serving whole, in the hold that held.
    pub serving_ms: Option<Ms>,
    pub verified_ms: Option<Ms>,
    pub lag_at_cutover: Option<Lag>,
    /// Ungraceful: why the primary's lag could not be read, while the
    /// replica is asked instead.
    #[serde(default)]
    pub primary_unreachable: Option<String>,
    /// Ungraceful, the primary gone: the window measured on the replica.
    #[serde(default)]
    pub loss: Option<LossWindow>,
    /// What both sites served from the switch's start to the end of
    /// verify, and the serving instances against the floor.
    #[serde(default)]
    pub traffic: Option<SwitchTraffic>,
    /// Traffic was sent toward the target (an abort sends it back).
    pub traffic_moved: bool,
    pub ended_ms: Option<Ms>,
    /// Why it failed or was aborted.
    pub reason: String,
    pub aborted_by: Option<String>,
    pub events: Vec<Event>,
}

/// Where an ungraceful run's data-loss window ends: writes the primary
/// committed after the replica's last replayed transaction and before
/// this moment may be lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossEnd {
    /// When the replica last heard from the primary (it still streamed
    /// when asked): the primary went silent then.
    HeardFromPrimary,
    /// When the run started (the replica no longer streamed, so when the
    /// primary went silent is not known): the operator declared it gone
    /// then. An upper bound.
    RunStarted,
}

impl LossEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            LossEnd::HeardFromPrimary => "heard_from_primary",
            LossEnd::RunStarted => "run_started",
        }
    }
}

/// The data-loss window of an ungraceful run whose primary could not be
/// asked, measured on the DR replica: from the commit time of the last
/// transaction it replayed to [`LossEnd`]. Writes inside it may be lost
/// (whether any were depends on whether the primary took any then).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LossWindow {
    pub from_ms: Ms,
    pub to_ms: Ms,
    pub end: LossEnd,
}

impl LossWindow {
    /// From what the replica said, for a run that started at `started_ms`.
    pub fn measure(r: Replayed, started_ms: Ms) -> LossWindow {
        let from_ms = (r.replayed_at * 1000.0).round() as Ms;
        let (to_ms, end) = match r.heard_at {
            Some(h) => ((h * 1000.0).round() as Ms, LossEnd::HeardFromPrimary),
            None => (started_ms, LossEnd::RunStarted),
        };
        LossWindow {
            from_ms,
            to_ms: to_ms.max(from_ms),
            end,
        }
    }

    pub fn len_ms(&self) -> Ms {
        self.to_ms - self.from_ms
    }
}

/// One server's HAProxy counters as an agent last reported them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    /// `instance-id|balancer`.
    pub key: String,
    /// On the site traffic moves to.
    pub on_target: bool,
    /// Requests tried: answered, or failed by HAProxy.
    pub attempts: u64,
    /// 5xx answers and HAProxy's own failures.
    pub errors: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteMeter {
    pub on_target: bool,
    pub attempts: drover_analysis::Counter,
    pub errors: drover_analysis::Counter,
}

/// What both sites served from the start of the switch to the end of
/// verify, by HAProxy's counters as the agents report them (every
/// `traffic_interval`), and the fewest instances serving meanwhile
/// against the floor: as many as served before the switch, times the
/// plan's `checks.capacity`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchTraffic {
    pub from_ms: Ms,
    pub to_ms: Ms,
    pub serving_before: u32,
    pub floor: u32,
    pub lowest_serving: u32,
    pub meters: BTreeMap<String, SiteMeter>,
}

/// Requests and failures on one side of the switch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Served {
    pub requests: u64,
    pub failed: u64,
}

impl SwitchTraffic {
    pub fn start(now: Ms, serving: u32, capacity_pct: u32, readings: &[Reading]) -> SwitchTraffic {
        let mut t = SwitchTraffic {
            from_ms: now,
            to_ms: now,
            serving_before: serving,
            floor: (u64::from(serving) * u64::from(capacity_pct))
                .div_ceil(100)
                .try_into()
                .unwrap_or(u32::MAX),
            lowest_serving: serving,
            meters: BTreeMap::new(),
        };
        t.observe(now, serving, readings);
        t
    }

    /// A later look: counters advance (a reset counts from 0, a server
    /// first seen now starts counting now), the lowest serving is kept.
    pub fn observe(&mut self, now: Ms, serving: u32, readings: &[Reading]) {
        self.to_ms = self.to_ms.max(now);
        self.lowest_serving = self.lowest_serving.min(serving);
        for r in readings {
            match self.meters.get_mut(&r.key) {
                Some(m) => {
                    m.attempts.advance(r.attempts);
                    m.errors.advance(r.errors);
                }
                None => {
                    self.meters.insert(
                        r.key.clone(),
                        SiteMeter {
                            on_target: r.on_target,
                            attempts: drover_analysis::Counter::new(r.attempts),
                            errors: drover_analysis::Counter::new(r.errors),
                        },
                    );
                }
            }
        }
    }

    /// `(target site, source site)`.
    pub fn served(&self) -> (Served, Served) {
        let mut target = Served::default();
        let mut source = Served::default();
        for m in self.meters.values() {
            let side = if m.on_target {
                &mut target
            } else {
                &mut source
            };
            side.requests += m.attempts.total();
            side.failed += m.errors.total();
        }
        (target, source)
    }
}

/// What the runner is to do next.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Nothing until this time (or an input).
    WaitUntil(Ms),
    /// Nothing until an input (an approval).
    WaitForInput,
    /// Run the plan command at `field` (`database.promote`).
    Run {
        field: &'static str,
        argv: Vec<String>,
        timeout: Duration,
    },
    /// Run the lag command and answer [`Drill::on_lag`].
    MeasureLag {
        field: &'static str,
        argv: Vec<String>,
        timeout: Duration,
    },
    /// Run the replayed command (on the DR replica) and answer
    /// [`Drill::on_replayed`].
    MeasureReplayed {
        field: &'static str,
        argv: Vec<String>,
        timeout: Duration,
    },
    /// Move traffic and answer [`Drill::on_switched`].
    Switch(Toward),
    /// Look whether every target instance serves; answer
    /// [`Drill::on_serving`].
    CheckServing,
    /// Nothing more: the operation has ended.
    Done,
}

impl Action {
    /// The plan command a `Run`, `MeasureLag` or `MeasureReplayed` runs.
    pub fn command(&self) -> Option<(&'static str, &[String], Duration)> {
        match self {
            Action::Run {
                field,
                argv,
                timeout,
            }
            | Action::MeasureLag {
                field,
                argv,
                timeout,
            }
            | Action::MeasureReplayed {
                field,
                argv,
                timeout,
            } => Some((field, argv, *timeout)),
            _ => None,
        }
    }
}

/// How often catch_up measures the lag, and verify looks.
pub const LOOK_EVERY: Duration = Duration::from_millis(500);
/// A weight switch that has not answered in this long fails its step.
pub const SWITCH_TIMEOUT: Duration = Duration::from_secs(60);

impl Drill {
    /// A new operation, its steps laid out from the plan.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: String,
        kind: Kind,
        mode: Mode,
        plan_text: String,
        plan: DrillPlan,
        plan_digest: String,
        started_by: String,
        now: Ms,
        forced: Option<String>,
        prechecks: Vec<CheckRecord>,
    ) -> Drill {
        let db = plan.db_steps(kind == Kind::Failback);
        let mut steps = Vec::new();
        let approve = plan.approval.required && mode == Mode::Graceful;
        steps.push(StepRecord {
            state: if approve {
                StepState::Pending
            } else {
                StepState::Skipped
            },
            ..StepRecord::new(StepName::Approval)
        });
        let skip_unless = |name: StepName, on: bool| StepRecord {
            state: if on {
                StepState::Pending
            } else {
                StepState::Skipped
            },
            ..StepRecord::new(name)
        };
        let graceful = mode == Mode::Graceful;
        steps.push(skip_unless(
            StepName::StopWrites,
            graceful && db.is_some_and(|d| !d.stop_writes.1.is_empty()),
        ));
        steps.push(skip_unless(StepName::CatchUp, db.is_some()));
        steps.push(skip_unless(StepName::Promote, db.is_some()));
        steps.push(StepRecord::new(StepName::Switch));
        steps.push(StepRecord::new(StepName::Verify));
        let mut d = Drill {
            id,
            kind,
            mode,
            plan_text,
            plan,
            plan_digest,
            started_by,
            started_ms: now,
            forced,
            prechecks,
            approved_by: None,
            approved_ms: None,
            phase: if approve {
                Phase::Approval
            } else {
                Phase::Running
            },
            steps,
            current: 0,
            switch_started_ms: None,
            serving_ms: None,
            verified_ms: None,
            lag_at_cutover: None,
            primary_unreachable: None,
            loss: None,
            traffic: None,
            traffic_moved: false,
            ended_ms: None,
            reason: String::new(),
            aborted_by: None,
            events: Vec::new(),
        };
        let what = format!(
            "{} {} of {} started by {}",
            match mode {
                Mode::Graceful => "graceful",
                Mode::Ungraceful => "ungraceful",
            },
            kind.as_str(),
            d.plan.service,
            d.started_by
        );
        d.event(now, what);
        if let Some(why) = &d.forced {
            let why = why.clone();
            d.event(now, format!("pre-checks overridden (--force): {why}"));
        }
        if approve {
            d.event(now, "waiting for an approval (drover drill approve)");
        }
        d
    }

    fn event(&mut self, at_ms: Ms, message: impl Into<String>) {
        self.events.push(Event {
            at_ms,
            message: message.into(),
        });
    }

    pub fn step(&self, name: StepName) -> Option<&StepRecord> {
        self.steps.iter().find(|s| s.name == name)
    }

    /// Milliseconds from switch start to the target serving, when known.
    pub fn recovery_ms(&self) -> Option<Ms> {
        Some(self.serving_ms? - self.switch_started_ms?)
    }

    /// The command of the current step, if it has one.
    fn command_of(&self, name: StepName) -> Option<(&'static str, Vec<String>)> {
        let db = self.plan.db_steps(self.kind == Kind::Failback)?;
        let (field, argv) = match name {
            StepName::StopWrites => db.stop_writes,
            StepName::Promote => db.promote,
            StepName::CatchUp => db.lag,
            _ => return None,
        };
        Some((field, argv.to_vec()))
    }

    /// This direction's `replayed` command, when the plan has one.
    fn replayed_command(&self) -> Option<(&'static str, Vec<String>)> {
        let (field, argv) = self.plan.db_steps(self.kind == Kind::Failback)?.replayed;
        (!argv.is_empty()).then(|| (field, argv.to_vec()))
    }

    fn timeout_of(&self) -> Duration {
        self.plan
            .database
            .as_ref()
            .map_or(Duration::from_secs(60), |d| d.timeout)
    }

    /// Moves past skipped steps, starts the current one; what to do now.
    pub fn next(&mut self, now: Ms) -> Action {
        loop {
            match self.phase {
                Phase::Succeeded | Phase::Failed | Phase::Aborted => return Action::Done,
                Phase::Aborting => {
                    return if self.traffic_moved {
                        Action::Switch(Toward::Source)
                    } else {
                        self.finish_abort(now);
                        Action::Done
                    };
                }
                Phase::Approval => return Action::WaitForInput,
                Phase::Running => {}
            }
            let Some(step) = self.steps.get(self.current) else {
                self.phase = Phase::Succeeded;
                self.ended_ms = Some(now);
                let rto = ms(self.plan.rto);
                let took = self.recovery_ms().unwrap_or(0);
                let verdict = if took <= rto { "within" } else { "over" };
                self.event(
                    now,
                    format!(
                        "{} succeeded: recovery time {:.1} s, {verdict} the RTO of {}",
                        self.kind.as_str(),
                        took as f64 / 1000.0,
                        humantime::format_duration(self.plan.rto)
                    ),
                );
                return Action::Done;
            };
            let name = step.name;
            match step.state {
                StepState::Skipped | StepState::Done => {
                    self.current += 1;
                    continue;
                }
                StepState::Failed => return Action::Done,
                StepState::Pending => {
                    if name != StepName::Approval && self.switch_started_ms.is_none() {
                        self.switch_started_ms = Some(now);
                    }
                    let s = &mut self.steps[self.current];
                    s.state = StepState::Running;
                    s.started_ms = Some(now);
                    self.event(now, format!("{}: started", name.as_str()));
                }
                StepState::Running => {}
            }
            return self.act(name, now);
        }
    }

    fn act(&mut self, name: StepName, now: Ms) -> Action {
        let started = self.steps[self.current].started_ms.unwrap_or(now);
        match name {
            StepName::Approval => Action::WaitForInput,
            StepName::StopWrites | StepName::Promote => match self.command_of(name) {
                Some((field, argv)) if !argv.is_empty() => Action::Run {
                    field,
                    argv,
                    timeout: self.timeout_of(),
                },
                _ => {
                    self.complete(now, "nothing to run");
                    self.next(now)
                }
            },
            StepName::CatchUp => {
                let Some(db) = self.plan.database.as_ref() else {
                    self.complete(now, "no database");
                    return self.next(now);
                };
                if self.mode == Mode::Graceful && now - started > ms(db.catch_up_timeout) {
                    let last = self.steps[self.current].output.clone();
                    return self.fail(
                        now,
                        format!(
                            "the replica did not catch up within {} (last: {last})",
                            humantime::format_duration(db.catch_up_timeout)
                        ),
                    );
                }
                if self.mode == Mode::Ungraceful && self.primary_unreachable.is_some() {
                    let (field, argv) = self
                        .replayed_command()
                        .unwrap_or(("database.replayed", Vec::new()));
                    return Action::MeasureReplayed {
                        field,
                        argv,
                        timeout: db.timeout,
                    };
                }
                let (field, argv) = self
                    .command_of(StepName::CatchUp)
                    .unwrap_or(("database.lag", Vec::new()));
                Action::MeasureLag {
                    field,
                    argv,
                    timeout: db.timeout,
                }
            }
            StepName::Switch => {
                if now - started > ms(SWITCH_TIMEOUT) {
                    return self.fail(now, "the traffic switch did not finish in time");
                }
                Action::Switch(Toward::Target)
            }
            StepName::Verify => {
                if now - started > ms(self.plan.verify.timeout) {
                    return self.fail(
                        now,
                        format!(
                            "the {} site was not seen serving whole for {} within {}",
                            self.target_site(),
                            humantime::format_duration(self.plan.verify.hold),
                            humantime::format_duration(self.plan.verify.timeout)
                        ),
                    );
                }
                Action::CheckServing
            }
        }
    }

    /// The site the operation moves traffic to.
    pub fn target_site(&self) -> String {
        let s = &self.plan.sites;
        match self.kind {
            Kind::Failback => format!("{}={}", s.label, s.primary),
            _ => format!("{}={}", s.label, s.dr),
        }
    }

    pub fn source_site(&self) -> String {
        let s = &self.plan.sites;
        match self.kind {
            Kind::Failback => format!("{}={}", s.label, s.dr),
            _ => format!("{}={}", s.label, s.primary),
        }
    }

    fn complete(&mut self, now: Ms, output: impl Into<String>) {
        let output = output.into();
        let s = &mut self.steps[self.current];
        s.state = StepState::Done;
        s.ended_ms = Some(now);
        s.output.clone_from(&output);
        let name = s.name;
        self.event(now, format!("{}: done: {output}", name.as_str()));
        self.current += 1;
    }

    fn fail(&mut self, now: Ms, why: impl Into<String>) -> Action {
        let why = why.into();
        let s = &mut self.steps[self.current];
        s.state = StepState::Failed;
        s.ended_ms = Some(now);
        let name = s.name;
        self.phase = Phase::Failed;
        self.ended_ms = Some(now);
        self.reason = format!("{}: {why}", name.as_str());
        let tail = if self.traffic_moved {
            "; traffic stays where it is: `drover drill abort` moves it back"
        } else {
            ""
        };
        self.event(
            now,
            format!("{} failed: {}{tail}", self.kind.as_str(), self.reason),
        );
        Action::Done
    }

    /// The answer to [`Action::Run`].
    pub fn on_command(&mut self, now: Ms, ok: bool, detail: &str) {
        if self.phase != Phase::Running {
            return;
        }
        let s = &mut self.steps[self.current];
        s.attempts += 1;
        s.output = detail.to_string();
        if ok {
            self.complete(now, detail.to_string());
        } else {
            self.fail(now, detail.to_string());
        }
    }

    /// The answer to [`Action::MeasureLag`]; `Err` when the command failed
    /// or said nothing readable. Returns when to look again, if at all.
    pub fn on_lag(&mut self, now: Ms, lag: Result<Lag, String>) -> Option<Ms> {
        if self.phase != Phase::Running {
            return None;
        }
        let can_ask_replica = self.replayed_command().is_some();
        let s = &mut self.steps[self.current];
        s.attempts += 1;
        match (self.mode, lag) {
            (_, Ok(lag)) if lag.bytes == 0 => {
                self.lag_at_cutover = Some(lag);
                self.complete(now, format!("caught up ({lag})"));
                None
            }
            (Mode::Graceful, Ok(lag)) => {
                s.output = format!("{lag} behind");
                Some(now + ms(LOOK_EVERY))
            }
            (Mode::Graceful, Err(e)) => {
                s.output = e;
                Some(now + ms(LOOK_EVERY))
            }
            (Mode::Ungraceful, Ok(lag)) => {
                self.lag_at_cutover = Some(lag);
                self.complete(now, format!("{lag} behind at cutover"));
                None
            }
            (Mode::Ungraceful, Err(e)) if can_ask_replica => {
                s.output = format!(
                    "the primary did not answer ({e}); asking the replica what it replayed"
                );
                self.primary_unreachable = Some(e);
                Some(now)
            }
            (Mode::Ungraceful, Err(e)) => {
                self.complete(
                    now,
                    format!("lag not measured (the primary is assumed gone): {e}"),
                );
                None
            }
        }
    }

    /// The answer to [`Action::MeasureReplayed`]. Either way the run goes
    /// on: an emergency does not wait for a measurement.
    pub fn on_replayed(&mut self, now: Ms, replayed: Result<Replayed, String>) {
        if self.phase != Phase::Running {
            return;
        }
        self.steps[self.current].attempts += 1;
        let unreachable = self.primary_unreachable.clone().unwrap_or_default();
        match replayed {
            Ok(r) => {
                let w = LossWindow::measure(r, self.started_ms);
                self.loss = Some(w);
                let end = match w.end {
                    LossEnd::HeardFromPrimary => "the replica last heard from the primary",
                    LossEnd::RunStarted => "this run started (the replica no longer streamed)",
                };
                self.complete(
                    now,
                    format!(
                        "the primary did not answer ({unreachable}); the replica's last replayed transaction committed {:.3} s before {end}: writes in between may be lost",
                        w.len_ms() as f64 / 1000.0
                    ),
                );
            }
            Err(e) => self.complete(
                now,
                format!(
                    "lag not measured (the primary is assumed gone): {unreachable}; the replica did not say what it replayed either: {e}"
                ),
            ),
        }
    }

    /// The answer to [`Action::Switch`].
    pub fn on_switched(&mut self, now: Ms, toward: Toward, result: Result<String, String>) {
        match (self.phase, toward) {
            (Phase::Running, Toward::Target) => {
                let s = &mut self.steps[self.current];
                s.attempts += 1;
                match result {
                    Ok(detail) => {
                        self.traffic_moved = true;
                        self.complete(now, detail);
                    }
                    Err(e) => {
                        // Some may have moved: an abort moves all back.
                        self.traffic_moved = true;
                        self.fail(now, e);
                    }
                }
            }
            (Phase::Aborting, Toward::Source) => match result {
                Ok(detail) => {
                    self.traffic_moved = false;
                    self.event(
                        now,
                        format!("traffic back on {}: {detail}", self.source_site()),
                    );
                    self.finish_abort(now);
                }
                Err(e) => {
                    self.event(
                        now,
                        format!("moving traffic back failed: {e}; trying again"),
                    );
                }
            },
            _ => {}
        }
    }

    fn finish_abort(&mut self, now: Ms) {
        self.phase = Phase::Aborted;
        self.ended_ms = Some(now);
        let db = if self
            .step(StepName::Promote)
            .is_some_and(|s| s.state == StepState::Done)
        {
            "; the database promotion stays: fail back with `drover failback`"
        } else {
            ""
        };
        self.event(now, format!("aborted{db}"));
    }

    /// The answer to [`Action::CheckServing`]: whether every target
    /// instance serves, and what was seen. Returns when to look again.
    pub fn on_serving(&mut self, now: Ms, whole: bool, seen: &str) -> Option<Ms> {
        if self.phase != Phase::Running {
            return None;
        }
        let hold = ms(self.plan.verify.hold);
        let s = &mut self.steps[self.current];
        s.attempts += 1;
        s.output = seen.to_string();
        if !whole {
            self.serving_ms = None;
            return Some(now + ms(LOOK_EVERY));
        }
        let since = *self.serving_ms.get_or_insert(now);
        if now - since >= hold {
            self.verified_ms = Some(now);
            let target = self.target_site();
            self.complete(
                now,
                format!(
                    "{target} served whole for {} ({seen})",
                    humantime::format_duration(self.plan.verify.hold)
                ),
            );
            return None;
        }
        Some(now + ms(LOOK_EVERY).min(hold - (now - since)).max(1))
    }

    /// `drover drill approve`: by someone other than the starter.
    pub fn approve(&mut self, now: Ms, by: &str) -> Result<(), String> {
        if self.phase != Phase::Approval {
            return Err(format!(
                "{} is {}, not waiting for an approval",
                self.id,
                self.phase.as_str()
            ));
        }
        if by == self.started_by {
            return Err(format!(
                "{by} started {} and cannot approve it too: another operator must",
                self.id
            ));
        }
        self.approved_by = Some(by.to_string());
        self.approved_ms = Some(now);
        let s = &mut self.steps[self.current];
        s.state = StepState::Done;
        s.started_ms.get_or_insert(self.started_ms);
        s.ended_ms = Some(now);
        s.output = format!("approved by {by}");
        self.phase = Phase::Running;
        self.event(now, format!("approved by {by}"));
        Ok(())
    }

    /// `drover drill abort`: stops where it is and moves traffic back.
    pub fn abort(&mut self, now: Ms, by: &str) -> Result<(), String> {
        if self.phase.is_terminal() && !(self.phase == Phase::Failed && self.traffic_moved) {
            return Err(format!(
                "{} has ended ({}){}",
                self.id,
                self.phase.as_str(),
                if self.phase == Phase::Succeeded {
                    ": fail back with `drover failback` instead"
                } else {
                    ""
                }
            ));
        }
        if self.phase == Phase::Aborting {
            return Ok(());
        }
        if let Some(s) = self.steps.get_mut(self.current)
            && s.state == StepState::Running
        {
            s.state = StepState::Failed;
            s.ended_ms = Some(now);
            s.output = format!("aborted by {by}");
        }
        self.aborted_by = Some(by.to_string());
        if self.reason.is_empty() {
            self.reason = format!("aborted by {by}");
        }
        self.phase = Phase::Aborting;
        self.event(now, format!("abort asked by {by}"));
        Ok(())
    }

    /// Failed after moving traffic: `drover drill abort` may still move it
    /// back.
    pub fn awaits_abort(&self) -> bool {
        self.phase == Phase::Failed && self.traffic_moved
    }
}

/// Whether drills of one service hold its weights now: the latest that
/// moved traffic decides. A drill or failover that moved it holds it (on
/// DR, until a fail-back); a fail-back that finished put every configured
/// weight back and holds nothing; one that failed half-way still holds.
/// Drills that failed before moving anything, or were aborted back, do not
/// count: the one before them decides.
pub fn holds<'a>(drills: impl Iterator<Item = &'a Drill>) -> bool {
    let mut drills: Vec<&Drill> = drills
        .filter(|d| d.plan.traffic.via == TrafficVia::Haproxy)
        .collect();
    drills.sort_by_key(|d| std::cmp::Reverse(d.started_ms));
    for d in drills {
        match d.kind {
            Kind::Failback if d.phase == Phase::Succeeded => return false,
            _ if d.traffic_moved => return true,
            // A succeeded drill or failover moved traffic and keeps it.
            Kind::Drill | Kind::Failover if d.phase == Phase::Succeeded => return true,
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests;
