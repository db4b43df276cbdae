//! `kiq._kiq.Client`: pushes jobs (bindings only; the logic is `crate::client`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::batch::BatchBuilder;
use super::convert::{args_json, redis_to_py};
use super::crypto::Keyring;
use super::errors::{ConfigError, py_result};
use super::jobspec::{self, set_args};
use super::{gil, options};
use crate::admin;
use crate::client::{Prepared, PushItem};
use crate::pool::RedisConfig;
use crate::producer::{BufferOptions, Producer, ProducerConfig, Skipped};
use crate::retry::RetryPolicy;
use crate::runtime;
use crate::timestamp;

/// A connection pool to one Redis and the means to push jobs to it.
#[pyclass(module = "kiq._kiq", frozen)]
pub struct Client {
    /// Pushes (every push decision is the producer's); its pool, keys, unit
    /// and keyring serve the other bindings too.
    pub(crate) producer: Producer,
    /// The rate limiters of this Redis (connections for waiters, this process's counts).
    pub(crate) limits: Arc<crate::limits::Limits>,
}

impl Client {
    /// Sends prepared jobs into the batch being built, or to Redis.
    fn send(
        &self,
        py: Python<'_>,
        prepared: Vec<Prepared>,
        sync: bool,
        batch: Option<&BatchBuilder>,
    ) -> PyResult<Skipped> {
        match batch {
            Some(b) => {
                b.collect(py, prepared.into_iter().map(|p| p.1).collect())?;
                Ok(HashMap::new())
            }
            None => gil::run(py, || self.producer.deliver(prepared, sync)),
        }
    }

    fn send_items(
        &self,
        py: Python<'_>,
        items: Vec<PushItem>,
        sync: bool,
        batch: Option<&BatchBuilder>,
    ) -> PyResult<()> {
        match batch {
            Some(b) => b.collect(py, items),
            None => gil::run(py, || self.producer.deliver_items(items, sync)),
        }
    }

    fn set_key(&self, set: &str) -> PyResult<String> {
        py_result(admin::job_set(&self.producer.keys, set))
    }

    /// What a listing is about: a job set ("schedule", "retry", "dead") or a
    /// queue ("queue" and its name), the jobs kept, and how much to read.
    #[allow(clippy::too_many_arguments)]
    fn query(
        &self,
        kind: &str,
        name: Option<&str>,
        class: Option<String>,
        error: Option<String>,
        window: usize,
        max_scan: usize,
    ) -> PyResult<(admin::Source, admin::Filter, admin::Bounds)> {
        let source = py_result(admin::Source::named(&self.producer.keys, kind, name))?;
        Ok((source, admin::Filter { class, error }, admin::Bounds { window: window.max(1), max_scan }))
    }
}

