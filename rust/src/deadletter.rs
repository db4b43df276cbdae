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

use serde_json::json;

use crate::client::PushItem;
use crate::error::{KiqError, Result};
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
