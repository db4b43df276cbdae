//! `kiq._kiq.BatchBuilder` and the batch reads (bindings only; the logic is
//! `crate::batches`).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::client::Client;
use super::convert::value_json;
use super::errors::{ConfigError, ShutdownError, py_result};
use super::{gil, options};
use crate::batches::build::{self, Builder, Spec};
use crate::batches::{Callback, status};
use crate::client::PushItem;
use crate::job::{NewJob, Retry};
use crate::keys::Keys;
use crate::pool::Pool;
use crate::timestamp::TimestampUnit;

/// The jobs of one `jobs()` block of a batch, until the block ends.
///
/// Built from a spec object's attributes: `bid` (str), `up` (ancestor bids,
/// nearest first), `new` (create, else reopen), `description`,
/// `callback_queue` (str or None) and `callbacks`, each with `event`,
/// `class_name`, `queue`, `retry`, `options` (a dict), `fields` (payload
/// fields, a dict or None) and `awaited` (bool).
#[pyclass(module = "kiq._kiq", frozen)]
pub struct BatchBuilder {
    inner: Mutex<Option<Builder>>,
    pool: Arc<Pool>,
    keys: Keys,
    unit: TimestampUnit,
    timeout: Duration,
    /// The batch's id.
    #[pyo3(get)]
    bid: String,
    /// The batch, then its ancestors (nearest first).
    #[pyo3(get)]
    chain: Vec<String>,
}

impl BatchBuilder {
    fn with<T>(&self, f: impl FnOnce(&mut Builder) -> PyResult<T>) -> PyResult<T> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        match inner.as_mut() {
            Some(b) => f(b),
            None => Err(ShutdownError::new_err(format!("the jobs() block of batch {} has ended", self.bid))),
        }
    }

    fn take(&self) -> PyResult<Builder> {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .ok_or_else(|| ShutdownError::new_err(format!("the jobs() block of batch {} has ended", self.bid)))
    }

    /// Makes a job a job of this batch (unique jobs are refused).
    pub(crate) fn tag(&self, job: &mut NewJob) -> PyResult<()> {
        self.with(|b| py_result(b.tag(job)))
    }

    /// Takes pushed jobs in; a full chunk is staged in Redis (without the GIL).
    pub(crate) fn collect(&self, py: Python<'_>, items: Vec<PushItem>) -> PyResult<()> {
        let Some(stage) = self.with(|b| Ok(b.add(items)))? else { return Ok(()) };
        let (pool, keys) = (self.pool.clone(), self.keys.clone());
        let deadline = Instant::now() + self.timeout;
        gil::block_on(py, async move { stage.send(&pool, &keys, deadline).await })
    }
}

fn callback(spec: &Bound<'_, PyAny>) -> PyResult<Callback> {
    let retry = spec.getattr("retry")?;
    let retry = if retry.is_none() { Retry::Default } else { options::retry(&retry)? };
    let options = spec.getattr("options")?;
    let options = if options.is_none() { "{}".to_owned() } else { value_json(&options, "batch callback options")? };
    let mut cb = py_result(Callback::new(
        &spec.getattr("event")?.extract::<String>()?,
        &spec.getattr("class_name")?.extract::<String>()?,
        &spec.getattr("queue")?.extract::<String>()?,
        retry,
        &options,
    ))?;
    cb.awaited = spec.getattr("awaited")?.extract()?;
    let fields = spec.getattr("fields")?;
    if !fields.is_none() {
        for (k, v) in fields.cast::<PyDict>()?.iter() {
            let name: String = k.extract().map_err(|_| ConfigError::new_err("payload field names must be str"))?;
            let value = value_json(&v, &name)?;
            cb.fields.push((name, value));
        }
    }
    Ok(cb)
}

#[pymethods]
impl BatchBuilder {
    #[new]
    fn new(client: &Client, spec: &Bound<'_, PyAny>) -> PyResult<Self> {
        let callbacks = spec.getattr("callbacks")?.try_iter()?.map(|c| callback(&c?)).collect::<PyResult<Vec<_>>>()?;
        let spec = Spec {
            bid: spec.getattr("bid")?.extract()?,
            up: spec.getattr("up")?.extract()?,
            new: spec.getattr("new")?.extract()?,
            description: spec.getattr("description")?.extract()?,
            callback_queue: spec.getattr("callback_queue")?.extract()?,
            callbacks,
        };
        let builder = py_result(Builder::new(spec))?;
        Ok(Self {
            bid: builder.bid().to_owned(),
            chain: builder.chain(),
            inner: Mutex::new(Some(builder)),
            pool: client.producer.pool.clone(),
            keys: client.producer.keys.clone(),
            unit: client.producer.unit,
            timeout: client.producer.sync_timeout,
        })
    }

    /// Jobs given so far.
    fn __len__(&self) -> PyResult<usize> {
        self.with(|b| Ok(b.len()))
    }

