//! The PyO3 bindings: the only code in the crate that names Python types.
//! Each binding converts its arguments, calls one core function (with the GIL
//! released for anything that waits) and converts the result.

mod activejob;
mod admin;
mod batch;
mod client;
mod convert;
mod cron;
mod crypto;
mod errors;
mod fate;
mod gil;
mod jobspec;
mod limiter;
mod marshal;
mod options;
mod runloop;
mod server;
mod worker;

use pyo3::prelude::*;

#[pymodule]
mod _kiq {
    use super::{Bound, PyModule, PyModuleMethods, PyResult, Python, errors, pyfunction};

    #[pymodule_export]
    use super::activejob::{active_job_args, unwrap_active_job};
    #[pymodule_export]
    use super::admin::{Admin, ClassMetrics, JobView, Page, ProcessView, QueueStat, Summary, WorkView};
    #[pymodule_export]
    use super::batch::{
        BatchBuilder, batch_ancestors, batch_invalidate, batch_invalidated, batch_list, batch_status,
        check_batch_callback, new_bid,
    };
    #[pymodule_export]
    use super::client::Client;
    #[pymodule_export]
    use super::cron::Crontab;
    #[pymodule_export]
    use super::crypto::{Keyring, read_envelope};
    #[pymodule_export]
    use super::errors::{
        BatchError, BufferFullError, CodecError, ConfigError, ConnectionError, CrontabError, DecryptionError, KiqError,
        OverLimit, ShutdownError, TimeoutError, UndeliverableError,
    };
    #[pymodule_export]
    use super::fate::Fate;
    #[pymodule_export]
    use super::limiter::{Grant, Limiter, LimiterState, Throttle, limiter_states};
    #[pymodule_export]
    use super::runloop::run_ready;
    #[pymodule_export]
    use super::server::{Delivery, Server};
    #[pymodule_export]
    use super::worker::{check_job, check_worker_options};

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

    /// The payload a push of `job` (a `kiq.Job`) would write, without Redis
    /// (sandbox mode): returns `(jid, payload, at)`, `at` None for a job to run now.
    #[pyfunction]
    #[pyo3(signature = (job, *, at = None, timestamps = "seconds", keyring = None))]
    fn encode_job(
        job: &Bound<'_, pyo3::PyAny>,
        at: Option<f64>,
        timestamps: &str,
        keyring: Option<Bound<'_, super::crypto::Keyring>>,
    ) -> PyResult<(String, String, Option<f64>)> {
        // With a keyring the job is encrypted, as a push of `encrypt=True` would.
        let seal = keyring.map(|k| k.get().inner.clone());
        let job = super::jobspec::new_job(job, true, seal)?;
        let unit = super::options::unit(timestamps)?;
        let keys = crate::keys::Keys::default();
        let (jid, item, _) =
            errors::py_result(crate::client::prepare_full(&job, at, crate::timestamp::now(), unit, &keys))?;
        Ok((jid, item.payload, item.at))
    }

    /// What the retry path does with a failed payload, without Redis (sandbox
    /// mode): returns its `Fate` and the payload to keep (None when discarded).
    #[pyfunction]
    #[pyo3(signature = (payload, queue, error_class, error_message, *, backtrace = None, worker = None, max_retries = 25, timestamps = "seconds"))]
    #[allow(clippy::too_many_arguments)]
    fn decide_failure(
        payload: String,
        queue: &str,
        error_class: String,
        error_message: String,
        backtrace: Option<Vec<String>>,
        worker: Option<&Bound<'_, pyo3::PyAny>>,
        max_retries: u32,
        timestamps: &str,
    ) -> PyResult<(super::fate::Fate, Option<String>)> {
        use crate::retry::{Disposition, Failure, RetryPolicy, on_failure};
        let job = errors::py_result(crate::job::Payload::parse(payload))?;
        let worker = worker.map(super::worker::worker_options).transpose()?.unwrap_or_default();
        let unit = super::options::unit(timestamps)?;
        let policy = RetryPolicy { max_retries, unit, jitter: super::options::jitter(unit), ..RetryPolicy::default() };
        let failure = Failure { error_class, error_message, backtrace: backtrace.unwrap_or_default() };
        let (disposition, fate) =
            on_failure(job, queue, &failure, &worker, &policy, crate::timestamp::now(), rand::random());
        let payload = match disposition {
            Disposition::Retry { payload, .. } | Disposition::Dead { payload } => Some(payload),
            Disposition::Discard | Disposition::Dropped => None,
        };
        Ok((fate.into(), payload))
    }

    /// A job's `args` as they may be shown (an encrypted job's last argument
    /// masked as Sidekiq's Web UI does); `[]` when the payload has none.
    #[pyfunction]
    fn display_args<'py>(py: Python<'py>, payload: &str) -> PyResult<Bound<'py, pyo3::PyAny>> {
        let job = errors::py_result(crate::job::Payload::parse(payload))?;
        super::convert::json_to_py(py, &crate::admin::display_args(&job))
    }

    /// What a job over a rate limit becomes, without Redis (sandbox mode):
    /// `(at, payload)` of the job rescheduled, or None past `max_reschedules`.
    #[pyfunction]
    #[pyo3(signature = (payload, *, max_reschedules = 20, delay = None))]
    fn decide_reschedule(payload: String, max_reschedules: u32, delay: Option<f64>) -> PyResult<Option<(f64, String)>> {
        let job = errors::py_result(crate::job::Payload::parse(payload))?;
        let r = crate::overlimit::reschedule(job, max_reschedules, delay, crate::timestamp::now(), rand::random());
        Ok(r.map(|r| (r.at, r.payload)))
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

    /// Whether this process has started the core's runtime (its threads): a
    /// process that forks must not have (the swarm's parent checks).
    #[pyfunction]
    fn runtime_started() -> bool {
        crate::runtime::started()
    }

    /// Makes a `drain_logs` call waiting in another thread return now.
    #[pyfunction]
    fn wake_logs() {
        crate::logbridge::wake();
    }

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add("__version__", env!("CARGO_PKG_VERSION"))?;
        // "rustc <version>, <target>, <profile>", written by build.rs.
        m.add("BUILD_INFO", env!("KIQ_BUILD_INFO"))?;
        // Wire names the Python layer matches on, spelled once in the core.
        m.add("ACTIVE_JOB_WRAPPER", crate::activejob::WRAPPER)?;
        m.add("SIDEKIQ_ACTIVE_JOB_WRAPPER", crate::activejob::SIDEKIQ_WRAPPER)?;
        m.add("TRACE_CONTEXT_FIELDS", pyo3::types::PyTuple::new(m.py(), crate::job::field::TRACE_CONTEXT)?)?;
        m.add("ENCRYPT_FIELD", crate::job::field::ENCRYPT)?;
        m.add("ENCRYPTED_DATA", crate::crypto::REDACTED)?;
        m.add("BATCH_FIELD", crate::job::field::BATCH)?;
        m.add("PRO_BATCH_FIELD", crate::job::field::BID)?;
        m.add("DEFAULT_MAX_RESCHEDULES", crate::overlimit::DEFAULT_MAX_RESCHEDULES)?;
        Ok(())
    }
}
