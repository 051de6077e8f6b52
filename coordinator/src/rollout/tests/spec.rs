//! Amounts, spec parsing and validation messages.

use std::time::Duration;

use super::fleet::{digest, spec, v2};
use crate::rollout::{
    Amount, AmountError, LostHostPolicy, RolloutSpec, SpecError, Spread, parse_batches,
};

#[test]
fn amounts_parse_counts_and_percentages() {
    assert_eq!("3".parse(), Ok(Amount::Count(3)));
    assert_eq!(" 25% ".parse(), Ok(Amount::Percent(25)));
    assert_eq!("0%".parse(), Ok(Amount::Percent(0)));
    for bad in [
        "",
        "%",
        "-1",
        "2.5%",
        "abc",
        "25 %x",
        "1e3",
        "+3",
        "99999999999",
    ] {
        assert_eq!(
            bad.parse::<Amount>(),
            Err(AmountError(bad.to_string())),
            "{bad:?}"
        );
    }
    assert_eq!(
        AmountError("x".to_string()).to_string(),
        "expected a count like 3 or a percentage like 25%, got \"x\""
    );
    assert_eq!(Amount::Percent(25).to_string(), "25%");
    assert_eq!(Amount::Count(3).to_string(), "3");
}

#[test]
fn amounts_round_up_for_the_floor_and_down_for_everything_else() {
    assert_eq!(Amount::Percent(80).resolve_up(9), 8); // 7.2
    assert_eq!(Amount::Percent(80).resolve_up(10), 8);
    assert_eq!(Amount::Percent(1).resolve_up(10), 1); // 0.1
    assert_eq!(Amount::Percent(0).resolve_up(10), 0);
    assert_eq!(Amount::Percent(25).resolve_down(10), 2); // 2.5
    assert_eq!(Amount::Percent(10).resolve_down(9), 0); // 0.9
    assert_eq!(Amount::Percent(100).resolve_down(7), 7);
    assert_eq!(Amount::Count(3).resolve_down(2), 3);
    assert_eq!(Amount::Count(3).resolve_up(2), 3);
}

#[test]
fn batch_lists_parse() {
    assert_eq!(
        parse_batches("1,25%,100%"),
        Ok(vec![
            Amount::Count(1),
            Amount::Percent(25),
            Amount::Percent(100)
        ])
    );
    assert!(parse_batches("").is_err());
    assert!(parse_batches("1,,2").is_err());
}

#[test]
fn spec_reads_from_toml() {
    let text = format!(
        r#"
service = "web"
selector = "env=prod,zone in (a,b)"
batches = "1,25%,100%"
max_unavailable = 3
min_healthy = "80%"
min_healthy_time = "10s"
healthy_deadline = "2m"
progress_deadline = "10m"
max_failures = "10%"
max_unreachable = 1
auto_rollback = true
lost_hosts = "skip"
step_timeout = "1m"
spread_by = {{ label = "zone", max_unavailable = 2 }}

[target]
version = "v2"
digest = "{}"
"#,
        digest('2')
    );
    let s = RolloutSpec::from_toml(&text).expect("valid spec");
    assert_eq!(s.target, v2());
    assert_eq!(s.batches.len(), 3);
    assert_eq!(s.max_unavailable, Some(Amount::Count(3)));
    assert_eq!(s.max_failures, Amount::Percent(10));
    assert_eq!(s.healthy_deadline, Duration::from_secs(120));
    assert_eq!(s.lost_hosts, LostHostPolicy::Skip);
    assert_eq!(
        s.spread_by,
        Some(Spread {
            label: "zone".to_string(),
            max_unavailable: 2
        })
    );
    // Round trip, and the list form of batches.
    assert_eq!(RolloutSpec::from_toml(&s.to_toml()), Ok(s.clone()));
    let list = text.replace("\"1,25%,100%\"", "[1, \"25%\", \"100%\"]");
    assert_eq!(RolloutSpec::from_toml(&list), Ok(s.clone()));
    // Short spread form.
    let short = text.replace("{ label = \"zone\", max_unavailable = 2 }", "\"zone:2\"");
    assert_eq!(RolloutSpec::from_toml(&short), Ok(s));
}

#[test]
fn spec_parse_errors_name_the_field() {
    let err = RolloutSpec::from_toml("service = \"web\"\nbatchs = \"1\"").expect_err("typo");
    assert!(
        matches!(err, SpecError::Parse(ref m) if m.contains("batchs")),
        "{err}"
    );
    let err =
        RolloutSpec::from_toml("service = \"web\"\nmin_healthy = \"eighty\"").expect_err("bad");
    assert!(
        matches!(err, SpecError::Parse(ref m) if m.contains("min_healthy") && m.contains("25%")),
        "{err}"
    );
    let err =
        RolloutSpec::from_toml("service = \"web\"\nstep_timeout = \"soon\"").expect_err("bad");
    assert!(
        matches!(err, SpecError::Parse(ref m) if m.contains("step_timeout")),
        "{err}"
    );
}

fn invalid(s: RolloutSpec) -> (String, String) {
    let e = s.validate().expect_err("invalid spec");
    (e.field().unwrap_or("").to_string(), e.to_string())
}

#[test]
fn validation_names_field_and_expectation() {
    assert_eq!(spec().validate(), Ok(()));
    let cases: Vec<(RolloutSpec, &str, &str)> = vec![
        (
            RolloutSpec {
                service: String::new(),
                ..spec()
            },
            "service",
            "expected a service name",
        ),
        (
            RolloutSpec {
                selector: "zone in (a".into(),
                ..spec()
            },
            "selector",
            "label selector",
        ),
        (
            RolloutSpec {
                target: crate::rollout::Release::new("v2", "ABC"),
                ..spec()
            },
            "target.digest",
            "64 lowercase hex",
        ),
        (
            RolloutSpec {
                batches: vec![],
                ..spec()
            },
            "batches",
            "list of batch sizes",
        ),
        (
            RolloutSpec {
                batches: vec![Amount::Count(1), Amount::Count(0)],
                ..spec()
            },
            "batches[1]",
            "at least 1",
        ),
        (
            RolloutSpec {
                batches: vec![Amount::Percent(150)],
                ..spec()
            },
            "batches[0]",
            "0% to 100%",
        ),
        (
            RolloutSpec {
                min_healthy: Amount::Percent(101),
                ..spec()
            },
            "min_healthy",
            "got \"101%\"",
        ),
        (
            RolloutSpec {
                max_unavailable: Some(Amount::Count(0)),
                ..spec()
            },
            "max_unavailable",
            "at least 1",
        ),
        (
            RolloutSpec {
                step_timeout: Duration::ZERO,
                ..spec()
            },
            "step_timeout",
            "positive",
        ),
        (
            RolloutSpec {
                min_healthy_time: Duration::from_secs(600),
                ..spec()
            },
            "min_healthy_time",
            "at most healthy_deadline (5m)",
        ),
        (
            RolloutSpec {
                progress_deadline: Duration::from_secs(60),
                ..spec()
            },
            "progress_deadline",
            "more than healthy_deadline + step_timeout (7m)",
        ),
        (
            RolloutSpec {
                spread_by: Some(Spread {
                    label: "zone".into(),
                    max_unavailable: 0,
                }),
                ..spec()
            },
            "spread_by.max_unavailable",
            "at least 1",
        ),
    ];
    for (s, field, text) in cases {
        let (f, msg) = invalid(s);
        assert_eq!(f, field, "{msg}");
        assert!(msg.starts_with(&format!("{field}: expected")), "{msg}");
        assert!(msg.contains(text), "{msg:?} lacks {text:?}");
    }
}
