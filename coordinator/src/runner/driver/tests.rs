//! The driver without a runtime: what it feeds the engine, and what it asks
//! the runtime to store, send and show.

use std::collections::BTreeMap;
use std::time::Duration;

use super::*;
use crate::rollout::{Amount, InstanceInfo, RolloutSpec, Step, parse_batches};

fn v(version: &str) -> Release {
    Release::new(version, std::iter::repeat_n('a', 64).collect::<String>())
}

/// `web@h1`..`web@hN`, one per host, healthy on v1.
fn infos(n: usize) -> Vec<InstanceInfo> {
    (1..=n)
        .map(|k| InstanceInfo {
            id: format!("web@h{k}"),
            host: format!("h{k}"),
            labels: BTreeMap::new(),
            release: Some(v("v1")),
            healthy: true,
            in_service: true,
            reachable: true,
            balancers: Vec::new(),
            color: None,
        })
        .collect()
}

fn spec(min_healthy: u32) -> RolloutSpec {
    RolloutSpec {
        service: "web".to_string(),
        selector: String::new(),
        target: v("v2"),
        batches: parse_batches("1").expect("batches"),
        min_healthy: Amount::Count(min_healthy),
        ..RolloutSpec::default()
    }
}

fn driver(n: usize, min_healthy: u32) -> Driver {
    let (engine, opening) =
        Engine::start("web-1", spec(min_healthy), infos(n), Millis(0)).expect("start");
    let hosts = (1..=n).map(|k| format!("h{k}"));
    Driver::new(engine, opening, 0, hosts, None, Millis(0))
}

fn seen(healthy: bool, drained: bool, lb_routes: bool, version: &str) -> Observed {
    Observed {
        healthy,
        running: true,
        drained,
        lb_routes,
        release: Some(v(version)),
    }
}

fn view(host: &str, connected: bool, seen: Observed) -> Event {
    Event::Host(HostView {
        host: host.to_string(),
        connected,
        instances: vec![InstanceView {
            id: format!("web@{host}"),
            seen,
            traffic: None,
        }],
    })
}

fn result(from: &str, id: &CommandId, outcome: CommandOutcome) -> Event {
    Event::Update {
        from: from.to_string(),
        update: AgentUpdate {
            id: id.clone(),
            kind: UpdateKind::Result(outcome),
        },
    }
}

fn progress(from: &str, id: &CommandId, text: &str) -> Event {
    Event::Update {
        from: from.to_string(),
        update: AgentUpdate {
            id: id.clone(),
            kind: UpdateKind::Progress(text.to_string()),
        },
    }
}

fn health_inputs(p: &Pass) -> Vec<&str> {
    (p.fed.iter())
        .filter_map(|i| match i {
            Input::Health { instance, .. } => Some(instance.as_str()),
            _ => None,
        })
        .collect()
}

#[test]
fn the_opening_pass_stores_before_it_sends() {
    let mut d = driver(3, 2);
    let p = d.pass(Millis(0));
    assert!(!p.writes.is_empty(), "the opening state is stored");
    assert_eq!(p.sends.len(), 1, "one instance stages first: {:?}", p.sends);
    assert!(matches!(p.sends[0].kind, CommandKind::Stage { .. }));
    assert!(p.publish, "the first status is published");
    let keys: Vec<&str> = p.writes.iter().map(|(k, _)| k.as_str()).collect();
    assert!(
        keys.iter().any(|k| k.starts_with(EVENTS)),
        "events are stored with the state: {keys:?}"
    );
}

#[test]
fn a_report_that_says_the_same_again_is_not_fed_to_the_engine() {
    let mut d = driver(3, 2);
    d.pass(Millis(0));
    d.push(view("h2", true, seen(true, false, true, "v1")));
    assert_eq!(health_inputs(&d.pass(Millis(10))), ["web@h2"]);
    d.push(view("h2", true, seen(true, false, true, "v1")));
    assert!(health_inputs(&d.pass(Millis(20))).is_empty());
    d.push(view("h2", true, seen(false, false, true, "v1")));
    assert_eq!(health_inputs(&d.pass(Millis(30))), ["web@h2"]);
}

