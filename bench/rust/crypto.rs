//! The core alone: Sidekiq Enterprise-format encryption of a 1 KB secret bag
//! (seal = Marshal dump + AES-256-GCM + envelope + Base64; open = the reverse,
//! tag checked first), per job, no Python.
//!
//!     cargo run --release --example crypto_bench -- 200000

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use _kiq::crypto::Keyring;
use _kiq::marshal::{self, Value};

/// A hash of 20 string fields and a few numbers: about 1 KB as Marshal.
fn bag() -> Value {
    let mut pairs: Vec<(Value, Value)> = (0..20)
        .map(|i| (Value::Str(Arc::from(format!("field_{i:02}"))), Value::Str(Arc::from("x".repeat(32)))))
        .collect();
    pairs.push((Value::Str(Arc::from("amount")), Value::Float(1234.56)));
    pairs.push((Value::Str(Arc::from("account")), Value::Int(9_876_543_210)));
    Value::Hash(pairs.into())
}

/// Microseconds per call: the best of 5 rounds of `n / 5` calls (the machine is shared and noisy).
fn per_op(n: usize, mut f: impl FnMut()) -> f64 {
    let round = (n / 5).max(1);
    (0..5)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..round {
                f();
            }
            t.elapsed().as_secs_f64() / round as f64 * 1e6
        })
        .fold(f64::INFINITY, f64::min)
}

/// `{"ssn" => "123-45-6789", "name" => "Ada Lovelace"}`.
fn small() -> Value {
    let s = |t: &str| Value::Str(Arc::from(t));
    Value::Hash(vec![(s("ssn"), s("123-45-6789")), (s("name"), s("Ada Lovelace"))].into())
}

fn main() {
    let n: usize = std::env::args().nth(1).map_or(200_000, |s| s.parse().unwrap());
    for (name, bag) in [("1 KB", bag()), ("small", small())] {
        measure(name, n, &bag);
    }
}

fn measure(name: &str, n: usize, bag: &Value) {
    let ring = Keyring::new(1, [(1, vec![7; 32])]).unwrap();
    let plain = marshal::dump(bag);
    let sealed = ring.seal(bag).unwrap();
    println!("{name} bag: {} bytes as Marshal, {} bytes encrypted (Base64)", plain.len(), sealed.len());
    let dump = per_op(n, || {
        black_box(marshal::dump(black_box(bag)));
    });
    let load = per_op(n, || {
        black_box(marshal::load(black_box(&plain)).unwrap());
    });
    let seal = per_op(n, || {
        black_box(ring.seal(black_box(bag)).unwrap());
    });
    let open = per_op(n, || {
        black_box(ring.open(black_box(&sealed)).unwrap());
    });
    println!("  marshal dump {dump:.2} µs, load {load:.2} µs; encrypt {seal:.2} µs/job, decrypt {open:.2} µs/job");
}
