//! Ruby's Marshal format 4.8: the subset Sidekiq Enterprise's encryption uses.
//!
//! Enterprise encrypts `Marshal.dump(secret_bag)` and stores the result as a
//! Marshal'd `Struct Sidekiq::Enc`. This file reads and writes exactly what
//! that needs: nil, true, false, Integer (Fixnum and Bignum), Float, String
//! (with its encoding), Symbol, Array, Hash (with or without a default), object
//! and symbol links, and one named Struct (the envelope). Every other type code
//! is refused with its name. Input is untrusted (it comes from Redis, and after
//! decryption from whoever holds the key), so nesting depth and input size are
//! bounded, no length read from the input reserves more than the bytes left
//! could fill, and links share the linked value (an `Arc`) instead of copying
//! it, so a stream of links cannot expand. No error message quotes the input's
//! bytes: they may be a secret.
//!
//! Facts from Ruby 3.1's `marshal.c` behaviour, checked against `Marshal.dump`
//! (the byte strings in the tests are Ruby's own output).

use std::fmt::{self, Write as _};
use std::sync::Arc;

/// The largest stream read (a secret bag is normally a few kilobytes).
pub const MAX_INPUT: usize = 16 << 20;
/// How deeply arrays and hashes may nest.
pub const MAX_DEPTH: usize = 100;

/// A Ruby value of the supported subset. Containers and strings are shared
/// (`Arc`), as Ruby shares an object that a stream links to twice.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Nil,
    Bool(bool),
    /// An Integer that fits in 64 bits (Ruby writes those past 30 bits as Bignums).
    Int(i64),
    /// An Integer past 64 bits.
    Big(Arc<BigInt>),
    Float(f64),
    /// A String in UTF-8 or US-ASCII whose bytes are valid UTF-8.
    Str(Arc<str>),
    /// Any other String: binary (`ASCII-8BIT`), another encoding, or invalid UTF-8.
    Bytes(Arc<[u8]>),
    Symbol(Arc<str>),
    Array(Arc<[Value]>),
    /// Pairs in order; keys are never arrays or hashes.
    Hash(Arc<[(Value, Value)]>),
}

/// An integer of any size: sign and magnitude (little-endian, no high zero bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BigInt {
    pub negative: bool,
    pub magnitude: Vec<u8>,
}

/// Why a stream could not be read; never quotes the stream's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarshalError(pub String);

impl fmt::Display for MarshalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for MarshalError {}

type Result<T> = std::result::Result<T, MarshalError>;

/// Fixnums are written for -2^30 <= n < 2^30; larger integers as Bignums.
const FIXNUM_MIN: i64 = -(1 << 30);
const FIXNUM_MAX: i64 = (1 << 30) - 1;

/// The name of a type code, for errors.
fn type_name(code: u8) -> String {
    let name = match code {
        b'o' => "Object",
        b'u' => "user-defined _dump",
        b'U' => "user-defined marshal_dump",
        b'e' => "object extended by a module",
        b'C' => "subclass of String, Array, Hash or Regexp",
        b'c' => "Class",
        b'm' | b'M' => "Module",
        b'/' => "Regexp",
        b'd' => "Data",
        b'S' => "Struct",
        b'I' => "object with instance variables",
        b'[' => "Array",
        b'{' | b'}' => "Hash",
        b'"' => "String",
        b'l' => "Bignum",
        b'f' => "Float",
        _ => return format!("unknown type code 0x{code:02x}"),
    };
    format!("type code {:?} ({name})", char::from(code))
}

/// Reads a stream holding one value of the subset (no Struct).
pub fn load(bytes: &[u8]) -> Result<Value> {
    let mut r = Reader::new(bytes)?;
    let v = r.value(0)?;
    r.finish()?;
    Ok(v)
}

