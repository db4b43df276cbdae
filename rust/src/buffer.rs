//! The reliable push buffer: `enqueue` returns once a job is here, and a
//! core task flushes it to Redis, in order, retrying with backoff while Redis
//! is away.
//!
//! Jobs wait in segments. The newest segment is kept as plain items; a
//! segment that grows past 64 KiB, and every segment once a flush has failed,
//! is LZ4-compressed (JSON payloads of one app compress several times over),
//! so a long outage holds many jobs in little memory. Memory is bounded by
//! `max_bytes` (plain bytes of open segments, compressed bytes of the rest):
//! a push that does not fit waits up to `full_timeout` for room, then fails
//! with a clear error; nothing is dropped. With a spool (see `spool.rs`) each
//! push is written to disk before it returns and acked once in Redis.
//!
//! The flusher sends at most `MAX_BATCH` jobs per round trip in one MULTI/EXEC,
//! so a batch is all in Redis or not at all; on error it goes back to the
//! front. After a success the next flush waits `flush_interval` (batching),
//! unless a full batch is waiting.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::batch;
use crate::client::{self, PushItem};
use crate::error::{KiqError, Result};
use crate::keys::Keys;
use crate::pool::Pool;
use crate::spool::{Fsync, Recovered, Spool};

const SEAL_BYTES: usize = 64 << 10;
const MAX_BATCH: usize = 10_000;
const MAX_BATCH_BYTES: usize = 8 << 20;

#[derive(Debug, Clone)]
pub struct BufferConfig {
    /// Memory the waiting jobs may take (Kiq: unbounded; here 64 MiB by default).
    pub max_bytes: usize,
    /// How long a push waits for room in a full buffer before it fails.
    pub full_timeout: Duration,
    /// Pause between flushes (Kiq's 10 ms).
    pub flush_interval: Duration,
    /// Backoff after failed flushes grows ×1.5 up to this (Kiq's 5 s).
    pub max_backoff: Duration,
}

impl Default for BufferConfig {
    fn default() -> Self {
        Self {
            max_bytes: 64 << 20,
            full_timeout: Duration::from_secs(10),
            flush_interval: Duration::from_millis(10),
            max_backoff: Duration::from_secs(5),
        }
    }
}

enum Segment {
    Open(Vec<PushItem>, usize),
    Sealed { data: Vec<u8>, count: usize },
}

impl Segment {
    fn len(&self) -> usize {
        match self {
            Self::Open(items, _) => items.len(),
            Self::Sealed { count, .. } => *count,
        }
    }

    fn bytes(&self) -> usize {
        match self {
            Self::Open(_, bytes) => *bytes,
            Self::Sealed { data, .. } => data.len(),
        }
    }

    fn seal(&mut self) {
        if let Self::Open(items, _) = self {
            let data = batch::compress(items);
            *self = Self::Sealed { data, count: items.len() };
        }
    }

    fn into_items(self) -> Vec<PushItem> {
        match self {
            Self::Open(items, _) => items,
            // Sealed segments were made from valid items in this process.
            Self::Sealed { data, .. } => batch::decompress(&data).unwrap_or_default(),
        }
    }
}

#[derive(Default)]
struct State {
    /// (sequence number of the segment's first job, segment), oldest first.
    segments: VecDeque<(u64, Segment)>,
    /// Memory held by `segments` plus the batch in flight.
    bytes: usize,
    /// Jobs held, including the batch in flight.
    jobs: usize,
    /// Their size before compression.
    raw_bytes: usize,
    next_seq: u64,
    /// The batch being sent: (first sequence number, jobs, bytes, raw bytes).
    inflight: Option<(u64, usize, usize, usize)>,
    failing: Option<String>,
    flushed: u64,
}

/// A snapshot for monitoring and the benchmark.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BufferStats {
    pub jobs: usize,
    /// Memory the jobs take now (compressed where sealed).
    pub bytes: usize,
    /// What they would take uncompressed.
    pub raw_bytes: usize,
    /// Jobs flushed to Redis since start.
    pub flushed: u64,
    /// The last flush error, while flushes fail.
    pub failing: Option<String>,
    pub spool_bytes: u64,
}

pub struct Buffer {
    config: BufferConfig,
    /// What opening the spool found: damage descriptions, and jobs carried over.
    pub spool_problems: Vec<String>,
    pub recovered: usize,
    state: Mutex<State>,
    changed: Condvar,
    wake: Notify,
    spool: Option<Mutex<Spool>>,
}

