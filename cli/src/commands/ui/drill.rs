//! The drill pages: every drill, failover and fail-back with its recovery
//! time against the RTO, and one drill with its after-action report, the
//! same report `drover drill report` prints (rendered there, shown here).

use drover_proto::v1::Drill;

use super::html::Html;
use crate::commands::drill_run::{report_md, secs, summary};
use crate::output::relative;

fn terminal(phase: &str) -> bool {
    matches!(phase, "succeeded" | "failed" | "aborted")
}

fn recovery_ms(d: &Drill) -> Option<i64> {
    (d.serving_ms > 0 && d.switch_started_ms > 0).then(|| d.serving_ms - d.switch_started_ms)
}

/// `/drills`: newest first, as the coordinator lists them.
pub fn drills_page(drills: &[Drill], now_ms: i64) -> Html {
    let mut h = Html::new();
    h.elem("h1", &[], "Drills");
    if drills.is_empty() {
        h.elem(
            "p",
            &[("class", "empty")],
            "No drill yet: `drover drill run -f dr.toml` runs one.",
        );
        return h;
    }
    h.open("table", &[("class", "drills")]).header(&[
        "Drill", "Kind", "Service", "Mode", "Phase", "Started", "Recovery", "RTO",
    ]);
    for d in drills {
        let recovery = recovery_ms(d);
        let met = match recovery {
            Some(ms) if ms <= d.rto_ms => "met",
            Some(_) => "missed",
            None => "",
        };
        let href = format!("/drills/{}", super::urlencode(&d.id));
        h.open(
            "tr",
            &[
                ("class", "drill"),
                ("data-drill", &d.id),
                ("data-phase", &d.phase),
                (
                    "data-recovery-ms",
                    &recovery.map(|ms| ms.to_string()).unwrap_or_default(),
                ),
                ("data-rto-ms", &d.rto_ms.to_string()),
                ("data-rto", met),
            ],
        )
        .open("td", &[])
        .elem("a", &[("href", &href)], &d.id)
        .close("td")
        .elem("td", &[], &d.kind)
        .elem("td", &[], &d.service)
        .elem("td", &[], &d.mode)
        .open("td", &[])
        .elem(
            "span",
            &[("class", &format!("badge p-{}", d.phase))],
            &d.phase,
        )
        .close("td")
        .elem("td", &[], &relative(now_ms, d.started_ms))
        .elem(
            "td",
            &[("class", &format!("rto-{met}"))],
            &recovery.map_or_else(|| "-".to_string(), secs),
        )
        .elem("td", &[], &secs(d.rto_ms))
        .close("tr");
    }
    h.close("table");
    h
}

/// `/drills/ID`: the summary line and the report, followed live while
/// the drill runs.
pub fn drill_page(d: &Drill) -> Html {
    let mut h = Html::new();
    h.elem("h1", &[], &format!("{} {} of {}", d.kind, d.id, d.service));
    let live = if terminal(&d.phase) {
        String::new()
    } else {
        format!("/drills/{}/events", super::urlencode(&d.id))
    };
    h.open("section", &[("id", "live"), ("data-live", &live)])
        .append(drill_live(d))
        .close("section");
    h
}

pub fn drill_live(d: &Drill) -> Html {
    let mut h = Html::new();
    h.open(
        "div",
        &[
            ("id", "drill"),
            ("data-drill", &d.id),
            ("data-phase", &d.phase),
            (
                "data-recovery-ms",
                &recovery_ms(d).map(|ms| ms.to_string()).unwrap_or_default(),
            ),
        ],
    )
    .open("p", &[("class", "summary")])
    .elem(
        "span",
        &[("class", &format!("badge p-{}", d.phase))],
        &d.phase,
    )
    .text(" ")
    .text(&summary(d))
    .close("p")
    .elem("h2", &[], "Report")
    .elem("pre", &[("class", "report")], &report_md(d, None))
    .close("div");
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drills_show_recovery_against_the_rto_and_the_report_escaped() {
        let d = Drill {
            id: "dr-3".into(),
            kind: "drill".into(),
            service: "web".into(),
            phase: "succeeded".into(),
            switch_started_ms: 1_000,
            serving_ms: 4_500,
            rto_ms: 60_000,
            reason: "<img src=x onerror=alert(1)>".into(),
            ..Drill::default()
        };
        let list = drills_page(std::slice::from_ref(&d), 10_000).into_string();
        assert!(
            list.contains("data-recovery-ms=\"3500\" data-rto-ms=\"60000\" data-rto=\"met\""),
            "{list}"
        );
        let page = drill_page(&d).into_string();
        assert!(page.contains("recovery time 3.5 s"), "{page}");
        assert!(page.contains("&lt;img src=x"), "{page}");
        assert!(!page.contains("<img"), "{page}");
        assert!(page.contains("data-live=\"\""), "{page}");
    }
}
