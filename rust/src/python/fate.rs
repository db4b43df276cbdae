//! `kiq._kiq.Fate`: where a failed job went, as `Server.fail` returns it.

use pyo3::prelude::*;

use crate::retry;

/// Where a failed job went: `went` is "retry", "dead" or "discard".
#[pyclass(module = "kiq._kiq", frozen, get_all)]
pub struct Fate {
    went: &'static str,
    /// The job's `retry_count` after this failure (0 after its first).
    retry_count: i64,
    /// Retries it may have; None when a `retry_for` window limits it instead.
    max_retries: Option<u32>,
    /// When the next retry runs (epoch seconds), when it went to the retry set.
    retry_at: Option<f64>,
}

impl From<retry::Fate> for Fate {
    fn from(f: retry::Fate) -> Self {
        Self { went: f.went.name(), retry_count: f.retry_count, max_retries: f.max_retries, retry_at: f.retry_at }
    }
}

#[pymethods]
impl Fate {
    fn __repr__(&self) -> String {
        format!(
            "Fate(went={:?}, retry_count={}, max_retries={:?}, retry_at={:?})",
            self.went, self.retry_count, self.max_retries, self.retry_at
        )
    }
}