impl Buffer {
    /// A buffer, with jobs recovered from a spool if one is given.
    pub fn new(config: BufferConfig, spool: Option<(Spool, Recovered)>) -> Arc<Self> {
        let mut state = State { next_seq: 1, ..State::default() };
        let mut spool_problems = Vec::new();
        let mut count = 0;
        let spool = spool.map(|(spool, recovered)| {
            spool_problems.clone_from(&recovered.problems);
            count = recovered.batches.iter().map(|(_, b)| b.len()).sum();
            for (first, items) in recovered.batches {
                let raw: usize = items.iter().map(batch::raw_size).sum();
                let mut seg = Segment::Open(items, 0);
                seg.seal();
                state.bytes += seg.bytes();
                state.jobs += seg.len();
                state.raw_bytes += raw;
                state.segments.push_back((first, seg));
            }
            state.next_seq = recovered.next_seq;
            Mutex::new(spool)
        });
        Arc::new(Self {
            config,
            spool_problems,
            recovered: count,
            state: Mutex::new(state),
            changed: Condvar::new(),
            wake: Notify::new(),
            spool,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds jobs; waits up to `full_timeout` for room. The jobs are on disk
    /// first when there is a spool.
    pub fn push(&self, items: Vec<PushItem>) -> Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        let size: usize = items.iter().map(batch::raw_size).sum();
        // A batch bigger than the whole buffer can only wait for an empty one.
        let need = size.min(self.config.max_bytes);
        let deadline = Instant::now() + self.config.full_timeout;
        let mut state = self.lock();
        while state.bytes + need > self.config.max_bytes && state.bytes > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let why = state.failing.clone().unwrap_or_else(|| "Redis is slower than the enqueue rate".to_owned());
                return Err(KiqError::BufferFull(format!(
                    "the push buffer is full ({} jobs, {} bytes of {}) and stayed full for {:?}: {why}",
                    state.jobs, state.bytes, self.config.max_bytes, self.config.full_timeout
                )));
            }
            state = self.changed.wait_timeout(state, left).unwrap_or_else(PoisonError::into_inner).0;
        }
        let first = state.next_seq;
        if let Some(spool) = &self.spool {
            spool.lock().unwrap_or_else(PoisonError::into_inner).append(first, &items)?;
        }
        state.next_seq += items.len() as u64;
        state.jobs += items.len();
        state.bytes += size;
        state.raw_bytes += size;
        match state.segments.back_mut() {
            Some((_, Segment::Open(open, bytes))) if *bytes < SEAL_BYTES => {
                open.extend(items);
                *bytes += size;
            }
            _ => state.segments.push_back((first, Segment::Open(items, size))),
        }
        if let Some((_, seg @ Segment::Open(_, _))) = state.segments.back_mut()
            && seg.bytes() >= SEAL_BYTES
        {
            let before = seg.bytes();
            seg.seal();
            let after = seg.bytes();
            state.bytes = state.bytes - before + after;
        }
        drop(state);
        self.wake.notify_one();
        Ok(())
    }

    /// Waits until every job pushed so far is in Redis, up to `timeout`.
    pub fn flush(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let target = self.lock().next_seq;
        let mut state = self.lock();
        loop {
            let oldest = state.inflight.map(|(first, ..)| first).or_else(|| state.segments.front().map(|(s, _)| *s));
            if oldest.is_none_or(|s| s >= target) {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let why = state.failing.clone().map_or(String::new(), |e| format!(": {e}"));
                return Err(KiqError::Timeout(format!(
                    "{} buffered jobs were not all in Redis after {timeout:?}{why}",
                    state.jobs
                )));
            }
            self.wake.notify_one();
            state = self.changed.wait_timeout(state, left).unwrap_or_else(PoisonError::into_inner).0;
        }
    }

    pub fn stats(&self) -> BufferStats {
        let state = self.lock();
        let spool_bytes = self.spool.as_ref().map_or(0, |s| s.lock().unwrap_or_else(PoisonError::into_inner).len());
        BufferStats {
            jobs: state.jobs,
            bytes: state.bytes,
            raw_bytes: state.raw_bytes,
            flushed: state.flushed,
            failing: state.failing.clone(),
            spool_bytes,
        }
    }

    /// Takes the oldest jobs for one round trip.
    fn take_batch(&self) -> Option<(u64, Vec<PushItem>)> {
        let mut state = self.lock();
        let mut first = None;
        let mut items: Vec<PushItem> = Vec::new();
        let mut bytes = 0;
        while let Some((seq, seg)) = state.segments.front() {
            if !items.is_empty() && (items.len() + seg.len() > MAX_BATCH || bytes + seg.bytes() > MAX_BATCH_BYTES) {
                break;
            }
            first.get_or_insert(*seq);
            let (_, seg) = state.segments.pop_front().expect("front exists");
            bytes += seg.bytes();
            items.extend(seg.into_items());
        }
        let first = first?;
        let raw = items.iter().map(batch::raw_size).sum();
        state.inflight = Some((first, items.len(), bytes, raw));
        Some((first, items))
    }

    /// The batch is in Redis.
    fn confirm(&self, first: u64, n: usize) {
        let mut state = self.lock();
        if let Some((_, jobs, bytes, raw)) = state.inflight.take() {
            state.jobs -= jobs;
            state.bytes -= bytes;
            state.raw_bytes -= raw;
        }
        state.flushed += n as u64;
        if state.failing.take().is_some() {
            log::warn!("the push buffer reaches Redis again");
        }
        drop(state);
        if let Some(spool) = &self.spool
            && let Err(e) = spool.lock().unwrap_or_else(PoisonError::into_inner).ack(first + n as u64 - 1)
        {
            log::error!("{e} (the jobs are in Redis; a restart may push them again)");
        }
        self.changed.notify_all();
    }

