//! kiq's core: Sidekiq's Redis protocol in plain Rust.
//!
//! Everything here is free of Python types; `python/` (behind the `python`
//! feature) holds the PyO3 bindings, which only convert and call in.

pub mod ack;
pub mod activejob;
pub mod admin;
pub mod admit;
pub mod args;
pub mod backlog;
pub mod backtrace;
pub mod batch;
pub mod batches;
pub mod browse;
pub mod buffer;
pub mod bulk;
pub mod capsule;
pub mod client;
pub mod control;
pub mod crontab;
pub mod crypto;
pub mod deadletter;
pub mod error;
pub mod exec;
pub mod fetch;
pub mod fresh;
pub mod health;
pub mod heartbeat;
pub mod isolation;
pub mod job;
pub mod jobview;
pub mod keys;
pub mod lane;
pub mod leader;
pub mod limiter;
pub mod limiter_state;
pub mod limits;
pub mod logbridge;
pub mod marshal;
pub mod metrics;
pub mod newjob;
pub mod orphans;
pub mod overlimit;
pub mod overview;
pub mod periodic;
pub mod poison;
pub mod pool;
pub mod producer;
pub mod retry;
pub mod runtime;
pub mod scheduled;
pub mod scripts;
pub mod sentinel;
pub mod server;
pub mod spool;
pub mod throttle;
pub mod timestamp;
pub mod unfetch;
pub mod wip;
pub mod work;
pub mod worker;

pub use error::{KiqError, Result};

#[cfg(feature = "python")]
mod python;
