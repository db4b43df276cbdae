//! The PyO3 bindings: the only code in the crate that names Python types.
//! Each binding converts its arguments, calls one core function (with the GIL
//! released for anything that waits) and converts the result.

mod client;
mod convert;
mod cron;
mod errors;
mod gil;
mod options;
mod server;

use pyo3::prelude::*;

#[pymodule]
mod _kiq {
    use super::{Bound, PyModule, PyModuleMethods, PyResult, Python, errors, pyfunction};

    #[pymodule_export]
    use super::client::Client;
    #[pymodule_export]
    use super::cron::Crontab;
    #[pymodule_export]
    use super::errors::{
        BufferFullError, CodecError, ConfigError, ConnectionError, CrontabError, KiqError, ShutdownError, TimeoutError,
    };
    #[pymodule_export]
    use super::server::{Delivery, Server};

    /// Encodes backtrace lines as Sidekiq's `error_backtrace` (JSON, zlib, Base64).
    #[pyfunction]
    fn encode_backtrace(lines: Vec<String>) -> String {
        crate::backtrace::encode(&lines)
    }

    /// Decodes an `error_backtrace` value written by Sidekiq or kiq.
    #[pyfunction]
    fn decode_backtrace(value: &str) -> PyResult<Vec<String>> {
        errors::py_result(crate::backtrace::decode(value))
    }

    /// A new 24-hex-digit job id.
    #[pyfunction]
    fn new_jid() -> String {
        crate::job::new_jid()
    }

    /// Routes the core's log records at or above `level` ("debug", "info",
    /// "warning", "error", "off") into the queue read by `drain_logs`.
    #[pyfunction]
    fn set_log_level(level: &str) -> PyResult<()> {
        let filter = match level {
            "debug" => log::LevelFilter::Debug,
            "info" => log::LevelFilter::Info,
            "warning" => log::LevelFilter::Warn,
            "error" => log::LevelFilter::Error,
            "off" => log::LevelFilter::Off,
            other => {
                return Err(errors::ConfigError::new_err(format!("unknown log level {other:?}")));
            }
        };
        crate::logbridge::install(filter);
        Ok(())
    }

    /// Waits up to `timeout` seconds for core log records. Returns a list of
    /// `(level, target, message)` and how many records were dropped.
    #[pyfunction]
    fn drain_logs(py: Python<'_>, timeout: f64) -> (Vec<(String, String, String)>, u64) {
        let (records, dropped) =
            py.detach(|| crate::logbridge::drain(std::time::Duration::from_secs_f64(timeout.max(0.0))));
        let out = records.into_iter().map(|r| (r.level.as_str().to_ascii_lowercase(), r.target, r.message)).collect();
        (out, dropped)
    }

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add("__version__", env!("CARGO_PKG_VERSION"))?;
        Ok(())
    }
}
