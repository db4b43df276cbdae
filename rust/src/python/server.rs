//! `kiq._kiq.Server` and `Delivery`: the processing side, for the Python
//! thread pool (bindings only; the logic is `crate::server`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString};

use super::client::Client;
use super::convert::value_to_py;
use super::errors::{ShutdownError, py_result};
use super::fate::Fate;
use super::jobspec;
use super::{gil, options};
use crate::capsule::Capsule;
use crate::crontab;
use crate::heartbeat::{BeatConfig, ProcessInfo};
use crate::job::field;
use crate::lane::{self, Prefetch, Take};
use crate::periodic::{Clock, Entry};
use crate::retry::{Failure, RetryPolicy};
use crate::runtime;
use crate::scheduled::PollConfig;
use crate::server::{self, ServerConfig};
use crate::timestamp;
use crate::worker::Workers;

/// One job handed to a Python thread.
#[pyclass(module = "kiq._kiq", frozen)]
pub struct Delivery {
    inner: Mutex<Option<Box<lane::Delivery>>>,
    /// The job's `class` as written by its producer.
    #[pyo3(get)]
    pub(super) class_name: Py<PyString>,
    #[pyo3(get)]
    pub(super) jid: Py<PyString>,
    /// The queue the job was fetched from.
    #[pyo3(get)]
    queue: Py<PyString>,
    /// Index of that queue in the server's queue list.
    #[pyo3(get)]
    lane: usize,
    /// Epoch seconds after which the job must not start (`expires_at`), if any.
    #[pyo3(get)]
    pub(super) expires_at: Option<f64>,
    /// The decoded arguments.
    #[pyo3(get)]
    pub(super) args: Py<PyList>,
    /// Keyword arguments (a Ruby ActiveJob job's keywords); None for Sidekiq jobs.
    #[pyo3(get)]
    pub(super) kwargs: Option<Py<PyDict>>,
    /// On a batch callback job, its event ("success", "complete", "death"); else None.
    #[pyo3(get)]
    pub(super) batch_event: Option<&'static str>,
    /// The job's batch was invalidated: it is to be skipped (`Server.skip`), not run.
    #[pyo3(get)]
    pub(super) batch_invalidated: bool,
}

impl Delivery {
    fn take(&self) -> PyResult<Box<lane::Delivery>> {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .ok_or_else(|| ShutdownError::new_err("this job was already completed, failed or abandoned"))
    }

    fn with<T>(&self, f: impl FnOnce(&lane::Delivery) -> T) -> Option<T> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner).as_deref().map(f)
    }
}

#[pymethods]
impl Delivery {
    /// An async job's coroutine starts now: its run time (for the metrics,
    /// and for whether its queue's jobs are short) counts from here, not
    /// from when a thread handed it to the loop.
    fn clock_start(&self) {
        if let Some(d) = self.inner.lock().unwrap_or_else(PoisonError::into_inner).as_mut() {
            d.started = Some(Instant::now());
        }
    }

    /// An async job's coroutine returned (or raised): its run time ends here.
    fn clock_stop(&self) {
        if let Some(d) = self.inner.lock().unwrap_or_else(PoisonError::into_inner).as_mut() {
            d.took = d.started.map(|t| t.elapsed());
        }
    }

    /// Whether the job was completed, failed, expired or abandoned already.
    #[getter]
    fn settled(&self) -> bool {
        self.with(|_| ()).is_none()
    }

    /// The payload exactly as stored in Redis (None once settled).
    #[getter]
    fn payload(&self) -> Option<String> {
        self.with(|d| d.payload.source().to_owned())
    }

    /// The job's trace context fields (`traceparent`, `tracestate`, `baggage`) that are strings.
    #[getter]
    fn trace_context(&self) -> Vec<(&'static str, String)> {
        self.with(|d| {
            field::TRACE_CONTEXT
                .iter()
                .filter_map(|&k| d.payload.get(k).and_then(|v| serde_json::from_str::<String>(v).ok()).map(|v| (k, v)))
                .collect()
        })
        .unwrap_or_default()
    }

    /// Whether the job's last argument was encrypted (decrypted in `args`; False once settled).
    #[getter]
    fn encrypted(&self) -> bool {
        self.with(|d| d.bag.is_some()).unwrap_or(false)
    }

    /// `retry_count` of a job that failed before, else None.
    #[getter]
    fn retry_count(&self) -> Option<i64> {
        self.with(|d| d.payload.retry_count()).flatten()
    }

