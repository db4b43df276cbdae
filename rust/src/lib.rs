//! kiq's core: Sidekiq's Redis protocol in plain Rust.
//!
//! Everything here is free of Python types; `python/` (behind the `python`
//! feature) holds the PyO3 bindings, which only convert and call in.

pub mod backtrace;
pub mod error;
pub mod job;
pub mod keys;
pub mod retry;
pub mod timestamp;

pub use error::{KiqError, Result};
