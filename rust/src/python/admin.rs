//! `kiq._kiq.Admin`: what a dashboard reads and does (bindings only; the
//! logic is `crate::browse`, `crate::bulk`, `crate::overview`, `crate::jobview`).

use std::sync::Arc;

use pyo3::prelude::*;

use super::client::Client;
use super::errors::py_result;
use super::gil;
use crate::browse::{self, Filter, Source};
use crate::bulk::{self, Action, JobRef};
use crate::jobview;
use crate::keys::Keys;
use crate::overview;
use crate::pool::Pool;
use crate::retry::RetryPolicy;
use crate::timestamp;

/// One job as a dashboard shows it (display rules applied by the core).
#[pyclass(module = "kiq._kiq", frozen, get_all)]
pub struct JobView {
    payload: String,
    score: Option<f64>,
    jid: String,
    class_name: String,
    raw_class: String,
    queue: String,
    args: Vec<String>,
    encrypted: bool,
    retry: Option<String>,
    retry_count: Option<i64>,
    created_at: Option<f64>,
    enqueued_at: Option<f64>,
    failed_at: Option<f64>,
    retried_at: Option<f64>,
    error_class: Option<String>,
    error_message: Option<String>,
    tags: Vec<String>,
    bid: Option<String>,
    unreadable: bool,
    backtrace: Vec<String>,
    extras: Vec<(String, String)>,
}

impl From<jobview::JobView> for JobView {
    fn from(v: jobview::JobView) -> Self {
        Self {
            payload: v.payload,
            score: v.score,
            jid: v.jid,
            class_name: v.class,
            raw_class: v.raw_class,
            queue: v.queue,
            args: v.args,
            encrypted: v.encrypted,
            retry: v.retry,
            retry_count: v.retry_count,
            created_at: v.created_at,
            enqueued_at: v.enqueued_at,
            failed_at: v.failed_at,
            retried_at: v.retried_at,
            error_class: v.error_class,
            error_message: v.error_message,
            tags: v.tags,
            bid: v.bid,
            unreadable: v.unreadable,
            backtrace: v.backtrace,
            extras: v.extras,
        }
    }
}

/// A window of jobs; `next` and `scanned` describe a filtered search.
#[pyclass(module = "kiq._kiq", frozen, get_all)]
pub struct Page {
    total: u64,
    jobs: Vec<Py<JobView>>,
    next: Option<u64>,
    scanned: u64,
}

#[pyclass(module = "kiq._kiq", frozen, get_all)]
pub struct QueueStat {
    name: String,
    size: u64,
    latency: f64,
}

/// Sidekiq's `Stats`, read the same way.
#[pyclass(module = "kiq._kiq", frozen, get_all)]
pub struct Summary {
    processed: u64,
    failed: u64,
    scheduled: u64,
    retries: u64,
    dead: u64,
    processes: u64,
    busy: u64,
    enqueued: u64,
    queues: Vec<Py<QueueStat>>,
    default_latency: f64,
}

#[pyclass(module = "kiq._kiq", frozen, get_all)]
pub struct WorkView {
    tid: String,
    queue: String,
    run_at: i64,
    job: Py<JobView>,
}

#[pyclass(module = "kiq._kiq", frozen, get_all)]
pub struct ProcessView {
    identity: String,
    /// The `info` JSON as the process wrote it.
    info: String,
    hostname: String,
    pid: i64,
    tag: String,
    labels: Vec<String>,
    queues: Vec<String>,
    concurrency: i64,
    version: String,
    started_at: f64,
    embedded: bool,
    busy: i64,
    beat: f64,
    quiet: bool,
    rss_kb: i64,
    rtt_us: i64,
    work: Vec<Py<WorkView>>,
}

#[pyclass(module = "kiq._kiq", frozen, get_all)]
pub struct ClassMetrics {
    class_name: String,
    processed: u64,
    failed: u64,
    ms: u64,
    per_minute: Vec<u64>,
}

fn view(py: Python<'_>, v: jobview::JobView) -> PyResult<Py<JobView>> {
    Py::new(py, JobView::from(v))
}

fn page(py: Python<'_>, p: browse::Page) -> PyResult<Page> {
    let jobs = p.jobs.into_iter().map(|j| view(py, j)).collect::<PyResult<_>>()?;
    Ok(Page { total: p.total, jobs, next: p.next, scanned: p.scanned })
}

/// The dashboard's door into the core, sharing a `Client`'s connections.
#[pyclass(module = "kiq._kiq", frozen)]
pub struct Admin {
    pool: Arc<Pool>,
    keys: Keys,
    policy: RetryPolicy,
}