    /// The kiq batch of a batch job (None for other jobs, callbacks included).
    #[getter]
    fn bid(&self) -> Option<String> {
        self.with(|d| d.batch.as_ref().filter(|b| b.callback.is_none()).and_then(|b| b.bid()).map(str::to_owned))
            .flatten()
    }

    /// A batch job's batch and its ancestors, or a callback's batch and its
    /// ancestors (nearest first); empty for other jobs.
    #[getter]
    fn batch_chain(&self) -> Vec<String> {
        self.with(|d| d.batch.as_ref().map(|b| b.chain.clone())).flatten().unwrap_or_default()
    }

    /// Epoch seconds the job was enqueued at (`enqueued_at`, any unit), if known.
    #[getter]
    fn enqueued_at(&self) -> Option<f64> {
        self.with(|d| d.payload.time(field::ENQUEUED_AT)).flatten()
    }

    /// Times the job was rescheduled over a rate limit before (`overrated`, 0 if never).
    #[getter]
    fn overrated(&self) -> u64 {
        self.with(|d| d.payload.overrated()).unwrap_or(0)
    }

    /// When its worker's throttle admitted it (epoch seconds, Redis's clock); None if not throttled.
    #[getter]
    fn admitted_at(&self) -> Option<f64> {
        self.with(|d| d.throttle_at).flatten()
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        format!("<Delivery {} jid={} queue={}>", self.class_name.bind(py), self.jid.bind(py), self.queue.bind(py))
    }
}

/// Periodic entries from `kiq.app.PeriodicEntry` objects (`crontab`, `job`);
/// an encrypted one is sealed afresh at each enqueue.
fn periodic_entries(specs: &Bound<'_, PyAny>, keyring: Option<&Arc<crate::crypto::Keyring>>) -> PyResult<Vec<Entry>> {
    let mut parsed = Vec::new();
    for spec in specs.try_iter()? {
        let spec = spec?;
        let expr: String = spec.getattr(intern!(spec.py(), "crontab"))?.extract()?;
        let crontab = py_result(crontab::Crontab::parse(&expr))?;
        let job = spec.getattr(intern!(spec.py(), "job"))?;
        let seal = py_result(crate::producer::seal_keys(jobspec::encrypted(&job)?, keyring))?;
        parsed.push((crontab, jobspec::new_job(&job, true, seal)?));
    }
    py_result(crate::periodic::entries(parsed))
}

/// The fetchers, result writer and scheduler of one Kiq process.
#[pyclass(module = "kiq._kiq", frozen)]
pub struct Server {
    inner: Arc<server::Server>,
    names: Vec<Py<PyString>>,
    /// Waits that ended with a job, and the nanoseconds spent getting the GIL
    /// back after them (what a woken thread pays before it can run Python).
    gil_waits: AtomicU64,
    gil_wait_ns: AtomicU64,
    /// Throttle key functions by class, called by the thread that takes a job.
    throttle_keys: std::collections::HashMap<String, Py<PyAny>>,
    /// Expired jobs are handed to Python (its reporters want to hear of them)
    /// rather than dropped in the core.
    expired_to_python: std::sync::atomic::AtomicBool,
}

/// What became of a job taken from a lane on its way to a Python thread.
// Returned once per job and unpacked at once; boxing would allocate per job.
#[allow(clippy::large_enum_variant)]
pub(super) enum Prepared {
    /// Started, its arguments decoded: run it.
    Ready(Delivery),
    /// Dropped (it expired) or parked (a keyed throttle): take the next.
    Next,
    /// The server is stopping: the job went back, and the thread stops.
    Stop,
}

impl Server {
    /// The lane of queue number `lane`.
    pub(super) fn lane(&self, lane: usize) -> PyResult<Arc<lane::Lane>> {
        Ok(py_result(self.inner.lane(lane))?.clone())
    }

