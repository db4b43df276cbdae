//! The one error type of the core. The Python bindings map each variant onto
//! the `kiq.errors` hierarchy in exactly one place (`python/errors.rs`).

use std::fmt;

/// Every failure the core can report.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KiqError {
    /// Redis could not be reached, or a command failed on the wire.
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// A job payload (or a value for one) is not what Sidekiq's format allows.
    #[error("{0}")]
    Codec(String),
    /// A setting given to kiq is invalid.
    #[error("{0}")]
    Config(String),
    /// A crontab expression is invalid (a kind of `Config`): the message names the field and text.
    #[error("{0}")]
    Crontab(String),
    /// A wait ran out of time.
    #[error("{0}")]
    Timeout(String),
    /// The component was stopped and accepts no more work.
    #[error("{0}")]
    Shutdown(String),
    /// The push buffer stayed full for its whole timeout.
    #[error("{0}")]
    BufferFull(String),
    /// Redis refused jobs for a reason retrying cannot fix (a key of the
    /// wrong type, an ACL); they were kept aside, never dropped.
    #[error("{0}")]
    Undeliverable(String),
    /// An encrypted job argument could not be decrypted (never quotes plaintext).
    #[error("{0}")]
    Decryption(String),
    /// A batch is not in a state that allows what was asked (expired or
    /// unknown, already succeeded).
    #[error("{0}")]
    Batch(String),
    /// A rate limiter had no room within its `wait_timeout`.
    #[error("{0}")]
    OverLimit(String),
}

impl KiqError {
    pub fn codec(msg: impl fmt::Display) -> Self {
        Self::Codec(msg.to_string())
    }

    pub fn config(msg: impl fmt::Display) -> Self {
        Self::Config(msg.to_string())
    }
}

impl From<serde_json::Error> for KiqError {
    fn from(e: serde_json::Error) -> Self {
        Self::Codec(format!("invalid JSON: {e}"))
    }
}

pub type Result<T> = std::result::Result<T, KiqError>;
