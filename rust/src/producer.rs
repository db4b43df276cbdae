//! The producer: every decision about pushing a job, in one place.
//!
//! A binding converts a job spec into a [`NewJob`] plus its [`Extras`] and
//! calls [`Producer`]: checking the unique and expiry options, refusing
//! `encrypt` without keys, choosing the bulk fast path, splitting unique pushes
//! (synchronous, each with its lock) from plain ones (the push buffer, or now
//! with `sync` or without a buffer), and opening the buffer and its spool.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::buffer::{self, Buffer, BufferConfig, BufferStats};
use crate::client::{self, Bulk, Prepared, PushItem};
use crate::crypto::Keyring;
use crate::deadletter::DeadLetters;
use crate::error::{KiqError, Result};
use crate::job::{NewJob, Unique, UniqueUntil};
use crate::keys::Keys;
use crate::pool::{Pool, RedisConfig};
use crate::runtime;
use crate::spool::Fsync;
use crate::timestamp::TimestampUnit;
use crate::worker::{self, positive_seconds};

/// Unique jobs not pushed, by jid, with the jid holding each lock (if known).
pub type Skipped = HashMap<String, Option<String>>;

/// A job's unique and expiry options as given, checked by [`Extras::apply`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Extras<'a> {
    pub unique_for: Option<f64>,
    pub unique_until: Option<&'a str>,
    pub expires_in: Option<f64>,
}

impl Extras<'_> {
    /// Checks the options (by the rules of `worker.rs`) and sets them on `job`.
    pub fn apply(self, job: &mut NewJob) -> Result<()> {
        if let Some(secs) = positive_seconds("unique_for", self.unique_for)? {
            let until = self.unique_until.map_or(Ok(UniqueUntil::Success), worker::unique_until)?;
            job.unique = Some(Unique { for_secs: secs, until });
        }
        job.expires_in = positive_seconds("expires_in", self.expires_in)?;
        Ok(())
    }
}

/// The keys an `encrypt=True` job is sealed with (None when not encrypted), or why it cannot be.
pub fn seal_keys(encrypt: bool, keyring: Option<&Arc<Keyring>>) -> Result<Option<Arc<Keyring>>> {
    match (encrypt, keyring) {
        (false, _) => Ok(None),
        (true, Some(k)) => Ok(Some(k.clone())),
        (true, None) => {
            Err(KiqError::config("encrypt=True needs encryption keys: Kiq(encryption_keys={1: key}) with 32-byte keys"))
        }
    }
}

/// The push buffer's settings (`Kiq(buffer=True, ...)`).
#[derive(Debug, Clone)]
pub struct BufferOptions {
    pub flush_interval: f64,
    pub max_bytes: usize,
    pub full_timeout: f64,
    /// A spool directory: buffered jobs kept on disk too.
    pub path: Option<PathBuf>,
    pub fsync: String,
    pub undeliverable_path: Option<PathBuf>,
}

/// What a producer is opened with.
pub struct ProducerConfig {
    pub redis: RedisConfig,
    pub namespace: Option<String>,
    pub unit: TimestampUnit,
    /// None: every push goes to Redis synchronously.
    pub buffer: Option<BufferOptions>,
    /// `buffer_path` given without the buffer (refused).
    pub path_without_buffer: bool,
    /// Limits how long a synchronous push retries a lost reply (at least 1 s).
    pub full_timeout: f64,
    pub keyring: Option<Arc<Keyring>>,
}

/// Pushes jobs to one Redis.
pub struct Producer {
    pub pool: Arc<Pool>,
    pub keys: Keys,
    pub unit: TimestampUnit,
    /// The reliable push buffer, unless pushes are synchronous.
    buffer: Option<Arc<Buffer>>,
    /// How long a synchronous push retries a lost reply.
    pub sync_timeout: Duration,
    /// Keys for `encrypt=True` jobs (pushing and, in a server, fetching).
    pub keyring: Option<Arc<Keyring>>,
}

fn read_file(p: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(p).map_err(|e| KiqError::config(format!("cannot read TLS file {}: {e}", p.display())))
}

/// A connection's TLS files as read: the CA, and the client's (cert, key).
pub type TlsFiles = (Option<Vec<u8>>, Option<(Vec<u8>, Vec<u8>)>);

/// The TLS files of a connection, read now.
pub fn tls_files(
    ca: Option<&std::path::Path>,
    cert: Option<&std::path::Path>,
    key: Option<&std::path::Path>,
) -> Result<TlsFiles> {
    let ca = ca.map(read_file).transpose()?;
    let client = match (cert, key) {
        (Some(c), Some(k)) => Some((read_file(c)?, read_file(k)?)),
        (None, None) => None,
        _ => return Err(KiqError::config("tls_cert_file and tls_key_file go together")),
    };
    Ok((ca, client))
}

/// Checks connection timeouts given in seconds.
pub fn check_timeouts(response: f64, connect: f64) -> Result<()> {
    if response > 0.0 && connect > 0.0 {
        Ok(())
    } else {
        Err(KiqError::config("timeouts must be positive numbers of seconds"))
    }
}