    /// A job just taken, made ready to run: an expired one is dropped, a
    /// keyed throttle and the isolation gate are passed (waiting without the
    /// GIL if need be), then it starts and its arguments become Python objects.
    pub(super) fn prepare(&self, py: Python<'_>, d: Box<lane::Delivery>) -> PyResult<Prepared> {
        let d = if self.expired_to_python.load(Ordering::Relaxed) {
            d
        } else {
            match self.inner.unexpired(d) {
                Some(d) => d,
                None => return Ok(Prepared::Next),
            }
        };
        let mut d = match self.throttle_keys.get(&d.class).filter(|_| self.inner.keyed_throttle(&d.class)) {
            // A keyed throttle: the key here, where the GIL is held already; the check without it.
            Some(key_fn) => {
                let key = super::limiter::throttle_key(py, key_fn.bind(py), &d);
                let inner = self.inner.clone();
                match py.detach(move || inner.admit_keyed(d, key)) {
                    Some(d) => d,
                    // Parked (or failed): this thread takes the next job.
                    None => return Ok(Prepared::Next),
                }
            }
            None => d,
        };
        if !self.inner.try_admit(&mut d) {
            let inner = self.inner.clone();
            let (admission, back) = py.detach(move || (inner.admit(&mut d), d));
            d = back;
            if admission == crate::isolation::Admission::Stopping {
                self.inner.give_back(&mut d);
                return Ok(Prepared::Stop);
            }
        }
        self.inner.begin(&mut d);
        // The core parsed and checked the arguments at fetch (and decrypted an
        // encrypted job's last one); only a MemoryError can fail here. Never
        // strand the job if one does.
        let decoded = super::marshal::delivery_args(py, &d).map(Bound::unbind).and_then(|args| {
            let kwargs = match &d.kwargs {
                Some(k) => Some(value_to_py(py, k)?.cast_into::<PyDict>()?.unbind()),
                None => None,
            };
            Ok((args, kwargs))
        });
        let (args, kwargs) = match decoded {
            Ok(decoded) => decoded,
            Err(e) => {
                self.inner.fail(
                    d,
                    &Failure {
                        error_class: crate::fetch::INVALID_JOB_ERROR.into(),
                        error_message: format!("its arguments could not be turned into Python objects: {e}"),
                        ..Default::default()
                    },
                );
                return Err(e);
            }
        };
        Ok(Prepared::Ready(Delivery {
            kwargs,
            batch_event: d.batch.as_ref().and_then(|b| b.callback).map(crate::batches::Event::as_str),
            batch_invalidated: d.batch_invalidated,
            class_name: PyString::new(py, &d.class).unbind(),
            jid: PyString::new(py, &d.jid).unbind(),
            queue: self.names[d.queue].clone_ref(py),
            lane: d.lane,
            expires_at: d.expires_at,
            args,
            inner: Mutex::new(Some(d)),
        }))
    }

    /// The job succeeded (`complete`).
    pub(super) fn completed(&self, delivery: &Delivery) -> PyResult<()> {
        self.inner.complete(delivery.take()?);
        Ok(())
    }
}