    /// Ends the block: creates or reopens the batch and pushes its jobs,
    /// exactly once (waiting for Redis up to the client's sync timeout).
    /// Returns the number of callbacks that fired at once (an empty batch's).
    fn commit(&self, py: Python<'_>) -> PyResult<usize> {
        let plan = py_result(self.take()?.plan())?;
        let (pool, keys, unit) = (self.pool.clone(), self.keys.clone(), self.unit);
        let deadline = Instant::now() + self.timeout;
        gil::block_on(py, async move { plan.run(&pool, &keys, unit, deadline).await })
    }

    /// The block raised: drops what it staged; nothing was pushed.
    fn discard(&self, py: Python<'_>) -> PyResult<()> {
        let ids = self.take()?.staged_ids();
        let (pool, keys) = (self.pool.clone(), self.keys.clone());
        gil::block_on(py, async move { build::discard(&pool, &keys, &ids).await })
    }

    /// A child batch's block ended inside this one's: it is committed with this one.
    fn defer(&self, child: &BatchBuilder) -> PyResult<()> {
        let child = child.take()?;
        self.with(|b| {
            b.defer(child);
            Ok(())
        })
    }
}

fn status_dict<'py>(py: Python<'py>, s: &status::Status) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("bid", &s.bid)?;
    d.set_item("total", s.total)?;
    d.set_item("pending", s.pending)?;
    d.set_item("failures", s.failures)?;
    d.set_item("created_at", s.created_at)?;
    d.set_item("description", &s.description)?;
    d.set_item("callback_queue", &s.callback_queue)?;
    d.set_item("parent_bid", s.parent_bid())?;
    d.set_item("ancestors", &s.up)?;
    d.set_item("child_count", s.child_count)?;
    d.set_item("children_complete", s.children_complete)?;
    d.set_item("children_succeeded", s.children_succeeded)?;
    d.set_item("complete", s.complete())?;
    d.set_item("success", s.fired.contains(&"success"))?;
    d.set_item("death", s.fired.contains(&"death"))?;
    d.set_item("fired", &s.fired)?;
    d.set_item("callbacks_done", &s.done)?;
    d.set_item("invalidated", s.invalidated)?;
    d.set_item("open", s.open)?;
    d.set_item("failed_jids", &s.failed_jids)?;
    d.set_item("dead_jids", &s.dead_jids)?;
    d.set_item("expires_in", s.expires_in)?;
    Ok(d)
}

/// A batch's status as a dict (failed and dead jids included), or None when
/// it expired or never existed.
#[pyfunction]
pub fn batch_status<'py>(py: Python<'py>, client: &Client, bid: String) -> PyResult<Option<Bound<'py, PyDict>>> {
    let (pool, keys) = (client.producer.pool.clone(), client.producer.keys.clone());
    let s = gil::block_on(py, async move { status::read(&pool, &keys, &bid).await })?;
    s.map(|s| status_dict(py, &s)).transpose()
}

/// Up to `count` batches from the `start`-th, newest first (without jids),
/// and how many the listing holds.
#[pyfunction]
#[pyo3(signature = (client, start = 0, count = 100))]
pub fn batch_list<'py>(
    py: Python<'py>,
    client: &Client,
    start: usize,
    count: usize,
) -> PyResult<(usize, Vec<Bound<'py, PyDict>>)> {
    let (pool, keys) = (client.producer.pool.clone(), client.producer.keys.clone());
    let (total, list) = gil::block_on(py, async move { status::list(&pool, &keys, start, count).await })?;
    Ok((total, list.iter().map(|s| status_dict(py, s)).collect::<PyResult<_>>()?))
}

/// A batch's ancestors (nearest first), to reopen it; None when it is gone.
#[pyfunction]
pub fn batch_ancestors(py: Python<'_>, client: &Client, bid: String) -> PyResult<Option<Vec<String>>> {
    let (pool, keys) = (client.producer.pool.clone(), client.producer.keys.clone());
    gil::block_on(py, async move { status::ancestors(&pool, &keys, &bid).await })
}

/// Marks a batch invalid; False when it is gone.
#[pyfunction]
pub fn batch_invalidate(py: Python<'_>, client: &Client, bid: String) -> PyResult<bool> {
    let (pool, keys) = (client.producer.pool.clone(), client.producer.keys.clone());
    gil::block_on(py, async move { status::invalidate(&pool, &keys, &bid).await })
}

/// Whether any batch of `chain` was invalidated.
#[pyfunction]
pub fn batch_invalidated(py: Python<'_>, client: &Client, chain: Vec<String>) -> PyResult<bool> {
    let (pool, keys) = (client.producer.pool.clone(), client.producer.keys.clone());
    gil::block_on(py, async move { Ok(status::invalidated(&pool, &keys, &chain).await?.contains(&true)) })
}

/// Checks a callback spec (same attributes as in a builder's spec) the way the builder will.
#[pyfunction]
pub fn check_batch_callback(spec: &Bound<'_, PyAny>) -> PyResult<()> {
    callback(spec).map(|_| ())
}

/// A new batch id (14 characters of URL-safe Base64, as Sidekiq Pro's).
#[pyfunction]
pub fn new_bid() -> String {
    crate::batches::new_bid()
}
