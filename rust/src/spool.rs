//! The on-disk spool of the push buffer: jobs survive a crash or `kill -9`
//! of the enqueuing process and are flushed on the next start.
//!
//! One append-only file, `<dir>/spool.log`: an 8-byte magic, then records of
//! `u32 length, u32 CRC-32 of the body, body`. A body is either *jobs*
//! (`1, u64 first sequence number, u32 count, compressed batch`) or an *ack*
//! (`2, u64 sequence number`: every job up to it is in Redis), or the
//! *producer* id the sequence numbers belong to (`3, u64 0, id`; written
//! first, so a restart replays its jobs under the same numbers and Redis
//! skips the ones that landed before the crash). Enqueueing
//! appends a jobs record before it returns; a successful flush appends an ack.
//! On open, the jobs after the last ack are loaded back; a damaged or cut-off
//! stretch (a crash mid-write, a bad disk) fails its CRC, is reported with its
//! offset and skipped, and reading resumes at the next intact record, so
//! damage never hides the jobs after it. The file is then rewritten with only
//! the pending jobs (a damaged original is kept as `spool.log.corrupt-<time>`).
//! `<dir>/lock` holds an exclusive lock: one process per spool.
//!
//! Durability (`fsync` policy): the write itself reaches the OS before
//! `enqueue` returns, which survives the process dying. `Always` also fsyncs
//! every append (survives power loss, slowest); `Interval` fsyncs once per
//! flush interval (a power loss may lose that last interval); `Never` leaves
//! it to the OS.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::batch;
use crate::client::PushItem;
use crate::error::{KiqError, Result};

const MAGIC: &[u8; 8] = b"KIQSPL01";
const JOBS: u8 = 1;
const ACK: u8 = 2;
const PRODUCER: u8 = 3;
/// A record longer than this is taken for damage, not data.
const MAX_RECORD: usize = 256 << 20;
/// Once everything is acked, a file larger than this starts over.
const ROTATE_BYTES: u64 = 16 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fsync {
    Always,
    #[default]
    Interval,
    Never,
}

impl Fsync {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "always" => Ok(Self::Always),
            "interval" => Ok(Self::Interval),
            "never" => Ok(Self::Never),
            other => {
                Err(KiqError::config(format!("spool fsync policy must be always, interval or never, not {other:?}")))
            }
        }
    }
}

/// What opening a spool found.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Jobs not yet in Redis, oldest first, with each batch's first sequence number.
    pub batches: Batches,
    /// Damage found, one message per unreadable stretch.
    pub problems: Vec<String>,
    /// The sequence number the next job gets.
    pub next_seq: u64,
    /// The producer id the sequence numbers belong to.
    pub producer: String,
}

pub struct Spool {
    file: File,
    path: PathBuf,
    _lock: File,
    fsync: Fsync,
    dirty: bool,
    len: u64,
    last_seq: Option<u64>,
    producer: String,
}

fn record(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    out.extend_from_slice(body);
    out
}

fn jobs_record(first_seq: u64, items: &[PushItem]) -> Vec<u8> {
    let mut body = Vec::with_capacity(13 + items.len() * 64);
    body.push(JOBS);
    body.extend_from_slice(&first_seq.to_le_bytes());
    body.extend_from_slice(&(items.len() as u32).to_le_bytes());
    body.extend_from_slice(&batch::compress(items));
    record(&body)
}

fn producer_record(id: &str) -> Vec<u8> {
    let mut body = vec![PRODUCER];
    body.extend_from_slice(&0u64.to_le_bytes());
    body.extend_from_slice(id.as_bytes());
    record(&body)
}

fn ack_record(seq: u64) -> Vec<u8> {
    let mut body = vec![ACK];
    body.extend_from_slice(&seq.to_le_bytes());
    record(&body)
}

enum Entry {
    Jobs(u64, Vec<PushItem>),
    Ack(u64),
    Producer(String),
}