#[test]
fn a_result_lets_the_next_report_through_even_when_it_says_the_same() {
    let mut d = driver(3, 2);
    let first = d.pass(Millis(0)).sends.remove(0);
    let host = first.host.clone();
    d.push(view(&host, true, seen(true, true, true, "v1")));
    d.pass(Millis(10));
    d.push(result(&host, &first.id, CommandOutcome::Ok));
    let p = d.pass(Millis(20));
    assert!(
        p.fed
            .iter()
            .any(|i| matches!(i, Input::CommandResult { .. }))
    );
    d.push(view(&host, true, seen(true, true, true, "v1")));
    assert_eq!(
        health_inputs(&d.pass(Millis(30))),
        [first.instance.as_str()]
    );
}

#[test]
fn a_host_that_drops_is_lost_and_asked_again_when_back() {
    let mut d = driver(3, 2);
    let first = d.pass(Millis(0)).sends.remove(0);
    d.push(view(&first.host, false, seen(true, false, true, "v1")));
    let p = d.pass(Millis(10));
    assert!(p.fed.contains(&Input::HostLost {
        host: first.host.clone()
    }));
    d.push(view(&first.host, true, seen(true, false, true, "v1")));
    let p = d.pass(Millis(20));
    assert!(p.fed.contains(&Input::HostBack {
        host: first.host.clone()
    }));
    assert_eq!(
        p.sends.iter().map(|s| &s.id).collect::<Vec<_>>(),
        [&first.id],
        "the step in flight is asked again, same id"
    );
}

#[test]
fn a_new_session_asks_again_for_what_was_in_flight() {
    let mut d = driver(3, 2);
    let first = d.pass(Millis(0)).sends.remove(0);
    d.push(Event::Connected {
        host: first.host.clone(),
    });
    let p = d.pass(Millis(10));
    assert!(p.fed.contains(&Input::HostBack {
        host: first.host.clone()
    }));
    assert_eq!(p.sends.len(), 1);
    assert_eq!(p.sends[0].id, first.id);
}

#[test]
fn only_the_host_that_runs_the_instance_may_answer_for_it() {
    let mut d = driver(3, 2);
    let first = d.pass(Millis(0)).sends.remove(0);
    let other = if first.host == "h1" { "h2" } else { "h1" };
    d.push(result(other, &first.id, CommandOutcome::Ok));
    let p = d.pass(Millis(10));
    assert_eq!(p.ignored, 1, "counted");
    assert!(
        !p.fed
            .iter()
            .any(|i| matches!(i, Input::CommandResult { .. })),
        "not fed: {:?}",
        p.fed
    );
    assert_eq!(d.engine().state().instances[0].step, Step::Staging);
}

#[test]
fn progress_is_kept_only_for_steps_in_flight_of_this_rollout() {
    let mut d = driver(3, 2);
    let first = d.pass(Millis(0)).sends.remove(0);
    let foreign = CommandId::new("web-9", &first.instance, Step::Draining, 1);
    let idle = CommandId::new("web-1", "web@h3", Step::Draining, 1);
    let unknown = CommandId::new("web-1", "ghost@h9", Step::Draining, 1);
    d.push(progress(&first.host, &first.id, "waiting for 3 sessions"));
    d.push(progress(&first.host, &foreign, "x"));
    d.push(progress("h3", &idle, "x"));
    d.push(progress("h9", &unknown, "x"));
    d.pass(Millis(10));
    assert_eq!(
        d.progress().keys().collect::<Vec<_>>(),
        [&first.instance],
        "{:?}",
        d.progress()
    );
    d.push(result(&first.host, &first.id, CommandOutcome::Ok));
    d.pass(Millis(20));
    assert!(d.progress().is_empty());
}

#[test]
fn progress_of_a_step_that_timed_out_is_not_shown_any_longer() {
    let mut d = driver(3, 2);
    let first = d.pass(Millis(0)).sends.remove(0);
    d.push(progress(&first.host, &first.id, "draining"));
    d.pass(Millis(10));
    assert_eq!(d.progress().len(), 1);
    let late = Millis(0).plus(first.timeout).plus(Duration::from_millis(1));
    d.push(Event::Tick);
    d.pass(late);
    assert!(d.progress().is_empty(), "{:?}", d.progress());
}

