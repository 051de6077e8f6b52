//! Local checks of `--label key=value` and `-l SELECTOR`, so a typo is
//! reported (exit 2) before anything is sent. The grammar is the one the
//! coordinator parses with ([`drover_model::selector`], shared), so the
//! two cannot drift apart.

use drover_model::selector::{Selector, parse_labels};

/// Parses one `--label key=value` (clap value parser).
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    parse_labels(&[s.to_string()])
        .map_err(|e| e.to_string())?
        .into_iter()
        .next()
        .ok_or_else(|| format!("expected KEY=VALUE (e.g. env=prod), got `{s}`"))
}

/// Checks selector syntax (clap value parser): `env=prod,zone in (a,b),!canary`.
/// An empty selector matches every host.
pub fn parse_selector(s: &str) -> Result<String, String> {
    s.parse::<Selector>().map_err(|e| {
        format!(
            "{e}; expected KEY=VALUE, KEY!=VALUE, KEY in (V1,V2), KEY notin (V1,V2), KEY or !KEY, joined by commas"
        )
    })?;
    Ok(s.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_selectors_use_the_coordinator_grammar() {
        assert_eq!(parse_label("env=prod"), Ok(("env".into(), "prod".into())));
        assert!(parse_label("env").is_err());
        assert!(parse_label("bad key=x").is_err());
        assert_eq!(
            parse_selector(" env=prod,zone in (a,b),!canary "),
            Ok("env=prod,zone in (a,b),!canary".into())
        );
        let err = parse_selector("zone in (a,b").expect_err("unbalanced");
        assert!(err.contains("column"), "{err}");
    }
}
