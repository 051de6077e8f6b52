//! Blue-green: every host runs a pair of instances of the service, one
//! blue and one green. The color that serves is the active one; the other,
//! idle, gets the new release, then the traffic, step by step, while the
//! old color stays up for an instant rollback.
//!
//! This module holds what a blue-green rollout is checked against before
//! it starts: the pairs and which color is active. The coordinator does not
//! run blue-green rollouts yet (`Engine::start` refuses them after these
//! checks); see the README's Blue-green section.

use std::collections::BTreeMap;

use drover_model::Color;

use super::engine::PlanError;
use super::model::InstanceInfo;

/// The pairs of a blue-green rollout and which color serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColorPlan {
    /// The color that takes the traffic now; the other gets the release.
    pub active: Color,
    /// Instances of the active color, then of the idle one, by host.
    pub active_ids: Vec<String>,
    pub idle_ids: Vec<String>,
}

fn refuse(why: String) -> PlanError {
    PlanError::BlueGreen { why }
}

/// Checks the pairs and picks the active color: the one that serves. When
/// both serve (a first release deployed with `--initial`), blue stays
/// active and green becomes idle; when neither serves there is nothing to
/// switch from.
pub fn plan_colors(instances: &[InstanceInfo]) -> Result<ColorPlan, PlanError> {
    let mut by_host: BTreeMap<&str, Vec<&InstanceInfo>> = BTreeMap::new();
    for i in instances {
        if i.color.is_none() {
            return Err(refuse(format!(
                "{} has no color: give each instance of the service `color = \"blue\"` or \
                 `color = \"green\"` in its agent.toml (one of each per host)",
                i.id
            )));
        }
        by_host.entry(i.host.as_str()).or_default().push(i);
    }
    for (host, pair) in &by_host {
        let blue = pair.iter().filter(|i| i.color == Some(Color::Blue)).count();
        let green = pair.len() - blue;
        if (blue, green) != (1, 1) {
            return Err(refuse(format!(
                "host {host} has {blue} blue and {green} green instance(s) of the service; \
                 blue-green needs exactly one of each on every host"
            )));
        }
    }
    let serving = |c: Color| -> Vec<&InstanceInfo> {
        (instances.iter())
            .filter(|i| i.color == Some(c) && i.healthy && i.in_service && i.reachable)
            .collect()
    };
    let (blue, green) = (serving(Color::Blue), serving(Color::Green));
    let active = match (blue.is_empty(), green.is_empty()) {
        (true, true) => {
            return Err(refuse(
                "neither color serves: deploy the first release with a rolling update \
                 (`drover rollout start --initial`), then switch colors with blue-green"
                    .to_string(),
            ));
        }
        (false, true) => Color::Blue,
        (true, false) => Color::Green,
        // Both serve: the more complete color stays; blue on a tie.
        (false, false) if green.len() > blue.len() => Color::Green,
        (false, false) => Color::Blue,
    };
    let ids = |c: Color| -> Vec<String> {
        (by_host.values())
            .flat_map(|pair| pair.iter().filter(|i| i.color == Some(c)))
            .map(|i| i.id.clone())
            .collect()
    };
    Ok(ColorPlan {
        active,
        active_ids: ids(active),
        idle_ids: ids(active.other()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(host: &str, color: Option<Color>, serving: bool) -> InstanceInfo {
        let name = color.map_or("web", |c| c.as_str());
        InstanceInfo {
            id: format!("web-{name}@{host}"),
            host: host.to_string(),
            labels: Default::default(),
            release: None,
            healthy: serving,
            in_service: serving,
            reachable: true,
            balancers: Vec::new(),
            color,
        }
    }

    const B: Option<Color> = Some(Color::Blue);
    const G: Option<Color> = Some(Color::Green);

    #[test]
    fn the_serving_color_is_active_and_the_other_gets_the_release() {
        let fleet = [
            inst("h1", B, false),
            inst("h1", G, true),
            inst("h2", G, true),
            inst("h2", B, false),
        ];
        let plan = plan_colors(&fleet).expect("pairs");
        assert_eq!(plan.active, Color::Green);
        assert_eq!(plan.idle_ids, ["web-blue@h1", "web-blue@h2"]);
        assert_eq!(plan.active_ids, ["web-green@h1", "web-green@h2"]);
        // A first release deployed everywhere: blue stays, green switches.
        let both = [
            inst("h1", B, true),
            inst("h1", G, true),
            inst("h2", B, true),
            inst("h2", G, true),
        ];
        assert_eq!(plan_colors(&both).expect("pairs").active, Color::Blue);
    }

    #[test]
    fn pairs_and_a_serving_color_are_required_and_named() {
        let cases: [(Vec<InstanceInfo>, &str); 3] = [
            (
                vec![inst("h1", B, true), inst("h1", None, false)],
                "web-web@h1 has no color",
            ),
            (
                vec![inst("h1", B, true), inst("h1", B, false)],
                "host h1 has 2 blue and 0 green",
            ),
            (
                vec![inst("h1", B, false), inst("h1", G, false)],
                "neither color serves",
            ),
        ];
        for (fleet, want) in cases {
            let e = plan_colors(&fleet).expect_err(want).to_string();
            assert!(e.contains(want), "{e}");
        }
    }
}
