//! The push buffer's dead-letter file: jobs Redis refused for a reason
//! retrying cannot fix (a key of the wrong type, an ACL, memory that stayed
//! full), kept for the user to read and replay (`kiq spool push FILE`). One
//! JSON object per line: `queue`, `at` (null or epoch seconds), `payload`
//! (the job's JSON, as a string), `reason`, `refused_at`.

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::client::{self, PushItem, PushReply, Trouble};
use crate::error::{KiqError, Result};
use crate::keys::Keys;
use crate::pool::Pool;
use crate::timestamp;

pub struct DeadLetters {
    path: PathBuf,
    /// Reasons already logged (each is reported once).
    reported: HashSet<String>,
    /// Lines not written yet (the file could not be written): kept in memory, never dropped.
    unwritten: Vec<String>,
}

impl DeadLetters {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into(), reported: HashSet::new(), unwritten: Vec::new() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether `reason` is new (and so worth an ERROR line).
    pub fn note(&mut self, reason: &str) -> bool {
        self.reported.insert(reason.to_owned())
    }

    /// Appends the jobs (and any held from an earlier failed write), synced to disk.
    pub fn write(&mut self, items: &[(u64, PushItem)], reason: &str) -> Result<()> {
        let now = timestamp::now();
        for (_, item) in items {
            let line = json!({
                "queue": &*item.queue,
                "at": item.at,
                "payload": item.payload,
                "reason": reason,
                "refused_at": now,
            });
            self.unwritten.push(format!("{line}\n"));
        }
        let fail = |e: std::io::Error| {
            KiqError::config(format!("cannot write the dead-letter file {}: {e}", self.path.display()))
        };
        if let Some(dir) = self.path.parent() {
            fs::create_dir_all(dir).map_err(fail)?;
        }
        let mut file = OpenOptions::new().create(true).append(true).open(&self.path).map_err(fail)?;
        file.write_all(self.unwritten.concat().as_bytes()).map_err(fail)?;
        file.sync_data().map_err(fail)?;
        self.unwritten.clear();
        Ok(())
    }

    /// Jobs held in memory because the file could not be written.
    pub fn held(&self) -> usize {
        self.unwritten.len()
    }
}

/// Pushes the jobs of a dead-letter file again (once its keys are fixed),
/// exactly once. The jobs Redis still refuses stay in the file, with the new
/// reason; the rest leave it (the original is kept as `<file>.replayed-<time>`).
/// Returns (pushed, still refused).
pub async fn replay(pool: &Pool, keys: &Keys, path: &Path, deadline: Instant) -> Result<(usize, usize)> {
    let mut left: Vec<(u64, PushItem)> = read(path)?.into_iter().enumerate().map(|(i, j)| (i as u64 + 1, j)).collect();
    let total = left.len();
    let producer = format!("replay-{}", crate::job::new_jid());
    let mut kept: Vec<(PushItem, String)> = Vec::new();
    let mut pause = Duration::from_millis(20);
    while !left.is_empty() {
        let numbered: Vec<client::Numbered<'_>> = left.iter().map(|(s, i)| (*s, i)).collect();
        match client::push_numbered(&mut pool.get(), keys, &producer, Duration::from_secs(600), &numbered).await {
            Ok(PushReply::Done { refused }) => {
                let why: std::collections::HashMap<u64, String> = refused.into_iter().collect();
                kept.extend(left.drain(..).filter_map(|(s, item)| why.get(&s).map(|w| (item, w.clone()))));
            }
            Ok(PushReply::WrongType(wrong)) => {
                let (bad, good): (Vec<_>, Vec<_>) = left.drain(..).partition(|(_, item)| {
                    let target = if item.at.is_some() { keys.schedule() } else { keys.queue(&item.queue) };
                    wrong.iter().any(|(k, _)| *k == target || (item.at.is_none() && *k == keys.queues()))
                });
                let why = client::wrong_type_message(&wrong);
                kept.extend(bad.into_iter().map(|(_, item)| (item, why.clone())));
                left = good;
            }
            Err(e) if client::trouble(&e) != Trouble::Permanent && Instant::now() + pause < deadline => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            Err(e) => return Err(e),
        }
    }
    let stamp = timestamp::now() as u64;
    let archive = path.with_extension(format!("jsonl.replayed-{stamp}"));
    fs::rename(path, &archive)
        .map_err(|e| KiqError::config(format!("cannot move {} aside after replaying it: {e}", path.display())))?;
    if !kept.is_empty() {
        let mut letters = DeadLetters::new(path);
        for (item, why) in &kept {
            letters.write(&[(0, item.clone())], why)?;
        }
    }
    Ok((total - kept.len(), kept.len()))
}

/// The jobs of a dead-letter file, for replaying.
pub fn read(path: &Path) -> Result<Vec<PushItem>> {
    let text = fs::read_to_string(path)
        .map_err(|e| KiqError::config(format!("cannot read the dead-letter file {}: {e}", path.display())))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let bad = |why: &str| KiqError::codec(format!("{} line {}: {why}", path.display(), n + 1));
        let v: serde_json::Value = serde_json::from_str(line).map_err(|e| bad(&e.to_string()))?;
        let queue = v["queue"].as_str().ok_or_else(|| bad("no \"queue\" string"))?;
        let payload = v["payload"].as_str().ok_or_else(|| bad("no \"payload\" string"))?;
        crate::job::Payload::parse(payload).map_err(|e| bad(&e.to_string()))?;
        out.push(PushItem { queue: Arc::from(queue), payload: payload.to_owned(), at: v["at"].as_f64() });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_lines_read_back() {
        let dir = std::env::temp_dir().join(format!("kiq-dl-{}", uuid::Uuid::new_v4().simple()));
        let path = dir.join("undeliverable.jsonl");
        let mut dl = DeadLetters::new(&path);
        assert!(dl.note("WRONGTYPE x"));
        assert!(!dl.note("WRONGTYPE x"));
        let items = vec![
            (1, PushItem { queue: Arc::from("q"), payload: r#"{"jid":"a","class":"X","args":[]}"#.into(), at: None }),
            (
                2,
                PushItem {
                    queue: Arc::from("q"),
                    payload: r#"{"jid":"b","class":"X","args":[1]}"#.into(),
                    at: Some(5.5),
                },
            ),
        ];
        dl.write(&items, "WRONGTYPE x").unwrap();
        let back = read(&path).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[1].at, Some(5.5));
        assert_eq!(back[0].payload, items[0].1.payload);
        let _ = fs::remove_dir_all(dir);
    }
}