/// Reads a stream holding one Struct named `name` (Sidekiq's envelope):
/// its members in order, each a value of the subset.
pub fn load_struct(bytes: &[u8], name: &str) -> Result<Vec<(Arc<str>, Value)>> {
    let mut r = Reader::new(bytes)?;
    let at = r.pos;
    if r.byte()? != b'S' {
        return Err(r.err(at, format!("the stream does not hold a Struct {name}")));
    }
    r.reserve(); // the struct's own entry in the object table: links to it are refused
    let class = r.symbol()?;
    if &*r.symbols[class] != name {
        return Err(r.err(at, format!("the stream holds a Struct other than {name}")));
    }
    let n = r.count(2)?;
    let mut members = Vec::with_capacity(n);
    for _ in 0..n {
        let member = r.symbol()?;
        members.push((r.symbols[member].clone(), r.value(1)?));
    }
    r.finish()?;
    Ok(members)
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    symbols: Vec<Arc<str>>,
    /// The object table links index into; `None` while an object is being read.
    objects: Vec<Option<Value>>,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Result<Self> {
        if buf.len() > MAX_INPUT {
            return Err(MarshalError(format!("the stream is {} bytes, more than the {MAX_INPUT} allowed", buf.len())));
        }
        if buf.len() < 2 || buf[0] != 4 || buf[1] != 8 {
            return Err(MarshalError("not a Marshal 4.8 stream".into()));
        }
        Ok(Self { buf, pos: 2, symbols: Vec::new(), objects: Vec::new() })
    }

    #[allow(clippy::unused_self)] // a method, so every error site reads `self.err(..)`
    fn err(&self, at: usize, what: impl fmt::Display) -> MarshalError {
        MarshalError(format!("{what} at byte {at}"))
    }

    fn finish(&self) -> Result<()> {
        if self.pos == self.buf.len() {
            Ok(())
        } else {
            Err(self.err(self.pos, format!("{} bytes after the value", self.buf.len() - self.pos)))
        }
    }

    fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn byte(&mut self) -> Result<u8> {
        let b = *self.buf.get(self.pos).ok_or_else(|| self.err(self.pos, "the stream ends early"))?;
        self.pos += 1;
        Ok(b)
    }

    fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.left() {
            return Err(self.err(self.pos, format!("a length of {n} runs past the end of the stream")));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// Marshal's packed integer (`w_long`).
    fn long(&mut self) -> Result<i64> {
        let at = self.pos;
        let c = self.byte()? as i8;
        Ok(match c {
            0 => 0,
            6..=127 => i64::from(c) - 5,
            -128..=-6 => i64::from(c) + 5,
            1..=4 => {
                let mut x: i64 = 0;
                for (i, &b) in self.bytes(c as usize)?.iter().enumerate() {
                    x |= i64::from(b) << (8 * i);
                }
                x
            }
            -4..=-1 => {
                let mut x: i64 = -1;
                for (i, &b) in self.bytes(usize::from(c.unsigned_abs()))?.iter().enumerate() {
                    x &= !(0xff << (8 * i));
                    x |= i64::from(b) << (8 * i);
                }
                x
            }
            _ => return Err(self.err(at, "a malformed integer")),
        })
    }

    /// A length that `per` bytes of input at least back per unit, checked
    /// against what is left before anything is reserved for it.
    fn count(&mut self, per: usize) -> Result<usize> {
        let at = self.pos;
        let n = self.long()?;
        let n = usize::try_from(n).map_err(|_| self.err(at, "a negative length"))?;
        if n.saturating_mul(per) > self.left() {
            return Err(self.err(at, format!("a length of {n} runs past the end of the stream")));
        }
        Ok(n)
    }

    fn reserve(&mut self) -> usize {
        self.objects.push(None);
        self.objects.len() - 1
    }

    /// A symbol (or a link to one): its index in the symbol table.
    fn symbol(&mut self) -> Result<usize> {
        let at = self.pos;
        match self.byte()? {
            b':' => self.symbol_body(at, false),
            b';' => self.symbol_link(),
            b'I' if self.buf.get(self.pos) == Some(&b':') => {
                self.pos += 1;
                self.symbol_body(at, true)
            }
            code => Err(self.err(at, format!("expected a Symbol, found {}", type_name(code)))),
        }
    }

    fn symbol_link(&mut self) -> Result<usize> {
        let at = self.pos;
        let i = self.long()?;
        usize::try_from(i)
            .ok()
            .filter(|&i| i < self.symbols.len())
            .ok_or_else(|| self.err(at, format!("a link to symbol {i}, which was never defined")))
    }

    fn symbol_body(&mut self, at: usize, ivars: bool) -> Result<usize> {
        let n = self.count(1)?;
        let raw = self.bytes(n)?;
        let text = std::str::from_utf8(raw).map_err(|_| self.err(at, "a Symbol that is not UTF-8"))?;
        self.symbols.push(Arc::from(text));
        let index = self.symbols.len() - 1;
        if ivars {
            // The symbol's encoding: UTF-8 is all kiq reads, so it only has to be well formed.
            self.encoding(at)?;
        }
        Ok(index)
    }

    /// Reads a String's or Symbol's instance variables; true when they say
    /// UTF-8 or US-ASCII, false for any other named encoding.
    fn encoding(&mut self, at: usize) -> Result<bool> {
        let n = self.count(2)?;
        let mut text = true;
        for _ in 0..n {
            let name = self.symbol()?;
            let ok = match &*self.symbols[name] {
                "E" => matches!(self.byte()?, b'T' | b'F'),
                "encoding" => {
                    text = false;
                    matches!(self.value(1)?, Value::Str(_) | Value::Bytes(_))
                }
                _ => false,
            };
            if !ok {
                return Err(self.err(at, "a String or Symbol with an instance variable other than its encoding"));
            }
        }
        Ok(text)
    }

    fn value(&mut self, depth: usize) -> Result<Value> {
        if depth > MAX_DEPTH {
            return Err(self.err(self.pos, format!("values nested more than {MAX_DEPTH} deep")));
        }
        let at = self.pos;
        let code = self.byte()?;
        Ok(match code {
            b'0' => Value::Nil,
            b'T' => Value::Bool(true),
            b'F' => Value::Bool(false),
            b'i' => Value::Int(self.long()?),
            b':' => {
                let i = self.symbol_body(at, false)?;
                Value::Symbol(self.symbols[i].clone())
            }
            b';' => {
                let i = self.symbol_link()?;
                Value::Symbol(self.symbols[i].clone())
            }
            b'@' => {
                let i = self.long()?;
                match usize::try_from(i).ok().and_then(|i| self.objects.get(i)) {
                    Some(Some(v)) => v.clone(),
                    Some(None) => return Err(self.err(at, "a link to an object that contains it (a cycle)")),
                    None => return Err(self.err(at, format!("a link to object {i}, which was never defined"))),
                }
            }
            b'l' => {
                let slot = self.reserve();
                let v = self.bignum(at)?;
                self.objects[slot] = Some(v.clone());
                v
            }
            b'f' => {
                let slot = self.reserve();
                let v = Value::Float(self.float(at)?);
                self.objects[slot] = Some(v.clone());
                v
            }
            b'"' => self.string(at, false)?,
            b'I' => match self.byte()? {
                b'"' => self.string(at, true)?,
                b':' => {
                    let i = self.symbol_body(at, true)?;
                    Value::Symbol(self.symbols[i].clone())
                }
                inner => {
                    return Err(self.err(at, format!("instance variables on a {} are not supported", type_name(inner))));
                }
            },
            b'[' => {
                let slot = self.reserve();
                let n = self.count(1)?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(depth + 1)?);
                }
                let v = Value::Array(items.into());
                self.objects[slot] = Some(v.clone());
                v
            }
            b'{' | b'}' => {
                let slot = self.reserve();
                let n = self.count(2)?;
                let mut pairs = Vec::with_capacity(n);
                for _ in 0..n {
                    let key_at = self.pos;
                    let k = self.value(depth + 1)?;
                    if matches!(k, Value::Array(_) | Value::Hash(_)) {
                        return Err(self.err(key_at, "a Hash key that is an Array or a Hash"));
                    }
                    pairs.push((k, self.value(depth + 1)?));
                }
                if code == b'}' {
                    self.value(depth + 1)?; // the Hash's default: Python dicts have none
                }
                let v = Value::Hash(pairs.into());
                self.objects[slot] = Some(v.clone());
                v
            }
            other => return Err(self.err(at, format!("{} is not supported", type_name(other)))),
        })
    }

    fn string(&mut self, at: usize, ivars: bool) -> Result<Value> {
        let slot = self.reserve();
        let n = self.count(1)?;
        let raw = self.bytes(n)?;
        let text = ivars && self.encoding(at)?;
        let v = match std::str::from_utf8(raw) {
            Ok(s) if text => Value::Str(Arc::from(s)),
            _ => Value::Bytes(Arc::from(raw)),
        };
        self.objects[slot] = Some(v.clone());
        Ok(v)
    }

    fn bignum(&mut self, at: usize) -> Result<Value> {
        let negative = match self.byte()? {
            b'+' => false,
            b'-' => true,
            _ => return Err(self.err(at, "a Bignum without a sign")),
        };
        let shorts = self.count(2)?;
        let mut magnitude = self.bytes(shorts * 2)?.to_vec();
        while magnitude.last() == Some(&0) {
            magnitude.pop();
        }
        if magnitude.len() <= 8 {
            let mut m = [0u8; 8];
            m[..magnitude.len()].copy_from_slice(&magnitude);
            let m = u64::from_le_bytes(m);
            let fits = if negative { i64::try_from(m).is_ok() || m == 1 << 63 } else { i64::try_from(m).is_ok() };
            if fits {
                return Ok(Value::Int(if negative { (m as i64).wrapping_neg() } else { m as i64 }));
            }
        }
        Ok(Value::Big(Arc::new(BigInt { negative, magnitude })))
    }

    fn float(&mut self, at: usize) -> Result<f64> {
        let n = self.count(1)?;
        let raw = self.bytes(n)?;
        // Ruby 1.8 appended mantissa bytes after a NUL; the text before it is the value.
        let raw = raw.split(|&b| b == 0).next().unwrap_or_default();
        match raw {
            b"nan" => Ok(f64::NAN),
            b"inf" => Ok(f64::INFINITY),
            b"-inf" => Ok(f64::NEG_INFINITY),
            _ => std::str::from_utf8(raw)
                .ok()
                .filter(|s| s.bytes().all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-')))
                .and_then(|s| s.parse::<f64>().ok())
                .ok_or_else(|| self.err(at, "a malformed Float")),
        }
    }
}

