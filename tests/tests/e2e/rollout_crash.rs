//! Rollouts that lose a process on the way (issue 3, done-when 4 and 5):
//! the coordinator SIGKILLed mid-rollout and restarted, an agent SIGKILLed
//! mid-deploy and restarted (deadlines: rollout_deadline.rs). What is checked is what the
//! operator relies on: the rollout resumes or ends with a reason, no agent
//! runs a step twice (from the agents' own `executions.log`), an instance
//! is always on exactly one complete release, and nothing hangs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use drover_tests::harness::release::{Entry, tar, write_artifact};
use drover_tests::harness::rollout::SERVICE;
use drover_tests::{Agent, CapacitySampler, Load, LoadSpec, WAIT, WebFleet, free_port};

/// The capacity sampler's period and bound (a minute of samples).
const SAMPLE_EVERY: Duration = Duration::from_millis(50);
const MAX_SAMPLES: u64 = 1_200;
/// A rollout's whole run after the disruption, at most.
const FINISH: Duration = Duration::from_secs(45);
/// Every step of a forward chain, in order, as command ids name them.
const VERBS: [&str; 7] = [
    "stage", "drain", "stop", "deploy", "start", "verify", "undrain",
];

/// What an agent's journal dir says: every run it started
/// (`executions.log`) and every id's record (`journal.jsonl`).
#[derive(Debug, Default)]
struct AgentJournal {
    executions: Vec<String>,
    /// id -> its outcome's phase once finished.
    records: BTreeMap<String, Option<String>>,
}