    /// The batch could not be sent: back to the front, compressed, with every
    /// other waiting segment compressed too.
    fn restore(&self, first: u64, items: Vec<PushItem>, error: &str) {
        let mut state = self.lock();
        let mut seg = Segment::Open(items, 0);
        seg.seal();
        let (_, _, bytes, _) = state.inflight.take().unwrap_or_default();
        state.bytes = state.bytes - bytes + seg.bytes();
        state.segments.push_front((first, seg));
        let mut delta: isize = 0;
        for (_, seg) in &mut state.segments {
            let before = seg.bytes();
            seg.seal();
            delta += seg.bytes() as isize - before as isize;
        }
        state.bytes = (state.bytes as isize + delta).max(0) as usize;
        if state.failing.is_none() {
            log::error!("cannot push {} buffered jobs to Redis, keeping them and retrying: {error}", state.jobs);
        }
        state.failing = Some(error.to_owned());
        drop(state);
        self.changed.notify_all();
    }

    fn sync_spool(&self) {
        if let Some(spool) = &self.spool {
            spool.lock().unwrap_or_else(PoisonError::into_inner).sync();
        }
    }
}

/// Opens a spool directory for a buffer.
pub fn open_spool(dir: &std::path::Path, fsync: Fsync) -> Result<(Spool, Recovered)> {
    Spool::open(dir, fsync)
}

/// Flushes `buffer` to Redis until the process ends (or the buffer is dropped elsewhere).
pub async fn run(buffer: Arc<Buffer>, pool: Arc<Pool>, keys: Keys) {
    let mut backoff = buffer.config.flush_interval;
    loop {
        let Some((first, items)) = buffer.take_batch() else {
            buffer.sync_spool();
            // Nothing to send: wait for a push (no timer while idle).
            buffer.wake.notified().await;
            continue;
        };
        let n = items.len();
        match client::push(&mut pool.get(), &keys, &items).await {
            Ok(()) => {
                buffer.confirm(first, n);
                backoff = buffer.config.flush_interval;
                if n < MAX_BATCH {
                    buffer.sync_spool();
                    tokio::time::sleep(buffer.config.flush_interval).await;
                }
            }
            Err(e) => {
                if let KiqError::Redis(re) = &e {
                    pool.note_error(re);
                }
                buffer.restore(first, items, &e.to_string());
                tokio::time::sleep(backoff).await;
                backoff = (backoff.mul_f64(1.5)).min(buffer.config.max_backoff);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn items(n: usize) -> Vec<PushItem> {
        (0..n)
            .map(|i| PushItem {
                queue: Arc::from("default"),
                payload: format!(r#"{{"class":"X","args":[{i}],"jid":"{i:024}"}}"#),
                at: None,
            })
            .collect()
    }

    #[test]
    fn takes_in_order_and_restores_to_the_front_compressed() {
        let b = Buffer::new(BufferConfig::default(), None);
        b.push(items(3)).unwrap();
        b.push(items(2)).unwrap();
        let (first, batch) = b.take_batch().unwrap();
        assert_eq!((first, batch.len()), (1, 5));
        let raw = b.stats().bytes;
        b.restore(first, batch, "down");
        let s = b.stats();
        assert_eq!(s.jobs, 5);
        assert!(s.bytes < raw, "compressed after a failure: {} vs {raw}", s.bytes);
        assert_eq!(s.failing.as_deref(), Some("down"));
        let (first, batch) = b.take_batch().unwrap();
        assert_eq!(first, 1);
        assert_eq!(batch[3].payload, items(2)[0].payload);
        b.confirm(first, batch.len());
        assert_eq!(b.stats(), BufferStats { flushed: 5, ..BufferStats::default() });
        b.flush(Duration::from_millis(1)).unwrap();
    }

    #[test]
    fn a_full_buffer_waits_then_fails_clearly() {
        let cfg = BufferConfig { max_bytes: 1000, full_timeout: Duration::from_millis(50), ..BufferConfig::default() };
        let b = Buffer::new(cfg, None);
        b.push(items(10)).unwrap();
        let t = Instant::now();
        let err = b.push(items(10)).unwrap_err();
        assert!(t.elapsed() >= Duration::from_millis(50));
        assert!(err.to_string().contains("push buffer is full"), "{err}");
        assert_eq!(b.stats().jobs, 10);
    }

    #[test]
    fn flush_times_out_while_jobs_wait() {
        let b = Buffer::new(BufferConfig::default(), None);
        b.push(items(1)).unwrap();
        assert!(matches!(b.flush(Duration::from_millis(10)), Err(KiqError::Timeout(_))));
    }

    #[test]
    fn big_segments_are_sealed() {
        let b = Buffer::new(BufferConfig::default(), None);
        b.push(items(2000)).unwrap();
        let s = b.stats();
        let raw: usize = items(2000).iter().map(batch::raw_size).sum();
        assert!(s.bytes * 3 < raw, "{} vs {raw}", s.bytes);
    }
}