/// `Marshal.dump` of a value, as Ruby writes it (strings as UTF-8 with `E: true`).
pub fn dump(v: &Value) -> Vec<u8> {
    let mut w = Writer::new();
    w.value(v);
    w.out
}

/// `Marshal.dump` of a Struct named `name` with these members.
pub fn dump_struct(name: &str, members: &[(&str, Value)]) -> Vec<u8> {
    let mut w = Writer::new();
    w.out.push(b'S');
    w.symbol(name);
    w.long(members.len() as i64);
    for (member, value) in members {
        w.symbol(member);
        w.value(value);
    }
    w.out
}

struct Writer {
    out: Vec<u8>,
    symbols: Vec<String>,
}

impl Writer {
    fn new() -> Self {
        Self { out: vec![4, 8], symbols: Vec::new() }
    }

    fn long(&mut self, n: i64) {
        match n {
            0 => self.out.push(0),
            1..=122 => self.out.push((n + 5) as u8),
            -123..=-1 => self.out.push((n - 5) as u8),
            _ => {
                let mut x = n;
                let mut bytes = Vec::with_capacity(8);
                loop {
                    bytes.push((x & 0xff) as u8);
                    x >>= 8;
                    if x == 0 || x == -1 {
                        break;
                    }
                }
                let len = bytes.len() as i8;
                self.out.push(if x == 0 { len } else { -len } as u8);
                self.out.extend_from_slice(&bytes);
            }
        }
    }

