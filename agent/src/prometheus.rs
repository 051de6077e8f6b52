//! A small, strict parser of the Prometheus text exposition format
//! (version 0.0.4), for what the agent reads from an instance's own
//! `/metrics`: a requests counter with a `code` label and a latency
//! histogram. Every line is checked (a malformed one fails the whole
//! scrape, naming its line), but only the two configured metrics are
//! kept.
//!
//! Format: `# HELP name text`, `# TYPE name type`, other `#` comments;
//! samples `name{label="value",...} value [timestamp]`, label values with
//! `\\`, `\"` and `\n` escapes, values that may be `+Inf`, `-Inf` or
//! `NaN`, an optional integer timestamp in milliseconds.

use std::collections::HashMap;

/// A malformed exposition or metrics that do not fit what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PromError {
    #[error("line {line}: {what}")]
    Syntax { line: usize, what: String },
    #[error("{0}")]
    Metrics(String),
}

/// A sample's labels, in the order written.
pub type Labels = Vec<(String, String)>;

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Labels,
    pub value: f64,
    pub timestamp_ms: Option<i64>,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A parsed exposition: the samples in order and the declared types.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Exposition {
    pub samples: Vec<Sample>,
    /// Metric family name -> `counter`, `gauge`, `histogram`, `summary`
    /// or `untyped`.
    pub types: HashMap<String, String>,
    /// Families with a HELP line.
    pub helped: Vec<String>,
}

const TYPES: [&str; 5] = ["counter", "gauge", "histogram", "summary", "untyped"];

/// Parses a whole exposition.
pub fn parse(text: &str) -> Result<Exposition, PromError> {
    let mut out = Exposition::default();
    for (i, raw) in text.split('\n').enumerate() {
        let line_no = i + 1;
        let err = |what: String| PromError::Syntax {
            line: line_no,
            what,
        };
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        let trimmed = line.trim_matches([' ', '\t']);
        if trimmed.is_empty() {
            continue;
        }
        if let Some(comment) = trimmed.strip_prefix('#') {
            let mut words = comment
                .trim_start_matches([' ', '\t'])
                .splitn(3, [' ', '\t']);
            match words.next() {
                Some("TYPE") => {
                    let name = words.next().unwrap_or("");
                    let kind = words.next().unwrap_or("").trim();
                    if !valid_name(name) {
                        return Err(err(format!("TYPE for an invalid metric name {name:?}")));
                    }
                    if !TYPES.contains(&kind) {
                        return Err(err(format!(
                            "TYPE {name} {kind:?}: expected one of {}",
                            TYPES.join(", ")
                        )));
                    }
                    if out
                        .types
                        .insert(name.to_string(), kind.to_string())
                        .is_some()
                    {
                        return Err(err(format!("second TYPE line for {name}")));
                    }
                }
                Some("HELP") => {
                    let name = words.next().unwrap_or("");
                    if !valid_name(name) {
                        return Err(err(format!("HELP for an invalid metric name {name:?}")));
                    }
                    out.helped.push(name.to_string());
                }
                _ => {}
            }
            continue;
        }
        out.samples.push(sample(trimmed).map_err(err)?);
    }
    Ok(out)
}

