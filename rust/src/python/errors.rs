//! The Python exception hierarchy, and the one mapping from `KiqError` to it.

use pyo3::PyErr;
use pyo3::create_exception;
use pyo3::exceptions::PyException;

use crate::error::KiqError as CoreError;

create_exception!(kiq.errors, KiqError, PyException, "Base class of every error kiq raises.");
create_exception!(kiq.errors, ConnectionError, KiqError, "Redis could not be reached or a command failed.");
create_exception!(kiq.errors, CodecError, KiqError, "A job or argument does not fit Sidekiq's JSON format.");
create_exception!(kiq.errors, ConfigError, KiqError, "A setting given to kiq is invalid.");
create_exception!(
    kiq.errors,
    CrontabError,
    ConfigError,
    "A crontab expression is invalid; the message names the field and text."
);
create_exception!(kiq.errors, TimeoutError, KiqError, "A wait ran out of time.");
create_exception!(kiq.errors, ShutdownError, KiqError, "The component was stopped and accepts no more work.");
create_exception!(
    kiq.errors,
    BufferFullError,
    KiqError,
    "The push buffer stayed full (Redis away or too slow) for its whole timeout."
);
create_exception!(
    kiq.errors,
    DecryptionError,
    KiqError,
    "An encrypted job argument could not be decrypted: unknown key version, altered data, or a value outside the \
     Marshal subset kiq reads. The job takes the retry path; the message never quotes the plaintext."
);

create_exception!(
    kiq.errors,
    BatchError,
    KiqError,
    "A batch cannot do what was asked: it expired or never existed, or it already succeeded."
);

create_exception!(
    kiq.errors,
    OverLimit,
    KiqError,
    "A rate limiter had no room within its wait_timeout. Raised inside a job, it reschedules the job (Sidekiq \
     Enterprise's rule) instead of failing it."
);

create_exception!(
    kiq.errors,
    UndeliverableError,
    KiqError,
    "Redis refused jobs for a reason retrying cannot fix (a key of the wrong type, an ACL); they were kept aside."
);

/// Wraps a core error so `?` converts it inside `#[pymethods]`.
pub struct PyKiqError(pub CoreError);

impl From<CoreError> for PyKiqError {
    fn from(e: CoreError) -> Self {
        Self(e)
    }
}

impl From<PyKiqError> for PyErr {
    fn from(e: PyKiqError) -> Self {
        let msg = e.0.to_string();
        match e.0 {
            CoreError::Redis(_) => ConnectionError::new_err(msg),
            CoreError::Codec(_) => CodecError::new_err(msg),
            CoreError::Config(_) => ConfigError::new_err(msg),
            CoreError::Crontab(_) => CrontabError::new_err(msg),
            CoreError::Timeout(_) => TimeoutError::new_err(msg),
            CoreError::Shutdown(_) => ShutdownError::new_err(msg),
            CoreError::BufferFull(_) => BufferFullError::new_err(msg),
            CoreError::Undeliverable(_) => UndeliverableError::new_err(msg),
            CoreError::Decryption(_) => DecryptionError::new_err(msg),
            CoreError::Batch(_) => BatchError::new_err(msg),
            CoreError::OverLimit(_) => OverLimit::new_err(msg),
        }
    }
}

/// Converts a core result for returning to Python.
pub fn py_result<T>(r: crate::Result<T>) -> pyo3::PyResult<T> {
    r.map_err(|e| PyKiqError(e).into())
}