    fn bytes(&mut self, b: &[u8]) {
        self.long(b.len() as i64);
        self.out.extend_from_slice(b);
    }

    /// A symbol, or a link to it when it was written before (as Ruby does);
    /// a non-ASCII one carries its encoding (UTF-8).
    fn symbol(&mut self, name: &str) {
        if let Some(i) = self.symbols.iter().position(|s| s == name) {
            self.out.push(b';');
            self.long(i as i64);
            return;
        }
        let ascii = name.is_ascii();
        if !ascii {
            self.out.push(b'I');
        }
        self.out.push(b':');
        self.bytes(name.as_bytes());
        self.symbols.push(name.to_owned());
        if !ascii {
            self.utf8();
        }
    }

    /// The instance variables of a UTF-8 String or Symbol: `E: true`.
    fn utf8(&mut self) {
        self.long(1);
        self.symbol("E");
        self.out.push(b'T');
    }

    fn value(&mut self, v: &Value) {
        match v {
            Value::Nil => self.out.push(b'0'),
            Value::Bool(true) => self.out.push(b'T'),
            Value::Bool(false) => self.out.push(b'F'),
            Value::Int(n) if (FIXNUM_MIN..=FIXNUM_MAX).contains(n) => {
                self.out.push(b'i');
                self.long(*n);
            }
            Value::Int(n) => {
                let magnitude = n.unsigned_abs().to_le_bytes();
                let len = 8 - magnitude.iter().rev().take_while(|&&b| b == 0).count();
                self.bignum(*n < 0, &magnitude[..len]);
            }
            Value::Big(b) => self.bignum(b.negative, &b.magnitude),
            Value::Float(f) => {
                self.out.push(b'f');
                self.bytes(ruby_float(*f).as_bytes());
            }
            Value::Str(s) => {
                self.out.extend_from_slice(b"I\"");
                self.bytes(s.as_bytes());
                self.utf8();
            }
            Value::Bytes(b) => {
                self.out.push(b'"');
                self.bytes(b);
            }
            Value::Symbol(s) => self.symbol(s),
            Value::Array(items) => {
                self.out.push(b'[');
                self.long(items.len() as i64);
                for item in items.iter() {
                    self.value(item);
                }
            }
            Value::Hash(pairs) => {
                self.out.push(b'{');
                self.long(pairs.len() as i64);
                for (k, v) in pairs.iter() {
                    self.value(k);
                    self.value(v);
                }
            }
        }
    }

