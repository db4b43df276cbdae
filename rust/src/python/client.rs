//! `kiq._kiq.Client`: pushes jobs (bindings only; the logic is `crate::client`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};

use super::batch::BatchBuilder;
use super::convert::{args_json, redis_to_py, value_json};
use super::crypto::Keyring;
use super::errors::{ConfigError, py_result};
use super::marshal::sealed_args;
use super::{gil, options};
use crate::admin;
use crate::buffer::{self, Buffer, BufferConfig};
use crate::client::{self, PushItem};
use crate::deadletter::DeadLetters;
use crate::job::{NewJob, Retry, Unique, UniqueUntil};
use crate::keys::Keys;
use crate::pool::{Pool, RedisConfig};
use crate::retry::RetryPolicy;
use crate::runtime;
use crate::spool::Fsync;
use crate::timestamp::{self, TimestampUnit};

/// A connection pool to one Redis and the means to push jobs to it.
#[pyclass(module = "kiq._kiq", frozen)]
pub struct Client {
    pub(crate) pool: Arc<Pool>,
    pub(crate) keys: Keys,
    pub(crate) unit: TimestampUnit,
    /// The reliable push buffer, unless pushes are synchronous.
    buffer: Option<Arc<Buffer>>,
    /// How long a synchronous push retries a lost reply.
    pub(crate) sync_timeout: Duration,
    /// Keys for `encrypt=True` jobs (pushing and, in a server, fetching).
    pub(crate) keyring: Option<Arc<crate::crypto::Keyring>>,
    /// The rate limiters of this Redis (connections for waiters, this process's counts).
    pub(crate) limits: Arc<crate::limits::Limits>,
}

/// Unique jobs not pushed, by jid, with the jid holding each lock (if known).
type Skipped = HashMap<String, Option<String>>;

/// Unique-job and expiry options of a push.
#[derive(Clone, Copy, Default)]
pub(crate) struct Extra<'a> {
    pub unique_for: Option<f64>,
    pub unique_until: Option<&'a str>,
    pub expires_in: Option<f64>,
}

impl Extra<'_> {
    pub(crate) fn apply(self, job: &mut NewJob) -> PyResult<()> {
        if let Some(secs) = self.unique_for {
            if secs.is_nan() || secs <= 0.0 {
                return Err(ConfigError::new_err(format!(
                    "unique_for must be a positive number of seconds, not {secs}"
                )));
            }
            let until = match self.unique_until {
                None => UniqueUntil::Success,
                Some(u) => UniqueUntil::parse(u).ok_or_else(|| {
                    ConfigError::new_err(format!("unique_until must be \"success\" or \"start\", not {u:?}"))
                })?,
            };
            job.unique = Some(Unique { for_secs: secs, until });
        }
        if let Some(secs) = self.expires_in {
            if secs.is_nan() || secs <= 0.0 {
                return Err(ConfigError::new_err(format!(
                    "expires_in must be a positive number of seconds, not {secs}"
                )));
            }
            job.expires_in = Some(secs);
        }
        Ok(())
    }
}

/// The keys an `encrypt=True` job is sealed with, or why it cannot be.
pub(crate) fn keys_for(
    encrypt: bool,
    keyring: Option<&Arc<crate::crypto::Keyring>>,
) -> PyResult<Option<Arc<crate::crypto::Keyring>>> {
    match (encrypt, keyring) {
        (false, _) => Ok(None),
        (true, Some(k)) => Ok(Some(k.clone())),
        (true, None) => Err(ConfigError::new_err(
            "encrypt=True needs encryption keys: Kiq(encryption_keys={1: key}) with 32-byte keys",
        )),
    }
}

