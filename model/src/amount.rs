//! Counts or percentages (`3`, `25%`) and how each one resolves against the
//! number of target instances.
//!
//! Rounding is chosen per use so that a percentage is never looser than it
//! reads: the floor rounds up (80% of 9 protects 8, not 7), while everything
//! that lets instances go down or fail rounds down (25% of 10 is a batch of 2).

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// A number of instances, absolute or as a percentage of the target instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Amount {
    Count(u32),
    Percent(u32),
}

/// The text was neither a count nor a percentage.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("expected a count like 3 or a percentage like 25%, got {0:?}")]
pub struct AmountError(pub String);

impl Amount {
    /// Resolves rounding a percentage up. Used for `min_healthy`, so the floor
    /// protects at least the share the operator asked for.
    pub fn resolve_up(self, total: u32) -> u32 {
        match self {
            Amount::Count(n) => n,
            Amount::Percent(p) => clamp((u64::from(p) * u64::from(total)).div_ceil(100)),
        }
    }

    /// Resolves rounding a percentage down. Used for batch sizes,
    /// `max_unavailable`, `max_failures` and `max_unreachable`, so no more
    /// instances go down or fail than the share the operator allowed.
    pub fn resolve_down(self, total: u32) -> u32 {
        match self {
            Amount::Count(n) => n,
            Amount::Percent(p) => clamp(u64::from(p) * u64::from(total) / 100),
        }
    }

    pub fn is_zero(self) -> bool {
        matches!(self, Amount::Count(0) | Amount::Percent(0))
    }
}

fn clamp(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Amount::Count(n) => write!(f, "{n}"),
            Amount::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl FromStr for Amount {
    type Err = AmountError;

    fn from_str(s: &str) -> Result<Amount, AmountError> {
        let t = s.trim();
        let err = || AmountError(s.to_string());
        let digits = |d: &str| {
            if d.is_empty() || !d.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err());
            }
            d.parse::<u32>().map_err(|_| err())
        };
        match t.strip_suffix('%') {
            Some(p) => digits(p.trim_end()).map(Amount::Percent),
            None => digits(t).map(Amount::Count),
        }
    }
}

/// Parses a batch list such as `1,25%,100%` (the last entry repeats).
pub fn parse_batches(s: &str) -> Result<Vec<Amount>, AmountError> {
    if s.trim().is_empty() {
        return Err(AmountError(s.to_string()));
    }
    s.split(',').map(str::parse).collect()
}

impl Serialize for Amount {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

struct AmountVisitor;

impl Visitor<'_> for AmountVisitor {
    type Value = Amount;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a count like 3 or a percentage like \"25%\"")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Amount, E> {
        v.parse().map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Amount, E> {
        u32::try_from(v)
            .map(Amount::Count)
            .map_err(|_| E::custom(AmountError(v.to_string())))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Amount, E> {
        u64::try_from(v)
            .map_err(|_| E::custom(AmountError(v.to_string())))
            .and_then(|v| self.visit_u64(v))
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Amount, D::Error> {
        d.deserialize_any(AmountVisitor)
    }
}

/// Serde for a batch list: accepts `"1,25%,100%"` or `[1, "25%", "100%"]`,
/// writes a list of strings.
pub mod batches_serde {
    use super::*;

    pub fn serialize<S: Serializer>(v: &[Amount], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v)
    }

    struct BatchesVisitor;

    impl<'de> Visitor<'de> for BatchesVisitor {
        type Value = Vec<Amount>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a batch list like \"1,25%,100%\" or [1, \"25%\", \"100%\"]")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<Amount>, E> {
            parse_batches(v).map_err(E::custom)
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Vec<Amount>, E> {
            AmountVisitor.visit_u64(v).map(|a| vec![a])
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Vec<Amount>, E> {
            AmountVisitor.visit_i64(v).map(|a| vec![a])
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Amount>, A::Error> {
            let mut out = Vec::new();
            while let Some(a) = seq.next_element::<Amount>()? {
                out.push(a);
            }
            Ok(out)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Amount>, D::Error> {
        d.deserialize_any(BatchesVisitor)
    }
}