fn valid_name(n: &str) -> bool {
    let mut chars = n.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(n: &str) -> bool {
    let mut chars = n.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// One sample line (trimmed, not a comment).
fn sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ', '\t']).unwrap_or(line.len());
    let name = &line[..name_end];
    if !valid_name(name) {
        return Err(format!("invalid metric name {name:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        let (parsed, tail) = label_set(after)?;
        labels = parsed;
        rest = tail;
    }
    let mut fields = rest.split([' ', '\t']).filter(|f| !f.is_empty());
    let value_text = fields.next().ok_or_else(|| format!("{name}: no value"))?;
    let value = float(value_text).ok_or_else(|| format!("{name}: bad value {value_text:?}"))?;
    let timestamp_ms =
        match fields.next() {
            None => None,
            Some(t) => Some(t.parse::<i64>().map_err(|_| {
                format!("{name}: bad timestamp {t:?} (expected integer milliseconds)")
            })?),
        };
    if let Some(extra) = fields.next() {
        return Err(format!(
            "{name}: unexpected {extra:?} after the value and timestamp"
        ));
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
        timestamp_ms,
    })
}

/// Reads `name="value",...}` (after the `{`); returns the labels and
/// what follows the `}`.
fn label_set(mut s: &str) -> Result<(Labels, &str), String> {
    let mut labels: Vec<(String, String)> = Vec::new();
    loop {
        s = s.trim_start_matches([' ', '\t']);
        if let Some(tail) = s.strip_prefix('}') {
            return Ok((labels, tail));
        }
        let eq = s.find('=').ok_or_else(|| "label without `=`".to_string())?;
        let name = s[..eq].trim_matches([' ', '\t']);
        if !valid_label_name(name) {
            return Err(format!("invalid label name {name:?}"));
        }
        s = s[eq + 1..].trim_start_matches([' ', '\t']);
        s = s
            .strip_prefix('"')
            .ok_or_else(|| format!("label {name}: value not in double quotes"))?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err(format!("label {name}: unterminated value")),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => return Err(format!("label {name}: unknown escape `\\{c}`")),
                    None => return Err(format!("label {name}: unterminated value")),
                },
                Some((_, c)) => value.push(c),
            }
        };
        if labels.iter().any(|(k, _)| k == name) {
            return Err(format!("label {name} given twice"));
        }
        labels.push((name.to_string(), value));
        s = s[end + 1..].trim_start_matches([' ', '\t']);
        if let Some(tail) = s.strip_prefix(',') {
            s = tail;
        } else if !s.starts_with('}') {
            return Err("expected `,` or `}` after a label".to_string());
        }
    }
}

/// A Go `ParseFloat`-style value: decimal or exponent notation, `+Inf`,
/// `-Inf`, `NaN`.
fn float(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => return Some(f64::INFINITY),
        "-Inf" => return Some(f64::NEG_INFINITY),
        "NaN" => return Some(f64::NAN),
        _ => {}
    }
    let ok = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-'));
    if ok { s.parse().ok() } else { None }
}

/// What the agent reports of an instance's metrics.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Traffic {
    /// The requests counter over every series.
    pub requests: u64,
    /// The part of it with a 5xx `code`.
    pub errors: u64,
    /// (le, cumulative count), ascending, +Inf last.
    pub buckets: Vec<(f64, u64)>,
    pub latency_sum: f64,
    pub latency_count: u64,
}

fn count(name: &str, v: f64) -> Result<u64, PromError> {
    if !v.is_finite() || v < 0.0 {
        return Err(PromError::Metrics(format!(
            "{name} has the value {v}: expected a count (finite, not negative)"
        )));
    }
    // Counts are whole numbers written as floats.
    Ok(v.round() as u64)
}

impl Exposition {
    fn known(&self, family: &str) -> bool {
        self.types.contains_key(family) || self.helped.iter().any(|h| h == family)
    }

    fn check_type(&self, family: &str, allowed: &[&str]) -> Result<(), PromError> {
        match self.types.get(family) {
            Some(t) if !allowed.contains(&t.as_str()) => Err(PromError::Metrics(format!(
                "{family} is a {t}, expected a {}",
                allowed.join(" or ")
            ))),
            _ => Ok(()),
        }
    }

