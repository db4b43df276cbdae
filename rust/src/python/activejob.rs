//! ActiveJob envelopes for Python (bindings only; the logic is `crate::activejob`).

use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::convert::{args_json, json_to_py, value_json};
use super::errors::{CodecError, py_result};
use crate::activejob::{self, Envelope};

/// `(job_class, args, kwargs)` of a wrapper job's `args` JSON; kwargs None when it had none.
#[pyfunction]
pub fn unwrap_active_job<'py>(
    py: Python<'py>,
    args: &str,
) -> PyResult<(String, Bound<'py, PyAny>, Option<Bound<'py, PyAny>>)> {
    let (class, args, kwargs) = py_result(activejob::unwrap(args))?.into_json();
    let kwargs = kwargs.map(|k| json_to_py(py, &k)).transpose()?;
    Ok((class, json_to_py(py, &args)?, kwargs))
}

/// The `args` of a wrapper job that runs Ruby ActiveJob class `job_class`.
#[pyfunction]
#[pyo3(signature = (job_class, args, kwargs = None, *, queue = "default", priority = None, locale = "en", timezone = "UTC"))]
#[allow(clippy::too_many_arguments)]
pub fn active_job_args<'py>(
    py: Python<'py>,
    job_class: &str,
    args: &Bound<'py, PyAny>,
    kwargs: Option<&Bound<'py, PyAny>>,
    queue: &str,
    priority: Option<i64>,
    locale: &str,
    timezone: &str,
) -> PyResult<Bound<'py, PyAny>> {
    let args: Vec<serde_json::Value> = py_result(serde_json::from_str(&args_json(args)?).map_err(Into::into))?;
    let kwargs = match kwargs {
        None => None,
        Some(k) if k.cast::<PyDict>().is_ok() => {
            let text = value_json(k, "kwargs")?;
            Some(py_result(serde_json::from_str(&text).map_err(Into::into))?)
        }
        Some(_) => return Err(CodecError::new_err("ActiveJob kwargs must be a dict with str keys")),
    };
    let env = Envelope {
        class: job_class,
        queue,
        priority,
        locale,
        timezone,
        enqueued_at: crate::timestamp::now(),
        job_id: activejob::new_job_id(),
    };
    json_to_py(py, &py_result(activejob::wrap(&env, args, kwargs))?.to_string())
}