#[test]
fn capacity_counts_an_instance_only_when_its_load_balancer_routes_to_it() {
    // Three instances, floor 2: one may go down while the other two serve.
    let mut d = driver(3, 2);
    let first = d.pass(Millis(0)).sends.remove(0);
    d.push(result(&first.host, &first.id, CommandOutcome::Ok));
    d.pass(Millis(10));
    // Another instance restarted on its own: its agent says healthy, its
    // load balancer does not route to it yet.
    let other = if first.host == "h2" { "h3" } else { "h2" };
    d.push(view(other, true, seen(true, false, false, "v1")));
    d.pass(Millis(20));
    let status = d.status();
    assert_eq!(status.capacity, 1, "{status:?}");
    d.push(view(other, true, seen(true, false, true, "v1")));
    d.pass(Millis(30));
    assert_eq!(d.status().capacity, 2);
}

#[test]
fn a_hosts_absence_after_a_restore_counts_only_after_the_lost_timeout() {
    let (engine, opening) = Engine::start("web-1", spec(2), infos(3), Millis(0)).expect("start");
    let state = engine.state().clone();
    drop((engine, opening));
    let (engine, opening) = Engine::restore(state, Millis(1_000));
    let lost = Duration::from_secs(30);
    let mut d = Driver::new(
        engine,
        opening,
        0,
        ["h1".to_string()],
        Some(lost),
        Millis(1_000),
    );
    let p = d.pass(Millis(2_000));
    assert!(!p.fed.iter().any(|i| matches!(i, Input::HostLost { .. })));
    d.push(Event::Connected {
        host: "h2".to_string(),
    });
    d.pass(Millis(3_000));
    assert_eq!(d.next_deadline().map(|m| m.0 <= 31_000), Some(true));
    let p = d.pass(Millis(31_000));
    let lost: Vec<&Input> = (p.fed.iter())
        .filter(|i| matches!(i, Input::HostLost { .. }))
        .collect();
    assert_eq!(
        lost,
        [&Input::HostLost {
            host: "h3".to_string()
        }]
    );
}

#[test]
fn a_command_that_found_the_session_full_is_asked_again() {
    let mut d = driver(3, 2);
    let first = d.pass(Millis(0)).sends.remove(0);
    d.push(Event::Undelivered {
        host: first.host.clone(),
    });
    assert!(d.pass(Millis(10)).sends.is_empty());
    let at = Millis(0).plus(REASK_AFTER);
    assert!(d.next_deadline().is_some_and(|t| t <= at));
    let p = d.pass(at);
    assert_eq!(p.sends.len(), 1);
    assert_eq!(p.sends[0].id, first.id);
}

#[test]
fn status_is_published_at_most_every_so_often_but_at_once_for_an_action() {
    let mut d = driver(3, 2);
    assert!(d.pass(Millis(0)).publish);
    d.push(view("h3", true, seen(false, false, true, "v1")));
    assert!(!d.pass(Millis(5)).publish, "throttled");
    assert_eq!(d.next_wake(Millis(5)), Millis(0).plus(PUBLISH_EVERY));
    d.push(Event::Operator(OperatorAction::Pause));
    let p = d.pass(Millis(6));
    assert!(p.publish && p.acted == 1);
}

#[test]
fn a_halted_rollout_does_nothing_more() {
    let mut d = driver(3, 2);
    d.pass(Millis(0));
    d.halt("the store refused the rollout's state".to_string());
    assert!(d.is_done());
    d.push(Event::Connected {
        host: "h1".to_string(),
    });
    let p = d.pass(Millis(10));
    assert!(p.sends.is_empty() && p.writes.is_empty());
}

#[test]
fn a_deadline_that_passed_is_acted_on_even_when_nothing_new_came() {
    let mut d = driver(3, 2);
    let first = d.pass(Millis(0)).sends.remove(0);
    d.push(view(&first.host, true, seen(true, false, true, "v1")));
    d.pass(Millis(10));
    // The same report again, after the step's deadline: nothing new to
    // feed, but the step has timed out.
    let late = Millis(0).plus(first.timeout).plus(Duration::from_millis(1));
    d.push(view(&first.host, true, seen(true, false, true, "v1")));
    let p = d.pass(late);
    assert!(p.fed.contains(&Input::Tick), "{:?}", p.fed);
    assert_eq!(d.engine().state().instances[0].step, Step::Failed);
}
