//! A `kiq.Job` (or `kiq.app.PeriodicEntry`) read by attribute into the core's
//! [`NewJob`]: the one conversion of a job spec; its checks are the core's.

use std::sync::Arc;

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::convert::{args_json, value_json};
use super::errors::{ConfigError, py_result};
use super::marshal::sealed_args;
use super::options;
use crate::crypto::Keyring;
use crate::job::{NewJob, Retry};
use crate::producer::Extras;

/// Sets a job's arguments: as JSON, or (`seal`) with the last one to be encrypted at each push.
pub(crate) fn set_args(job: &mut NewJob, args: &Bound<'_, PyAny>, seal: Option<Arc<Keyring>>) -> PyResult<()> {
    match seal {
        None => job.args = args_json(args)?,
        Some(keyring) => {
            let (head, seal) = sealed_args(args, keyring)?;
            job.args = head;
            job.encrypt = Some(seal);
        }
    }
    Ok(())
}

/// Whether the spec asks for `encrypt=True`.
pub(crate) fn encrypted(spec: &Bound<'_, PyAny>) -> PyResult<bool> {
    spec.getattr(intern!(spec.py(), "encrypt"))?.is_truthy()
}

/// The job `spec` describes; `args` read from it unless `with_args` is false
/// (a bulk push's template). `seal` encrypts the last argument.
pub(crate) fn new_job(spec: &Bound<'_, PyAny>, with_args: bool, seal: Option<Arc<Keyring>>) -> PyResult<NewJob> {
    let py = spec.py();
    let mut job = NewJob::new(spec.getattr(intern!(py, "class_name"))?.extract::<String>()?, String::new());
    if with_args {
        set_args(&mut job, &spec.getattr(intern!(py, "args"))?, seal)?;
    } else {
        "[]".clone_into(&mut job.args);
    }
    job.queue = spec.getattr(intern!(py, "queue"))?.extract()?;
    let retry = spec.getattr(intern!(py, "retry"))?;
    job.retry = if retry.is_none() { Retry::Default } else { options::retry(&retry)? };
    job.jid = spec.getattr(intern!(py, "jid"))?.extract()?;
    let opts = spec.getattr(intern!(py, "options"))?;
    if let Ok(d) = opts.cast::<PyDict>() {
        // Most jobs have no options: an empty dict sets up no iteration.
        for (k, v) in (!d.is_empty()).then(|| d.iter()).into_iter().flatten() {
            push_option(&mut job, &k, &v)?;
        }
    } else if !opts.is_none() {
        for pair in opts.call_method0(intern!(py, "items"))?.try_iter()? {
            let (k, v): (Bound<'_, PyAny>, Bound<'_, PyAny>) = pair?.extract()?;
            push_option(&mut job, &k, &v)?;
        }
    }
    let unique_for: Option<f64> = spec.getattr(intern!(py, "unique_for"))?.extract()?;
    // unique_until means nothing without unique_for.
    let until: Option<String> = match unique_for {
        Some(_) => spec.getattr(intern!(py, "unique_until"))?.extract()?,
        None => None,
    };
    let extras = Extras {
        unique_for,
        unique_until: until.as_deref(),
        expires_in: spec.getattr(intern!(py, "expires_in"))?.extract()?,
    };
    py_result(extras.apply(&mut job))?;
    // Args and option values were just written by kiq's own encoder.
    py_result(job.validate_names())?;
    Ok(job)
}

fn push_option(job: &mut NewJob, k: &Bound<'_, PyAny>, v: &Bound<'_, PyAny>) -> PyResult<()> {
    let name: String = k.extract().map_err(|_| ConfigError::new_err("job option names must be str"))?;
    let value = value_json(v, &name)?;
    job.options.push((name, value));
    Ok(())
}