impl Admin {
    fn set_key(&self, set: &str) -> PyResult<String> {
        py_result(crate::admin::job_set(&self.keys, set))
    }

    /// A sorted set by name, or with `queue` set, that queue.
    fn source(&self, set: &str, queue: Option<&str>, newest_first: bool) -> PyResult<Source> {
        Ok(match queue {
            Some(q) => Source::Queue { key: self.keys.queue(q), newest_first },
            None => Source::Set { key: self.set_key(set)?, newest_first },
        })
    }
}

#[pymethods]
impl Admin {
    #[new]
    #[pyo3(signature = (client, *, dead_limit = 10_000, dead_timeout = 15_552_000.0))]
    fn new(client: &Client, dead_limit: u64, dead_timeout: f64) -> Self {
        let policy = RetryPolicy {
            unit: client.producer.unit,
            dead_limit,
            dead_timeout_secs: dead_timeout,
            ..RetryPolicy::default()
        };
        Self { pool: client.producer.pool.clone(), keys: client.producer.keys.clone(), policy }
    }

    /// `count` jobs of `set` ("schedule", "retry", "dead"; or the queue named
    /// by `queue`) from offset `start`: one ZRANGE/LRANGE window.
    #[pyo3(signature = (set, start, count, *, queue = None, newest_first = false))]
    fn window(
        &self,
        py: Python<'_>,
        set: &str,
        start: u64,
        count: u64,
        queue: Option<&str>,
        newest_first: bool,
    ) -> PyResult<Page> {
        let source = self.source(set, queue, newest_first)?;
        let pool = self.pool.clone();
        let p = gil::block_on(py, async move { browse::window(&pool, &source, start, count).await })?;
        page(py, p)
    }

    /// Up to `want` jobs matching the filter, from offset `start`, examining at most `budget` entries.
    #[pyo3(signature = (set, start, want, budget, *, class_name = None, queue = None, text = None, newest_first = false))]
    #[allow(clippy::too_many_arguments)]
    fn search(
        &self,
        py: Python<'_>,
        set: &str,
        start: u64,
        want: usize,
        budget: u64,
        class_name: Option<String>,
        queue: Option<String>,
        text: Option<String>,
        newest_first: bool,
    ) -> PyResult<Page> {
        let source = self.source(set, None, newest_first)?;
        let filter = Filter { class: class_name, queue, text };
        let pool = self.pool.clone();
        let p = gil::block_on(py, async move {
            browse::search(&pool, &source, &filter, start, want.max(1), budget.max(1)).await
        })?;
        page(py, p)
    }

    /// The job of `set` named by Sidekiq's `"<score>-<jid>"` key, with its backtrace and extras.
    fn job(&self, py: Python<'_>, set: &str, key: &str) -> PyResult<Option<Py<JobView>>> {
        let set = self.set_key(set)?;
        let job = py_result(JobRef::parse(key))?;
        let pool = self.pool.clone();
        let found = gil::block_on(py, async move { bulk::fetch(&pool, &set, &job).await })?;
        found.map(|(m, s)| view(py, jobview::JobView::detail(m, Some(s)))).transpose()
    }

    /// Applies "retry", "add_to_queue", "kill" or "delete" to the jobs of
    /// `set` named by `"<score>-<jid>"` keys; returns how many it acted on.
    fn act(&self, py: Python<'_>, set: &str, action: &str, keys: Vec<String>) -> PyResult<u64> {
        let set = self.set_key(set)?;
        let action = py_result(Action::parse(action))?;
        let refs = keys.iter().map(|k| JobRef::parse(k)).collect::<crate::Result<Vec<_>>>();
        let refs = py_result(refs)?;
        let (pool, k, policy) = (self.pool.clone(), self.keys.clone(), self.policy.clone());
        gil::block_on(py, async move { bulk::act(&pool, &k, &policy, &set, action, &refs).await })
    }

    /// Applies the action to every job of `set` the filter keeps (all, without one).
    #[pyo3(signature = (set, action, *, class_name = None, queue = None, text = None))]
    fn act_all(
        &self,
        py: Python<'_>,
        set: &str,
        action: &str,
        class_name: Option<String>,
        queue: Option<String>,
        text: Option<String>,
    ) -> PyResult<u64> {
        let set = self.set_key(set)?;
        let action = py_result(Action::parse(action))?;
        let filter = Filter { class: class_name, queue, text };
        let (pool, k, policy) = (self.pool.clone(), self.keys.clone(), self.policy.clone());
        gil::block_on(py, async move { bulk::act_all(&pool, &k, &policy, &set, action, &filter).await })
    }

