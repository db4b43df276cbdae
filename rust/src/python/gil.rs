//! The single door from Python into the core: release the GIL, run the core
//! call (blocking on the runtime for async ones), convert the error.

use std::future::Future;

use pyo3::prelude::*;

use super::errors::py_result;
use crate::runtime;

/// Runs `fut` on the core runtime with the GIL released.
pub fn block_on<T, F>(py: Python<'_>, fut: F) -> PyResult<T>
where
    F: Future<Output = crate::Result<T>> + Send,
    T: Send,
{
    py_result(py.detach(|| runtime::get().block_on(fut)))
}

/// Runs a synchronous core call with the GIL released.
pub fn run<T, F>(py: Python<'_>, f: F) -> PyResult<T>
where
    F: FnOnce() -> crate::Result<T> + Send,
    T: Send,
{
    py_result(py.detach(f))
}
