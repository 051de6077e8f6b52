//! Turning wire values into what an operator reads: output formats, times,
//! byte sizes and aligned tables. Host views live in [`host`] and [`host_json`],
//! rollout views in [`rollout`].

#[cfg(test)]
pub(crate) mod fixtures;
pub mod host;
pub mod host_json;
pub mod rollout;

use std::time::{SystemTime, UNIX_EPOCH};

pub use drover_proto::json::rfc3339_ms;

/// `-o` for listings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ListFormat {
    /// One row per host.
    Table,
    /// More columns, plus one line per instance.
    Wide,
    /// A JSON array of host objects, for scripts.
    Json,
}

/// `-o` for single objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ShowFormat {
    /// Readable text.
    Table,
    /// JSON, for scripts.
    Json,
}

/// Writes to stdout and flushes. Errors are returned so `--watch` can stop
/// when its reader goes away.
pub fn emit(text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

/// [`emit`] for one-shot output: a closed pipe (`drover agents | head -1`)
/// is not an error.
pub fn print(text: &str) -> anyhow::Result<()> {
    match emit(text) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.map_err(|e| anyhow::anyhow!("write to stdout: {e}")),
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub fn system_time_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    }
}

/// A duration in its largest whole unit or two: `45s`, `3m10s`, `5h`, `2d4h`.
pub fn short_duration(ms: u64) -> String {
    let s = ms / 1000;
    // Round to the precision shown, so a 30-minute token reads `in 30m`
    // even a moment after it was made.
    let gran = match s {
        0..600 => 1,
        600..36_000 => 60,
        36_000..864_000 => 3600,
        _ => 86_400,
    };
    let s = (s + gran / 2) / gran * gran;
    match s {
        0..60 => format!("{s}s"),
        60..600 if !s.is_multiple_of(60) => format!("{}m{}s", s / 60, s % 60),
        60..3600 => format!("{}m", s / 60),
        3600..86400 if s % 3600 >= 60 && s < 10 * 3600 => {
            format!("{}h{}m", s / 3600, (s % 3600) / 60)
        }
        3600..86400 => format!("{}h", s / 3600),
        _ if s % 86400 >= 3600 && s < 10 * 86400 => {
            format!("{}d{}h", s / 86400, (s % 86400) / 3600)
        }
        _ => format!("{}d", s / 86400),
    }
}

/// `3s ago`, `in 5m`, or `never` for 0 (the wire's "never").
pub fn relative(now_ms: i64, then_ms: i64) -> String {
    if then_ms <= 0 {
        return "never".into();
    }
    let diff = now_ms - then_ms;
    if diff >= 0 {
        format!("{} ago", short_duration(diff as u64))
    } else {
        format!("in {}", short_duration(diff.unsigned_abs()))
    }
}

/// Binary units, one decimal below 10: `512B`, `1.5KiB`, `12GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n}B")
    } else if v < 10.0 {
        format!("{v:.1}{}", UNITS[unit])
    } else {
        format!("{v:.0}{}", UNITS[unit])
    }
}

pub fn percent(used: u64, total: u64) -> Option<f64> {
    (total > 0).then(|| used as f64 * 100.0 / total as f64)
}

/// Columns padded to their widest cell, three spaces apart; the last column
/// is not padded, so lines carry no trailing blanks.
pub fn align(rows: &[Vec<String>]) -> Vec<String> {
    let mut widths: Vec<usize> = Vec::new();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            let w = cell.chars().count();
            match widths.get_mut(i) {
                Some(max) => *max = (*max).max(w),
                None => widths.push(w),
            }
        }
    }
    rows.iter()
        .map(|row| {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                line.push_str(cell);
                if i + 1 < row.len() {
                    let pad = widths[i] - cell.chars().count() + 3;
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            line.trim_end().to_string()
        })
        .collect()
}

/// A header line and aligned rows, newline-terminated.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut all = vec![header.iter().map(|h| h.to_string()).collect()];
    all.extend(rows.iter().cloned());
    let mut out = align(&all).join("\n");
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_relative_times() {
        let now = 1_790_000_000_000;
        assert_eq!(relative(now, now - 3_000), "3s ago");
        assert_eq!(relative(now, now - 400), "0s ago");
        assert_eq!(relative(now, now - 59_999), "59s ago");
        assert_eq!(relative(now, now - 190_000), "3m10s ago");
        assert_eq!(relative(now, now - 20 * 60_000), "20m ago");
        assert_eq!(relative(now, now - 2 * 3_600_000 - 5 * 60_000), "2h5m ago");
        assert_eq!(relative(now, now - 12 * 3_600_000), "12h ago");
        assert_eq!(
            relative(now, now - 3 * 86_400_000 - 4 * 3_600_000),
            "3d4h ago"
        );
        assert_eq!(relative(now, now - 40 * 86_400_000), "40d ago");
        assert_eq!(relative(now, now + 3_600_000), "in 1h");
        assert_eq!(relative(now, now + 1_799_000), "in 30m");
        assert_eq!(relative(now, now + 599_000), "in 9m59s");
        assert_eq!(relative(now, now + 20 * 3_600_000 - 1_000), "in 20h");
        assert_eq!(relative(now, 0), "never");
    }

    #[test]
    fn formats_bytes() {
        assert_eq!(bytes(0), "0B");
        assert_eq!(bytes(512), "512B");
        assert_eq!(bytes(1536), "1.5KiB");
        assert_eq!(bytes(4 * 1024 * 1024 * 1024), "4.0GiB");
        assert_eq!(bytes(12 * 1024 * 1024 * 1024 + 1), "12GiB");
    }

    #[test]
    fn aligns_tables() {
        let t = table(
            &["HOST", "STATUS", "LABELS"],
            &[
                vec!["h1".into(), "connected".into(), "".into()],
                vec!["host-22".into(), "lost".into(), "env=prod".into()],
            ],
        );
        assert_eq!(
            t,
            "HOST      STATUS      LABELS\n\
             h1        connected\n\
             host-22   lost        env=prod\n"
        );
    }
}
