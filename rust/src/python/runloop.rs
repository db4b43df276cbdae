//! `kiq._kiq.run_ready`: a thread holding the GIL runs its lane's ready
//! jobs from here while they are plain ones (a sync worker, no expiry, no
//! batch event), each started, run and completed without a round of the
//! Python loop (`kiq.processor`). That round's bytecode, the attribute reads
//! of the delivery and the two binding calls were about a third of the
//! Python thread's instructions per no-op job. Anything else goes back to
//! the loop, which handles it as it handles a job from `Server.next_job`.

use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::server::{Delivery, Prepared, Server};

/// What a call of [`run_ready`] ended with, for the Python loop.
type Handed = (Option<Py<Delivery>>, Option<Py<PyAny>>, Option<Py<PyAny>>);

/// Runs up to `limit` ready jobs of queue number `lane` whose class is in
/// `runners` (class name to the callable a thread runs it with), each with
/// the job set as current (`set_current` returns the token `reset_current`
/// takes back). Returns None once no job is ready or `limit` ran (the
/// caller waits with `next_job`); `(None, None, None)` when the server is
/// stopping; `(delivery, None, None)` for a job the loop must run itself
/// (started, not current); `(delivery, token, exception)` for a job that
/// raised, still current, for the loop to settle and then reset. No job is
/// current when it returns otherwise, as before it was called.
#[pyfunction]
pub fn run_ready(
    py: Python<'_>,
    server: &Server,
    lane: usize,
    runners: &Bound<'_, PyDict>,
    set_current: &Bound<'_, PyAny>,
    reset_current: &Bound<'_, PyAny>,
    limit: usize,
) -> PyResult<Option<Handed>> {
    // Each job is made current by one `set`, not a set and a reset: the
    // token of the first one (which restores "no job") ends the batch, or
    // goes with a job that raised. Half the context-variable work per job.
    let mut first: Option<Bound<'_, PyAny>> = None;
    let ran = run(py, server, lane, runners, set_current, limit, &mut first);
    let raised = matches!(ran, Ok(Some((_, Some(_), _))));
    if let Some(token) = first.filter(|_| !raised) {
        reset_current.call1((token,))?;
    }
    ran
}

fn run<'py>(
    py: Python<'py>,
    server: &Server,
    lane: usize,
    runners: &Bound<'py, PyDict>,
    set_current: &Bound<'py, PyAny>,
    limit: usize,
    first: &mut Option<Bound<'py, PyAny>>,
) -> PyResult<Option<Handed>> {
    let l = server.lane(lane)?;
    for _ in 0..limit {
        let Some(d) = l.try_take() else { return Ok(None) };
        let d = match server.prepare(py, d)? {
            Prepared::Ready(d) => d,
            Prepared::Next => continue,
            Prepared::Stop => return Ok(Some((None, None, None))),
        };
        let plain = d.expires_at.is_none() && !d.batch_invalidated && d.batch_event.is_none();
        let run = if plain { runners.get_item(d.class_name.bind(py))? } else { None };
        let d = Bound::new(py, d)?;
        let Some(run) = run else { return Ok(Some((Some(d.unbind()), None, None))) };
        let Ok(token) = set_current.call1((&d,)) else { return Ok(Some((Some(d.unbind()), None, None))) };
        // The batch's first token: resetting it leaves no job current.
        let token = first.get_or_insert(token).clone();
        let job = d.get();
        let kwargs = job.kwargs.as_ref().map(|k| k.bind(py).clone().into_any());
        if let Err(e) = run.call1((job.args.bind(py), job.jid.bind(py), kwargs)) {
            return Ok(Some((Some(d.unbind()), Some(token.unbind()), Some(e.into_value(py).into_any()))));
        }
        server.completed(job)?;
    }
    Ok(None)
}