    fn bignum(&mut self, negative: bool, magnitude: &[u8]) {
        self.out.push(b'l');
        self.out.push(if negative { b'-' } else { b'+' });
        let shorts = magnitude.len().div_ceil(2);
        self.long(shorts as i64);
        self.out.extend_from_slice(magnitude);
        if magnitude.len() % 2 == 1 {
            self.out.push(0);
        }
    }
}

/// A Float as Ruby's Marshal writes it: the shortest digits that read back
/// exactly, in plain notation when the exponent is small, else `1.5e-7`.
fn ruby_float(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf" } else { "-inf" }.into();
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0" } else { "0" }.into();
    }
    // `{:e}` gives the shortest round-trip digits: "1.2345e-5".
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let decpt = exp.parse::<i32>().unwrap_or(0) + 1;
    let n = digits.len() as i32;
    let mut out = String::with_capacity(24);
    if f < 0.0 {
        out.push('-');
    }
    if decpt < -3 || decpt > n {
        out.push_str(&digits[..1]);
        if n > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(out, "e{}", decpt - 1);
    } else if decpt > 0 {
        let (int, frac) = digits.split_at(decpt as usize);
        out.push_str(int);
        if !frac.is_empty() {
            out.push('.');
            out.push_str(frac);
        }
    } else {
        out.push_str("0.");
        out.push_str(&"0".repeat((-decpt) as usize));
        out.push_str(&digits);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t: &str) -> Value {
        Value::Str(Arc::from(t))
    }

    fn arr(items: Vec<Value>) -> Value {
        Value::Array(items.into())
    }

    fn hash(pairs: Vec<(Value, Value)>) -> Value {
        Value::Hash(pairs.into())
    }

    /// (Ruby expression, what Ruby 3.1's Marshal.dump wrote, the value)
    fn ruby_dumps() -> Vec<(&'static str, &'static [u8], Value)> {
        vec![
            ("nil", b"\x04\x080", Value::Nil),
            ("[true, false]", b"\x04\x08[\x07TF", arr(vec![Value::Bool(true), Value::Bool(false)])),
            ("122", b"\x04\x08i\x7f", Value::Int(122)),
            ("123", b"\x04\x08i\x01{", Value::Int(123)),
            ("-123", b"\x04\x08i\x80", Value::Int(-123)),
            ("-124", b"\x04\x08i\xff\x84", Value::Int(-124)),
            ("256", b"\x04\x08i\x02\x00\x01", Value::Int(256)),
            ("-257", b"\x04\x08i\xfe\xff\xfe", Value::Int(-257)),
            ("2**30-1", b"\x04\x08i\x04\xff\xff\xff?", Value::Int((1 << 30) - 1)),
            ("-2**30", b"\x04\x08i\xfc\x00\x00\x00\xc0", Value::Int(-(1 << 30))),
            ("2**30", b"\x04\x08l+\x07\x00\x00\x00@", Value::Int(1 << 30)),
            ("-2**30-1", b"\x04\x08l-\x07\x01\x00\x00@", Value::Int(-(1 << 30) - 1)),
            (
                "2**64",
                b"\x04\x08l+\x0a\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00",
                Value::Big(Arc::new(BigInt { negative: false, magnitude: vec![0, 0, 0, 0, 0, 0, 0, 0, 1] })),
            ),
            ("1.0e20", b"\x04\x08f\x091e20", Value::Float(1e20)),
            ("1.0e-5", b"\x04\x08f\x091e-5", Value::Float(1e-5)),
            ("0.1", b"\x04\x08f\x080.1", Value::Float(0.1)),
            ("100.0", b"\x04\x08f\x081e2", Value::Float(100.0)),
            ("1234567.0", b"\x04\x08f\x0c1234567", Value::Float(1_234_567.0)),
            ("0.0001", b"\x04\x08f\x0b0.0001", Value::Float(0.0001)),
            ("1.5e-7", b"\x04\x08f\x0b1.5e-7", Value::Float(1.5e-7)),
            ("123456.789", b"\x04\x08f\x0f123456.789", Value::Float(123_456.789)),
            ("12345678901234567.0", b"\x04\x08f\x1612345678901234568", Value::Float(12_345_678_901_234_567.0)),
            ("5e-324", b"\x04\x08f\x0b5e-324", Value::Float(5e-324)),
            ("-0.0", b"\x04\x08f\x07-0", Value::Float(-0.0)),
            ("Float::INFINITY", b"\x04\x08f\x08inf", Value::Float(f64::INFINITY)),
            ("-Float::INFINITY", b"\x04\x08f\x09-inf", Value::Float(f64::NEG_INFINITY)),
            ("\"x\".b", b"\x04\x08\"\x06x", Value::Bytes(Arc::from(&b"x"[..]))),
            (":\"h\u{e9}llo\"", b"\x04\x08I:\x0bh\xc3\xa9llo\x06:\x06ET", Value::Symbol(Arc::from("h\u{e9}llo"))),
            (
                "{a: 1, \"b\" => [nil, true, false]}",
                b"\x04\x08{\x07:\x06ai\x06I\"\x06b\x06:\x06ET[\x080TF",
                hash(vec![
                    (Value::Symbol(Arc::from("a")), Value::Int(1)),
                    (s("b"), arr(vec![Value::Nil, Value::Bool(true), Value::Bool(false)])),
                ]),
            ),
        ]
    }

    #[test]
    fn reads_and_writes_what_ruby_writes() {
        for (ruby, bytes, value) in ruby_dumps() {
            let read = load(bytes).unwrap_or_else(|e| panic!("{ruby}: {e}"));
            match (&read, &value) {
                (Value::Float(a), Value::Float(b)) => assert_eq!(a.to_bits(), b.to_bits(), "{ruby}"),
                _ => assert_eq!(read, value, "{ruby}"),
            }
            // Symbols and binary strings are written as Ruby wrote them too.
            assert_eq!(dump(&value), bytes, "{ruby}");
        }
    }

    #[test]
    fn reads_links_and_other_encodings() {
        // [1.5, 1.5]: Ruby links the second (same) Float.
        assert_eq!(load(b"\x04\x08[\x07f\x081.5@\x06").unwrap(), arr(vec![Value::Float(1.5), Value::Float(1.5)]));
        // s = "ab"; [s, s] and [:a, :a]
        let ab = load(b"\x04\x08[\x07I\"\x07ab\x06:\x06ET@\x06").unwrap();
        assert_eq!(ab, arr(vec![s("ab"), s("ab")]));
        let Value::Array(items) = &ab else { panic!() };
        let (Value::Str(a), Value::Str(b)) = (&items[0], &items[1]) else { panic!() };
        assert!(Arc::ptr_eq(a, b), "a link shares the value");
        let sym = Value::Symbol(Arc::from("a"));
        assert_eq!(load(b"\x04\x08[\x07:\x06a;\x00").unwrap(), arr(vec![sym.clone(), sym]));
        // "x".encode("US-ASCII") is text; "x".encode("Shift_JIS") is not.
        assert_eq!(load(b"\x04\x08I\"\x06x\x06:\x06EF").unwrap(), s("x"));
        assert_eq!(
            load(b"\x04\x08I\"\x06x\x06:\x0dencoding\"\x0eShift_JIS").unwrap(),
            Value::Bytes(Arc::from(&b"x"[..]))
        );
        // h = Hash.new(5); h[1] = 2: the default is dropped.
        assert_eq!(load(b"\x04\x08}\x06i\x06i\x07i\x0a").unwrap(), hash(vec![(Value::Int(1), Value::Int(2))]));
        // Invalid UTF-8 flagged as UTF-8 stays bytes.
        assert_eq!(load(b"\x04\x08I\"\x06\xff\x06:\x06ET").unwrap(), Value::Bytes(Arc::from(&b"\xff"[..])));
        // -(2**70)
        assert_eq!(
            load(b"\x04\x08l-\x0a\x00\x00\x00\x00\x00\x00\x00\x00@\x00").unwrap(),
            Value::Big(Arc::new(BigInt { negative: true, magnitude: vec![0, 0, 0, 0, 0, 0, 0, 0, 0x40] }))
        );
        // i64::MIN and i64::MAX come back as Int.
        for n in [i64::MIN, i64::MAX, i64::MIN + 1] {
            assert_eq!(load(&dump(&Value::Int(n))).unwrap(), Value::Int(n));
        }
    }

    #[test]
    fn refuses_other_types_by_name() {
        for (bytes, what) in [
            (&b"\x04\x08o:\x0bObject\x00"[..], "'o' (Object)"),
            (b"\x04\x08/\x06a\x00", "Regexp"),
            (b"\x04\x08c\x0bObject", "Class"),
            (b"\x04\x08S:\x06Xi\x00", "Struct"),
            (b"\x04\x08u:\x06X\x00", "_dump"),
            (b"\x04\x08I[\x00\x00", "instance variables on a type code '[' (Array)"),
            (b"\x04\x08\x01", "unknown type code 0x01"),
        ] {
            let e = load(bytes).unwrap_err().0;
            assert!(e.contains(what), "{e}");
        }
    }

    #[test]
    fn bounds_and_damage_are_errors() {
        let deep = [&b"\x04\x08"[..], &b"[\x06".repeat(200), b"0"].concat();
        assert!(load(&deep).unwrap_err().0.contains("nested"));
        // Lengths far past the input never reserve memory for themselves.
        for huge in [
            &b"\x04\x08[\x04\xff\xff\xff\x7f"[..],
            b"\x04\x08\"\x04\xff\xff\xff\x7f",
            b"\x04\x08{\x04\xff\xff\xff\x7f",
            b"\x04\x08l+\x04\xff\xff\xff\x7f",
        ] {
            assert!(load(huge).unwrap_err().0.contains("runs past the end"), "{huge:?}");
        }
        assert!(load(b"\x04\x08[\xfa").unwrap_err().0.contains("negative"));
        assert!(load(b"\x04\x09\x30").unwrap_err().0.contains("4.8"));
        assert!(load(b"\x04\x08[\x06@\x00").unwrap_err().0.contains("cycle"));
        assert!(load(b"\x04\x08@\x06").unwrap_err().0.contains("never defined"));
        assert!(load(b"\x04\x08;\x00").unwrap_err().0.contains("never defined"));
        assert!(load(b"\x04\x080\x30").unwrap_err().0.contains("after the value"));
        assert!(load(b"\x04\x08{\x06[\x00i\x06").unwrap_err().0.contains("Hash key"));
        assert!(load(b"\x04\x08f\x07zz").unwrap_err().0.contains("Float"));
        assert!(load(b"\x04\x08I\"\x06x\x06:\x07@ai\x06").unwrap_err().0.contains("instance variable"));
        assert!(load(&vec![4; MAX_INPUT + 1]).unwrap_err().0.contains("allowed"));
    }

    #[test]
    fn link_bombs_share_instead_of_expanding() {
        // a60 = []; a59 = [a60, a60]; ... a0 = [a1, a1]: 2^60 leaves if links were copied.
        let mut w = Writer::new();
        for _ in 0..60 {
            w.out.extend_from_slice(b"[\x07");
        }
        w.out.extend_from_slice(b"[\x00");
        for k in (1..=60).rev() {
            w.out.push(b'@');
            w.long(k);
        }
        let Value::Array(top) = load(&w.out).unwrap() else { panic!() };
        assert!(
            properties::footprint(&Value::Array(top.clone()), &mut std::collections::HashSet::new()) <= 2 * w.out.len()
        );
        let (Value::Array(a), Value::Array(b)) = (&top[0], &top[1]) else { panic!() };
        assert!(Arc::ptr_eq(a, b));
    }

    #[test]
    fn reads_the_envelope_struct() {
        let bytes = dump_struct("Sidekiq::Enc", &[("c", s("aes-256-gcm")), ("v", Value::Int(1))]);
        assert!(bytes.starts_with(b"\x04\x08S:\x11Sidekiq::Enc\x07:\x06cI\"\x10aes-256-gcm\x06:\x06ET:\x06vi\x06"));
        let members = load_struct(&bytes, "Sidekiq::Enc").unwrap();
        assert_eq!(members.len(), 2);
        assert_eq!((&*members[0].0, &members[0].1), ("c", &s("aes-256-gcm")));
        assert!(load_struct(&bytes, "Other").is_err());
        assert!(load(&bytes).unwrap_err().0.contains("Struct"));
    }

    pub(super) mod properties {
        use super::super::*;
        use proptest::prelude::*;

        fn scalar() -> impl Strategy<Value = Value> {
            prop_oneof![
                Just(Value::Nil),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::Int),
                (any::<bool>(), proptest::collection::vec(any::<u8>(), 9..40)).prop_map(|(negative, mut m)| {
                    *m.last_mut().unwrap() |= 1;
                    Value::Big(Arc::new(BigInt { negative, magnitude: m }))
                }),
                any::<f64>().prop_map(Value::Float),
                ".{0,40}".prop_map(|s: String| Value::Str(Arc::from(s))),
                proptest::collection::vec(any::<u8>(), 0..40).prop_map(|b| Value::Bytes(Arc::from(b))),
                "[a-z_]{1,8}".prop_map(|s: String| Value::Symbol(Arc::from(s))),
            ]
        }

        fn value() -> impl Strategy<Value = Value> {
            scalar().prop_recursive(6, 200, 10, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..10).prop_map(|v| Value::Array(v.into())),
                    proptest::collection::vec((scalar(), inner), 0..10).prop_map(|v| Value::Hash(v.into())),
                ]
            })
        }

        /// What a loaded value holds in memory: each distinct value once (a
        /// link shares, so it adds nothing) plus the bytes of its strings.
        pub(super) fn footprint(v: &Value, seen: &mut std::collections::HashSet<usize>) -> usize {
            fn first<T: ?Sized>(a: &Arc<T>, seen: &mut std::collections::HashSet<usize>) -> bool {
                seen.insert(Arc::as_ptr(a).cast::<u8>() as usize)
            }
            match v {
                Value::Array(a) if first(a, seen) => 1 + a.iter().map(|x| footprint(x, seen)).sum::<usize>(),
                Value::Hash(h) if first(h, seen) => {
                    1 + h.iter().map(|(k, x)| footprint(k, seen) + footprint(x, seen)).sum::<usize>()
                }
                Value::Str(t) | Value::Symbol(t) if first(t, seen) => 1 + t.len(),
                Value::Bytes(b) if first(b, seen) => 1 + b.len(),
                Value::Big(b) if first(b, seen) => 1 + b.magnitude.len(),
                Value::Array(_)
                | Value::Hash(_)
                | Value::Str(_)
                | Value::Symbol(_)
                | Value::Bytes(_)
                | Value::Big(_) => 0,
                _ => 1,
            }
        }

        /// Every value read costs at least one input byte and every string
        /// byte is an input byte: memory grows with the input, never faster.
        fn bounded(bytes: &[u8]) -> bool {
            load(bytes).is_err_and(|e| !e.0.is_empty())
                || load(bytes).is_ok_and(|v| footprint(&v, &mut std::collections::HashSet::new()) <= 2 * bytes.len())
        }

        /// NaN != NaN: compare floats by their bits.
        fn same(a: &Value, b: &Value) -> bool {
            match (a, b) {
                (Value::Float(x), Value::Float(y)) => x.to_bits() == y.to_bits() || (x.is_nan() && y.is_nan()),
                (Value::Array(x), Value::Array(y)) => {
                    x.len() == y.len() && x.iter().zip(y.iter()).all(|(a, b)| same(a, b))
                }
                (Value::Hash(x), Value::Hash(y)) => {
                    x.len() == y.len()
                        && x.iter().zip(y.iter()).all(|((k1, v1), (k2, v2))| same(k1, k2) && same(v1, v2))
                }
                _ => a == b,
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(500))]

            #[test]
            fn dump_then_load_is_identity(v in value()) {
                let back = load(&dump(&v)).unwrap();
                prop_assert!(same(&v, &back), "{v:?} -> {back:?}");
            }

            #[test]
            fn arbitrary_bytes_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..512)) {
                prop_assert!(bounded(&[&[4u8, 8][..], &tail].concat()));
                let _ = load_struct(&[&[4u8, 8, b'S'][..], &tail].concat(), "Sidekiq::Enc");
            }

            #[test]
            fn damaged_dumps_never_panic(v in value(), flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8), cut in any::<prop::sample::Index>()) {
                let mut bytes = dump(&v);
                for (i, b) in flips {
                    let i = i.index(bytes.len());
                    bytes[i] = b;
                }
                prop_assert!(bounded(&bytes));
                prop_assert!(bounded(&bytes[..cut.index(bytes.len())]));
            }
        }
    }
}
