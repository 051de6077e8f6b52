//! The identity scheme: every certificate drover issues carries exactly one
//! URI SAN `drover://<role>/<name>`. Authorization reads the role and name
//! from the verified peer certificate, never from message fields.

use std::fmt;
use std::str::FromStr;

/// Scheme prefix of every drover identity URI.
pub const SCHEME: &str = "drover://";

/// What a certificate holder may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// An agent; may speak only for its own host on the agent API.
    Agent,
    /// A person or pipeline that may read and change the fleet.
    Operator,
    /// A person or dashboard that may only read.
    Viewer,
    /// A coordinator (server certificate).
    Coordinator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
            Role::Coordinator => "coordinator",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "agent" => Ok(Role::Agent),
            "operator" => Ok(Role::Operator),
            "viewer" => Ok(Role::Viewer),
            "coordinator" => Ok(Role::Coordinator),
            other => Err(IdentityError::UnknownRole(other.to_string())),
        }
    }
}

/// A role plus a name, e.g. `drover://agent/web-01`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    pub role: Role,
    pub name: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("identity URI must start with `drover://`, got `{0}`")]
    Scheme(String),
    #[error("unknown role `{0}` (expected agent, operator, viewer or coordinator)")]
    UnknownRole(String),
    #[error(
        "invalid name `{0}`: use 1-63 characters from a-z, A-Z, 0-9, `-`, `_` and `.`, starting with a letter or digit"
    )]
    Name(String),
}

/// Whether `name` is acceptable as a host id or identity name. Kept narrow so
/// names are safe in URIs, file names, metric labels and store keys.
pub fn valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl Identity {
    pub fn new(role: Role, name: impl Into<String>) -> Result<Self, IdentityError> {
        let name = name.into();
        if !valid_name(&name) {
            return Err(IdentityError::Name(name));
        }
        Ok(Identity { role, name })
    }

    pub fn agent(host_id: impl Into<String>) -> Result<Self, IdentityError> {
        Self::new(Role::Agent, host_id)
    }

    /// The URI SAN value.
    pub fn uri(&self) -> String {
        format!("{SCHEME}{}/{}", self.role, self.name)
    }

    /// Parses a URI SAN value.
    pub fn parse_uri(uri: &str) -> Result<Self, IdentityError> {
        let rest = uri
            .strip_prefix(SCHEME)
            .ok_or_else(|| IdentityError::Scheme(uri.to_string()))?;
        let (role, name) = rest
            .split_once('/')
            .ok_or_else(|| IdentityError::Scheme(uri.to_string()))?;
        Identity::new(role.parse()?, name)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.role, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let id = Identity::agent("web-01").expect("valid");
        assert_eq!(id.uri(), "drover://agent/web-01");
        assert_eq!(Identity::parse_uri(&id.uri()), Ok(id));
    }

    #[test]
    fn refuses_bad_uris() {
        assert!(Identity::parse_uri("spiffe://agent/x").is_err());
        assert!(Identity::parse_uri("drover://root/x").is_err());
        assert!(Identity::parse_uri("drover://agent/../etc").is_err());
        assert!(Identity::parse_uri("drover://agent/a/b").is_err());
        assert!(Identity::parse_uri("drover://agent/").is_err());
    }
}
