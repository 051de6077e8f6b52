//! A disaster-recovery plan (`dr.toml`): how one service moves from its
//! primary site to its DR site and back, what must hold before it may, and
//! the targets its drills are measured against.
//!
//! Sites are host labels (`site=primary`, `site=dr` by default). The plan
//! names commands for what drover does not drive itself (stopping writes,
//! promoting the replica, reading the replication lag, switching DNS): each
//! is an argv whose program is a bare name, run by the leading coordinator
//! from its `[drills] commands_dir` and nowhere else, so a plan chooses
//! among the commands an administrator installed but cannot bring its own.
//!
//! The CLI checks a plan with [`DrillPlan::check`] before sending it; the
//! coordinator checks it again.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::selector::parse_labels;

/// What was wrong with a plan: the field and what it should be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("DR plan: {0}")]
    Parse(String),
    #[error("DR plan: {field}: {why}")]
    Invalid { field: String, why: String },
}

fn invalid(field: &str, why: impl Into<String>) -> PlanError {
    PlanError::Invalid {
        field: field.to_string(),
        why: why.into(),
    }
}

/// The whole plan, as its TOML reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrillPlan {
    /// The service whose instances on both sites the plan moves.
    pub service: String,
    /// The operator's version of the plan (free text, in every report).
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub sites: Sites,
    /// Recovery time objective: the longest a switch may take, from its
    /// first step to the DR site verified serving.
    #[serde(with = "humantime_serde", default = "default_rto")]
    pub rto: Duration,
    /// Recovery point objective: the most data (as replication lag) a
    /// switch may lose.
    #[serde(with = "humantime_serde", default)]
    pub rpo: Duration,
    #[serde(default)]
    pub checks: Checks,
    #[serde(default)]
    pub approval: Approval,
    #[serde(default)]
    pub traffic: Traffic,
    #[serde(default)]
    pub database: Option<Database>,
    #[serde(default)]
    pub verify: Verify,
}

fn default_rto() -> Duration {
    Duration::from_secs(15 * 60)
}

/// Which hosts make up each site: those whose `label` has the site's value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Sites {
    pub label: String,
    pub primary: String,
    pub dr: String,
}

impl Default for Sites {
    fn default() -> Self {
        Sites {
            label: "site".to_string(),
            primary: "primary".to_string(),
            dr: "dr".to_string(),
        }
    }
}

/// Whether the DR site must already run the primary's release. Only
/// `same` for now: bring the DR site to the primary's release with
/// `drover rollout start` before the drill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseRule {
    /// The DR site runs the primary's release, or the drill is refused.
    #[default]
    Same,
}

/// The pre-checks' thresholds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Checks {
    /// The DR site's healthy, ready instances against the primary's peak of
    /// serving instances over `peak_window`, in percent (`"100%"`).
    #[serde(with = "percent")]
    pub capacity: u32,
    #[serde(with = "humantime_serde")]
    pub peak_window: Duration,
    pub release: ReleaseRule,
    /// A plan kept on the coordinator (`drover drill plan --keep`) is
    /// checked again this often; a check that stops passing is a warning.
    /// Default [`DEFAULT_RECHECK`].
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub recheck_every: Option<Duration>,
}

/// How often a kept plan is checked again when it does not say.
pub const DEFAULT_RECHECK: Duration = Duration::from_secs(30 * 60);

impl Default for Checks {
    fn default() -> Self {
        Checks {
            capacity: 100,
            peak_window: Duration::from_secs(24 * 3600),
            release: ReleaseRule::Same,
            recheck_every: None,
        }
    }
}

/// Who must agree before a graceful run switches anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Approval {
    /// A graceful run waits for `drover drill approve ID` from an operator
    /// other than the one who started it. An ungraceful run (the primary
    /// is gone) does not wait.
    pub required: bool,
}

impl Default for Approval {
    fn default() -> Self {
        Approval { required: true }
    }
}

/// How traffic moves between the sites.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrafficVia {
    /// drover sets the HAProxy weights of both sites' instances (the DR
    /// site's servers wait registered at weight 0).
    #[default]
    Haproxy,
    /// The plan's `switch` and `switch_back` commands move it (DNS, a
    /// virtual IP, anything drover does not drive).
    Command,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Traffic {
    pub via: TrafficVia,
    /// `via = "command"`: sends the traffic to the DR site.
    pub switch: Vec<String>,
    /// `via = "command"`: sends it back to the primary.
    pub switch_back: Vec<String>,
}

