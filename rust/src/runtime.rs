//! The tokio runtime that runs every Redis round trip and timer of the core.
//!
//! One runtime per process, built on first use with two worker threads (the
//! core's work is I/O-bound). A process forked after the runtime started
//! (gunicorn preload, multiprocessing) has no runtime threads, so the child
//! builds its own; the parent's copy is leaked rather than dropped, since its
//! threads do not exist in the child.

use std::sync::{Arc, Mutex};

use tokio::runtime::{Builder, Runtime};

static RUNTIME: Mutex<Option<(u32, Arc<Runtime>)>> = Mutex::new(None);

/// Whether this process has started its runtime (and so owns its threads).
/// A process that forks must not have: the child would inherit locks held by
/// threads that do not exist there (the swarm's parent checks this).
pub fn started() -> bool {
    let slot = RUNTIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    slot.as_ref().is_some_and(|(owner, _)| *owner == std::process::id())
}

/// The runtime of this process.
pub fn get() -> Arc<Runtime> {
    let pid = std::process::id();
    let mut slot = RUNTIME.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((owner, rt)) = slot.as_ref()
        && *owner == pid
    {
        return rt.clone();
    }
    if let Some((_, stale)) = slot.take() {
        std::mem::forget(stale);
    }
    let rt = Arc::new(
        Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("kiq-core")
            .enable_all()
            .build()
            .expect("kiq: cannot start the tokio runtime"),
    );
    *slot = Some((pid, rt.clone()));
    rt
}