impl AgentJournal {
    fn read(agent: &Agent) -> AgentJournal {
        let dir = agent.data_dir.join("journal");
        let executions = std::fs::read_to_string(dir.join("executions.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.strip_prefix("executed ").map(str::to_string))
            .collect();
        let mut records: BTreeMap<String, Option<String>> = BTreeMap::new();
        let text = std::fs::read_to_string(dir.join("journal.jsonl")).unwrap_or_default();
        for line in text.lines() {
            // A line torn by a kill is skipped, as the agent does.
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let field = |k: &str| v[k].as_str().unwrap_or_default().to_string();
            let id = field("id");
            match v["event"].as_str() {
                Some("started") => {
                    records.entry(id).or_insert(None);
                }
                Some("finished") => {
                    if let Some(phase) = records.get_mut(&id) {
                        phase.get_or_insert(field("phase"));
                    }
                }
                // An unfinished run the restarted agent dropped, so that
                // the same id may run again.
                Some("stage")
                    if field("stage") == "forgotten"
                        && records.get(&id).is_some_and(Option::is_none) =>
                {
                    records.remove(&id);
                }
                _ => {}
            }
        }
        AgentJournal {
            executions,
            records,
        }
    }

    /// Ids started and not finished.
    fn unfinished(&self) -> BTreeSet<String> {
        (self.records.iter())
            .filter(|(_, phase)| phase.is_none())
            .map(|(id, _)| id.clone())
            .collect()
    }

    fn phase(&self, id: &str) -> Option<&str> {
        self.records.get(id).and_then(|p| p.as_deref())
    }

    /// How often `id` was run.
    fn runs(&self, id: &str) -> usize {
        self.executions.iter().filter(|e| *e == id).count()
    }

    /// Ids run more than once, with their count.
    fn repeated(&self) -> BTreeMap<String, usize> {
        let mut n: BTreeMap<String, usize> = BTreeMap::new();
        for id in &self.executions {
            *n.entry(id.clone()).or_default() += 1;
        }
        n.retain(|_, c| *c > 1);
        n
    }
}

/// Every agent's journal, by host, for checks and messages.
fn journals(web: &WebFleet) -> BTreeMap<String, AgentJournal> {
    web.hosts()
        .into_iter()
        .map(|h| {
            let j = AgentJournal::read(web.fleet.agent(&h));
            (h, j)
        })
        .collect()
}

fn describe_journals(js: &BTreeMap<String, AgentJournal>) -> String {
    let mut out = String::from("--- agents' executions.log:\n");
    for (h, j) in js {
        out.push_str(&format!("    {h}: {:?}\n", j.executions));
    }
    out
}

/// `<rollout>/web@<host>/<verb>/<attempt>`.
fn command_id(rollout: &str, host: &str, verb: &str, attempt: u32) -> String {
    format!("{rollout}/{SERVICE}@{host}/{verb}/{attempt}")
}

/// A gRPC and an HTTP port for a coordinator that must come back where the
/// agents and the CLI look for it.
fn fixed_ports(c: &mut drover_tests::CoordinatorSpec) {
    c.grpc_port = free_port();
    c.http_port = loop {
        let p = free_port();
        if p != c.grpc_port {
            break p;
        }
    };
}

#[test]
fn coordinator_killed_mid_rollout_resumes_and_no_step_runs_twice() {
    let mut web = WebFleet::builder()
        .hosts(4)
        .coordinator(fixed_ports)
        .start();
    web.deploy_initial("v1");
    // v2 listens a second late and must then stay healthy for 2 s: each
    // chain spends about 3 s in `starting` / `verifying`, the window the
    // coordinator dies in.
    web.push_release("v2", &["--start-delay", "1s"]);
    let grpc = web.fleet.coordinator.grpc_addr();

    let sampler = CapacitySampler::start(web.haproxy.socket(), SERVICE, SAMPLE_EVERY, MAX_SAMPLES);
    let load = Load::start(&web.haproxy.frontend_addr(), LoadSpec::default());
    web.fleet
        .wait(WAIT, "load flows through HAProxy", || load.counts().1 >= 30);

    // Two at a time with a floor of 2 of 4: capacity sits exactly on the
    // floor while a batch is out.
    let started = web.start_detached(
        "v2",
        &[
            "--batch",
            "2",
            "--min-healthy",
            "50%",
            "--min-healthy-time",
            "2s",
        ],
    );
    let id = started.id.clone();
    let before = web.wait_rollout(&id, "has an instance verifying", WAIT, |r| {
        r.instances.iter().any(|i| i.step == "verifying")
    });
    web.fleet.coordinator.kill();

    // What the agents were running when the coordinator died: they finish
    // it on their own, and the results have nowhere to go.
    let at_kill = journals(&web);
    let in_flight: BTreeMap<String, BTreeSet<String>> = at_kill
        .iter()
        .map(|(h, j)| (h.clone(), j.unfinished()))
        .filter(|(_, ids)| !ids.is_empty())
        .collect();
    assert!(
        !in_flight.is_empty(),
        "no command in flight on any agent when the coordinator was killed during:\n{}\n{}",
        before.timeline(),
        describe_journals(&at_kill)
    );
    web.fleet.wait(
        WAIT,
        "the agents finish the commands in flight while the coordinator is down",
        || {
            in_flight.iter().all(|(h, ids)| {
                let j = AgentJournal::read(web.fleet.agent(h));
                ids.iter().all(|id| j.phase(id).is_some())
            })
        },
    );

    web.fleet.coordinator.start();
    assert_eq!(web.fleet.coordinator.grpc_addr(), grpc, "fixed port moved");
    let rollout = web.wait_finished(&id, FINISH);
    let report = load.stop();
    let capacity = sampler.stop();
    let after = journals(&web);
    let diag = || {
        format!(
            "killed the coordinator with in flight {in_flight:?} during:\n{}\n{report}\n{capacity}\n{}\n{}{}",
            before.timeline(),
            rollout.timeline(),
            describe_journals(&after),
            web.diagnostics_for(&id)
        )
    };

    assert_eq!(rollout.phase, "succeeded", "{}", diag());
    assert_eq!(rollout.counts.done, 4, "{}", diag());
    for (iid, v) in rollout.versions() {
        assert_eq!(v.as_deref(), Some("v2"), "{iid}\n{}", diag());
    }
    web.wait_all_serving("v2");
    let resumed = rollout
        .events
        .iter()
        .find(|e| e.message.contains("resumed after a coordinator restart"))
        .unwrap_or_else(|| panic!("no event says the rollout resumed\n{}", diag()));
    assert!(
        !resumed.message.contains("for 0 in-flight"),
        "the restored rollout must ask again for what was in flight: {resumed}\n{}",
        diag()
    );

    // No step ran twice: every host ran each step of its chain exactly
    // once, the ones in flight at the crash included (answered from the
    // journal when asked again), and nothing else of this rollout.
    for (host, j) in &after {
        let repeated = j.repeated();
        assert!(
            repeated.is_empty(),
            "{host} ran steps more than once: {repeated:?}\n{}",
            diag()
        );
        let expected: Vec<String> = VERBS.iter().map(|v| command_id(&id, host, v, 1)).collect();
        let ran: Vec<&String> = (j.executions.iter())
            .filter(|e| e.starts_with(&format!("{id}/")))
            .collect();
        assert_eq!(
            ran,
            expected.iter().collect::<Vec<_>>(),
            "{host} must have run its chain once, in order\n{}",
            diag()
        );
        for cid in &expected {
            assert_eq!(j.phase(cid), Some("succeeded"), "{cid}\n{}", diag());
        }
    }
    for (host, ids) in &in_flight {
        for cid in ids {
            assert_eq!(after[host].runs(cid), 1, "{cid} on {host}\n{}", diag());
        }
    }

    // Users saw nothing of it, and the floor held in HAProxy too.
    assert_eq!(
        report.failed,
        0,
        "failed requests through HAProxy\n{}",
        diag()
    );
    assert!(
        report.ok >= 200,
        "too little load to mean anything\n{report}"
    );
    assert!(
        web.haproxy.failed_requests_logged(10).is_empty(),
        "HAProxy logged failed requests: {:#?}",
        web.haproxy.failed_requests_logged(10)
    );
    assert_eq!(rollout.floor, 2, "{}", diag());
    assert!(rollout.drains_under_floor().is_empty(), "{}", diag());
    assert!(capacity.errors.is_empty(), "{capacity}");
    assert!(
        capacity.min_capacity().is_some_and(|c| c >= 2),
        "HAProxy capacity went under the floor of 2\n{}",
        diag()
    );
}

/// Bytes in the padding file of [`big_release`]: enough that fetching
/// (sha256 checked) and unpacking (fsynced) take a while in a debug build.
const PAD_BYTES: usize = 24 * 1024 * 1024;
/// Hosts in the agent-kill test; each is a chance to catch a deploy.
const HOSTS: usize = 4;

/// A drover-sample release as a plain tar (the agent reads tar and
/// tar.gz by their magic bytes) with [`PAD_BYTES`] of pseudo-random
/// padding that no compression would shrink.
fn big_release(version: &str) -> Vec<u8> {
    let run = drover_tests::harness::release::run_script(version, &[]);
    let version_file = format!("{version}\n");
    let mut pad = Vec::with_capacity(PAD_BYTES);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    while pad.len() < PAD_BYTES {
        // xorshift64
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        pad.extend_from_slice(&x.to_le_bytes());
    }
    tar(&[
        Entry::Dir("./"),
        Entry::File("./VERSION", version_file.as_bytes()),
        Entry::Exec("./run", run.as_bytes()),
        Entry::File("./pad.bin", &pad),
    ])
}

/// Names in `dir` starting with `prefix`.
fn names_starting(dir: &Path, prefix: &str) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// The part of a deploy an agent is killed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DeployPart {
    /// Downloading into `<data_dir>/cache/<digest>.partial`.
    Fetch,
    /// Unpacking into `<deploy_dir>/releases/.tmp-*`.
    Unpack,
}

/// What `host`'s disk shows of its deploy of `digest`: the part it is in,
/// or an error once the deploy is over (too quick to catch).
fn deploy_in(
    web: &WebFleet,
    host: &str,
    digest: &str,
) -> Option<Result<(DeployPart, String), String>> {
    let releases = web.deploy_dir(host).join("releases");
    let tmp = names_starting(&releases, ".tmp-");
    if !tmp.is_empty() {
        let seen = format!("unpacking into releases/{}", tmp.join(", "));
        return Some(Ok((DeployPart::Unpack, seen)));
    }
    let partial = web
        .fleet
        .agent(host)
        .data_dir
        .join("cache")
        .join(format!("{digest}.partial"));
    // Some bytes in: the restarted agent resumes from an offset.
    if let Some(m) = std::fs::metadata(&partial).ok().filter(|m| m.len() > 0) {
        let seen = format!(
            "fetching ({} of {PAD_BYTES}+ bytes in cache/{digest}.partial)",
            m.len()
        );
        return Some(Ok((DeployPart::Fetch, seen)));
    }
    let done = web
        .current_link(host)
        .is_some_and(|l| l.ends_with(format!("v2-{}", &digest[..12])));
    done.then(|| Err(format!("web@{host}'s deploy finished before it was seen")))
}

/// A host's deploy dir and journal right after its agent was SIGKILLed.
#[derive(Debug)]
struct Killed {
    host: String,
    part: DeployPart,
    seen: String,
    releases: Vec<String>,
    current: Option<PathBuf>,
    unfinished: BTreeSet<String>,
}

/// Waits until `host`'s deploy of `digest` is under way, SIGKILLs the
/// agent (its instance is stopped already, by the chain), notes what it
/// left, and starts the agent again. `None` when the deploy finished
/// between two looks (a 24 MiB deploy on loopback is quick on an idle
/// machine); the caller tries the next host.
fn kill_mid_deploy(web: &mut WebFleet, host: &str, digest: &str) -> Option<Killed> {
    let (part, seen) =
        match web
            .fleet
            .wait(WAIT, &format!("web@{host}'s deploy is under way"), || {
                deploy_in(web, host, digest)
            }) {
            Ok(found) => found,
            Err(e) => {
                eprintln!("{e}; trying the next host");
                return None;
            }
        };
    web.fleet.agent_mut(host).kill();
    let killed = Killed {
        host: host.to_string(),
        part,
        seen,
        releases: web.releases_on_disk(host),
        current: web.current_link(host),
        unfinished: AgentJournal::read(web.fleet.agent(host)).unfinished(),
    };
    web.fleet.agent_mut(host).start();
    Some(killed)
}

#[test]
fn agent_killed_mid_deploy_ends_on_one_complete_release() {
    let mut web = WebFleet::builder().hosts(HOSTS).start();
    // The padded release is over the fleet's usual unpack limit: raise it
    // on every agent before anything is deployed (restarting an agent
    // without a release loses nothing).
    let grpc = web.fleet.coordinator.grpc_addr();
    let limit = format!(
        "max_unpacked_bytes = {}",
        drover_tests::harness::rollout::MAX_UNPACKED_BYTES
    );
    for host in web.hosts() {
        let peer = web
            .fleet
            .host(&host)
            .map(|h| h.peer_addr)
            .unwrap_or_default();
        let agent = web.fleet.agent_mut(&host);
        let instance = &mut agent.spec.instances[0];
        assert!(
            instance.extra_toml.contains(&limit),
            "{}",
            instance.extra_toml
        );
        instance.extra_toml = instance
            .extra_toml
            .replace(&limit, &format!("max_unpacked_bytes = {}", 4 * PAD_BYTES));
        agent.write_config(std::slice::from_ref(&grpc));
        agent.restart();
        web.fleet.wait(WAIT, &format!("{host} reconnects"), || {
            web.fleet
                .host(&host)
                .is_some_and(|h| h.connected() && h.peer_addr != peer)
        });
    }
    let v1 = web.deploy_initial("v1");
    let v1_dir = format!("v1-{}", &v1[..12]);
    let file = write_artifact(&web.artifacts_dir(), "web-v2.tar", &big_release("v2"));
    let digest = web.fleet.push_artifact(&file, SERVICE, "v2");
    let v2_dir = format!("v2-{}", &digest[..12]);

    // One at a time (floor 3 of 4): each host's agent is killed as soon as
    // its deploy is seen under way (downloading or unpacking), so that
    // usually every host is hit at a different point.
    let started = web.start_detached("v2", &["--min-healthy", "75%"]);
    let id = started.id.clone();
    let hosts = web.hosts();
    let kills: Vec<Killed> = hosts
        .iter()
        .filter_map(|h| kill_mid_deploy(&mut web, h, &digest))
        .collect();
    let rollout = web.wait_finished(&id, FINISH);
    let after = journals(&web);
    let diag = || {
        format!(
            "{kills:#?}\n{}\n{}{}",
            rollout.timeline(),
            describe_journals(&after),
            web.diagnostics_for(&id)
        )
    };

    // At least one kill landed inside a deploy (all of them almost
    // always); each before `current` moved, one during the unpack leaving
    // a half-unpacked dir behind.
    assert!(
        !kills.is_empty(),
        "every deploy finished before the test could kill its agent\n{}",
        diag()
    );
    for k in &kills {
        // The download and the unpack happen in the stage, before the
        // drain, since stage-before-drain.
        let stage_id = command_id(&id, &k.host, "stage", 1);
        assert!(
            k.unfinished.contains(&stage_id),
            "{stage_id} was not in flight when the agent was killed\n{}",
            diag()
        );
        assert_eq!(
            k.current,
            Some(Path::new("releases").join(&v1_dir)),
            "`current` of {} moved before its deploy was done\n{}",
            k.host,
            diag()
        );
    }
    for k in kills.iter().filter(|k| k.part == DeployPart::Unpack) {
        assert!(
            k.releases.iter().any(|n| n.starts_with(".tmp-")),
            "killing {}'s agent while {} left no half-unpacked dir to clean up\n{}",
            k.host,
            k.seen,
            diag()
        );
    }

    assert_eq!(rollout.phase, "succeeded", "{}", diag());
    assert_eq!(rollout.counts.done, HOSTS as u32, "{}", diag());
    for (iid, v) in rollout.versions() {
        assert_eq!(v.as_deref(), Some("v2"), "{iid}\n{}", diag());
    }
    web.wait_all_serving("v2");

    // Every instance is on exactly one complete release: `current` leads
    // to the v2 dir, whose release.json says so and whose files are whole,
    // and nothing half-unpacked or half-switched is left.
    for host in web.hosts() {
        let deploy_dir = web.deploy_dir(&host);
        assert_eq!(
            web.current_link(&host),
            Some(Path::new("releases").join(&v2_dir)),
            "{host}\n{}",
            diag()
        );
        let meta = std::fs::read_to_string(deploy_dir.join("current").join("release.json"))
            .unwrap_or_else(|e| panic!("{host}: current/release.json: {e}\n{}", diag()));
        let meta: serde_json::Value = serde_json::from_str(&meta)
            .unwrap_or_else(|e| panic!("{host}: current/release.json: {e}: {meta}\n{}", diag()));
        assert_eq!(meta["version"], "v2", "{host}: {meta}\n{}", diag());
        assert_eq!(
            meta["digest"],
            digest.as_str(),
            "{host}: {meta}\n{}",
            diag()
        );
        let pad = deploy_dir.join("current").join("pad.bin");
        assert_eq!(
            std::fs::metadata(&pad).map(|m| m.len()).ok(),
            Some(PAD_BYTES as u64),
            "{} is not whole\n{}",
            pad.display(),
            diag()
        );
        let on_disk = web.releases_on_disk(&host);
        assert_eq!(
            on_disk,
            vec![v1_dir.clone(), v2_dir.clone()],
            "{host}: releases/ must hold v1 and v2 and nothing else\n{}",
            diag()
        );
        for name in &on_disk {
            let file = deploy_dir.join("releases").join(name).join("release.json");
            assert!(
                file.is_file(),
                "{host}: releases/{name} is not a complete release\n{}",
                diag()
            );
        }
        assert!(
            names_starting(&deploy_dir, "current.tmp-").is_empty(),
            "{host}: a current.tmp-* symlink was left\n{}",
            diag()
        );
    }

    // No step ran twice, with the one exception the agent allows itself:
    // a stage killed mid-way is forgotten at restart and redone when the
    // coordinator asks again (same id), so it shows twice in
    // executions.log, the first run never finished.
    for (host, j) in &after {
        let mut repeated = j.repeated();
        if kills.iter().any(|k| &k.host == host) {
            let stage_id = command_id(&id, host, "stage", 1);
            let n = repeated.remove(&stage_id);
            assert!(
                n.is_none_or(|n| n == 2),
                "{stage_id} ran {n:?} times\n{}",
                diag()
            );
        }
        assert!(
            repeated.is_empty(),
            "{host} ran steps more than once: {repeated:?}\n{}",
            diag()
        );
        for verb in VERBS {
            let cid = command_id(&id, host, verb, 1);
            assert_eq!(j.phase(&cid), Some("succeeded"), "{cid}\n{}", diag());
        }
    }
}