/// The record at `pos`, if an intact one starts there: (entry, its length).
fn read_record(data: &[u8], pos: usize) -> Option<(Entry, usize)> {
    let head = data.get(pos..pos + 8)?;
    let len = u32::from_le_bytes(head[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(head[4..].try_into().ok()?);
    if len == 0 || len > MAX_RECORD {
        return None;
    }
    let body = data.get(pos + 8..pos + 8 + len)?;
    if crc32fast::hash(body) != crc {
        return None;
    }
    let seq = u64::from_le_bytes(body.get(1..9)?.try_into().ok()?);
    let entry = match body[0] {
        JOBS if body.len() >= 13 => {
            let count = u32::from_le_bytes(body[9..13].try_into().ok()?) as usize;
            let items = batch::decompress(&body[13..]).ok()?;
            if items.len() != count {
                return None;
            }
            Entry::Jobs(seq, items)
        }
        ACK if body.len() == 9 => Entry::Ack(seq),
        PRODUCER => Entry::Producer(String::from_utf8(body[9..].to_vec()).ok()?),
        _ => return None,
    };
    Some((entry, 8 + len))
}

/// Batches of jobs, each with its first sequence number.
type Batches = Vec<(u64, Vec<PushItem>)>;

/// What a spool file holds: jobs, the highest ack, the producer id, damage found.
struct Scan {
    jobs: Batches,
    acked: u64,
    producer: Option<String>,
    problems: Vec<String>,
}

/// Reads a spool file's jobs and acks, skipping (and describing) damage.
fn scan(data: &[u8], path: &Path) -> Scan {
    let mut jobs = Vec::new();
    let mut acked = 0u64;
    let mut producer = None;
    let mut problems = Vec::new();
    if data.is_empty() {
        return Scan { jobs, acked, producer, problems };
    }
    let mut pos = if data.starts_with(MAGIC) {
        MAGIC.len()
    } else {
        problems.push(format!("{}: no spool header; reading what records can be found", path.display()));
        0
    };
    let mut bad_from: Option<usize> = None;
    while pos < data.len() {
        if let Some((entry, n)) = read_record(data, pos) {
            if let Some(from) = bad_from.take() {
                problems.push(format!("{}: bytes {from}..{pos} are damaged and were skipped", path.display()));
            }
            match entry {
                Entry::Jobs(seq, items) => jobs.push((seq, items)),
                Entry::Ack(seq) => acked = acked.max(seq),
                Entry::Producer(id) => producer = Some(id),
            }
            pos += n;
        } else {
            bad_from.get_or_insert(pos);
            pos += 1;
        }
    }
    if let Some(from) = bad_from {
        problems.push(format!(
            "{}: bytes {from}..{} are damaged or cut off (a crash mid-write?) and were skipped",
            path.display(),
            data.len()
        ));
    }
    Scan { jobs, acked, producer, problems }
}

impl Spool {
    /// Opens (or creates) the spool in `dir` and loads the jobs it still holds.
    pub fn open(dir: &Path, fsync: Fsync) -> Result<(Self, Recovered)> {
        let io =
            |what: &str, e: std::io::Error| KiqError::config(format!("buffer_path {}: {what}: {e}", dir.display()));
        fs::create_dir_all(dir).map_err(|e| io("cannot create it", e))?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("lock"))
            .map_err(|e| io("cannot open its lock file", e))?;
        if lock.try_lock().is_err() {
            return Err(KiqError::config(format!(
                "buffer_path {} is in use by another process (each process needs its own spool)",
                dir.display()
            )));
        }
        let path = dir.join("spool.log");
        let mut data = Vec::new();
        if let Ok(mut f) = File::open(&path) {
            f.read_to_end(&mut data).map_err(|e| io("cannot read spool.log", e))?;
        }
        let Scan { jobs, acked, producer, problems } = scan(&data, &path);
        let producer = producer.unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
        if !problems.is_empty() {
            let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let _ = fs::copy(&path, dir.join(format!("spool.log.corrupt-{stamp}")));
        }
        let pending: Vec<(u64, Vec<PushItem>)> = jobs
            .into_iter()
            .filter_map(|(first, items)| {
                let last = first + items.len() as u64 - 1;
                if last <= acked {
                    None
                } else {
                    // Part of a batch may be acked already (acks are per flush).
                    let skip = (acked + 1).saturating_sub(first) as usize;
                    Some((first + skip as u64, items.into_iter().skip(skip).collect()))
                }
            })
            .collect();
        let next_seq = pending.last().map_or(0, |(first, items)| first + items.len() as u64).max(acked + 1);
        // Rewrite the file with only what is pending, atomically.
        let tmp = dir.join("spool.log.tmp");
        {
            let mut f = File::create(&tmp).map_err(|e| io("cannot write spool.log.tmp", e))?;
            f.write_all(MAGIC).map_err(|e| io("cannot write", e))?;
            f.write_all(&producer_record(&producer)).map_err(|e| io("cannot write", e))?;
            f.write_all(&ack_record(acked)).map_err(|e| io("cannot write", e))?;
            for (first, items) in &pending {
                f.write_all(&jobs_record(*first, items)).map_err(|e| io("cannot write", e))?;
            }
            f.sync_all().map_err(|e| io("cannot sync", e))?;
        }
        fs::rename(&tmp, &path).map_err(|e| io("cannot replace spool.log", e))?;
        let file = OpenOptions::new().append(true).open(&path).map_err(|e| io("cannot open spool.log", e))?;
        let len = file.metadata().map_err(|e| io("cannot stat spool.log", e))?.len();
        let last_seq = pending.last().map(|(first, items)| first + items.len() as u64 - 1);
        let spool = Self { file, path, _lock: lock, fsync, dirty: false, len, last_seq, producer: producer.clone() };
        Ok((spool, Recovered { batches: pending, problems, next_seq, producer }))
    }

    /// A new spool in `dir` (which must not hold one) whose jobs are numbered
    /// for `producer`: where a process that cannot reach Redis leaves its jobs.
    pub fn create(dir: &Path, producer: &str) -> Result<Self> {
        let io = |what: &str, e: std::io::Error| KiqError::config(format!("{}: {what}: {e}", dir.display()));
        fs::create_dir_all(dir).map_err(|e| io("cannot create it", e))?;
        let path = dir.join("spool.log");
        let mut file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)
            .map_err(|e| io("cannot create spool.log", e))?;
        file.write_all(MAGIC).map_err(|e| io("cannot write", e))?;
        file.write_all(&producer_record(producer)).map_err(|e| io("cannot write", e))?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("lock"))
            .map_err(|e| io("cannot open its lock file", e))?;
        let len = file.metadata().map_err(|e| io("cannot stat spool.log", e))?.len();
        Ok(Self {
            file,
            path,
            _lock: lock,
            fsync: Fsync::Always,
            dirty: false,
            len,
            last_seq: None,
            producer: producer.to_owned(),
        })
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.file
            .write_all(bytes)
            .map_err(|e| KiqError::config(format!("cannot write the spool {}: {e}", self.path.display())))?;
        self.len += bytes.len() as u64;
        if self.fsync == Fsync::Always {
            self.file.sync_data().map_err(|e| KiqError::config(format!("cannot sync the spool: {e}")))?;
        } else {
            self.dirty = true;
        }
        Ok(())
    }

    /// Records jobs numbered `first_seq..` before they are buffered.
    pub fn append(&mut self, first_seq: u64, items: &[PushItem]) -> Result<()> {
        self.write(&jobs_record(first_seq, items))?;
        self.last_seq = Some(first_seq + items.len() as u64 - 1);
        Ok(())
    }

    /// Records that every job up to `seq` is in Redis; starts the file over
    /// once everything is and it has grown large.
    pub fn ack(&mut self, seq: u64) -> Result<()> {
        self.write(&ack_record(seq))?;
        if self.last_seq.is_none_or(|last| last <= seq) && self.len > ROTATE_BYTES {
            self.file.set_len(0).map_err(|e| KiqError::config(format!("cannot truncate the spool: {e}")))?;
            self.len = 0;
            self.write(MAGIC)?;
            self.write(&producer_record(&self.producer.clone()))?;
            self.write(&ack_record(seq))?;
        }
        Ok(())
    }

    /// Flushes written records to disk (the `Interval` policy's periodic sync).
    pub fn sync(&mut self) {
        if self.dirty {
            let _ = self.file.sync_data();
            self.dirty = false;
        }
    }

    /// Bytes in the spool file.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn items(from: usize, n: usize) -> Vec<PushItem> {
        (from..from + n)
            .map(|i| PushItem { queue: Arc::from("default"), payload: format!(r#"{{"args":[{i}]}}"#), at: None })
            .collect()
    }

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("kiq-spool-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn args(rec: &Recovered) -> Vec<String> {
        rec.batches.iter().flat_map(|(_, b)| b.iter().map(|i| i.payload.clone())).collect()
    }

    #[test]
    fn unacked_jobs_come_back_in_order() {
        let d = dir("order");
        {
            let (mut s, rec) = Spool::open(&d, Fsync::Never).unwrap();
            assert!(rec.batches.is_empty() && rec.problems.is_empty());
            s.append(rec.next_seq, &items(0, 3)).unwrap();
            s.append(rec.next_seq + 3, &items(3, 2)).unwrap();
            s.ack(rec.next_seq + 1).unwrap();
        }
        let (spool, rec) = Spool::open(&d, Fsync::Never).unwrap();
        assert_eq!(args(&rec), vec![r#"{"args":[2]}"#, r#"{"args":[3]}"#, r#"{"args":[4]}"#]);
        assert!(rec.problems.is_empty());
        assert_eq!(rec.next_seq, 6);
        drop(spool);
        // Reopening again without new acks gives the same jobs.
        let (_s, again) = Spool::open(&d, Fsync::Never).unwrap();
        assert_eq!(args(&again), args(&rec));
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn a_cut_off_tail_is_reported_and_the_rest_kept() {
        let d = dir("cut");
        {
            let (mut s, rec) = Spool::open(&d, Fsync::Never).unwrap();
            for i in 0..10 {
                s.append(rec.next_seq + i as u64, &items(i, 1)).unwrap();
            }
        }
        let path = d.join("spool.log");
        let len = fs::metadata(&path).unwrap().len();
        OpenOptions::new().write(true).open(&path).unwrap().set_len(len - 7).unwrap();
        let (_s, rec) = Spool::open(&d, Fsync::Never).unwrap();
        assert_eq!(args(&rec).len(), 9);
        assert_eq!(rec.problems.len(), 1);
        assert!(rec.problems[0].contains("cut off"), "{:?}", rec.problems);
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn damage_in_the_middle_skips_only_the_damaged_record() {
        let d = dir("mid");
        {
            let (mut s, rec) = Spool::open(&d, Fsync::Never).unwrap();
            for i in 0..5 {
                s.append(rec.next_seq + i as u64, &items(i, 1)).unwrap();
            }
        }
        let path = d.join("spool.log");
        let mut data = fs::read(&path).unwrap();
        let mid = data.len() / 2;
        data[mid] ^= 0xff;
        fs::write(&path, &data).unwrap();
        let (_s, rec) = Spool::open(&d, Fsync::Never).unwrap();
        assert_eq!(args(&rec).len(), 4, "{:?}", rec.problems);
        assert!(rec.problems[0].contains("damaged"));
        assert!(
            fs::read_dir(&d).unwrap().any(|e| e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("spool.log.corrupt-"))
        );
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn one_process_per_spool() {
        let d = dir("lock");
        let (_s, _) = Spool::open(&d, Fsync::Never).unwrap();
        let err = Spool::open(&d, Fsync::Never).err().unwrap();
        assert!(err.to_string().contains("in use"));
        let _ = fs::remove_dir_all(&d);
    }
}
