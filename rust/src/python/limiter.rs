//! `kiq._kiq.Limiter`, `Grant`, `LimiterState` and `Throttle` (bindings only;
//! the logic is `crate::limiter`, `crate::limits`, `crate::limiter_state` and
//! `crate::throttle`).

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDelta, PyDict, PyFloat, PyInt, PyString, PyTuple};

use super::client::Client;
use super::errors::{ConfigError, PyKiqError, py_result};
use super::gil;
use crate::lane::Delivery;
use crate::limiter::{IntervalArg, Kind, Spec};
use crate::limits;
use crate::retry::Failure;
use crate::throttle;

/// Seconds from an int, a float or a `timedelta` (never a bool).
fn seconds(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<f64> {
    if obj.is_instance_of::<PyDelta>() {
        // Through the method: the stable ABI the wheel targets has no field accessors.
        return obj.call_method0("total_seconds")?.extract();
    }
    if obj.is_instance_of::<PyBool>() || !(obj.is_instance_of::<PyInt>() || obj.is_instance_of::<PyFloat>()) {
        return Err(ConfigError::new_err(format!("{what} must be a number of seconds or a timedelta, not {obj}")));
    }
    obj.extract()
}

/// A whole number (never a bool); too large for 64 bits counts as `i64::MAX`.
fn count(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<i64> {
    if obj.is_instance_of::<PyBool>() || !obj.is_instance_of::<PyInt>() {
        return Err(ConfigError::new_err(format!("{what} must be an int, not {obj:?}")));
    }
    Ok(obj.extract::<i64>().unwrap_or(i64::MAX))
}

/// Room taken in a limiter (give it back with `Limiter.release`).
#[pyclass(module = "kiq._kiq", frozen, get_all)]
pub struct Grant {
    token: String,
    /// Epoch seconds by Redis's clock when the room was taken (0.0 for an unlimited limiter).
    acquired_at: f64,
    points: u64,
}

impl From<limits::Grant> for Grant {
    fn from(g: limits::Grant) -> Self {
        Self { token: g.token, acquired_at: g.acquired_at, points: g.points }
    }
}

impl Grant {
    fn core(&self) -> limits::Grant {
        limits::Grant { token: self.token.clone(), acquired_at: self.acquired_at, points: self.points }
    }
}

/// One rate limiter: a validated definition bound to a client's Redis
/// (without a client, as in sandbox mode, it always has room).
#[pyclass(module = "kiq._kiq", frozen)]
pub struct Limiter {
    inner: Arc<limits::Limiter>,
}

/// Calls `done(result, error)` from a core thread, with the GIL.
fn answer<T: for<'py> IntoPyObject<'py>>(done: Py<PyAny>, r: crate::Result<T>) {
    Python::attach(|py| {
        let call = match r {
            Ok(v) => done.call1(py, (v, py.None())),
            Err(e) => {
                let err: PyErr = PyKiqError(e).into();
                done.call1(py, (py.None(), err.into_value(py)))
            }
        };
        if let Err(e) = call {
            e.write_unraisable(py, Some(done.bind(py)));
        }
    });
}

#[pymethods]
impl Limiter {
    #[new]
    #[pyo3(signature = (client, kind, name = "", *, size = None, interval = None, wait_timeout = None, lock_timeout = None))]
    fn new(
        client: Option<&Client>,
        kind: &str,
        name: &str,
        size: Option<&Bound<'_, PyAny>>,
        interval: Option<&Bound<'_, PyAny>>,
        wait_timeout: Option<&Bound<'_, PyAny>>,
        lock_timeout: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let kind = py_result(Kind::parse(kind))?;
        let interval = match interval {
            None => None,
            Some(i) if i.is_instance_of::<PyString>() => Some(IntervalArg::Named(i.extract()?)),
            Some(i) => Some(IntervalArg::Seconds(seconds(i, "interval")?)),
        };
        let size = size.map(|s| count(s, "size")).transpose()?;
        let wait = wait_timeout.map(|w| seconds(w, "wait_timeout")).transpose()?.unwrap_or(5.0);
        let lock = lock_timeout.map(|l| seconds(l, "lock_timeout")).transpose()?.unwrap_or(30.0);
        let spec = py_result(Spec::new(kind, name, size, interval.as_ref(), wait, lock))?;
        Ok(Self { inner: Arc::new(limits::Limiter::new(spec, client.map(|c| c.limits.clone()))) })
    }

    /// Takes room (`points` of it; 1 for a concurrent slot), waiting without
    /// the GIL up to `wait_timeout`; raises `OverLimit` when there is none.
    #[pyo3(signature = (points = None))]
    fn acquire(&self, py: Python<'_>, points: Option<&Bound<'_, PyAny>>) -> PyResult<Grant> {
        let points = points.map_or(Ok(1), |p| count(p, "points"))?;
        let inner = self.inner.clone();
        gil::run(py, move || inner.acquire_blocking(points)).map(Grant::from)
    }

    /// `acquire` for asyncio: returns at once; `done(grant, None)` or
    /// `done(None, error)` is called later from a core thread.
    fn acquire_async(&self, points: &Bound<'_, PyAny>, done: Py<PyAny>) -> PyResult<()> {
        let points = count(points, "points")?;
        limits::spawn_acquire(self.inner.clone(), points, move |r| answer(done, r.map(Grant::from)));
        Ok(())
    }

    /// Gives the room back (a concurrent slot; a no-op for the other kinds).
    fn release(&self, py: Python<'_>, grant: &Grant) -> PyResult<()> {
        let (inner, grant) = (self.inner.clone(), grant.core());
        gil::run(py, move || inner.release_blocking(&grant))
    }

    /// `release` for asyncio: `done(True, None)` or `done(None, error)` later.
    fn release_async(&self, grant: &Grant, done: Py<PyAny>) {
        limits::spawn_release(self.inner.clone(), grant.core(), move |r| answer(done, r.map(|()| true)));
    }

    #[getter]
    fn kind(&self) -> &'static str {
        self.inner.spec.kind.as_str()
    }

    #[getter]
    fn name(&self) -> &str {
        &self.inner.spec.name
    }

    /// Its size, count or points (0 for unlimited).
    #[getter]
    fn capacity(&self) -> u64 {
        self.inner.spec.capacity
    }

    /// Seconds: the period, window or drain time; a concurrent limiter's lock timeout.
    #[getter]
    fn interval(&self) -> f64 {
        self.inner.spec.interval_ms as f64 / 1000.0
    }

    #[getter]
    fn wait_timeout(&self) -> f64 {
        self.inner.spec.wait.as_secs_f64()
    }

    fn __repr__(&self) -> String {
        format!("<Limiter {}>", self.inner.spec)
    }
}

/// A limiter's state now, cluster-wide (`kiq.api.Api.limiters`).
#[pyclass(module = "kiq._kiq", frozen, get_all)]
pub struct LimiterState {
    kind: &'static str,
    name: String,
    capacity: u64,
    interval: f64,
    in_use: f64,
    waiting: u64,
    last_used: f64,
}

impl From<crate::limiter_state::LimiterState> for LimiterState {
    fn from(s: crate::limiter_state::LimiterState) -> Self {
        Self {
            kind: s.kind.as_str(),
            name: s.name,
            capacity: s.capacity,
            interval: s.interval,
            in_use: s.in_use,
            waiting: s.waiting,
            last_used: s.last_used,
        }
    }
}

#[pymethods]
impl LimiterState {
    fn __repr__(&self) -> String {
        format!(
            "<LimiterState {} {:?} in_use={} capacity={} waiting={}>",
            self.kind, self.name, self.in_use, self.capacity, self.waiting
        )
    }
}

/// The limiters used lately (newest first, at most `max`), read from `client`'s Redis.
#[pyfunction]
#[pyo3(signature = (client, max = 1000))]
pub fn limiter_states(py: Python<'_>, client: &Client, max: usize) -> PyResult<Vec<LimiterState>> {
    let (pool, keys) = (client.producer.pool.clone(), client.producer.keys.clone());
    let states = gil::block_on(py, async move { crate::limiter_state::read(&pool, &keys, max).await })?;
    Ok(states.into_iter().map(LimiterState::from).collect())
}

/// A Python exception as a job failure (`error_class` as the Web UI shows it).
fn failure(py: Python<'_>, e: &PyErr, what: &str) -> Failure {
    let t = e.get_type(py);
    let name = t.qualname().map_or_else(|_| "Exception".into(), |n| n.to_string());
    let module = t.module().map(|m| m.to_string()).unwrap_or_default();
    let error_class = if module == "builtins" || module.is_empty() { name } else { format!("{module}.{name}") };
    let message = e.value(py).str().map(|s| s.to_string()).unwrap_or_default();
    Failure { error_class, error_message: format!("{what}: {message}"), ..Failure::default() }
}

/// The throttle key of a job: the user's `key(*args)` (a str, or an int made one).
pub(crate) fn throttle_key(py: Python<'_>, key_fn: &Bound<'_, PyAny>, d: &Delivery) -> Result<String, Failure> {
    let call = || -> PyResult<Bound<'_, PyAny>> {
        let args = PyTuple::new(py, super::marshal::delivery_args(py, d)?)?;
        let kwargs = match &d.kwargs {
            Some(k) => Some(super::convert::value_to_py(py, k)?.cast_into::<PyDict>()?),
            None => None,
        };
        key_fn.call(args, kwargs.as_ref())
    };
    let key = call().map_err(|e| failure(py, &e, "the throttle key function raised"))?;
    if key.is_instance_of::<PyString>() {
        return key.extract().map_err(|e| failure(py, &e, "the throttle key function returned a bad str"));
    }
    if key.is_instance_of::<PyInt>() && !key.is_instance_of::<PyBool>() {
        return Ok(key.to_string());
    }
    Err(Failure {
        error_class: "kiq.errors.ConfigError".into(),
        error_message: format!(
            "the throttle key function must return a str (or an int), not {}",
            key.get_type().name().map(|n| n.to_string()).unwrap_or_default()
        ),
        ..Failure::default()
    })
}

