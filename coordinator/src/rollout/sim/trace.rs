//! A readable log of one run: the setup, every input the engine handled,
//! every output it gave, what the agents did and every fault. Only kept
//! when asked for (a replay), since formatting it costs more than the run.

use std::fmt::Write as _;

#[derive(Debug, Default)]
pub struct Trace {
    pub on: bool,
    lines: Vec<String>,
}

/// Appends a line to the simulation's trace if tracing is on; the
/// arguments are not even formatted otherwise.
macro_rules! sim_trace {
    ($sim:expr, $($arg:tt)*) => {
        if $sim.trace.on {
            let line = format!($($arg)*);
            let now = $sim.now;
            $sim.trace.push(now, line);
        }
    };
}

impl Trace {
    pub fn new(on: bool) -> Trace {
        Trace {
            on,
            lines: Vec::new(),
        }
    }

    pub fn push(&mut self, now: u64, line: String) {
        let mut s = String::with_capacity(line.len() + 12);
        let _ = write!(s, "{:>6}.{:03}s ", now / 1000, now % 1000);
        s.push_str(&line);
        self.lines.push(s);
    }

    /// The whole trace.
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }

    /// The setup (first line and its continuation lines) and the last `n` lines.
    pub fn tail(&self, n: usize) -> String {
        if self.lines.len() <= n + 1 {
            return self.text();
        }
        let head = &self.lines[0];
        let from = self.lines.len() - n;
        format!(
            "{head}\n        ... {} lines left out ...\n{}",
            from - 1,
            self.lines[from..].join("\n")
        )
    }
}