    /// Deletes job `jid` from queue `name`; False if it is not there.
    fn queue_delete(&self, py: Python<'_>, name: String, jid: String) -> PyResult<bool> {
        let (pool, keys) = (self.pool.clone(), self.keys.clone());
        gil::block_on(py, async move { bulk::queue_delete(&pool, &keys, &name, &jid).await })
    }

    /// Removes queue `name` and its jobs; returns how many jobs it held.
    fn queue_clear(&self, py: Python<'_>, name: String) -> PyResult<u64> {
        let (pool, keys) = (self.pool.clone(), self.keys.clone());
        gil::block_on(py, async move { bulk::queue_clear(&pool, &keys, &name).await })
    }

    /// Sends "TSTP" (quiet), "TERM" (stop) or "TTIN" to a process's next heartbeat.
    fn signal(&self, py: Python<'_>, identity: String, signal: String) -> PyResult<()> {
        let (pool, keys) = (self.pool.clone(), self.keys.clone());
        gil::block_on(py, async move { bulk::signal(&pool, &keys, &identity, &signal).await })
    }

    /// Totals, queue sizes and latencies, as Sidekiq's `Stats` reads them.
    fn summary(&self, py: Python<'_>) -> PyResult<Summary> {
        let (pool, keys) = (self.pool.clone(), self.keys.clone());
        let s = gil::block_on(py, async move { overview::summary(&pool, &keys, timestamp::now()).await })?;
        let queues = s
            .queues
            .into_iter()
            .map(|q| Py::new(py, QueueStat { name: q.name, size: q.size, latency: q.latency }))
            .collect::<PyResult<_>>()?;
        Ok(Summary {
            processed: s.processed,
            failed: s.failed,
            scheduled: s.scheduled,
            retries: s.retries,
            dead: s.dead,
            processes: s.processes,
            busy: s.busy,
            enqueued: s.enqueued,
            queues,
            default_latency: s.default_latency,
        })
    }

    /// `(name, value)` of the Redis facts Sidekiq's dashboard shows.
    fn redis_info(&self, py: Python<'_>) -> PyResult<Vec<(String, String)>> {
        let pool = self.pool.clone();
        gil::block_on(py, async move { overview::redis_info(&pool).await })
    }

    /// `(date, processed, failed)` per UTC day for the last `days` days, newest first.
    fn history(&self, py: Python<'_>, days: u32) -> PyResult<Vec<(String, u64, u64)>> {
        let (pool, keys) = (self.pool.clone(), self.keys.clone());
        gil::block_on(py, async move { overview::history(&pool, &keys, days, timestamp::now()).await })
    }

    /// Per-class execution metrics of the last `minutes` minutes (at most 480).
    fn metrics(&self, py: Python<'_>, minutes: u32) -> PyResult<Vec<ClassMetrics>> {
        let (pool, keys) = (self.pool.clone(), self.keys.clone());
        let m =
            gil::block_on(py, async move { overview::class_metrics(&pool, &keys, minutes, timestamp::now()).await })?;
        Ok(m.into_iter()
            .map(|c| ClassMetrics {
                class_name: c.class,
                processed: c.processed,
                failed: c.failed,
                ms: c.ms,
                per_minute: c.per_minute,
            })
            .collect())
    }

    /// Live processes with their running jobs, by identity.
    fn processes(&self, py: Python<'_>) -> PyResult<Vec<ProcessView>> {
        let (pool, keys) = (self.pool.clone(), self.keys.clone());
        let procs = gil::block_on(py, async move { overview::processes(&pool, &keys).await })?;
        procs
            .into_iter()
            .map(|p| {
                let work = p
                    .work
                    .into_iter()
                    .map(|w| {
                        Py::new(py, WorkView { tid: w.tid, queue: w.queue, run_at: w.run_at, job: view(py, w.job)? })
                    })
                    .collect::<PyResult<_>>()?;
                Ok(ProcessView {
                    identity: p.identity,
                    info: p.info,
                    hostname: p.hostname,
                    pid: p.pid,
                    tag: p.tag,
                    labels: p.labels,
                    queues: p.queues,
                    concurrency: p.concurrency,
                    version: p.version,
                    started_at: p.started_at,
                    embedded: p.embedded,
                    busy: p.busy,
                    beat: p.beat,
                    quiet: p.quiet,
                    rss_kb: p.rss_kb,
                    rtt_us: p.rtt_us,
                    work,
                })
            })
            .collect()
    }
}
