//! `kiq._kiq.Crontab`: the core's crontab (bindings only; `kiq.Crontab` adds datetimes).

use pyo3::prelude::*;

use super::errors::py_result;
use crate::crontab;

#[pyclass(module = "kiq._kiq", name = "Crontab", frozen, eq, hash)]
#[derive(PartialEq, Eq, Hash)]
pub struct Crontab {
    inner: crontab::Crontab,
}

#[pymethods]
impl Crontab {
    #[new]
    fn new(expr: &str) -> PyResult<Self> {
        py_result(crontab::Crontab::parse(expr)).map(|inner| Self { inner })
    }

    /// Whether the minute holding `secs` (epoch seconds, UTC) matches.
    fn matches(&self, secs: i64) -> bool {
        self.inner.matches(secs)
    }

    /// The first matching minute after `secs` (epoch seconds), or None.
    fn next_after(&self, secs: i64) -> Option<i64> {
        self.inner.next_after(secs)
    }

    fn __str__(&self) -> String {
        self.inner.to_string()
    }

    fn __repr__(&self) -> String {
        format!("Crontab({:?})", self.inner.to_string())
    }
}
