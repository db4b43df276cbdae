//! Job option values given from Python: `retry`, `backtrace`, timestamp units.

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyInt};

use super::errors::ConfigError;
use crate::job::{Backtrace, Retry};
use crate::retry::Jitter;
use crate::timestamp::TimestampUnit;

/// `retry=True/False/N`.
pub fn retry(value: &Bound<'_, PyAny>) -> PyResult<Retry> {
    if let Ok(b) = value.cast::<PyBool>() {
        return Ok(if b.is_true() { Retry::Default } else { Retry::Never });
    }
    if value.cast::<PyInt>().is_ok() {
        let n: i64 = value.extract()?;
        return u32::try_from(n)
            .map(Retry::Times)
            .map_err(|_| ConfigError::new_err(format!("retry must be True, False or a count >= 0, not {n}")));
    }
    Err(ConfigError::new_err(format!("retry must be True, False or an int, not {}", value.repr()?)))
}

/// `backtrace=True/False/N` (lines kept).
pub fn backtrace(value: &Bound<'_, PyAny>) -> PyResult<Backtrace> {
    if let Ok(b) = value.cast::<PyBool>() {
        return Ok(if b.is_true() { Backtrace::All } else { Backtrace::Off });
    }
    match value.extract::<i64>() {
        Ok(0) => Ok(Backtrace::Off),
        Ok(n) if n > 0 => Ok(Backtrace::Lines(n as usize)),
        _ => Err(ConfigError::new_err(format!("backtrace must be True, False or a line count, not {}", value.repr()?))),
    }
}

/// `timestamps="seconds"|"milliseconds"`.
pub fn unit(value: &str) -> PyResult<TimestampUnit> {
    super::errors::py_result(TimestampUnit::parse(value))
}

/// The retry jitter that goes with the timestamp unit's Sidekiq generation.
pub fn jitter(unit: TimestampUnit) -> Jitter {
    match unit {
        TimestampUnit::Seconds => Jitter::Sidekiq7,
        TimestampUnit::Millis => Jitter::Sidekiq8,
    }
}