#[pymethods]
impl Server {
    #[new]
    #[pyo3(signature = (client, identity, queues, *, hostname, tag = None, labels = None, max_retries = 25, dead_limit = 10_000, dead_timeout = 15_552_000.0, poll_interval_average = None, average_scheduled_poll_interval = 5.0, scheduler = true, heartbeat = true, heartbeat_interval = 5.0, heartbeat_ttl = 60.0, metrics = true, leader_ttl = 30.0, orphan_check_interval = 60.0, max_recoveries = 3, periodics = None, periodic_clock = None, health = None, max_jobs = None, prefetch = None, max_memory_bytes = None, stuck_after = None, quiet = false, workers = None))]
    // Keyword arguments of one Python constructor, mirrored one to one.
    #[allow(clippy::too_many_arguments, clippy::fn_params_excessive_bools)]
    fn new(
        py: Python<'_>,
        client: &Client,
        identity: String,
        queues: Vec<(Vec<(String, u32)>, usize)>,
        hostname: String,
        tag: Option<String>,
        labels: Option<Vec<String>>,
        max_retries: u32,
        dead_limit: u64,
        dead_timeout: f64,
        poll_interval_average: Option<f64>,
        average_scheduled_poll_interval: f64,
        scheduler: bool,
        heartbeat: bool,
        heartbeat_interval: f64,
        heartbeat_ttl: f64,
        metrics: bool,
        leader_ttl: Option<f64>,
        orphan_check_interval: Option<f64>,
        max_recoveries: u32,
        periodics: Option<&Bound<'_, PyAny>>,
        periodic_clock: Option<(f64, f64, f64)>,
        health: Option<String>,
        max_jobs: Option<u64>,
        prefetch: Option<usize>,
        max_memory_bytes: Option<u64>,
        stuck_after: Option<f64>,
        quiet: bool,
        workers: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<Self> {
        // The workers' options by class (`kiq.WorkerOptions`), and the throttle key functions Python calls.
        let mut by_class = HashMap::new();
        let mut throttle_keys = HashMap::new();
        for (class, options) in workers.map(|d| d.iter().collect::<Vec<_>>()).unwrap_or_default() {
            let class = class.extract::<String>()?;
            if let Some(key) =
                super::worker::throttle(&options)?.and_then(|t| t.get().key.as_ref().map(|k| k.clone_ref(py)))
            {
                throttle_keys.insert(class.clone(), key);
            }
            by_class.insert(class, super::worker::worker_options(&options)?);
        }
        let entries = match periodics {
            Some(p) => periodic_entries(p, client.producer.keyring.as_ref())?,
            None => Vec::new(),
        };
        if leader_ttl.is_some_and(|t| t < 0.1) || orphan_check_interval.is_some_and(|t| t <= 0.0) {
            return Err(super::errors::ConfigError::new_err(
                "leader_ttl must be at least 0.1 s and orphan_check_interval positive",
            ));
        }
        if !(heartbeat_interval > 0.0 && heartbeat_ttl > heartbeat_interval) {
            return Err(super::errors::ConfigError::new_err(
                "heartbeat_interval must be positive and shorter than heartbeat_ttl",
            ));
        }
        let capsules: Vec<Capsule> = queues.into_iter().map(|(q, n)| Capsule::new(q, n)).collect();
        let names = capsules.iter().flat_map(|c| c.queues.iter()).map(|(q, _)| PyString::new(py, q).unbind()).collect();
        let config = ServerConfig {
            process: ProcessInfo {
                identity,
                hostname,
                pid: std::process::id(),
                tag: tag.unwrap_or_default(),
                labels: labels.unwrap_or_default(),
                capsules,
                started_at: timestamp::now(),
                version: format!("kiq-{}", env!("CARGO_PKG_VERSION")),
            },
            policy: RetryPolicy {
                max_retries,
                unit: client.producer.unit,
                jitter: options::jitter(client.producer.unit),
                dead_limit,
                dead_timeout_secs: dead_timeout,
            },
            poll: PollConfig { average_scheduled_poll_interval, poll_interval_average },
            scheduler,
            beat: heartbeat.then(|| BeatConfig {
                interval: Duration::from_secs_f64(heartbeat_interval),
                ttl: Duration::from_secs_f64(heartbeat_ttl),
                metrics,
            }),
            leader_ttl: leader_ttl.map(Duration::from_secs_f64),
            orphan_check: orphan_check_interval.map(Duration::from_secs_f64),
            max_recoveries,
            periodics: entries,
            clock: match periodic_clock {
                Some((start, wall_start, speed)) => Clock::Simulated { start, wall_start, speed },
                None => Clock::Real,
            },
            health: health.as_deref().map(health_addr).transpose()?,
            max_jobs,
            max_rss_kb: max_memory_bytes.map(|b| b / 1024),
            stuck_after: stuck_after.filter(|s| *s > 0.0).map(Duration::from_secs_f64),
            keyring: client.producer.keyring.clone(),
            quiet,
            // None: the automatic prefetch.
            prefetch: prefetch.map_or(Prefetch::Auto, Prefetch::Fixed),
            workers: Workers::new(by_class),
            limits: Some(client.limits.clone()),
        };
        let pool = client.producer.pool.clone();
        gil::block_on(py, async move { crate::pool::require_version(&pool).await })?;
        let rt = runtime::get();
        let _guard = rt.enter();
        let inner =
            py_result(server::Server::start(client.producer.pool.clone(), client.producer.keys.clone(), config))?;
        Ok(Self {
            inner,
            names,
            gil_waits: AtomicU64::new(0),
            gil_wait_ns: AtomicU64::new(0),
            throttle_keys,
            expired_to_python: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The next job of queue number `lane`, waiting (without the GIL) up to
    /// `timeout` seconds, forever when None. None once the server stops.
    #[pyo3(signature = (lane, timeout = None))]
    fn next_job(&self, py: Python<'_>, lane: usize, timeout: Option<f64>) -> PyResult<Option<Delivery>> {
        let l = self.lane(lane)?;
        loop {
            // A ready job is taken without releasing the GIL: no thread switch.
            let d = if let Some(d) = l.try_take() {
                d
            } else {
                let (taken, woke) = py.detach(|| (l.take(timeout.map(Duration::from_secs_f64)), Instant::now()));
                match taken {
                    Take::Job(d) => {
                        l.resumed();
                        self.gil_waits.fetch_add(1, Ordering::Relaxed);
                        self.gil_wait_ns.fetch_add(woke.elapsed().as_nanos() as u64, Ordering::Relaxed);
                        d
                    }
                    Take::Closed | Take::TimedOut => return Ok(None),
                }
            };
            match self.prepare(py, d)? {
                Prepared::Ready(d) => return Ok(Some(d)),
                Prepared::Next => {}
                Prepared::Stop => return Ok(None),
            }
        }
    }

    /// Whether expired jobs reach Python (to be reported, then `expire`d) or
    /// are dropped in the core before a thread wakes for them (the default).
    fn set_expired_to_python(&self, on: bool) {
        self.expired_to_python.store(on, Ordering::Relaxed);
    }

    /// The job expired before it started: dropped (not run, not retried) and counted.
    fn expire(&self, delivery: &Delivery) -> PyResult<()> {
        self.inner.expire(delivery.take()?);
        Ok(())
    }

    /// The job's batch was invalidated: not run, done for its batch, not counted as processed.
    fn skip(&self, delivery: &Delivery) -> PyResult<()> {
        self.inner.skip(delivery.take()?);
        Ok(())
    }

    /// The job succeeded. Returns at once; the result is written in a batch.
    fn complete(&self, delivery: &Delivery) -> PyResult<()> {
        self.completed(delivery)
    }

    /// Whether a failure of this job keeps a backtrace (its own `backtrace`
    /// option, else its worker's): format one for `fail` only then.
    fn wants_backtrace(&self, delivery: &Delivery) -> bool {
        delivery.with(|d| self.inner.wants_backtrace(d)).unwrap_or(false)
    }

    /// The job raised. Its worker's options (registered at start) apply where
    /// the payload has none. Returns where it went (its `Fate`).
    #[pyo3(signature = (delivery, error_class, error_message, *, backtrace = None))]
    fn fail(
        &self,
        py: Python<'_>,
        delivery: &Delivery,
        error_class: String,
        error_message: String,
        backtrace: Option<Vec<String>>,
    ) -> PyResult<Fate> {
        let failure = Failure { error_class, error_message, backtrace: backtrace.unwrap_or_default() };
        let d = delivery.take()?;
        let inner = self.inner.clone();
        gil::run(py, move || Ok(inner.fail(d, &failure).into()))
    }

    /// Gives the job up without a result; a stop hands it back to its queue.
    fn abandon(&self, delivery: &Delivery) -> PyResult<()> {
        let mut d = delivery.take()?;
        self.inner.abandon(&mut d);
        Ok(())
    }

    /// Recovers the jobs of another process known to be dead (a swarm's
    /// child that exited) at once, whatever its heartbeat says; the jobs
    /// named in `timed_out` (jid → the `hard_timeout` it ran past) fail with
    /// `JobTimeoutError`. Returns (requeued, poisoned, timed_out).
    fn recover_dead(
        &self,
        py: Python<'_>,
        identity: String,
        timed_out: HashMap<String, f64>,
    ) -> PyResult<(usize, usize, usize)> {
        let inner = self.inner.clone();
        let r = gil::block_on(py, async move { inner.recover_dead(&identity, &timed_out).await })?;
        Ok((r.requeued, r.poisoned, r.timed_out))
    }

    /// `OverLimit` escaped the job: it goes to the schedule set (`overrated`
    /// raised, `delay` seconds or Sidekiq Enterprise's default) and the time
    /// it runs next is returned; None once it was rescheduled
    /// `max_reschedules` times, and then the delivery is untouched (fail it).
    #[pyo3(signature = (delivery, *, max_reschedules = 20, delay = None))]
    fn reschedule(&self, delivery: &Delivery, max_reschedules: u32, delay: Option<f64>) -> PyResult<Option<f64>> {
        let d = delivery.take()?;
        match self.inner.reschedule(d, max_reschedules, delay) {
            Ok(at) => Ok(Some(at)),
            Err(d) => {
                *delivery.inner.lock().unwrap_or_else(PoisonError::into_inner) = Some(d);
                Ok(None)
            }
        }
    }

    /// Stops or resumes fetching new jobs.
    fn set_quiet(&self, quiet: bool) {
        self.inner.set_quiet(quiet);
    }

    /// "running", "quiet" or "stopping".
    #[getter]
    fn state(&self) -> &'static str {
        match self.inner.state() {
            crate::control::RunState::Running => "running",
            crate::control::RunState::Quiet => "quiet",
            crate::control::RunState::Stopping => "stopping",
        }
    }

    /// `(waits, seconds)`: how often a thread slept for a job, and the total
    /// time those threads then waited to get the GIL back.
    fn gil_wait_stats(&self) -> (u64, f64) {
        (self.gil_waits.load(Ordering::Relaxed), self.gil_wait_ns.load(Ordering::Relaxed) as f64 / 1e9)
    }

    /// `(waiting, paused)`: job results waiting to be written to Redis, and
    /// for how many seconds fetching has been paused for them without a
    /// break (None while it is not: 8,000 or more must wait).
    fn results_waiting(&self) -> (usize, Option<f64>) {
        let (waiting, paused) = self.inner.results_waiting();
        (waiting, paused.map(|d| d.as_secs_f64()))
    }

    /// Whether cancelling this running job was asked (`kiq.api.Api.cancel`), as of the last heartbeat.
    fn is_cancelled(&self, delivery: &Delivery) -> bool {
        delivery.with(|d| self.inner.is_cancelled(d)).unwrap_or(false)
    }

    /// `host:port` where health checks are answered (the real port when 0 was asked), or None.
    #[getter]
    fn health_address(&self) -> Option<String> {
        self.inner.health_addr().map(|a| a.to_string())
    }

    /// Glob of this process's in-progress lists, namespace applied (for messages).
    #[getter]
    fn in_progress_keys(&self) -> String {
        self.inner.in_progress_pattern()
    }

    /// Whether this process is the kiq leader now (no Redis round trip).
    #[getter]
    fn is_leader(&self) -> bool {
        self.inner.is_leader()
    }

    /// Jobs running now (the heartbeat's `busy`).
    #[getter]
    fn busy(&self) -> usize {
        self.inner.busy()
    }

    /// Waits up to `timeout` seconds for a signal sent through Redis (the Web
    /// UI's Quiet and Stop buttons): "TSTP", "TERM" or "TTIN", else None.
    fn next_signal(&self, py: Python<'_>, timeout: f64) -> Option<&'static str> {
        let inner = self.inner.clone();
        py.detach(|| inner.next_signal(Duration::from_secs_f64(timeout.max(0.0))))
            .map(super::super::heartbeat::Signal::name)
    }

    /// Live and wanted worker threads per queue (in queue order), for `/ready`.
    fn report_threads(&self, alive: Vec<usize>, wanted: Vec<usize>) {
        for ((lane, n), w) in self.inner.lanes().iter().zip(alive).zip(wanted) {
            lane.set_threads(n, w);
        }
    }

    /// Jobs of queue `lane` fetched and not finished.
    fn out(&self, lane: usize) -> PyResult<usize> {
        Ok(py_result(self.inner.lane(lane))?.out())
    }

    /// Jobs queue `lane` may hold now: its concurrency plus the prefetch
    /// (the automatic one only while its recent jobs are short).
    fn capacity(&self, lane: usize) -> PyResult<usize> {
        Ok(py_result(self.inner.lane(lane))?.capacity())
    }

    /// Stops fetching and wakes every waiting thread with None. Returns the
    /// number of fetched jobs no thread had started.
    fn begin_stop(&self, py: Python<'_>) -> PyResult<usize> {
        let inner = self.inner.clone();
        gil::run(py, move || Ok(inner.begin_stop()))
    }

    /// Writes pending results (for up to `timeout` seconds) and hands every
    /// job still in progress back to its queue. Returns (requeued, unwritten).
    fn finish_stop(&self, py: Python<'_>, timeout: f64) -> PyResult<(usize, usize)> {
        let inner = self.inner.clone();
        let deadline = Instant::now() + Duration::from_secs_f64(timeout.max(0.0));
        let r = gil::block_on(py, async move { inner.finish_stop(deadline).await })?;
        Ok((r.requeued, r.unwritten))
    }
}

/// A `host:port` for the health listener (a name resolves to its first address).
fn health_addr(text: &str) -> PyResult<std::net::SocketAddr> {
    use std::net::ToSocketAddrs;
    let bad = |why: String| {
        super::errors::ConfigError::new_err(format!(
            "health_address must be HOST:PORT, e.g. \"0.0.0.0:8080\", not {text:?}: {why}"
        ))
    };
    text.to_socket_addrs().map_err(|e| bad(e.to_string()))?.next().ok_or_else(|| bad("no address".into()))
}
