//! How failures become exit codes: 0 ok, 1 failure (refused, not found,
//! unreachable), 2 usage (bad flags, bad config file, bad selector), 3 lost
//! contact with the coordinator while following a rollout (its outcome is
//! unknown).
//!
//! Commands return `anyhow::Error`; a usage problem is one whose root cause
//! is a [`UsageError`] (a lost contact one whose cause is a [`LostContact`]),
//! so context added on the way up does not change the exit code.

/// The operator asked for something malformed; exit 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Shorthand for an `anyhow::Error` that exits 2.
pub fn usage(msg: impl Into<String>) -> anyhow::Error {
    UsageError(msg.into()).into()
}

/// A rollout was being followed and the coordinator could not be reached
/// again in the time allowed; the rollout goes on, its outcome unknown to
/// this process. Exit 3, so that scripts can tell it from a failed rollout.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LostContact(pub String);

pub const EXIT_FAILURE: i32 = 1;
pub const EXIT_USAGE: i32 = 2;
pub const EXIT_LOST_CONTACT: i32 = 3;

pub fn exit_code(err: &anyhow::Error) -> i32 {
    if err.chain().any(|e| e.is::<UsageError>()) {
        EXIT_USAGE
    } else if err.chain().any(|e| e.is::<LostContact>()) {
        EXIT_LOST_CONTACT
    } else {
        EXIT_FAILURE
    }
}

/// The error and its causes on one line, `: `-separated, skipping a cause
/// whose text its parent already shows (many library errors print their
/// source in their own message too).
pub fn render(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if text.is_empty() || out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn usage_survives_context() {
        let err: anyhow::Result<()> = Err(usage("bad selector"));
        let err = err.context("list hosts").expect_err("error");
        assert_eq!(exit_code(&err), EXIT_USAGE);
        assert_eq!(format!("{err:#}"), "list hosts: bad selector");
        assert_eq!(exit_code(&anyhow::anyhow!("refused")), EXIT_FAILURE);
        let lost: anyhow::Result<()> = Err(LostContact("gone".into()).into());
        let lost = lost.context("follow rollout r7").expect_err("error");
        assert_eq!(exit_code(&lost), EXIT_LOST_CONTACT);
    }

    #[test]
    fn render_skips_repeated_causes() {
        #[derive(Debug, thiserror::Error)]
        #[error("ca/ca.pem: {source}")]
        struct Io {
            source: std::io::Error,
        }
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let err = anyhow::Error::from(Io { source: io }).context("load CA");
        assert_eq!(render(&err), "load CA: ca/ca.pem: no such file");
    }
}