/// Sets a job's arguments: as JSON, or (`seal`) with the last one to be encrypted at each push.
pub(crate) fn set_args(
    job: &mut NewJob,
    args: &Bound<'_, PyAny>,
    seal: Option<Arc<crate::crypto::Keyring>>,
) -> PyResult<()> {
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

pub(crate) fn new_job(
    class_name: String,
    args: &Bound<'_, PyAny>,
    queue: String,
    retry: Option<&Bound<'_, PyAny>>,
    options: Option<&Bound<'_, PyDict>>,
    jid: Option<String>,
    seal: Option<Arc<crate::crypto::Keyring>>,
) -> PyResult<NewJob> {
    let mut job = NewJob::new(class_name, String::new());
    set_args(&mut job, args, seal)?;
    job.queue = queue;
    job.retry = match retry {
        Some(r) => options::retry(r)?,
        None => Retry::Default,
    };
    job.jid = jid;
    if let Some(opts) = options {
        for (k, v) in opts.iter() {
            let name: String = k.extract().map_err(|_| ConfigError::new_err("job option names must be str"))?;
            let value = value_json(&v, &name)?;
            job.options.push((name, value));
        }
    }
    // Args and option values were just written by kiq's own encoder.
    py_result(job.validate_names())?;
    Ok(job)
}

impl Client {
    /// Pushes prepared jobs: unique ones synchronously with their locks (the
    /// caller learns which were skipped), the rest through the buffer or now.
    /// Returns the jids skipped and who holds their locks.
    fn deliver_all(&self, py: Python<'_>, prepared: Vec<client::Prepared>, sync: bool) -> PyResult<Skipped> {
        let mut plain = Vec::with_capacity(prepared.len());
        let mut unique = Vec::new();
        for (jid, item, lock) in prepared {
            match lock {
                Some(lock) => unique.push((item, lock, jid)),
                None => plain.push(item),
            }
        }
        if !plain.is_empty() {
            self.deliver(py, plain, sync)?;
        }
        let mut skipped = HashMap::new();
        if !unique.is_empty() {
            let pool = self.pool.clone();
            let keys = self.keys.clone();
            let jids: Vec<String> = unique.iter().map(|(_, _, j)| j.clone()).collect();
            let deadline = std::time::Instant::now() + self.sync_timeout;
            let results = gil::block_on(py, async move { client::push_unique(&pool, &keys, &unique, deadline).await })?;
            for (jid, r) in jids.into_iter().zip(results) {
                if let client::Pushed::Held(holder) = r {
                    skipped.insert(jid, holder);
                }
            }
        }
        Ok(skipped)
    }

    /// Buffers the jobs (or, with `sync` or no buffer, writes them to Redis now).
    fn deliver(&self, py: Python<'_>, items: Vec<PushItem>, sync: bool) -> PyResult<()> {
        match &self.buffer {
            Some(buffer) if !sync => {
                let buffer = buffer.clone();
                gil::run(py, move || buffer.push(items))
            }
            _ => self.send(py, items),
        }
    }

    fn set_key(&self, set: &str) -> PyResult<String> {
        match set {
            "schedule" => Ok(self.keys.schedule()),
            "retry" => Ok(self.keys.retry()),
            "dead" => Ok(self.keys.dead()),
            other => Err(ConfigError::new_err(format!("{other:?} is not a job set: use schedule, retry or dead"))),
        }
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
        let source = match (kind, name) {
            ("queue", Some(q)) => admin::Source::Queue { key: self.keys.queue(q) },
            ("queue", None) => return Err(ConfigError::new_err("listing a queue needs its name")),
            (set, _) => admin::Source::Set { key: self.set_key(set)?, newest_first: set == "dead" },
        };
        Ok((source, admin::Filter { class, error }, admin::Bounds { window: window.max(1), max_scan }))
    }

    fn send(&self, py: Python<'_>, items: Vec<PushItem>) -> PyResult<()> {
        let pool = self.pool.clone();
        let keys = self.keys.clone();
        let deadline = std::time::Instant::now() + self.sync_timeout;
        gil::block_on(py, async move { client::push(&pool, &keys, &items, deadline).await })
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
        if !(response_timeout > 0.0 && connect_timeout > 0.0) {
            return Err(ConfigError::new_err("timeouts must be positive numbers of seconds"));
        }
        let mut config = RedisConfig::new(url);
        config.pool_size = pool_size;
        config.response_timeout = Duration::from_secs_f64(response_timeout);
        config.connect_timeout = Duration::from_secs_f64(connect_timeout);
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| ConfigError::new_err(format!("cannot read TLS file {}: {e}", p.display())))
        };
        config.tls_ca = tls_ca_file.as_deref().map(read).transpose()?;
        config.tls_client = match (tls_cert_file, tls_key_file) {
            (Some(c), Some(k)) => Some((read(&c)?, read(&k)?)),
            (None, None) => None,
            _ => {
                return Err(ConfigError::new_err("tls_cert_file and tls_key_file go together"));
            }
        };
        if !(flush_interval > 0.0 && buffer_full_timeout >= 0.0) || buffer_max_bytes == 0 {
            return Err(ConfigError::new_err(
                "flush_interval must be positive, buffer_full_timeout not negative, buffer_max_bytes above 0",
            ));
        }
        if buffer_path.is_some() && !buffer {
            return Err(ConfigError::new_err("buffer_path needs the push buffer (buffer=True)"));
        }
        let rt = runtime::get();
        let _guard = rt.enter();
        let pool = py_result(Pool::new(config))?;
        let keys = Keys::new(namespace.as_deref());
        let buffer = if buffer {
            let fsync = py_result(Fsync::parse(spool_fsync))?;
            let letters = undeliverable_path
                .or_else(|| buffer_path.as_ref().map(|d| d.join("undeliverable.jsonl")))
                .unwrap_or_else(|| {
                    std::env::temp_dir().join(format!("kiq-undeliverable-{}.jsonl", std::process::id()))
                });
            let spool = match buffer_path {
                Some(dir) => Some(gil::run(py, move || buffer::open_spool(&dir, fsync))?),
                None => None,
            };
            let cfg = BufferConfig {
                max_bytes: buffer_max_bytes,
                full_timeout: Duration::from_secs_f64(buffer_full_timeout),
                flush_interval: Duration::from_secs_f64(flush_interval),
                ..BufferConfig::default()
            };
            let buffer = Buffer::new(cfg, spool, DeadLetters::new(letters));
            rt.spawn(buffer::run(buffer.clone(), pool.clone(), keys.clone()));
            Some(buffer)
        } else {
            None
        };
        Ok(Self {
            limits: crate::limits::Limits::new(pool.clone(), keys.clone()),
            pool,
            keys,
            unit,
            buffer,
            sync_timeout: Duration::from_secs_f64(buffer_full_timeout.max(1.0)),
            keyring: keyring.map(|k| k.get().inner.clone()),
        })
    }

    /// Pushes one job and returns its jid. `at` (epoch seconds) in the future
    /// schedules it; otherwise it is pushed to its queue now.
    /// Returns `(jid, held_by)`: `held_by` is None when the job went in, else
    /// (a unique job whose lock is taken) the jid holding the lock, or "".
    /// With `batch`, the job joins that batch's `jobs()` block instead (pushed when it ends).
    #[pyo3(signature = (class_name, args, *, queue = "default", retry = None, options = None, jid = None, at = None, sync = false, unique_for = None, unique_until = None, expires_in = None, encrypt = false, batch = None))]
    #[allow(clippy::too_many_arguments)]
    fn push(
        &self,
        py: Python<'_>,
        class_name: String,
        args: &Bound<'_, PyAny>,
        queue: &str,
        retry: Option<&Bound<'_, PyAny>>,
        options: Option<&Bound<'_, PyDict>>,
        jid: Option<String>,
        at: Option<f64>,
        sync: bool,
        unique_for: Option<f64>,
        unique_until: Option<&str>,
        expires_in: Option<f64>,
        encrypt: bool,
        batch: Option<&BatchBuilder>,
    ) -> PyResult<(String, Option<String>)> {
        let seal = keys_for(encrypt, self.keyring.as_ref())?;
        let mut job = new_job(class_name, args, queue.to_owned(), retry, options, jid, seal)?;
        Extra { unique_for, unique_until, expires_in }.apply(&mut job)?;
        if let Some(b) = batch {
            b.tag(&mut job)?;
        }
        let prepared = py_result(client::prepare_full(&job, at, timestamp::now(), self.unit, &self.keys))?;
        let jid = prepared.0.clone();
        if let Some(b) = batch {
            b.collect(py, vec![prepared.1])?;
            return Ok((jid, None));
        }
        let skipped = self.deliver_all(py, vec![prepared], sync)?;
        let held = skipped.get(&jid).map(|h| h.clone().unwrap_or_default());
        Ok((jid, held))
    }

    /// Pushes one job per element of `args_list`, all of one class and
    /// options, in one round trip. Returns the jids in order.
    /// Returns the jids in order, and the unique ones skipped with who holds their locks.
    #[pyo3(signature = (class_name, args_list, *, queue = "default", retry = None, options = None, at = None, sync = false, unique_for = None, unique_until = None, expires_in = None, encrypt = false, batch = None))]
    #[allow(clippy::too_many_arguments)]
    fn push_bulk(
        &self,
        py: Python<'_>,
        class_name: String,
        args_list: &Bound<'_, PyAny>,
        queue: &str,
        retry: Option<&Bound<'_, PyAny>>,
        options: Option<&Bound<'_, PyDict>>,
        at: Option<f64>,
        sync: bool,
        unique_for: Option<f64>,
        unique_until: Option<&str>,
        expires_in: Option<f64>,
        encrypt: bool,
        batch: Option<&BatchBuilder>,
    ) -> PyResult<(Vec<String>, Skipped)> {
        let seal = keys_for(encrypt, self.keyring.as_ref())?;
        let mut template = new_job(class_name, &PyTuple::empty(py), queue.to_owned(), retry, options, None, None)?;
        Extra { unique_for, unique_until, expires_in }.apply(&mut template)?;
        if let Some(b) = batch {
            b.tag(&mut template)?;
        }
        let now = timestamp::now();
        let mut jids = Vec::new();
        if template.unique.is_none() && template.expires_in.is_none() && seal.is_none() {
            // The fast path: one payload template for every job.
            let bulk = client::Bulk::new(&template, at, now, self.unit);
            let mut items = Vec::new();
            for args in args_list.try_iter()? {
                let (jid, item) = bulk.item(&args_json(&args?)?);
                jids.push(jid);
                items.push(item);
            }
            match batch {
                Some(b) => b.collect(py, items)?,
                None => self.deliver(py, items, sync)?,
            }
            return Ok((jids, HashMap::new()));
        }
        let mut prepared = Vec::new();
        for args in args_list.try_iter()? {
            // Each job of an encrypted bulk push is sealed on its own (a fresh IV).
            let mut job = template.clone();
            set_args(&mut job, &args?, seal.clone())?;
            let p = py_result(client::prepare_full(&job, at, now, self.unit, &self.keys))?;
            jids.push(p.0.clone());
            prepared.push(p);
        }
        if let Some(b) = batch {
            b.collect(py, prepared.into_iter().map(|p| p.1).collect())?;
            return Ok((jids, HashMap::new()));
        }
        let skipped = self.deliver_all(py, prepared, sync)?;
        Ok((jids, skipped))
    }

    /// Pushes jobs given as `(class_name, args, queue, retry, options, jid, at,
    /// unique_for, unique_until, expires_in, encrypt)` tuples in one round trip.
    /// Returns the jids in order, and the unique ones skipped.
    #[pyo3(signature = (jobs, *, sync = false, batch = None))]
    fn push_jobs(
        &self,
        py: Python<'_>,
        jobs: &Bound<'_, PyAny>,
        sync: bool,
        batch: Option<&BatchBuilder>,
    ) -> PyResult<(Vec<String>, Skipped)> {
        let now = timestamp::now();
        let mut jids = Vec::new();
        let mut prepared = Vec::new();
        for spec in jobs.try_iter()? {
            let spec = spec?;
            let spec = spec.cast::<PyTuple>()?;
            let at: Option<f64> = spec.get_item(6)?.extract()?;
            let retry = spec.get_item(3)?;
            let retry = if retry.is_none() { None } else { Some(retry) };
            let opts = spec.get_item(4)?;
            let opts = if opts.is_none() { None } else { Some(opts.cast_into::<PyDict>()?) };
            let mut job = new_job(
                spec.get_item(0)?.extract()?,
                &spec.get_item(1)?,
                spec.get_item(2)?.extract()?,
                retry.as_ref(),
                opts.as_ref(),
                spec.get_item(5)?.extract()?,
                keys_for(spec.len() > 10 && spec.get_item(10)?.is_truthy()?, self.keyring.as_ref())?,
            )?;
            let until: Option<String> = spec.get_item(8)?.extract()?;
            Extra {
                unique_for: spec.get_item(7)?.extract()?,
                unique_until: until.as_deref(),
                expires_in: spec.get_item(9)?.extract()?,
            }
            .apply(&mut job)?;
            if let Some(b) = batch {
                b.tag(&mut job)?;
            }
            let p = py_result(client::prepare_full(&job, at, now, self.unit, &self.keys))?;
            jids.push(p.0.clone());
            prepared.push(p);
        }
        if let Some(b) = batch {
            b.collect(py, prepared.into_iter().map(|p| p.1).collect())?;
            return Ok((jids, HashMap::new()));
        }
        let skipped = self.deliver_all(py, prepared, sync)?;
        Ok((jids, skipped))
    }

    /// Waits (without the GIL) until every buffered job is in Redis, up to
    /// `timeout` seconds; raises `TimeoutError` if they are not.
    fn flush(&self, py: Python<'_>, timeout: f64) -> PyResult<()> {
        match &self.buffer {
            Some(buffer) => {
                let buffer = buffer.clone();
                gil::run(py, move || buffer.flush(Duration::from_secs_f64(timeout.max(0.0))))
            }
            None => Ok(()),
        }
    }

    /// The push buffer's state: jobs and bytes held, jobs flushed, the last
    /// error while flushes fail, spool file size. None without a buffer.
    fn buffer_stats<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let Some(buffer) = &self.buffer else { return Ok(None) };
        let s = buffer.stats();
        let d = PyDict::new(py);
        d.set_item("jobs", s.jobs)?;
        d.set_item("bytes", s.bytes)?;
        d.set_item("raw_bytes", s.raw_bytes)?;
        d.set_item("flushed", s.flushed)?;
        d.set_item("failing", s.failing)?;
        d.set_item("spool_bytes", s.spool_bytes)?;
        d.set_item("undeliverable", s.undeliverable)?;
        d.set_item("undeliverable_path", buffer.undeliverable_path())?;
        Ok(Some(d))
    }

    /// Writes every buffered job not yet in Redis to a new spool directory
    /// `dir` (see `Buffer::dump`); returns how many. 0 without a buffer.
    fn dump(&self, py: Python<'_>, dir: std::path::PathBuf) -> PyResult<usize> {
        let Some(buffer) = self.buffer.clone() else { return Ok(0) };
        gil::run(py, move || buffer.dump(&dir))
    }

    /// Pushes the jobs of a dead-letter file again: `(pushed, still refused)`.
    fn replay_undeliverable(&self, py: Python<'_>, path: std::path::PathBuf) -> PyResult<(usize, usize)> {
        let pool = self.pool.clone();
        let keys = self.keys.clone();
        let deadline = std::time::Instant::now() + self.sync_timeout;
        gil::block_on(py, async move { crate::deadletter::replay(&pool, &keys, &path, deadline).await })
    }

    /// The Redis URL, password removed (for messages).
    #[getter]
    fn url(&self) -> String {
        crate::pool::redact(self.pool.url())
    }

    /// What opening the spool found: `(damage descriptions, jobs carried over
    /// from an earlier run)`; empty without a spool.
    #[getter]
    fn spool_report(&self) -> (Vec<String>, usize) {
        self.buffer.as_ref().map_or_else(Default::default, |b| (b.spool_problems.clone(), b.recovered))
    }

    /// Round-trip time of a PING, in seconds.
    fn ping(&self, py: Python<'_>) -> PyResult<f64> {
        let pool = self.pool.clone();
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
        let pool = self.pool.clone();
        let value: redis::Value = gil::block_on(py, async move { Ok(cmd.query_async(&mut pool.get()).await?) })?;
        Ok(redis_to_py(py, &value)?.unbind())
    }

    /// The Redis key of a kind (`"queue"`, `"retry"`, `"process"`, ...) and
    /// argument, with the namespace applied; keys are spelled in the core only.
    #[pyo3(signature = (kind, name = None))]
    fn key(&self, kind: &str, name: Option<&str>) -> PyResult<String> {
        let k = &self.keys;
        let arg = || name.ok_or_else(|| ConfigError::new_err(format!("key kind {kind:?} needs a name")));
        Ok(match kind {
            "queues" => k.queues(),
            "schedule" => k.schedule(),
            "retry" => k.retry(),
            "dead" => k.dead(),
            "processes" => k.processes(),
            "stat_processed" => k.stat_processed(),
            "stat_failed" => k.stat_failed(),
            "queue" => k.queue(arg()?),
            "process" => k.process(arg()?),
            "work" => k.work(arg()?),
            "workers" => k.workers(arg()?),
            "signals" => k.signals(arg()?),
            "stat_processed_day" => k.stat_processed_day(arg()?),
            "stat_failed_day" => k.stat_failed_day(arg()?),
            other => return Err(ConfigError::new_err(format!("unknown key kind {other:?}"))),
        })
    }

    /// `(member, score)` of every entry of sorted set `set` ("schedule",
    /// "retry" or "dead") whose jid is `jid`.
    fn find_job(&self, py: Python<'_>, set: &str, jid: String) -> PyResult<Vec<(String, f64)>> {
        let key = self.set_key(set)?;
        let pool = self.pool.clone();
        gil::block_on(py, async move { admin::find(&pool, &key, &jid).await })
    }

    /// Moves `member` of `set` to its queue now (from "retry", decrementing
    /// `retry_count` as Sidekiq's Retry Now does). False if it was already gone.
    fn enqueue_now(&self, py: Python<'_>, set: &str, member: String) -> PyResult<bool> {
        let key = self.set_key(set)?;
        let (pool, keys) = (self.pool.clone(), self.keys.clone());
        let policy = RetryPolicy { unit: self.unit, ..RetryPolicy::default() };
        gil::block_on(py, async move { admin::enqueue_now(&pool, &keys, &policy, &key, &member).await })
    }

    /// Moves `member` of `set` to the dead set, trimmed with these limits. False if it was already gone.
    #[pyo3(signature = (set, member, *, dead_limit = 10_000, dead_timeout = 15_552_000.0))]
    fn kill(&self, py: Python<'_>, set: &str, member: String, dead_limit: u64, dead_timeout: f64) -> PyResult<bool> {
        let key = self.set_key(set)?;
        let (pool, keys) = (self.pool.clone(), self.keys.clone());
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
        let pool = self.pool.clone();
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
        let pool = self.pool.clone();
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
        let action = match action {
            "retry" => admin::Action::Retry,
            "delete" => admin::Action::Delete,
            other => {
                return Err(ConfigError::new_err(format!("action must be \"retry\" or \"delete\", not {other:?}")));
            }
        };
        let (source, filter, bounds) = self.query(kind, name, class_name, error, window, max_scan)?;
        let (pool, keys) = (self.pool.clone(), self.keys.clone());
        let policy = RetryPolicy { unit: self.unit, ..RetryPolicy::default() };
        let d = gil::block_on(py, async move {
            admin::act_on_all(&pool, &keys, &policy, &source, &filter, action, bounds).await
        })?;
        Ok((d.done, d.gone, d.scanned))
    }

    /// Asks the process running job `jid` to cancel it (it sees the request at its next heartbeat).
    fn request_cancel(&self, py: Python<'_>, jid: String) -> PyResult<()> {
        let (pool, keys) = (self.pool.clone(), self.keys.clone());
        gil::block_on(py, async move { admin::request_cancel(&pool, &keys, &jid).await })
    }

    /// The key prefix in use ("" without a namespace).
    #[getter]
    fn namespace_prefix(&self) -> String {
        self.keys.queue("").trim_end_matches("queue:").to_owned()
    }
}