/// The database steps, each a command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Database {
    /// Prints the replica's lag behind the primary as
    /// `lag_bytes=N lag_seconds=F`.
    pub lag: Vec<String>,
    /// Graceful runs: stops writes on the primary.
    #[serde(default)]
    pub stop_writes: Vec<String>,
    /// Promotes the DR replica to primary.
    pub promote: Vec<String>,
    /// Ungraceful runs whose lag command cannot reach the primary: asked
    /// of the DR replica, prints `replayed_at=S` (Unix seconds: the commit
    /// time of the last transaction it replayed) and, while it still
    /// streams, `heard_at=S` (when it last heard from the primary). The
    /// data-loss window is measured from it. Optional.
    #[serde(default)]
    pub replayed: Vec<String>,
    /// `drover failback`: the same steps the other way, once the old
    /// primary runs again as a replica of the DR database.
    #[serde(default)]
    pub failback: Option<FailbackSteps>,
    /// Each command's timeout.
    #[serde(with = "humantime_serde", default = "default_step_timeout")]
    pub timeout: Duration,
    /// Graceful runs: how long to wait for the replica to catch up.
    #[serde(with = "humantime_serde", default = "default_step_timeout")]
    pub catch_up_timeout: Duration,
}

/// The database steps of a fail-back: the DR database (now the primary)
/// stops writes, the old primary (now its replica) catches up and is
/// promoted back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailbackSteps {
    /// The old primary's lag behind the DR database.
    pub lag: Vec<String>,
    #[serde(default)]
    pub stop_writes: Vec<String>,
    /// Promotes the old primary back.
    pub promote: Vec<String>,
    /// Asked of the old primary (the replica now), as `database.replayed`.
    #[serde(default)]
    pub replayed: Vec<String>,
}

fn default_step_timeout() -> Duration {
    Duration::from_secs(60)
}

/// How the DR site is judged serving after the switch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Verify {
    /// Every DR instance healthy and routed to, continuously, this long.
    #[serde(with = "humantime_serde")]
    pub hold: Duration,
    /// Gives up (the step fails) when `hold` has not been met by then.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for Verify {
    fn default() -> Self {
        Verify {
            hold: Duration::from_secs(60),
            timeout: Duration::from_secs(5 * 60),
        }
    }
}

/// `"100%"` (or a bare number) as a whole percentage.
mod percent {
    use serde::{Deserialize, Deserializer, Serializer, de};

    pub fn serialize<S: Serializer>(v: &u32, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{v}%"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u32),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(n),
            Raw::S(s) => s.trim().trim_end_matches('%').trim().parse().map_err(|_| {
                de::Error::custom(format!("expected a percentage like 100%, got {s:?}"))
            }),
        }
    }
}

/// Checks one command: a bare program name (resolved in the coordinator's
/// `commands_dir`), then its arguments.
fn check_command(field: &str, argv: &[String]) -> Result<(), PlanError> {
    let Some(program) = argv.first() else {
        return Err(invalid(
            field,
            "an argv like [\"pg-promote\", \"--port\", \"5433\"], got []",
        ));
    };
    if program.is_empty()
        || program.contains('/')
        || program == "."
        || program == ".."
        || program.starts_with('-')
    {
        return Err(invalid(
            field,
            format!(
                "the program must be a bare name from the coordinator's [drills] commands_dir \
                 (like \"pg-promote\"), got {program:?}"
            ),
        ));
    }
    if argv.iter().any(|a| a.contains('\0')) {
        return Err(invalid(field, "an argument holds a NUL byte"));
    }
    Ok(())
}

impl DrillPlan {
    /// Parses and checks a plan.
    pub fn from_toml(text: &str) -> Result<DrillPlan, PlanError> {
        let plan: DrillPlan =
            toml::from_str(text).map_err(|e| PlanError::Parse(e.to_string().trim().to_string()))?;
        plan.check()?;
        Ok(plan)
    }

