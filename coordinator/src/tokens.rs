//! Single-use, expiring join tokens. Only a sha256 of each token is stored,
//! so a copy of the data dir does not let anyone enrol a host. Use is
//! recorded with compare-and-swap, so two agents racing with one token
//! cannot both win.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::registry::now_ms;
use crate::store::{Store, StoreError};

const TOKENS: &str = "tokens/";
const PREFIX: &str = "drv1.";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct TokenRecord {
    created_by: String,
    created_at_ms: i64,
    expires_at_ms: i64,
    labels: BTreeMap<String, String>,
    used_at_ms: Option<i64>,
    used_by: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("unknown join token; create one with `drover token create`")]
    Unknown,
    #[error(
        "join token was already used (by host `{host}`); tokens are single-use, create a new one"
    )]
    Used { host: String },
    #[error("join token expired {ago} ago; create a new one with `drover token create`")]
    Expired { ago: String },
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("corrupt token record: {0}")]
    Corrupt(String),
}

impl TokenError {
    /// Whether the caller's token was at fault (as opposed to our store).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            TokenError::Unknown | TokenError::Used { .. } | TokenError::Expired { .. }
        )
    }
}

pub struct Tokens {
    store: Arc<dyn Store>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens").finish_non_exhaustive()
    }
}

fn key_of(token: &str) -> String {
    format!(
        "{TOKENS}{}",
        hex::encode(Sha256::digest(token.trim().as_bytes()))
    )
}

/// The record, if its token is neither used nor expired.
fn usable(bytes: &[u8]) -> Result<TokenRecord, TokenError> {
    let rec: TokenRecord =
        serde_json::from_slice(bytes).map_err(|e| TokenError::Corrupt(e.to_string()))?;
    if let Some(host) = rec.used_by {
        return Err(TokenError::Used { host });
    }
    let now = now_ms();
    if now >= rec.expires_at_ms {
        let ago = Duration::from_millis((now - rec.expires_at_ms) as u64);
        return Err(TokenError::Expired {
            ago: humantime::format_duration(Duration::from_secs(ago.as_secs().max(1))).to_string(),
        });
    }
    Ok(rec)
}

impl Tokens {
    pub fn new(store: Arc<dyn Store>) -> Tokens {
        Tokens { store }
    }

    /// Creates a token; returns it and its expiry (unix ms).
    pub async fn create(
        &self,
        ttl: Duration,
        labels: BTreeMap<String, String>,
        created_by: &str,
    ) -> Result<(String, i64), TokenError> {
        let secret: [u8; 32] = rand::random();
        let token = format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
        );
        let now = now_ms();
        let rec = TokenRecord {
            created_by: created_by.to_string(),
            created_at_ms: now,
            expires_at_ms: now + ttl.as_millis() as i64,
            labels,
            used_at_ms: None,
            used_by: None,
        };
        let bytes = serde_json::to_vec(&rec).map_err(|e| TokenError::Corrupt(e.to_string()))?;
        self.store.put(&key_of(&token), bytes).await?;
        Ok((token, rec.expires_at_ms))
    }

    /// Whether the token could be used now, without using it: one store
    /// read, so a caller can refuse a bad token before doing costly work.
    /// Only [`Tokens::consume`] decides (two hosts may both pass this).
    pub async fn check(&self, token: &str) -> Result<(), TokenError> {
        let bytes = self
            .store
            .get(&key_of(token))
            .await?
            .ok_or(TokenError::Unknown)?;
        usable(&bytes).map(drop)
    }

    /// Marks the token used by `host_id` and returns its labels.
    pub async fn consume(
        &self,
        token: &str,
        host_id: &str,
    ) -> Result<BTreeMap<String, String>, TokenError> {
        let key = key_of(token);
        let old = self.store.get(&key).await?.ok_or(TokenError::Unknown)?;
        let mut rec = usable(&old)?;
        let now = now_ms();
        rec.used_at_ms = Some(now);
        rec.used_by = Some(host_id.to_string());
        let new = serde_json::to_vec(&rec).map_err(|e| TokenError::Corrupt(e.to_string()))?;
        if !self
            .store
            .compare_and_swap(&key, Some(&old), Some(new))
            .await?
        {
            return Err(TokenError::Used {
                host: "another host (concurrently)".to_string(),
            });
        }
        Ok(rec.labels)
    }
}