#[pymethods]
impl Client {
    #[new]
    #[pyo3(signature = (url, *, pool_size = 5, namespace = None, timestamps = "seconds", response_timeout = 5.0, connect_timeout = 2.0, tls_ca_file = None, tls_cert_file = None, tls_key_file = None, buffer = false, flush_interval = 0.01, buffer_max_bytes = 67_108_864, buffer_full_timeout = 10.0, buffer_path = None, spool_fsync = "interval", undeliverable_path = None, keyring = None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        url: String,
        pool_size: usize,
        namespace: Option<String>,
        timestamps: &str,
        response_timeout: f64,
        connect_timeout: f64,
        tls_ca_file: Option<std::path::PathBuf>,
        tls_cert_file: Option<std::path::PathBuf>,
        tls_key_file: Option<std::path::PathBuf>,
        buffer: bool,
        flush_interval: f64,
        buffer_max_bytes: usize,
        buffer_full_timeout: f64,
        buffer_path: Option<std::path::PathBuf>,
        spool_fsync: &str,
        undeliverable_path: Option<std::path::PathBuf>,
        keyring: Option<Bound<'_, Keyring>>,
    ) -> PyResult<Self> {
        let unit = options::unit(timestamps)?;
        py_result(crate::producer::check_timeouts(response_timeout, connect_timeout))?;
        let mut redis = RedisConfig::new(url);
        redis.pool_size = pool_size;
        redis.response_timeout = Duration::from_secs_f64(response_timeout);
        redis.connect_timeout = Duration::from_secs_f64(connect_timeout);
        (redis.tls_ca, redis.tls_client) = py_result(crate::producer::tls_files(
            tls_ca_file.as_deref(),
            tls_cert_file.as_deref(),
            tls_key_file.as_deref(),
        ))?;
        let config = ProducerConfig {
            redis,
            namespace,
            unit,
            path_without_buffer: buffer_path.is_some() && !buffer,
            buffer: buffer.then(|| BufferOptions {
                flush_interval,
                max_bytes: buffer_max_bytes,
                full_timeout: buffer_full_timeout,
                path: buffer_path,
                fsync: spool_fsync.to_owned(),
                undeliverable_path,
            }),
            full_timeout: buffer_full_timeout,
            keyring: keyring.map(|k| k.get().inner.clone()),
        };
        // Opening reads the spool back: disk I/O, without the GIL.
        let producer = gil::run(py, move || {
            let _guard = runtime::get().enter();
            Producer::open(config)
        })?;
        Ok(Self { limits: crate::limits::Limits::new(producer.pool.clone(), producer.keys.clone()), producer })
    }

    /// Pushes one job (a `kiq.Job`) and returns its jid. `at` (epoch seconds)
    /// in the future schedules it; otherwise it is pushed to its queue now.
    /// Returns `(jid, held_by)`: `held_by` is None when the job went in, else
    /// (a unique job whose lock is taken) the jid holding the lock, or "".
    /// With `batch`, the job joins that batch's `jobs()` block instead (pushed when it ends).
    #[pyo3(signature = (job, *, at = None, sync = false, batch = None))]
    fn push(
        &self,
        py: Python<'_>,
        job: &Bound<'_, PyAny>,
        at: Option<f64>,
        sync: bool,
        batch: Option<&BatchBuilder>,
    ) -> PyResult<(String, Option<String>)> {
        let seal = py_result(self.producer.seal_keys(jobspec::encrypted(job)?))?;
        let mut job = jobspec::new_job(job, true, seal)?;
        if let Some(b) = batch {
            b.tag(&mut job)?;
        }
        let (jid, item, lock) = py_result(self.producer.prepare(&job, at, timestamp::now()))?;
        if lock.is_none() && batch.is_none() {
            // The usual job: straight into the buffer while there is room,
            // without handing the GIL over and back; else the blocking way.
            if let Err(items) = self.producer.try_buffer(vec![item], sync) {
                self.send_items(py, items, sync, None)?;
            }
            return Ok((jid, None));
        }
        let skipped = self.send(py, vec![(jid.clone(), item, lock)], sync, batch)?;
        let held = skipped.get(&jid).map(|h| h.clone().unwrap_or_default());
        Ok((jid, held))
    }

    /// Pushes one job per element of `args_list`, all like `template` (a
    /// `kiq.Job` whose args and jid are ignored), in one round trip.
    /// Returns the jids in order, and the unique ones skipped with who holds their locks.
    #[pyo3(signature = (template, args_list, *, at = None, sync = false, batch = None))]
    fn push_bulk(
        &self,
        py: Python<'_>,
        template: &Bound<'_, PyAny>,
        args_list: &Bound<'_, PyAny>,
        at: Option<f64>,
        sync: bool,
        batch: Option<&BatchBuilder>,
    ) -> PyResult<(Vec<String>, Skipped)> {
        let encrypt = jobspec::encrypted(template)?;
        let seal = py_result(self.producer.seal_keys(encrypt))?;
        let mut template = jobspec::new_job(template, false, None)?;
        template.jid = None;
        if let Some(b) = batch {
            b.tag(&mut template)?;
        }
        let now = timestamp::now();
        let mut jids = Vec::new();
        if let Some(bulk) = self.producer.bulk(&template, encrypt, at, now) {
            let mut items = Vec::new();
            for args in args_list.try_iter()? {
                let (jid, item) = bulk.item(&args_json(&args?)?);
                jids.push(jid);
                items.push(item);
            }
            self.send_items(py, items, sync, batch)?;
            return Ok((jids, HashMap::new()));
        }
        let mut prepared = Vec::new();
        for args in args_list.try_iter()? {
            // Each job of an encrypted bulk push is sealed on its own (a fresh IV).
            let mut job = template.clone();
            set_args(&mut job, &args?, seal.clone())?;
            let p = py_result(self.producer.prepare(&job, at, now))?;
            jids.push(p.0.clone());
            prepared.push(p);
        }
        let skipped = self.send(py, prepared, sync, batch)?;
        Ok((jids, skipped))
    }

    /// Pushes `kiq.Job`s (of any classes) in one round trip, at `at` if given.
    /// Returns the jids in order, and the unique ones skipped.
    #[pyo3(signature = (jobs, *, at = None, sync = false, batch = None))]
    fn push_jobs(
        &self,
        py: Python<'_>,
        jobs: &Bound<'_, PyAny>,
        at: Option<f64>,
        sync: bool,
        batch: Option<&BatchBuilder>,
    ) -> PyResult<(Vec<String>, Skipped)> {
        let now = timestamp::now();
        let mut jids = Vec::new();
        let mut prepared = Vec::new();
        for spec in jobs.try_iter()? {
            let spec = spec?;
            let seal = py_result(self.producer.seal_keys(jobspec::encrypted(&spec)?))?;
            let mut job = jobspec::new_job(&spec, true, seal)?;
            if let Some(b) = batch {
                b.tag(&mut job)?;
            }
            let p = py_result(self.producer.prepare(&job, at, now))?;
            jids.push(p.0.clone());
            prepared.push(p);
        }
        let skipped = self.send(py, prepared, sync, batch)?;
        Ok((jids, skipped))
    }

    /// Waits (without the GIL) until every buffered job is in Redis, up to
    /// `timeout` seconds; raises `TimeoutError` if they are not.
    fn flush(&self, py: Python<'_>, timeout: f64) -> PyResult<()> {
        gil::run(py, || self.producer.flush(Duration::from_secs_f64(timeout.max(0.0))))
    }

    /// The push buffer's state: jobs and bytes held, jobs flushed, the last
    /// error while flushes fail, spool file size. None without a buffer.
    fn buffer_stats<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let Some((s, undeliverable_path)) = self.producer.buffer_stats() else { return Ok(None) };
        let d = PyDict::new(py);
        d.set_item("jobs", s.jobs)?;
        d.set_item("bytes", s.bytes)?;
        d.set_item("raw_bytes", s.raw_bytes)?;
        d.set_item("flushed", s.flushed)?;
        d.set_item("failing", s.failing)?;
        d.set_item("spool_bytes", s.spool_bytes)?;
        d.set_item("undeliverable", s.undeliverable)?;
        d.set_item("undeliverable_path", undeliverable_path)?;
        Ok(Some(d))
    }

    /// Writes every buffered job not yet in Redis to a new spool directory
    /// `dir` (see `Buffer::dump`); returns how many. 0 without a buffer.
    fn dump(&self, py: Python<'_>, dir: std::path::PathBuf) -> PyResult<usize> {
        gil::run(py, || self.producer.dump(&dir))
    }

    /// Pushes the jobs of a dead-letter file again: `(pushed, still refused)`.
    fn replay_undeliverable(&self, py: Python<'_>, path: std::path::PathBuf) -> PyResult<(usize, usize)> {
        gil::block_on(py, self.producer.replay_undeliverable(&path))
    }

    /// The Redis URL, password removed (for messages).
    #[getter]
    fn url(&self) -> String {
        crate::pool::redact(self.producer.pool.url())
    }

    /// What opening the spool found: `(damage descriptions, jobs carried over
    /// from an earlier run)`; empty without a spool.
    #[getter]
    fn spool_report(&self) -> (Vec<String>, usize) {
        self.producer.spool_report()
    }

    /// Round-trip time of a PING, in seconds.
    fn ping(&self, py: Python<'_>) -> PyResult<f64> {
        let pool = self.producer.pool.clone();
        gil::block_on(py, async move {
            let t = std::time::Instant::now();
            let _: String = redis::cmd("PING").query_async(&mut pool.get()).await?;
            Ok(t.elapsed().as_secs_f64())
        })
    }

    /// Runs one Redis command, e.g. `command("LLEN", "queue:default")`, and
    /// returns its reply as Python values (for the introspection API).
    #[pyo3(signature = (*args))]
    fn command(&self, py: Python<'_>, args: Vec<String>) -> PyResult<Py<PyAny>> {
        let Some((name, rest)) = args.split_first() else {
            return Err(ConfigError::new_err("command() needs a command name"));
        };
        // Shared connections are multiplexed: transactions or blocking
        // commands on them would tangle every other caller's commands.
        const REFUSED: [&str; 12] = [
            "MULTI",
            "EXEC",
            "WATCH",
            "UNWATCH",
            "DISCARD",
            "BLPOP",
            "BRPOP",
            "BLMOVE",
            "BRPOPLPUSH",
            "BZPOPMIN",
            "SUBSCRIBE",
            "MONITOR",
        ];
        if REFUSED.contains(&name.to_ascii_uppercase().as_str()) {
            return Err(ConfigError::new_err(format!("command() cannot run {name} on kiq's shared connections")));
        }
        let mut cmd = redis::cmd(name);
        for a in rest {
            cmd.arg(a);
        }
        let pool = self.producer.pool.clone();
        let value: redis::Value = gil::block_on(py, async move { Ok(cmd.query_async(&mut pool.get()).await?) })?;
        Ok(redis_to_py(py, &value)?.unbind())
    }

    /// Entries in a set ("schedule", "retry", "dead") or queue ("queue", `name`).
    #[pyo3(signature = (kind, name = None))]
    fn size(&self, py: Python<'_>, kind: &str, name: Option<&str>) -> PyResult<u64> {
        let (source, _, _) = self.query(kind, name, None, None, 1, 0)?;
        let pool = self.producer.pool.clone();
        gil::block_on(py, async move { admin::size(&pool, &source).await })
    }

    /// `count` entries of a set or queue from display position `start`, as `(payload, score)`
    /// (score None for a queue): soonest first, latest death first, next to run first.
    #[pyo3(signature = (kind, name = None, *, start = 0, count = 100))]
    fn window(
        &self,
        py: Python<'_>,
        kind: &str,
        name: Option<&str>,
        start: usize,
        count: usize,
    ) -> PyResult<Vec<(String, Option<f64>)>> {
        let (source, _, _) = self.query(kind, name, None, None, 1, 0)?;
        let pool = self.producer.pool.clone();
        gil::block_on(py, async move { admin::window(&pool, &source, start, count).await })
    }

    /// Removes one entry equal to `member` from a set or queue; False if there was none.
    #[pyo3(signature = (kind, name, member))]
    fn remove(&self, py: Python<'_>, kind: &str, name: Option<&str>, member: String) -> PyResult<bool> {
        let (source, _, _) = self.query(kind, name, None, None, 1, 0)?;
        let pool = self.producer.pool.clone();
        gil::block_on(py, async move { admin::remove(&pool, &source, &member).await })
    }

    /// Deletes a set, or a queue and its name (in one step).
    #[pyo3(signature = (kind, name = None))]
    fn clear(&self, py: Python<'_>, kind: &str, name: Option<String>) -> PyResult<()> {
        let (pool, keys) = (self.producer.pool.clone(), self.producer.keys.clone());
        match (kind, name) {
            ("queue", Some(q)) => {
                gil::block_on(py, async move { crate::bulk::queue_clear(&pool, &keys, &q).await }).map(|_| ())
            }
            (set, _) => {
                let key = self.set_key(set)?;
                gil::block_on(py, async move { admin::clear_set(&pool, &key).await })
            }
        }
    }

    /// The known queue names, sorted.
    fn queue_names(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        let (pool, keys) = (self.producer.pool.clone(), self.producer.keys.clone());
        gil::block_on(py, async move { admin::queue_names(&pool, &keys).await })
    }

    /// `(processed, failed)` all-time counters.
    fn totals(&self, py: Python<'_>) -> PyResult<(u64, u64)> {
        let (pool, keys) = (self.producer.pool.clone(), self.producer.keys.clone());
        gil::block_on(py, async move { admin::totals(&pool, &keys).await })
    }

    /// `(member, score)` of every entry of sorted set `set` ("schedule",
    /// "retry" or "dead") whose jid is `jid`.
    fn find_job(&self, py: Python<'_>, set: &str, jid: String) -> PyResult<Vec<(String, f64)>> {
        let key = self.set_key(set)?;
        let pool = self.producer.pool.clone();
        gil::block_on(py, async move { admin::find(&pool, &key, &jid).await })
    }

    /// Moves `member` of `set` to its queue now (from "retry", decrementing
    /// `retry_count` as Sidekiq's Retry Now does). False if it was already gone.
    fn enqueue_now(&self, py: Python<'_>, set: &str, member: String) -> PyResult<bool> {
        let key = self.set_key(set)?;
        let (pool, keys) = (self.producer.pool.clone(), self.producer.keys.clone());
        let policy = RetryPolicy { unit: self.producer.unit, ..RetryPolicy::default() };
        gil::block_on(py, async move { admin::enqueue_now(&pool, &keys, &policy, &key, &member).await })
    }

    /// Moves `member` of `set` to the dead set, trimmed with these limits. False if it was already gone.
    #[pyo3(signature = (set, member, *, dead_limit = 10_000, dead_timeout = 15_552_000.0))]
    fn kill(&self, py: Python<'_>, set: &str, member: String, dead_limit: u64, dead_timeout: f64) -> PyResult<bool> {
        let key = self.set_key(set)?;
        let (pool, keys) = (self.producer.pool.clone(), self.producer.keys.clone());
        let policy = RetryPolicy { dead_limit, dead_timeout_secs: dead_timeout, ..RetryPolicy::default() };
        gil::block_on(py, async move { admin::kill(&pool, &keys, &policy, &key, &member).await })
    }

    /// Up to `limit` jobs of a set ("schedule", "retry", "dead") or queue ("queue",
    /// `name`) in the Web UI's order, from position `start`, of class `class_name`
    /// and with `error` in their error: `(jobs as (payload, score), entries read,
    /// size, position to continue from or None at the end)`. Reads `window`
    /// entries per round trip, `max_scan` in all.
    #[pyo3(signature = (kind, name = None, *, class_name = None, error = None, start = 0, limit = 100, window = 500, max_scan = 100_000))]
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn list_jobs(
        &self,
        py: Python<'_>,
        kind: &str,
        name: Option<&str>,
        class_name: Option<String>,
        error: Option<String>,
        start: usize,
        limit: usize,
        window: usize,
        max_scan: usize,
    ) -> PyResult<(Vec<(String, Option<f64>)>, usize, u64, Option<usize>)> {
        let (source, filter, bounds) = self.query(kind, name, class_name, error, window, max_scan)?;
        let pool = self.producer.pool.clone();
        let l = gil::block_on(py, async move { admin::list(&pool, &source, &filter, start, limit, bounds).await })?;
        Ok((l.jobs, l.scanned, l.size, l.next))
    }

    /// How many jobs of a set or queue match: `(matches, entries read, size)`.
    #[pyo3(signature = (kind, name = None, *, class_name = None, error = None, window = 500, max_scan = 100_000))]
    #[allow(clippy::too_many_arguments)]
    fn count_jobs(
        &self,
        py: Python<'_>,
        kind: &str,
        name: Option<&str>,
        class_name: Option<String>,
        error: Option<String>,
        window: usize,
        max_scan: usize,
    ) -> PyResult<(u64, usize, u64)> {
        let (source, filter, bounds) = self.query(kind, name, class_name, error, window, max_scan)?;
        let pool = self.producer.pool.clone();
        gil::block_on(py, async move { admin::count(&pool, &source, &filter, bounds).await })
    }

    /// Runs now ("retry") or deletes ("delete") every matching job of a set
    /// or queue, each in its own atomic step: `(done, already gone, entries read)`.
    #[pyo3(signature = (action, kind, name = None, *, class_name = None, error = None, window = 500, max_scan = 100_000))]
    #[allow(clippy::too_many_arguments)]
    fn act_on_jobs(
        &self,
        py: Python<'_>,
        action: &str,
        kind: &str,
        name: Option<&str>,
        class_name: Option<String>,
        error: Option<String>,
        window: usize,
        max_scan: usize,
    ) -> PyResult<(u64, u64, usize)> {
        let action = py_result(admin::Action::parse(action))?;
        let (source, filter, bounds) = self.query(kind, name, class_name, error, window, max_scan)?;
        let (pool, keys) = (self.producer.pool.clone(), self.producer.keys.clone());
        let policy = RetryPolicy { unit: self.producer.unit, ..RetryPolicy::default() };
        let d = gil::block_on(py, async move {
            admin::act_on_all(&pool, &keys, &policy, &source, &filter, action, bounds).await
        })?;
        Ok((d.done, d.gone, d.scanned))
    }

    /// Asks the process running job `jid` to cancel it (it sees the request at its next heartbeat).
    fn request_cancel(&self, py: Python<'_>, jid: String) -> PyResult<()> {
        let (pool, keys) = (self.producer.pool.clone(), self.producer.keys.clone());
        gil::block_on(py, async move { admin::request_cancel(&pool, &keys, &jid).await })
    }

    /// The key prefix in use ("" without a namespace).
    #[getter]
    fn namespace_prefix(&self) -> String {
        self.producer.keys.prefix().to_owned()
    }
}