    /// Everything a plan must be, without looking at the fleet.
    pub fn check(&self) -> Result<(), PlanError> {
        if self.service.trim().is_empty() {
            return Err(invalid("service", "the service to move, like \"web\""));
        }
        let s = &self.sites;
        for (field, v) in [("sites.primary", &s.primary), ("sites.dr", &s.dr)] {
            if let Err(e) = parse_labels(&[format!("{}={v}", s.label)]) {
                return Err(invalid(
                    field,
                    format!("the label {:?} = {v:?} is not a host label: {e}", s.label),
                ));
            }
        }
        if s.primary == s.dr {
            return Err(invalid(
                "sites.dr",
                format!("must differ from sites.primary (both {:?})", s.dr),
            ));
        }
        if self.rto.is_zero() {
            return Err(invalid("rto", "a duration above 0, like \"15m\""));
        }
        if self.checks.capacity == 0 || self.checks.capacity > 1000 {
            return Err(invalid(
                "checks.capacity",
                format!(
                    "a percentage from 1% to 1000%, got {}%",
                    self.checks.capacity
                ),
            ));
        }
        if self.checks.peak_window.is_zero() {
            return Err(invalid(
                "checks.peak_window",
                "a duration above 0, like \"24h\"",
            ));
        }
        if let Some(every) = self.checks.recheck_every
            && every < Duration::from_secs(1)
        {
            return Err(invalid(
                "checks.recheck_every",
                format!(
                    "at least 1s (like \"30m\"), got {}",
                    humantime::format_duration(every)
                ),
            ));
        }
        match self.traffic.via {
            TrafficVia::Haproxy => {
                if !self.traffic.switch.is_empty() || !self.traffic.switch_back.is_empty() {
                    return Err(invalid(
                        "traffic.switch",
                        "only with via = \"command\" (HAProxy weights need no command)",
                    ));
                }
            }
            TrafficVia::Command => {
                check_command("traffic.switch", &self.traffic.switch)?;
                check_command("traffic.switch_back", &self.traffic.switch_back)?;
            }
        }
        if let Some(db) = &self.database {
            for steps in [false, true].into_iter().filter_map(|fb| self.db_steps(fb)) {
                for (field, argv) in steps.named() {
                    check_command(field, argv)?;
                }
            }
            for (field, d) in [
                ("database.timeout", db.timeout),
                ("database.catch_up_timeout", db.catch_up_timeout),
            ] {
                if d.is_zero() {
                    return Err(invalid(field, "a duration above 0, like \"60s\""));
                }
            }
        }
        if self.verify.timeout < self.verify.hold {
            return Err(invalid(
                "verify.timeout",
                format!(
                    "at least verify.hold ({})",
                    humantime::format_duration(self.verify.hold)
                ),
            ));
        }
        Ok(())
    }

    /// How often a kept plan is checked again.
    pub fn recheck_every(&self) -> Duration {
        self.checks.recheck_every.unwrap_or(DEFAULT_RECHECK)
    }

    /// Every command the plan names, with the field naming it.
    pub fn commands(&self) -> Vec<(&'static str, &[String])> {
        let mut out: Vec<(&'static str, &[String])> = Vec::new();
        if self.traffic.via == TrafficVia::Command {
            out.push(("traffic.switch", &self.traffic.switch));
            out.push(("traffic.switch_back", &self.traffic.switch_back));
        }
        for steps in [false, true].into_iter().filter_map(|fb| self.db_steps(fb)) {
            out.extend(steps.named());
        }
        out
    }

    /// The database commands a run uses: the failover's, or with
    /// `failback` those of `[database.failback]` (`None` when the plan has
    /// none), each with its field.
    pub fn db_steps(&self, failback: bool) -> Option<DbSteps<'_>> {
        let db = self.database.as_ref()?;
        if failback {
            let fb = db.failback.as_ref()?;
            Some(DbSteps {
                lag: ("database.failback.lag", &fb.lag),
                stop_writes: ("database.failback.stop_writes", &fb.stop_writes),
                promote: ("database.failback.promote", &fb.promote),
                replayed: ("database.failback.replayed", &fb.replayed),
            })
        } else {
            Some(DbSteps {
                lag: ("database.lag", &db.lag),
                stop_writes: ("database.stop_writes", &db.stop_writes),
                promote: ("database.promote", &db.promote),
                replayed: ("database.replayed", &db.replayed),
            })
        }
    }
}

/// One direction's database commands, each with its field name.
#[derive(Debug, Clone, Copy)]
pub struct DbSteps<'a> {
    pub lag: (&'static str, &'a [String]),
    pub stop_writes: (&'static str, &'a [String]),
    pub promote: (&'static str, &'a [String]),
    /// Empty when the plan has none.
    pub replayed: (&'static str, &'a [String]),
}

