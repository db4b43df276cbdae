//! A `kiq.WorkerOptions` (or the option fields of a `kiq.Job`) read by
//! attribute into the core's [`WorkerOptions`]: each value's Python type is
//! checked here, every rule on the values in `crate::worker`.

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyFloat, PyInt, PySequence, PyString};

use super::errors::{ConfigError, py_result};
use super::limiter::Throttle;
use super::options;
use crate::worker::{self, WorkerOptions};

/// The options a `kiq.WorkerOptions` sets.
pub(crate) fn worker_options(obj: &Bound<'_, PyAny>) -> PyResult<WorkerOptions> {
    let py = obj.py();
    let mut w = job_options(obj)?;
    if let Some(v) = field(obj, intern!(py, "dead"))? {
        w.dead = flag(&v, "dead")?;
    }
    if let Some(v) = field(obj, intern!(py, "backtrace"))? {
        w.backtrace = options::backtrace(&v)?;
    }
    if let Some(v) = field(obj, intern!(py, "retry_queue"))? {
        w.retry_queue = Some(text(&v, "retry_queue")?);
    }
    if let Some(v) = field(obj, intern!(py, "tags"))? {
        w.tags =
            v.extract().map_err(|_| ConfigError::new_err(format!("tags must be a list of str, not {}", shown(&v))))?;
    }
    if let Some(v) = field(obj, intern!(py, "name"))? {
        w.name = Some(text(&v, "name")?);
    }
    w.timeout = seconds(obj, intern!(py, "timeout"))?;
    w.hard_timeout = seconds(obj, intern!(py, "hard_timeout"))?;
    w.throttle = throttle(obj)?.map(|t| t.get().spec.clone());
    Ok(w)
}

/// The options a worker shares with a `kiq.Job` (all a `Job` has); the rest keep their defaults.
fn job_options(obj: &Bound<'_, PyAny>) -> PyResult<WorkerOptions> {
    let py = obj.py();
    let mut w = WorkerOptions::default();
    if let Some(v) = field(obj, intern!(py, "queue"))? {
        w.queue = text(&v, "queue")?;
    }
    if let Some(v) = field(obj, intern!(py, "retry"))? {
        w.retry = options::retry(&v)?;
    }
    w.unique_for = seconds(obj, intern!(py, "unique_for"))?;
    if let Some(v) = field(obj, intern!(py, "unique_until"))? {
        w.unique_until = py_result(worker::unique_until(&text(&v, "unique_until")?))?;
    }
    w.expires_in = seconds(obj, intern!(py, "expires_in"))?;
    if let Some(v) = field(obj, intern!(py, "encrypt"))? {
        w.encrypt = flag(&v, "encrypt")?;
    }
    Ok(w)
}

/// The core throttle behind a worker's `throttled` (its throttle with its rate), if any.
pub(crate) fn throttle<'py>(obj: &Bound<'py, PyAny>) -> PyResult<Option<Bound<'py, Throttle>>> {
    let py = obj.py();
    match field(obj, intern!(py, "throttled"))? {
        None => Ok(None),
        Some(t) => Ok(Some(t.getattr(intern!(py, "spec"))?.cast_into::<Throttle>()?)),
    }
}

/// Checks a `kiq.WorkerOptions`: raises `ConfigError` naming the first option that is wrong.
#[pyfunction]
pub fn check_worker_options(options: &Bound<'_, PyAny>) -> PyResult<()> {
    py_result(worker_options(options)?.check())
}

/// Checks a `kiq.Job`'s class name, arguments and options.
#[pyfunction]
pub fn check_job(job: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = job.py();
    let class = job.getattr(intern!(py, "class_name"))?;
    let class: String = class.extract().map_err(|_| not_text("class_name", &class))?;
    let args = job.getattr(intern!(py, "args"))?;
    if args.is_instance_of::<PyString>() || args.is_instance_of::<PyBytes>() || args.cast::<PySequence>().is_err() {
        return Err(ConfigError::new_err(format!(
            "a job's args must be a list or tuple, not {}",
            args.get_type().name()?
        )));
    }
    py_result(worker::check_job(&class, &job_options(job)?))
}

/// An attribute's value unless None.
fn field<'py>(obj: &Bound<'py, PyAny>, name: &Bound<'py, PyString>) -> PyResult<Option<Bound<'py, PyAny>>> {
    Ok(Some(obj.getattr(name)?).filter(|v| !v.is_none()))
}

fn text(v: &Bound<'_, PyAny>, name: &str) -> PyResult<String> {
    v.extract().map_err(|_| not_text(name, v))
}

fn not_text(name: &str, v: &Bound<'_, PyAny>) -> PyErr {
    ConfigError::new_err(format!("{name} must be a non-empty str, not {}", shown(v)))
}

fn shown(v: &Bound<'_, PyAny>) -> String {
    v.repr().map(|r| r.to_string()).unwrap_or_default()
}

fn flag(v: &Bound<'_, PyAny>, name: &str) -> PyResult<bool> {
    match v.cast::<PyBool>() {
        Ok(b) => Ok(b.is_true()),
        Err(_) => Err(ConfigError::new_err(format!("{name} must be True or False, not {}", v.repr()?))),
    }
}

/// A duration in seconds (a `timedelta` was turned into seconds in Python); its sign is the core's check.
fn seconds(obj: &Bound<'_, PyAny>, name: &Bound<'_, PyString>) -> PyResult<Option<f64>> {
    let Some(v) = field(obj, name)? else { return Ok(None) };
    if v.is_instance_of::<PyBool>() || !(v.is_instance_of::<PyInt>() || v.is_instance_of::<PyFloat>()) {
        return Err(ConfigError::new_err(format!("{name} must be a positive number of seconds, not {}", v.repr()?)));
    }
    // A huge int becomes inf, which the core refuses with its message.
    Ok(Some(v.extract::<f64>().unwrap_or(f64::INFINITY)))
}