impl Producer {
    /// Connects, and opens the buffer (its spool read back: may block on disk).
    /// Must run inside the core runtime (the buffer's flusher is spawned on it).
    pub fn open(config: ProducerConfig) -> Result<Self> {
        if let Some(b) = &config.buffer
            && (!(b.flush_interval > 0.0 && b.full_timeout >= 0.0) || b.max_bytes == 0)
        {
            return Err(KiqError::config(
                "flush_interval must be positive, buffer_full_timeout not negative, buffer_max_bytes above 0",
            ));
        }
        if config.path_without_buffer {
            return Err(KiqError::config("buffer_path needs the push buffer (buffer=True)"));
        }
        let pool = Pool::new(config.redis)?;
        let keys = Keys::new(config.namespace.as_deref());
        let buffer = match config.buffer {
            Some(b) => {
                let fsync = Fsync::parse(&b.fsync)?;
                let letters = b
                    .undeliverable_path
                    .or_else(|| b.path.as_ref().map(|d| d.join("undeliverable.jsonl")))
                    .unwrap_or_else(|| {
                        std::env::temp_dir().join(format!("kiq-undeliverable-{}.jsonl", std::process::id()))
                    });
                let spool = b.path.map(|dir| buffer::open_spool(&dir, fsync)).transpose()?;
                let cfg = BufferConfig {
                    max_bytes: b.max_bytes,
                    full_timeout: Duration::from_secs_f64(b.full_timeout),
                    flush_interval: Duration::from_secs_f64(b.flush_interval),
                    ..BufferConfig::default()
                };
                let buffer = Buffer::new(cfg, spool, DeadLetters::new(letters));
                tokio::spawn(buffer::run(buffer.clone(), pool.clone(), keys.clone()));
                Some(buffer)
            }
            None => None,
        };
        Ok(Self {
            pool,
            keys,
            unit: config.unit,
            buffer,
            sync_timeout: Duration::from_secs_f64(config.full_timeout.max(1.0)),
            keyring: config.keyring,
        })
    }

    /// The keys an `encrypt=True` job of this producer is sealed with.
    pub fn seal_keys(&self, encrypt: bool) -> Result<Option<Arc<Keyring>>> {
        seal_keys(encrypt, self.keyring.as_ref())
    }

    /// Encodes one job to run at `at` (epoch seconds; None or past: now).
    pub fn prepare(&self, job: &NewJob, at: Option<f64>, now: f64) -> Result<Prepared> {
        client::prepare_full(job, at, now, self.unit, &self.keys)
    }

    /// The fast path of a bulk push (one payload template for every job), when
    /// jobs like `template` need nothing computed per job (a lock, an expiry, a seal).
    pub fn bulk(&self, template: &NewJob, encrypt: bool, at: Option<f64>, now: f64) -> Option<Bulk> {
        (template.unique.is_none() && template.expires_in.is_none() && !encrypt)
            .then(|| Bulk::new(template, at, now, self.unit))
    }

    /// Pushes prepared jobs: unique ones synchronously with their locks (the
    /// caller learns which were skipped and who holds their locks), the rest
    /// through the buffer or now. Blocks; call without the GIL.
    pub fn deliver(&self, prepared: Vec<Prepared>, sync: bool) -> Result<Skipped> {
        let mut plain = Vec::with_capacity(prepared.len());
        let mut unique = Vec::new();
        for (jid, item, lock) in prepared {
            match lock {
                Some(lock) => unique.push((item, lock, jid)),
                None => plain.push(item),
            }
        }
        if !plain.is_empty() {
            self.deliver_items(plain, sync)?;
        }
        let mut skipped = HashMap::new();
        if !unique.is_empty() {
            let deadline = Instant::now() + self.sync_timeout;
            let results = runtime::get().block_on(client::push_unique(&self.pool, &self.keys, &unique, deadline))?;
            for ((_, _, jid), r) in unique.into_iter().zip(results) {
                if let client::Pushed::Held(holder) = r {
                    skipped.insert(jid, holder);
                }
            }
        }
        Ok(skipped)
    }

    /// Buffers the jobs (or, with `sync` or no buffer, writes them to Redis now). Blocks.
    pub fn deliver_items(&self, items: Vec<PushItem>, sync: bool) -> Result<()> {
        match &self.buffer {
            Some(buffer) if !sync => buffer.push(items),
            _ => {
                let deadline = Instant::now() + self.sync_timeout;
                runtime::get().block_on(client::push(&self.pool, &self.keys, &items, deadline))
            }
        }
    }

    /// Buffers jobs when that takes no waiting (room now, no spool to write;
    /// see [`Buffer::try_push`]), so a caller may keep Python's GIL; else
    /// gives them back for [`Producer::deliver_items`].
    pub fn try_buffer(&self, items: Vec<PushItem>, sync: bool) -> std::result::Result<(), Vec<PushItem>> {
        match &self.buffer {
            Some(buffer) if !sync => buffer.try_push(items),
            _ => Err(items),
        }
    }

    /// Waits until every buffered job is in Redis, up to `timeout`. Blocks.
    pub fn flush(&self, timeout: Duration) -> Result<()> {
        self.buffer.as_ref().map_or(Ok(()), |b| b.flush(timeout))
    }

    /// The buffer's state and its dead-letter file; None without a buffer.
    pub fn buffer_stats(&self) -> Option<(BufferStats, PathBuf)> {
        self.buffer.as_ref().map(|b| (b.stats(), b.undeliverable_path()))
    }

    /// Writes every buffered job not yet in Redis to a new spool directory; 0 without a buffer.
    pub fn dump(&self, dir: &std::path::Path) -> Result<usize> {
        self.buffer.as_ref().map_or(Ok(0), |b| b.dump(dir))
    }

    /// What opening the spool found: `(damage descriptions, jobs carried over)`.
    pub fn spool_report(&self) -> (Vec<String>, usize) {
        self.buffer.as_ref().map_or_else(Default::default, |b| (b.spool_problems.clone(), b.recovered))
    }

    /// Pushes the jobs of a dead-letter file again: `(pushed, still refused)`.
    pub async fn replay_undeliverable(&self, path: &std::path::Path) -> Result<(usize, usize)> {
        let deadline = Instant::now() + self.sync_timeout;
        crate::deadletter::replay(&self.pool, &self.keys, path, deadline).await
    }
}
