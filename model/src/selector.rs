//! Kubernetes-style label selectors: `env=prod,zone in (a,b),!canary`.
//!
//! A selector is a list of requirements that must all hold. Operators: `k=v` (also `k==v`),
//! `k!=v`, `k in (v1,v2)`, `k notin (v1,v2)`, `k` (the label exists), `!k` (it does not).
//! As in Kubernetes, the negative operators `!=` and `notin` also match hosts that lack the
//! label. The empty selector matches everything.
//!
//! Label keys are `[prefix/]name`; names and values are 1-63 characters of
//! `[A-Za-z0-9._/-]` (values) or `[A-Za-z0-9._-]` (names), prefixes up to 253 characters.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

/// Longest label value and key name (the part after an optional `prefix/`).
const MAX_NAME: usize = 63;
/// Longest key prefix (a DNS-subdomain-like part, as in Kubernetes).
const MAX_PREFIX: usize = 253;

/// A parsed selector. Requirements are kept sorted and deduplicated, so two selectors that
/// select the same way compare equal and print the same (see [`Display`](fmt::Display)).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

/// One condition on one label key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Requirement {
    key: String,
    op: Op,
}

/// The operator of a requirement with its operand.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    Equals(String),
    NotEquals(String),
    In(BTreeSet<String>),
    NotIn(BTreeSet<String>),
    Exists,
    DoesNotExist,
}

impl Requirement {
    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn op(&self) -> &Op {
        &self.op
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match &self.op {
            Op::Equals(want) => value == Some(want),
            Op::NotEquals(unwanted) => value != Some(unwanted),
            Op::In(set) => value.is_some_and(|v| set.contains(v)),
            Op::NotIn(set) => value.is_none_or(|v| !set.contains(v)),
            Op::Exists => value.is_some(),
            Op::DoesNotExist => value.is_none(),
        }
    }
}

impl Selector {
    /// The selector that matches every label set.
    pub fn everything() -> Selector {
        Selector::default()
    }

    /// Whether this selector has no requirements (and so matches everything).
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// Whether every requirement holds for `labels`.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }
}

impl FromStr for Selector {
    type Err = SelectorError;

    fn from_str(s: &str) -> Result<Selector, SelectorError> {
        let mut parser = Parser::new(s, Subject::Selector);
        parser.skip_ws();
        if parser.at_end() {
            return Ok(Selector::everything());
        }
        let mut requirements = Vec::new();
        loop {
            requirements.push(parser.requirement()?);
            parser.skip_ws();
            match parser.peek() {
                None => break,
                Some(',') => parser.bump(),
                Some(_) => return Err(parser.error("expected `,` or the end of the selector")),
            }
        }
        requirements.sort();
        requirements.dedup();
        Ok(Selector { requirements })
    }
}

impl fmt::Display for Selector {
    /// The canonical form: requirements sorted, `==` written `=`, set members sorted, no spaces
    /// except around `in`/`notin`. It parses back to an equal selector.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = &self.key;
        let set = |s: &BTreeSet<String>| s.iter().map(String::as_str).collect::<Vec<_>>().join(",");
        match &self.op {
            Op::Equals(v) => write!(f, "{key}={v}"),
            Op::NotEquals(v) => write!(f, "{key}!={v}"),
            Op::In(s) => write!(f, "{key} in ({})", set(s)),
            Op::NotIn(s) => write!(f, "{key} notin ({})", set(s)),
            Op::Exists => write!(f, "{key}"),
            Op::DoesNotExist => write!(f, "!{key}"),
        }
    }
}