/// A worker's throttle, checked by the core when its jobs are fetched (or,
/// with a key function, by the thread that takes one).
#[pyclass(module = "kiq._kiq", frozen)]
pub struct Throttle {
    pub(crate) spec: throttle::Spec,
    pub(crate) key: Option<Py<PyAny>>,
}

#[pymethods]
impl Throttle {
    #[new]
    #[pyo3(signature = (*, concurrency = None, key = None, rate_count = None, rate_period = None, lock_timeout = None))]
    fn new(
        concurrency: Option<&Bound<'_, PyAny>>,
        key: Option<Py<PyAny>>,
        rate_count: Option<&Bound<'_, PyAny>>,
        rate_period: Option<&Bound<'_, PyAny>>,
        lock_timeout: Option<&Bound<'_, PyAny>>,
        py: Python<'_>,
    ) -> PyResult<Self> {
        if let Some(k) = &key
            && !k.bind(py).is_callable()
        {
            return Err(ConfigError::new_err("a throttle's key must be a function of the job's arguments"));
        }
        let concurrency = concurrency.map(|c| count(c, "throttle concurrency")).transpose()?;
        let rate_count = rate_count.map(|c| count(c, "a throttle rate's count")).transpose()?;
        let rate_period = rate_period.map(|p| seconds(p, "a throttle rate's period")).transpose()?;
        let lock = lock_timeout.map(|l| seconds(l, "lock_timeout")).transpose()?.unwrap_or(60.0);
        let spec = py_result(throttle::Spec::new(concurrency, rate_count, rate_period, lock, key.is_some()))?;
        Ok(Self { spec, key })
    }

    #[getter]
    fn concurrency(&self) -> Option<u32> {
        self.spec.concurrency
    }

    /// `(count, period_seconds)` or None.
    #[getter]
    fn rate(&self) -> Option<(u32, f64)> {
        self.spec.rate.map(|(c, ms)| (c, ms as f64 / 1000.0))
    }

    #[getter]
    fn key(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.key.as_ref().map(|k| k.clone_ref(py))
    }

    #[getter]
    fn lock_timeout(&self) -> f64 {
        self.spec.lock_ms as f64 / 1000.0
    }

    fn __repr__(&self) -> String {
        let mut parts = Vec::new();
        if let Some(c) = self.spec.concurrency {
            parts.push(format!("concurrency={c}"));
        }
        if let Some((c, ms)) = self.spec.rate {
            parts.push(format!("rate=({c}, {})", ms as f64 / 1000.0));
        }
        if self.key.is_some() {
            parts.push("key=...".into());
        }
        format!("Throttle({})", parts.join(", "))
    }
}
