//! The canary judge's quality figures for BENCHMARKS.md ("Canary judge
//! quality"): false rollbacks with identical versions and canary requests
//! needed to catch a bad canary, next to a fixed-threshold rule like
//! Flagger's on the same simulated request streams.
//!
//! cargo run --release -p drover-analysis --example judge_quality -- [--seed N] [--analyses N] [--rate R]

use std::process::ExitCode;
use std::time::Instant;

use drover_analysis::Thresholds;
use drover_analysis::quality::{FixedRule, Scenario, Summary, run};

struct Args {
    seed: u64,
    analyses: u64,
    rate: f64,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        seed: 1,
        analyses: 10_000,
        rate: 100.0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match flag.as_str() {
            "--seed" => {
                let v = value("--seed")?;
                args.seed = v
                    .parse()
                    .map_err(|_| format!("--seed {v:?}: expected a whole number"))?;
            }
            "--analyses" => {
                let v = value("--analyses")?;
                args.analyses = v
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| format!("--analyses {v:?}: expected a whole number > 0"))?;
            }
            "--rate" => {
                let v = value("--rate")?;
                args.rate = v
                    .parse()
                    .ok()
                    .filter(|r: &f64| r.is_finite() && *r > 0.0)
                    .ok_or_else(|| format!("--rate {v:?}: expected requests per second > 0"))?;
            }
            "-h" | "--help" => {
                return Err(
                    "usage: judge_quality [--seed N] [--analyses N] [--rate REQUESTS_PER_S]"
                        .to_string(),
                );
            }
            other => return Err(format!("unknown argument {other:?}; try --help")),
        }
    }
    Ok(args)
}

fn pct(x: f64) -> String {
    if x == 0.0 {
        "0%".to_string()
    } else if x < 0.001 {
        format!("{:.3}%", x * 100.0)
    } else {
        format!("{:.2}%", x * 100.0)
    }
}

fn requests(n: Option<u64>) -> String {
    n.map_or_else(|| "not caught".to_string(), |n| n.to_string())
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let t = Thresholds::default();
    let fixed = FixedRule::default();
    let scenario = |share, canary, baseline| Scenario {
        requests_per_s: args.rate,
        ..Scenario::new(share, canary, baseline)
    };
    let started = Instant::now();
    println!(
        "seed {}, {} analyses per row, {} requests/s over both arms, looks every 10 s, bake 30 min (180 looks); judge = drover-analysis defaults; fixed = success rate >= 99% per 60 s window, rollback at 5 failed windows, canary only\n",
        args.seed, args.analyses, args.rate
    );

    println!("(a) identical versions: false rollbacks\n");
    println!(
        "| canary share | error rate (both) | judge: rolled back | of which by the 5% guard | judge: inconclusive | fixed rule: rolled back |"
    );
    println!("|---|---|---|---|---|---|");
    for share in [0.10, 0.25] {
        for rate in [0.001, 0.005, 0.015] {
            let (j, f) = run(
                &scenario(share, rate, rate),
                &t,
                &fixed,
                args.seed,
                args.analyses,
            );
            println!(
                "| {:.0}% | {} | {} ({}) | {} | {} | {} ({}) |",
                share * 100.0,
                pct(rate),
                pct(j.rollback_rate()),
                j.rolled_back,
                j.by_guard,
                j.inconclusive,
                pct(f.rollback_rate()),
                f.rolled_back
            );
        }
    }

    println!(
        "\n(b, c) a bad canary: canary requests until rolled back (never caught within the bake counts as infinite)\n"
    );
    println!(
        "| canary share | canary vs baseline errors | rule | median | p90 | caught within 1,000 | within 5,000 | caught at all |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for share in [0.10, 0.25] {
        for (canary, baseline) in [(0.05, 0.005), (0.02, 0.005), (0.01, 0.005)] {
            let (j, f) = run(
                &scenario(share, canary, baseline),
                &t,
                &fixed,
                args.seed,
                args.analyses,
            );
            for (name, s) in [("judge", &j), ("fixed", &f)] {
                row(share, canary, baseline, name, s);
            }
        }
    }

    println!(
        "\n(d) the absolute guard's minimum requests: false rollbacks at 1.5% errors in both arms, and catching 5% vs 0.5%, canary share 10%\n"
    );
    println!(
        "| guard_min_requests | false rollbacks at 1.5% | 5% vs 0.5%: median | p90 | within 1,000 |"
    );
    println!("|---|---|---|---|---|");
    for min in [100, 200, 500] {
        let t = Thresholds {
            guard_min_requests: min,
            ..Thresholds::default()
        };
        let (good, _) = run(
            &scenario(0.10, 0.015, 0.015),
            &t,
            &fixed,
            args.seed,
            args.analyses,
        );
        let (bad, _) = run(
            &scenario(0.10, 0.05, 0.005),
            &t,
            &fixed,
            args.seed,
            args.analyses,
        );
        println!(
            "| {min}{} | {} ({}) | {} | {} | {} |",
            if min == Thresholds::default().guard_min_requests {
                " (default)"
            } else {
                ""
            },
            pct(good.rollback_rate()),
            good.rolled_back,
            requests(bad.requests_quantile(0.5)),
            requests(bad.requests_quantile(0.9)),
            pct(bad.caught_within(1_000)),
        );
    }
    eprintln!("took {:.1} s", started.elapsed().as_secs_f64());
    ExitCode::SUCCESS
}

fn row(share: f64, canary: f64, baseline: f64, name: &str, s: &Summary) {
    println!(
        "| {:.0}% | {} vs {} | {name} | {} | {} | {} | {} | {} |",
        share * 100.0,
        pct(canary),
        pct(baseline),
        requests(s.requests_quantile(0.5)),
        requests(s.requests_quantile(0.9)),
        pct(s.caught_within(1_000)),
        pct(s.caught_within(5_000)),
        pct(s.rollback_rate()),
    );
}