/// Parses `k=v` strings (one label each, as given to `--label`) into a label set.
///
/// Keys and values follow the selector rules; a key given twice is an error.
pub fn parse_labels(s: &[String]) -> Result<BTreeMap<String, String>, SelectorError> {
    let mut labels = BTreeMap::new();
    for item in s {
        let mut parser = Parser::new(item, Subject::Label);
        parser.skip_ws();
        let key_column = parser.column();
        let key = parser.key()?;
        parser.skip_ws();
        if parser.peek() != Some('=') {
            return Err(parser.error("expected `=` after the label key"));
        }
        parser.bump();
        parser.skip_ws();
        let value = parser.value()?;
        parser.skip_ws();
        if !parser.at_end() {
            return Err(parser.error("expected the end of the label"));
        }
        if labels.contains_key(&key) {
            return Err(SelectorError {
                subject: Subject::Label,
                input: item.clone(),
                column: key_column,
                expected: format!("label key `{key}` given twice; expected each key once"),
                found: None,
            });
        }
        labels.insert(key, value);
    }
    Ok(labels)
}

/// A syntax error, with the 1-based column (in characters) where it was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{subject} `{input}`: {expected} at column {column}{}", found_suffix(.found))]
pub struct SelectorError {
    subject: Subject,
    input: String,
    column: usize,
    expected: String,
    /// `None` when the input ended.
    found: Option<char>,
}

impl SelectorError {
    /// The text that failed to parse.
    pub fn input(&self) -> &str {
        &self.input
    }

    /// 1-based character column of the problem; one past the end if the input ended early.
    pub fn column(&self) -> usize {
        self.column
    }
}

fn found_suffix(found: &Option<char>) -> String {
    match found {
        Some(c) => format!(", found `{c}`"),
        None => " (end of input)".to_string(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Subject {
    Selector,
    Label,
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Subject::Selector => "selector",
            Subject::Label => "label",
        })
    }
}

/// Characters allowed in keys (plus `/` once) and values.
fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/')
}

/// A hand-written recursive-descent parser over characters, so errors can name a column.
struct Parser<'a> {
    input: &'a str,
    chars: Vec<char>,
    pos: usize,
    subject: Subject,
}