    /// Sums counter `requests` (errors: its 5xx `code`s) and histogram
    /// `latency` over their series.
    pub fn traffic(&self, requests: &str, latency: &str) -> Result<Traffic, PromError> {
        let mut out = Traffic::default();

        self.check_type(requests, &["counter", "untyped"])?;
        // A counter family named `x_total` may declare its TYPE as `x`.
        let family = requests.strip_suffix("_total").unwrap_or(requests);
        if family != requests {
            self.check_type(family, &["counter", "untyped"])?;
        }
        let mut seen = false;
        for s in self.samples.iter().filter(|s| s.name == requests) {
            seen = true;
            let n = count(requests, s.value)?;
            out.requests = out.requests.saturating_add(n);
            if s.label("code")
                .is_some_and(|c| c.len() == 3 && c.starts_with('5'))
            {
                out.errors = out.errors.saturating_add(n);
            }
        }
        if !seen && !self.known(requests) && !self.known(family) {
            return Err(PromError::Metrics(format!(
                "no `{requests}` in the metrics (set [instance.metrics] requests to the name of the requests counter)"
            )));
        }

        self.check_type(latency, &["histogram"])?;
        let bucket_name = format!("{latency}_bucket");
        let mut by_series: Vec<(Labels, Vec<(f64, u64)>)> = Vec::new();
        let (mut sum, mut total, mut any) = (0.0, 0u64, false);
        for s in &self.samples {
            if s.name == bucket_name {
                any = true;
                let le_text = s.label("le").ok_or_else(|| {
                    PromError::Metrics(format!("{bucket_name} sample without an `le` label"))
                })?;
                let le = float(le_text).filter(|f| !f.is_nan()).ok_or_else(|| {
                    PromError::Metrics(format!("{bucket_name}: bad le {le_text:?}"))
                })?;
                let n = count(&bucket_name, s.value)?;
                let series: Vec<(String, String)> = s
                    .labels
                    .iter()
                    .filter(|(k, _)| k != "le")
                    .cloned()
                    .collect();
                match by_series.iter_mut().find(|(k, _)| *k == series) {
                    Some((_, b)) => b.push((le, n)),
                    None => by_series.push((series, vec![(le, n)])),
                }
            } else if s.name == format!("{latency}_sum") {
                any = true;
                if !s.value.is_finite() {
                    return Err(PromError::Metrics(format!(
                        "{latency}_sum is {}: expected a finite number",
                        s.value
                    )));
                }
                sum += s.value;
            } else if s.name == format!("{latency}_count") {
                any = true;
                total = total.saturating_add(count(&s.name, s.value)?);
            }
        }
        if !any && !self.known(latency) {
            return Err(PromError::Metrics(format!(
                "no `{latency}` histogram in the metrics (set [instance.metrics] latency to the name of the latency histogram)"
            )));
        }
        let mut les: Option<Vec<f64>> = None;
        let mut summed: Vec<(f64, u64)> = Vec::new();
        for (_, mut buckets) in by_series {
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            if buckets.last().is_none_or(|(le, _)| *le != f64::INFINITY) {
                return Err(PromError::Metrics(format!(
                    "{bucket_name}: a series without a +Inf bucket"
                )));
            }
            if buckets.windows(2).any(|w| w[1].1 < w[0].1) {
                return Err(PromError::Metrics(format!(
                    "{bucket_name}: counts decrease as le grows (buckets must be cumulative)"
                )));
            }
            let these: Vec<f64> = buckets.iter().map(|(le, _)| *le).collect();
            match &les {
                None => {
                    les = Some(these);
                    summed = buckets;
                }
                Some(l) if *l == these => {
                    for (acc, (_, n)) in summed.iter_mut().zip(buckets) {
                        acc.1 = acc.1.saturating_add(n);
                    }
                }
                Some(_) => {
                    return Err(PromError::Metrics(format!(
                        "{bucket_name}: series with different buckets cannot be summed"
                    )));
                }
            }
        }
        out.buckets = summed;
        out.latency_sum = sum;
        out.latency_count = total;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"# HELP http_requests_total Requests served, by status code.
# TYPE http_requests_total counter
http_requests_total{code="200",method="get"} 1027 1395066363000
http_requests_total{method="get",code="500"} 3e0
http_requests_total{code="503", path="a \"quoted\" \\ back\nslash",} 2
# a comment that is neither HELP nor TYPE
# TYPE http_request_duration_seconds histogram
http_request_duration_seconds_bucket{code="200",le="0.005"} 10
http_request_duration_seconds_bucket{code="200",le="0.1"} 900
http_request_duration_seconds_bucket{code="200",le="+Inf"} 1027
http_request_duration_seconds_sum{code="200"} 53.5
http_request_duration_seconds_count{code="200"} 1027
http_request_duration_seconds_bucket{code="500",le="0.1"} 1
http_request_duration_seconds_bucket{code="500",le="0.005"} 0
http_request_duration_seconds_bucket{code="500",le="+Inf"} 5
http_request_duration_seconds_sum{code="500"} 1.5
http_request_duration_seconds_count{code="500"} 5
process_cpu_seconds_total 12.47
go_gc_duration_seconds{quantile="0.5"} NaN
some_gauge -Inf

"#;

    #[test]
    fn reads_labels_escapes_timestamps_and_special_values() {
        let e = parse(GOOD).expect("parse");
        assert_eq!(e.samples.len(), 16);
        let first = &e.samples[0];
        assert_eq!(first.label("code"), Some("200"));
        assert_eq!(first.timestamp_ms, Some(1_395_066_363_000));
        assert_eq!(e.samples[1].value, 3.0);
        assert_eq!(
            e.samples[2].label("path"),
            Some("a \"quoted\" \\ back\nslash")
        );
        assert!(e.samples[14].value.is_nan());
        assert_eq!(e.samples[15].value, f64::NEG_INFINITY);
        assert_eq!(
            e.types.get("http_requests_total").map(String::as_str),
            Some("counter")
        );
    }

    #[test]
    fn sums_requests_errors_and_the_histogram_over_series() {
        let t = parse(GOOD)
            .expect("parse")
            .traffic("http_requests_total", "http_request_duration_seconds")
            .expect("traffic");
        assert_eq!((t.requests, t.errors), (1032, 5));
        assert_eq!(
            t.buckets,
            vec![(0.005, 10), (0.1, 901), (f64::INFINITY, 1032)]
        );
        assert_eq!((t.latency_sum, t.latency_count), (55.0, 1032));
    }

    #[test]
    fn a_family_declared_but_without_series_is_zero_and_a_missing_one_is_an_error() {
        let text = "# TYPE req_total counter\n# TYPE lat histogram\n";
        let t = parse(text)
            .expect("parse")
            .traffic("req_total", "lat")
            .expect("empty");
        assert_eq!((t.requests, t.errors, t.buckets.len()), (0, 0, 0));
        let e = parse(text)
            .expect("parse")
            .traffic("http_requests_total", "lat")
            .expect_err("missing");
        assert!(e.to_string().contains("no `http_requests_total`"), "{e}");
        let e = parse(text)
            .expect("parse")
            .traffic("req_total", "other")
            .expect_err("missing");
        assert!(e.to_string().contains("no `other` histogram"), "{e}");
    }

    #[test]
    fn refuses_malformed_lines_naming_them() {
        for (text, line, what) in [
            ("ok 1\nbad-name 1\n", 2, "invalid metric name"),
            ("x{a=\"1\" 2\n", 1, "expected `,` or `}`"),
            ("x{a=\"1} 2\n", 1, "unterminated"),
            ("x{a=1} 2\n", 1, "double quotes"),
            ("x{a=\"\\t\"} 2\n", 1, "unknown escape"),
            ("x{a=\"1\",a=\"2\"} 2\n", 1, "given twice"),
            ("x 1 2 3\n", 1, "unexpected"),
            ("x one\n", 1, "bad value"),
            ("x 1 1.5\n", 1, "bad timestamp"),
            ("x\n", 1, "no value"),
            ("# TYPE x countr\n", 1, "expected one of"),
            ("# TYPE x counter\n# TYPE x counter\n", 2, "second TYPE"),
        ] {
            match parse(text) {
                Err(PromError::Syntax { line: l, what: w }) => {
                    assert_eq!(l, line, "{text:?}: {w}");
                    assert!(w.contains(what), "{text:?}: {w}");
                }
                other => panic!("{text:?} parsed: {other:?}"),
            }
        }
    }

    #[test]
    fn refuses_metrics_that_do_not_fit() {
        let check = |text: &str, what: &str| {
            let e = parse(text)
                .expect("parse")
                .traffic("req_total", "lat")
                .expect_err(text);
            assert!(e.to_string().contains(what), "{text:?}: {e}");
        };
        let hist = "lat_bucket{le=\"+Inf\"} 1\nlat_sum 1\nlat_count 1\n";
        check(&format!("# TYPE req_total gauge\n{hist}"), "is a gauge");
        check(&format!("req_total NaN\n{hist}"), "expected a count");
        check(&format!("req_total -1\n{hist}"), "expected a count");
        check("req_total 1\n# TYPE lat summary\n", "is a summary");
        check("req_total 1\nlat_bucket{le=\"1\"} 1\n", "without a +Inf");
        check(
            "req_total 1\nlat_bucket{le=\"1\"} 2\nlat_bucket{le=\"+Inf\"} 1\n",
            "decrease",
        );
        check(
            "req_total 1\nlat_bucket{a=\"x\",le=\"1\"} 1\nlat_bucket{a=\"x\",le=\"+Inf\"} 1\nlat_bucket{a=\"y\",le=\"2\"} 1\nlat_bucket{a=\"y\",le=\"+Inf\"} 1\n",
            "different buckets",
        );
        check("req_total 1\nlat_bucket 1\n", "without an `le`");
        check("req_total 1\nlat_sum NaN\n", "finite");
    }
}
