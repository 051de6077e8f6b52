//! Blue-green's pre-traffic hooks: the coordinator runs the command its own
//! config names, against the idle color, and the exit code decides.
//!
//! The hook gets what it needs to find the idle color in its environment:
//!
//! - `DROVER_ROLLOUT`, `DROVER_SERVICE`: the rollout and its service;
//! - `DROVER_RELEASE`, `DROVER_DIGEST`: the release the idle color now
//!   runs (version, and its artifact's sha256);
//! - `DROVER_COLOR`: the idle color (`blue` or `green`);
//! - `DROVER_INSTANCES`: its instances (`web-green@h1 web-green@h2`);
//! - `DROVER_HOSTS`: their hosts, in the same order.
//!
//! It runs without a shell, with no stdin, killed at its timeout. What it
//! printed last (on stderr, else stdout) goes into the rollout's events.

use drover_model::Color;
use std::collections::BTreeMap;

use crate::config::HookConfig;
use crate::rollout::{PlanError, Release, RolloutSpec};

/// The hooks of the coordinator's config, by name.
pub type Hooks = BTreeMap<String, HookConfig>;

/// Refuses a spec that names a hook the coordinator's config lacks.
pub fn check(spec: &RolloutSpec, hooks: &Hooks) -> Result<(), PlanError> {
    match &spec.pre_traffic_hook {
        Some(name) if !hooks.contains_key(name) => Err(PlanError::UnknownHook {
            name: name.clone(),
            known: hooks.keys().cloned().collect(),
        }),
        _ => Ok(()),
    }
}

/// One run the engine asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookRun {
    pub name: String,
    pub attempt: u32,
    pub color: Color,
    pub instances: Vec<String>,
    pub release: Release,
}

/// Runs `run` to its end; `(ok, what happened)`. Never panics and never
/// outlives the hook's timeout by more than the kill.
pub async fn run(rollout: &str, service: &str, run: &HookRun, hooks: &Hooks) -> (bool, String) {
    let Some(hook) = hooks.get(&run.name) else {
        return (
            false,
            format!(
                "no [pre_traffic_hooks.{}] in this coordinator's config",
                run.name
            ),
        );
    };
    let Some((program, args)) = hook.command.split_first() else {
        return (false, "the hook has an empty command".to_string());
    };
    let hosts: Vec<&str> = (run.instances.iter())
        .map(|i| i.rsplit_once('@').map_or(i.as_str(), |(_, h)| h))
        .collect();
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .env("DROVER_ROLLOUT", rollout)
        .env("DROVER_SERVICE", service)
        .env("DROVER_RELEASE", &run.release.version)
        .env("DROVER_DIGEST", &run.release.digest)
        .env("DROVER_COLOR", run.color.as_str())
        .env("DROVER_INSTANCES", run.instances.join(" "))
        .env("DROVER_HOSTS", hosts.join(" "));
    let ran = crate::exec::run(cmd, program, hook.timeout).await;
    (ran.ok, ran.detail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn hooks(command: &[&str], timeout: Duration) -> Hooks {
        let h = HookConfig {
            command: command.iter().map(|s| s.to_string()).collect(),
            timeout,
        };
        [("smoke".to_string(), h)].into_iter().collect()
    }

    fn smoke() -> HookRun {
        HookRun {
            name: "smoke".into(),
            attempt: 1,
            color: Color::Green,
            instances: vec!["web-green@h1".into(), "web-green@h2".into()],
            release: Release::new("2.0", "ab".repeat(32)),
        }
    }

    #[tokio::test]
    async fn the_exit_code_decides_and_the_hook_sees_the_idle_color() {
        let script = "test \"$DROVER_COLOR\" = green && test \"$DROVER_HOSTS\" = 'h1 h2' \
                      && echo checked $DROVER_INSTANCES";
        let ok = hooks(&["sh", "-c", script], Duration::from_secs(10));
        let (passed, detail) = run("web-1", "web", &smoke(), &ok).await;
        assert!(passed, "{detail}");
        assert!(
            detail.contains("checked web-green@h1 web-green@h2"),
            "{detail}"
        );

        let failing = hooks(
            &["sh", "-c", "echo 3 checks failed >&2; exit 3"],
            Duration::from_secs(10),
        );
        let (passed, detail) = run("web-1", "web", &smoke(), &failing).await;
        assert!(!passed);
        assert!(
            detail.starts_with("exit 3") && detail.contains("3 checks failed"),
            "{detail}"
        );
    }

    #[tokio::test]
    async fn a_hook_that_hangs_is_killed_at_its_timeout_and_a_missing_one_fails() {
        let slow = hooks(&["sleep", "30"], Duration::from_millis(200));
        let (passed, detail) = run("web-1", "web", &smoke(), &slow).await;
        assert!(!passed);
        assert!(detail.contains("timed out after 200ms"), "{detail}");

        let missing = hooks(&["/nonexistent/smoke"], Duration::from_secs(1));
        let (passed, detail) = run("web-1", "web", &smoke(), &missing).await;
        assert!(!passed);
        assert!(detail.contains("cannot run /nonexistent/smoke"), "{detail}");

        let spec = RolloutSpec {
            pre_traffic_hook: Some("smok".into()),
            ..RolloutSpec::default()
        };
        let e = check(&spec, &slow).expect_err("unknown").to_string();
        assert!(e.contains("smok") && e.contains("smoke"), "{e}");
    }
}