impl<'a> Parser<'a> {
    fn new(input: &'a str, subject: Subject) -> Parser<'a> {
        Parser {
            input,
            chars: input.chars().collect(),
            pos: 0,
            subject,
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn at_end(&self) -> bool {
        self.pos >= self.chars.len()
    }

    fn bump(&mut self) {
        self.pos += 1;
    }

    fn column(&self) -> usize {
        self.pos + 1
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.bump();
        }
    }

    fn error(&self, expected: impl Into<String>) -> SelectorError {
        self.error_at(self.pos, expected)
    }

    fn error_at(&self, pos: usize, expected: impl Into<String>) -> SelectorError {
        SelectorError {
            subject: self.subject,
            input: self.input.to_string(),
            column: pos + 1,
            expected: expected.into(),
            found: self.chars.get(pos).copied(),
        }
    }

    /// A maximal run of word characters (possibly empty).
    fn word(&mut self) -> (usize, String) {
        let start = self.pos;
        while self.peek().is_some_and(is_word_char) {
            self.bump();
        }
        (start, self.chars[start..self.pos].iter().collect())
    }

    fn key(&mut self) -> Result<String, SelectorError> {
        let (start, key) = self.word();
        if key.is_empty() {
            return Err(self.error("expected a label key"));
        }
        let (prefix, name) = match key.split_once('/') {
            Some((prefix, name)) => (Some(prefix), name),
            None => (None, key.as_str()),
        };
        let name_start = start + prefix.map_or(0, |p| p.chars().count() + 1);
        if let Some(prefix) = prefix {
            if prefix.is_empty() {
                return Err(self.error_at(start, "expected a key prefix before `/`"));
            }
            if prefix.len() > MAX_PREFIX {
                return Err(self.error_at(
                    start,
                    format!(
                        "key prefix longer than {MAX_PREFIX} characters; expected a shorter prefix"
                    ),
                ));
            }
        }
        if name.is_empty() {
            return Err(self.error_at(name_start, "expected a key name after the prefix `/`"));
        }
        if let Some(i) = name.find('/') {
            return Err(self.error_at(name_start + i, "expected at most one `/` in a label key"));
        }
        if name.len() > MAX_NAME {
            return Err(self.error_at(
                name_start,
                format!("key name longer than {MAX_NAME} characters; expected a shorter key"),
            ));
        }
        Ok(key)
    }

    fn value(&mut self) -> Result<String, SelectorError> {
        let (start, value) = self.word();
        if value.is_empty() {
            return Err(self.error("expected a label value"));
        }
        if value.len() > MAX_NAME {
            return Err(self.error_at(
                start,
                format!("value longer than {MAX_NAME} characters; expected a shorter value"),
            ));
        }
        Ok(value)
    }

    fn requirement(&mut self) -> Result<Requirement, SelectorError> {
        self.skip_ws();
        if self.peek() == Some('!') {
            self.bump();
            self.skip_ws();
            let key = self.key()?;
            return Ok(Requirement {
                key,
                op: Op::DoesNotExist,
            });
        }
        let key = self.key()?;
        self.skip_ws();
        let op = match self.peek() {
            None | Some(',') => Op::Exists,
            Some('=') => {
                self.bump();
                if self.peek() == Some('=') {
                    self.bump();
                }
                self.skip_ws();
                Op::Equals(self.value()?)
            }
            Some('!') => {
                self.bump();
                if self.peek() != Some('=') {
                    return Err(self.error("expected `=` after `!` (the `!=` operator)"));
                }
                self.bump();
                self.skip_ws();
                Op::NotEquals(self.value()?)
            }
            Some(c) if is_word_char(c) => {
                let (start, word) = self.word();
                let negated = match word.as_str() {
                    "in" => false,
                    "notin" => true,
                    _ => {
                        return Err(self.error_at(
                            start,
                            "expected an operator (`=`, `==`, `!=`, `in`, `notin`), `,` or the end",
                        ));
                    }
                };
                let set = self.value_set()?;
                if negated { Op::NotIn(set) } else { Op::In(set) }
            }
            Some(_) => {
                return Err(self.error(
                    "expected an operator (`=`, `==`, `!=`, `in`, `notin`), `,` or the end",
                ));
            }
        };
        Ok(Requirement { key, op })
    }

    /// `( v1, v2, ... )` with at least one value.
    fn value_set(&mut self) -> Result<BTreeSet<String>, SelectorError> {
        self.skip_ws();
        if self.peek() != Some('(') {
            return Err(self.error("expected `(` to open the value list"));
        }
        self.bump();
        let mut set = BTreeSet::new();
        self.skip_ws();
        if self.peek() == Some(')') {
            return Err(self.error("expected at least one value in `(...)`"));
        }
        loop {
            self.skip_ws();
            set.insert(self.value()?);
            self.skip_ws();
            match self.peek() {
                Some(',') => self.bump(),
                Some(')') => {
                    self.bump();
                    return Ok(set);
                }
                None => return Err(self.error("missing `)`")),
                Some(_) => return Err(self.error("expected `,` or `)` in the value list")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn sel(s: &str) -> Selector {
        s.parse()
            .unwrap_or_else(|e| panic!("`{s}` should parse: {e}"))
    }

    fn err(s: &str) -> SelectorError {
        match s.parse::<Selector>() {
            Ok(selector) => panic!("`{s}` should not parse, got `{selector}`"),
            Err(e) => e,
        }
    }

    #[test]
    fn empty_matches_everything() {
        for s in ["", "   ", "\t"] {
            let selector = sel(s);
            assert!(selector.is_empty());
            assert!(selector.matches(&labels(&[])));
            assert!(selector.matches(&labels(&[("env", "prod")])));
            assert_eq!(selector.to_string(), "");
        }
        assert_eq!(sel(""), Selector::everything());
    }

    #[test]
    fn equals() {
        for s in ["env=prod", "env==prod", " env = prod ", "env ==prod"] {
            let selector = sel(s);
            assert!(selector.matches(&labels(&[("env", "prod")])), "{s}");
            assert!(!selector.matches(&labels(&[("env", "dev")])), "{s}");
            assert!(!selector.matches(&labels(&[])), "{s}");
            assert_eq!(selector.to_string(), "env=prod");
        }
    }

    #[test]
    fn not_equals_matches_missing_key() {
        let selector = sel("env!=prod");
        assert!(!selector.matches(&labels(&[("env", "prod")])));
        assert!(selector.matches(&labels(&[("env", "dev")])));
        assert!(
            selector.matches(&labels(&[])),
            "missing key matches, like k8s"
        );
        assert_eq!(sel("env != prod").to_string(), "env!=prod");
    }

    #[test]
    fn in_and_notin() {
        let selector = sel("zone in (a,b)");
        assert!(selector.matches(&labels(&[("zone", "a")])));
        assert!(selector.matches(&labels(&[("zone", "b")])));
        assert!(!selector.matches(&labels(&[("zone", "c")])));
        assert!(!selector.matches(&labels(&[])));

        let selector = sel("zone notin (a,b)");
        assert!(!selector.matches(&labels(&[("zone", "a")])));
        assert!(selector.matches(&labels(&[("zone", "c")])));
        assert!(
            selector.matches(&labels(&[])),
            "missing key matches, like k8s"
        );

        assert_eq!(
            sel("zone   in(  b ,a,  b )").to_string(),
            "zone in (a,b)",
            "whitespace, order and duplicates are normalised"
        );
        assert_eq!(sel("zone notin (x)").to_string(), "zone notin (x)");
    }

    #[test]
    fn exists_and_does_not_exist() {
        let selector = sel("canary");
        assert!(selector.matches(&labels(&[("canary", "true")])));
        assert!(!selector.matches(&labels(&[("env", "prod")])));

        let selector = sel("!canary");
        assert!(!selector.matches(&labels(&[("canary", "true")])));
        assert!(selector.matches(&labels(&[("env", "prod")])));
        assert_eq!(sel("!  canary").to_string(), "!canary");
    }

    #[test]
    fn requirements_are_anded() {
        let selector = sel("env=prod,zone in (a,b),!canary");
        assert!(selector.matches(&labels(&[("env", "prod"), ("zone", "a")])));
        assert!(!selector.matches(&labels(&[("env", "prod"), ("zone", "c")])));
        assert!(!selector.matches(&labels(&[("env", "prod"), ("zone", "a"), ("canary", "1")])));
        assert!(!selector.matches(&labels(&[("zone", "a")])));
        // Contradictions are legal and match nothing.
        let never = sel("env=prod,env=dev");
        assert!(!never.matches(&labels(&[("env", "prod")])));
        assert!(!never.matches(&labels(&[("env", "dev")])));
    }

    #[test]
    fn canonical_display_round_trips() {
        let cases = [
            (
                "env=prod,zone in (a,b),!canary",
                "!canary,env=prod,zone in (a,b)",
            ),
            (
                " zone notin ( c , a ) , tier , env==prod ",
                "env=prod,tier,zone notin (a,c)",
            ),
            ("b=1,a=2,b=1", "a=2,b=1"),
            ("example.com/team=infra", "example.com/team=infra"),
        ];
        for (input, canonical) in cases {
            let selector = sel(input);
            assert_eq!(selector.to_string(), canonical, "{input}");
            assert_eq!(
                sel(canonical),
                selector,
                "{canonical} re-parses to the same"
            );
        }
        assert_eq!(sel("a=1,b=2"), sel("b=2, a=1"), "order does not matter");
    }

    #[test]
    fn keys_and_values() {
        let selector = sel("example.com/role=web_1.x-y,k8s.io/a-b_c.d in (v/1,v.2)");
        assert!(selector.matches(&labels(&[
            ("example.com/role", "web_1.x-y"),
            ("k8s.io/a-b_c.d", "v/1")
        ])));
        let max = "k".repeat(63);
        sel(&format!("{max}={max}"));
        sel(&format!("{}/{max}", "p".repeat(253)));
        assert_eq!(sel("in").to_string(), "in", "`in` alone is a key");
        assert_eq!(sel("notin=in").to_string(), "notin=in");
    }

    #[test]
    fn error_missing_paren_names_column() {
        let e = err("zone in (a,b");
        assert_eq!(e.column(), 13);
        assert_eq!(
            e.to_string(),
            "selector `zone in (a,b`: missing `)` at column 13 (end of input)"
        );
    }

    #[test]
    fn errors() {
        let cases: &[(&str, usize, &str)] = &[
            ("zone in a,b", 9, "expected `(`"),
            ("zone in", 8, "expected `(`"),
            ("zone in ()", 10, "expected at least one value"),
            ("zone in (a b)", 12, "expected `,` or `)`"),
            ("zone in (a,)", 12, "expected a label value"),
            ("env=", 5, "expected a label value"),
            ("env!prod", 5, "expected `=` after `!`"),
            ("env=prod,", 10, "expected a label key"),
            (",env=prod", 1, "expected a label key"),
            ("env=prod,,a", 10, "expected a label key"),
            ("env=prod zone=a", 10, "expected `,` or the end"),
            ("env=a=b", 6, "expected `,` or the end"),
            ("env eq prod", 5, "expected an operator"),
            ("env>1", 4, "expected an operator"),
            ("!", 2, "expected a label key"),
            ("!env=prod", 5, "expected `,` or the end"),
            ("env=pr*d", 7, "expected `,` or the end"),
            ("/a=b", 1, "expected a key prefix"),
            ("a/=b", 3, "expected a key name"),
            ("a/b/c=d", 4, "at most one `/`"),
            ("é=1", 1, "expected a label key"),
        ];
        for (input, column, fragment) in cases {
            let e = err(input);
            assert_eq!(e.column(), *column, "{input}: {e}");
            assert!(e.to_string().contains(fragment), "{input}: {e}");
            assert!(
                e.to_string().starts_with(&format!("selector `{input}`: ")),
                "{e}"
            );
        }
        let long = "k".repeat(64);
        assert!(
            err(&format!("{long}=v"))
                .to_string()
                .contains("longer than 63")
        );
        assert!(
            err(&format!("k={long}"))
                .to_string()
                .contains("longer than 63")
        );
        assert!(
            err(&format!("{}/k", "p".repeat(254)))
                .to_string()
                .contains("longer than 253")
        );
        assert!(err("env=prod zone=a").to_string().ends_with("found `z`"));
    }

    #[test]
    fn parse_labels_ok() {
        let got = parse_labels(&[
            "env=prod".to_string(),
            " zone = a ".to_string(),
            "example.com/team=infra".to_string(),
        ])
        .expect("labels");
        assert_eq!(
            got,
            labels(&[
                ("env", "prod"),
                ("zone", "a"),
                ("example.com/team", "infra")
            ])
        );
        assert!(parse_labels(&[]).expect("empty").is_empty());
        assert!(sel("env=prod,zone in (a,b)").matches(&got));
    }

    #[test]
    fn parse_labels_errors() {
        let cases: &[(&str, usize, &str)] = &[
            ("envprod", 8, "expected `=`"),
            ("env=", 5, "expected a label value"),
            ("=prod", 1, "expected a label key"),
            ("env=prod,zone=a", 9, "expected the end of the label"),
            ("env!=prod", 4, "expected `=`"),
        ];
        for (input, column, fragment) in cases {
            let e = parse_labels(&[input.to_string()]).expect_err(input);
            assert_eq!(e.column(), *column, "{input}: {e}");
            assert_eq!(e.input(), *input);
            assert!(
                e.to_string().starts_with(&format!("label `{input}`: ")),
                "{e}"
            );
            assert!(e.to_string().contains(fragment), "{input}: {e}");
        }
        let e = parse_labels(&["env=a".to_string(), "env=b".to_string()]).expect_err("dup");
        assert!(e.to_string().contains("given twice"), "{e}");
    }
}