impl<'a> DbSteps<'a> {
    /// The commands the plan names, with their fields: lag and promote,
    /// then the optional ones it sets.
    pub fn named(&self) -> impl Iterator<Item = (&'static str, &'a [String])> {
        let optional = [self.stop_writes, self.replayed];
        [self.lag, self.promote]
            .into_iter()
            .chain(optional.into_iter().filter(|(_, argv)| !argv.is_empty()))
    }
}

/// What the DR replica says of itself when the primary cannot be asked
/// (`database.replayed`): the commit time of the last transaction it
/// replayed and, while it still streams, when it last heard from the
/// primary. Unix seconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Replayed {
    pub replayed_at: f64,
    pub heard_at: Option<f64>,
}

/// Reads `replayed_at=S [heard_at=S]` from a replayed command's output
/// (the last line that has `replayed_at`).
pub fn parse_replayed(output: &str) -> Result<Replayed, String> {
    let secs = |v: &str| v.parse::<f64>().ok().filter(|s| s.is_finite() && *s > 0.0);
    for line in output.lines().rev() {
        let mut replayed_at = None;
        let mut heard_at = None;
        for field in line.split_whitespace() {
            if let Some(v) = field.strip_prefix("replayed_at=") {
                replayed_at = Some(secs(v));
            } else if let Some(v) = field.strip_prefix("heard_at=") {
                heard_at = secs(v);
            }
        }
        match replayed_at {
            Some(Some(replayed_at)) => {
                return Ok(Replayed {
                    replayed_at,
                    heard_at,
                });
            }
            Some(None) => break,
            None => {}
        }
    }
    let shown: String = output.trim().chars().take(200).collect();
    Err(format!(
        "expected a line `replayed_at=UNIX_SECONDS [heard_at=UNIX_SECONDS]` from the replayed command, got {shown:?}"
    ))
}

/// The sha256 of a plan's text, as the report names the plan it ran.
pub fn plan_digest(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Replication lag as a plan's `database.lag` command prints it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Lag {
    pub bytes: u64,
    pub seconds: f64,
}

impl fmt::Display for Lag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes, {:.3} s", self.bytes, self.seconds)
    }
}

