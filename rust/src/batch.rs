//! A compact binary form of pushed jobs, for the buffer and its spool file:
//! `u32 count`, then per job `u16 queue length, queue, u8 has-at, f64 at,
//! u32 payload length, payload`, all little-endian, then LZ4 (block format,
//! size prepended). Pure bytes in, bytes out.

use std::sync::Arc;

use crate::client::PushItem;
use crate::error::{KiqError, Result};

/// Bytes a job takes in memory before compression (what the buffer's limit counts).
pub fn raw_size(item: &PushItem) -> usize {
    item.payload.len() + item.queue.len() + 16
}

pub fn encode(items: &[PushItem]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + items.iter().map(raw_size).sum::<usize>());
    out.extend_from_slice(&(items.len() as u32).to_le_bytes());
    for item in items {
        let queue = item.queue.as_bytes();
        out.extend_from_slice(&(queue.len().min(u16::MAX as usize) as u16).to_le_bytes());
        out.extend_from_slice(&queue[..queue.len().min(u16::MAX as usize)]);
        if let Some(at) = item.at {
            out.push(1);
            out.extend_from_slice(&at.to_le_bytes());
        } else {
            out.push(0);
            out.extend_from_slice(&0f64.to_le_bytes());
        }
        out.extend_from_slice(&(item.payload.len() as u32).to_le_bytes());
        out.extend_from_slice(item.payload.as_bytes());
    }
    out
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len()).ok_or_else(truncated)?;
        let slice = &self.data[self.pos..end];
        self.pos = end;
        Ok(slice)
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().map_err(|_| truncated())?))
    }

    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().map_err(|_| truncated())?))
    }

    fn f64(&mut self) -> Result<f64> {
        Ok(f64::from_le_bytes(self.take(8)?.try_into().map_err(|_| truncated())?))
    }

    fn text(&mut self, n: usize) -> Result<String> {
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| KiqError::codec("buffered job is not UTF-8"))
    }
}

fn truncated() -> KiqError {
    KiqError::codec("buffered job batch is truncated")
}

pub fn decode(data: &[u8]) -> Result<Vec<PushItem>> {
    let mut r = Reader { data, pos: 0 };
    let count = r.u32()? as usize;
    let mut items = Vec::with_capacity(count.min(1 << 20));
    for _ in 0..count {
        let qlen = r.u16()? as usize;
        let queue: Arc<str> = Arc::from(r.text(qlen)?);
        let has_at = r.take(1)?[0] == 1;
        let at = r.f64()?;
        let plen = r.u32()? as usize;
        let payload = r.text(plen)?;
        items.push(PushItem { queue, payload, at: has_at.then_some(at) });
    }
    if r.pos != data.len() {
        return Err(KiqError::codec("buffered job batch has trailing bytes"));
    }
    Ok(items)
}

/// LZ4-compressed [`encode`].
pub fn compress(items: &[PushItem]) -> Vec<u8> {
    lz4_flex::block::compress_prepend_size(&encode(items))
}

pub fn decompress(data: &[u8]) -> Result<Vec<PushItem>> {
    let raw = lz4_flex::block::decompress_size_prepended(data)
        .map_err(|e| KiqError::codec(format!("buffered job batch does not decompress: {e}")))?;
    decode(&raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(i: usize, at: Option<f64>) -> PushItem {
        PushItem {
            queue: Arc::from(if i.is_multiple_of(2) { "default" } else { "events" }),
            payload: format!(r#"{{"retry":true,"queue":"default","args":[{i}],"class":"HardJob","jid":"{i:024x}"}}"#),
            at,
        }
    }

    #[test]
    fn round_trip_compressed() {
        let items: Vec<PushItem> = (0..500).map(|i| item(i, (i % 3 == 0).then_some(1.5 + i as f64))).collect();
        let packed = compress(&items);
        let back = decompress(&packed).unwrap();
        assert_eq!(back.len(), 500);
        for (a, b) in items.iter().zip(&back) {
            assert_eq!((&a.queue, &a.payload, a.at), (&b.queue, &b.payload, b.at));
        }
        let raw: usize = items.iter().map(raw_size).sum();
        assert!(packed.len() * 3 < raw, "similar payloads compress well: {} vs {raw}", packed.len());
    }

    #[test]
    fn damage_is_an_error_not_a_panic() {
        let packed = compress(&[item(1, None), item(2, None)]);
        for cut in 0..packed.len() {
            assert!(decompress(&packed[..cut]).is_err());
        }
        let mut raw = encode(&[item(1, None)]);
        raw.push(0);
        assert!(decode(&raw).is_err());
    }
}