/// Reads `lag_bytes=N lag_seconds=F` from a lag command's output (the last
/// line that has both; other lines and fields are ignored).
pub fn parse_lag(output: &str) -> Result<Lag, String> {
    for line in output.lines().rev() {
        let mut bytes = None;
        let mut seconds = None;
        for field in line.split_whitespace() {
            if let Some(v) = field.strip_prefix("lag_bytes=") {
                bytes = v.parse::<u64>().ok();
            } else if let Some(v) = field.strip_prefix("lag_seconds=") {
                seconds = v.parse::<f64>().ok().filter(|s| s.is_finite() && *s >= 0.0);
            }
        }
        if let (Some(bytes), Some(seconds)) = (bytes, seconds) {
            return Ok(Lag { bytes, seconds });
        }
    }
    let shown: String = output.trim().chars().take(200).collect();
    Err(format!(
        "expected a line `lag_bytes=N lag_seconds=F` from the lag command, got {shown:?}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAN: &str = r#"
service = "web"
version = "2026-12-05.1"
rto = "10m"
rpo = "5s"

[checks]
capacity = "100%"

[database]
lag = ["pg-lag", "--port", "5433"]
stop_writes = ["pg-stop-writes", "--port", "5432"]
promote = ["pg-promote", "--port", "5433"]

[verify]
hold = "10s"
"#;

    #[test]
    fn a_plan_reads_with_its_defaults() {
        let plan = DrillPlan::from_toml(PLAN).expect("valid plan");
        assert_eq!(plan.service, "web");
        assert_eq!(plan.sites, Sites::default());
        assert_eq!(plan.rto, Duration::from_secs(600));
        assert_eq!(plan.rpo, Duration::from_secs(5));
        assert_eq!(plan.checks.capacity, 100);
        assert_eq!(plan.checks.peak_window, Duration::from_secs(86_400));
        assert!(plan.approval.required);
        assert_eq!(plan.traffic.via, TrafficVia::Haproxy);
        let db = plan.database.as_ref().expect("database");
        assert_eq!(db.timeout, Duration::from_secs(60));
        assert_eq!(plan.verify.hold, Duration::from_secs(10));
        let names: Vec<&str> = plan.commands().iter().map(|(f, _)| *f).collect();
        assert_eq!(
            names,
            ["database.lag", "database.promote", "database.stop_writes"]
        );
        assert_eq!(plan_digest(PLAN).len(), 64);
    }

    #[test]
    fn mistakes_name_the_field() {
        let cases = [
            ("service = \"\"", "service"),
            ("service = \"web\"\n[sites]\ndr = \"primary\"", "sites.dr"),
            (
                "service = \"web\"\n[sites]\nprimary = \"a b\"",
                "sites.primary",
            ),
            (
                "service = \"web\"\n[checks]\ncapacity = \"0%\"",
                "checks.capacity",
            ),
            (
                "service = \"web\"\n[checks]\ncapacity = \"lots\"",
                "percentage",
            ),
            (
                "service = \"web\"\n[database]\nlag = [\"/bin/sh\", \"-c\", \"x\"]\npromote = [\"p\"]",
                "database.lag: the program must be a bare name",
            ),
            (
                "service = \"web\"\n[database]\nlag = [\"../x\"]\npromote = [\"p\"]",
                "database.lag",
            ),
            (
                "service = \"web\"\n[database]\nlag = []\npromote = [\"p\"]",
                "database.lag",
            ),
            (
                "service = \"web\"\n[traffic]\nvia = \"command\"",
                "traffic.switch",
            ),
            (
                "service = \"web\"\n[traffic]\nswitch = [\"dns\"]",
                "only with via = \"command\"",
            ),
            (
                "service = \"web\"\n[verify]\nhold = \"10m\"",
                "verify.timeout",
            ),
            ("service = \"web\"\nrto = \"0s\"", "rto"),
            ("service = \"web\"\nfoo = 1", "unknown field `foo`"),
        ];
        for (text, want) in cases {
            let e = DrillPlan::from_toml(text).expect_err(text).to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn lag_lines_are_read_and_garbage_is_refused() {
        assert_eq!(
            parse_lag("replica 127.0.0.1:5433\nlag_bytes=0 lag_seconds=0\n"),
            Ok(Lag {
                bytes: 0,
                seconds: 0.0
            })
        );
        assert_eq!(
            parse_lag("lag_seconds=1.5 lag_bytes=4096 state=streaming"),
            Ok(Lag {
                bytes: 4096,
                seconds: 1.5
            })
        );
        for bad in [
            "",
            "lag_bytes=1",
            "lag_bytes=x lag_seconds=1",
            "lag_bytes=1 lag_seconds=-1",
            "lag_bytes=1 lag_seconds=NaN",
        ] {
            let e = parse_lag(bad).expect_err(bad);
            assert!(e.contains("lag_bytes=N lag_seconds=F"), "{e}");
        }
    }

    #[test]
    fn replayed_lines_are_read_and_garbage_is_refused() {
        assert_eq!(
            parse_replayed(
                "replica 10.0.2.10:5432\nreplayed_at=1764900000.250 heard_at=1764900003.5\n"
            ),
            Ok(Replayed {
                replayed_at: 1_764_900_000.25,
                heard_at: Some(1_764_900_003.5),
            })
        );
        assert_eq!(
            parse_replayed("replayed_at=1764900000"),
            Ok(Replayed {
                replayed_at: 1_764_900_000.0,
                heard_at: None,
            })
        );
        for bad in [
            "",
            "heard_at=5",
            "replayed_at=",
            "replayed_at=-3",
            "replayed_at=NaN",
        ] {
            let e = parse_replayed(bad).expect_err(bad);
            assert!(e.contains("replayed_at=UNIX_SECONDS"), "{e}");
        }
    }

    #[test]
    fn a_replayed_command_is_checked_and_listed() {
        let text = PLAN.replace(
            "promote = [\"pg-promote\"",
            "replayed = [\"/bin/sh\", \"-c\", \"x\"]\npromote = [\"pg-promote\"",
        );
        let e = DrillPlan::from_toml(&text).expect_err("a path is refused");
        assert!(e.to_string().contains("database.replayed"), "{e}");
        let text = PLAN.replace(
            "promote = [\"pg-promote\"",
            "replayed = [\"pg-replayed\", \"--port\", \"5433\"]\npromote = [\"pg-promote\"",
        );
        let plan = DrillPlan::from_toml(&text).expect("valid");
        assert!(
            plan.commands()
                .iter()
                .any(|(f, argv)| *f == "database.replayed" && argv[0] == "pg-replayed"),
            "{:?}",
            plan.commands()
        );
        assert_eq!(
            plan.db_steps(false).map(|s| s.replayed.0),
            Some("database.replayed")
        );
    }
}
