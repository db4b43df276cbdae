//! Job arguments as a worker gets them: parsed once in the core (at fetch,
//! off the Python threads) and held to the limits every producer shares, so
//! whatever `enqueue` accepts a worker can run, and a payload beyond them
//! (from Ruby or any other Redis writer) fails as an ordinary job failure that
//! names the limit, instead of failing inside a worker thread.

use serde_json::{Number, Value};

use crate::error::{KiqError, Result};

/// The deepest a job payload may nest, counting the payload object and its
/// `args` array: Ruby's JSON `max_nesting` default, which Sidekiq's own
/// `JSON.parse` and `JSON.generate` enforce, so a Ruby worker reads every job
/// kiq writes and kiq runs every job a Ruby client can write.
pub const MAX_NESTING: usize = 100;

/// The deepest container inside `args` (the array itself is depth 0).
pub const MAX_ARGS_DEPTH: usize = MAX_NESTING - 2;

/// A JSON number as a worker receives it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Num<'a> {
    Int(i64),
    /// An integer beyond 64 bits, as its decimal digits (kept exact, as Ruby's Integer).
    Big(&'a str),
    Float(f64),
}

/// What a JSON number is. Numbers written with a fraction or an exponent
/// are floats (as Ruby's and Python's JSON read them); [`check`] refuses the
/// ones beyond a float's range, so `Float` is always finite after it.
pub fn number(n: &Number) -> Num<'_> {
    let text = n.as_str();
    if text.bytes().any(|b| matches!(b, b'.' | b'e' | b'E')) {
        return Num::Float(text.parse::<f64>().unwrap_or(f64::INFINITY));
    }
    match text.parse::<i64>() {
        Ok(i) => Num::Int(i),
        Err(_) => Num::Big(text),
    }
}

/// Parses the JSON text of `args` (or of ActiveJob keywords) and checks it;
/// `what` names the value in errors (`args`, `kwargs`).
pub fn parse(text: &str, what: &str) -> Result<Value> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        if e.to_string().starts_with("recursion limit exceeded") {
            nesting_error(what)
        } else {
            KiqError::codec(format!("the job's {what} are not valid JSON: {e}"))
        }
    })?;
    check(&value, what)?;
    Ok(value)
}

/// Checks a parsed value against the limits: container depth and numbers a
/// float can hold. The error names the offending place, e.g. `args[2]["n"]`.
pub fn check(value: &Value, what: &str) -> Result<()> {
    let Some((trouble, mut path)) = walk(value, 0) else {
        return Ok(());
    };
    match trouble {
        Trouble::Deep => Err(nesting_error(what)),
        Trouble::Float(n) => {
            use std::fmt::Write as _;
            // The place is spelled only for a bad value: a good one (every job) builds no path.
            let mut at = String::from(what);
            path.reverse();
            for step in path {
                let _ = match step {
                    Step::Index(i) => write!(at, "[{i}]"),
                    Step::Key(k) => write!(at, "[{}]", crate::job::json_string(k)),
                };
            }
            Err(KiqError::codec(format!(
                "{at} is the number {n}, which is outside the range of a float (about ±1.8e308)"
            )))
        }
    }
}

/// What [`walk`] found wrong.
enum Trouble<'v> {
    Deep,
    Float(&'v Number),
}

/// One step down from a container to the offending value.
enum Step<'v> {
    Index(usize),
    Key(&'v str),
}

/// The first value past a limit, with the steps to it innermost first.
fn walk(value: &Value, depth: usize) -> Option<(Trouble<'_>, Vec<Step<'_>>)> {
    match value {
        Value::Array(items) => {
            if depth > MAX_ARGS_DEPTH {
                return Some((Trouble::Deep, Vec::new()));
            }
            for (i, item) in items.iter().enumerate() {
                if let Some((t, mut path)) = walk(item, depth + 1) {
                    path.push(Step::Index(i));
                    return Some((t, path));
                }
            }
        }
        Value::Object(map) => {
            if depth > MAX_ARGS_DEPTH {
                return Some((Trouble::Deep, Vec::new()));
            }
            for (k, item) in map {
                if let Some((t, mut path)) = walk(item, depth + 1) {
                    path.push(Step::Key(k));
                    return Some((t, path));
                }
            }
        }
        Value::Number(n) => {
            if let Num::Float(f) = number(n)
                && !f.is_finite()
            {
                return Some((Trouble::Float(n), Vec::new()));
            }
        }
        Value::Null | Value::Bool(_) | Value::String(_) => {}
    }
    None
}

fn nesting_error(what: &str) -> KiqError {
    KiqError::codec(format!(
        "the job's {what} nest more than {MAX_ARGS_DEPTH} levels deep: job payloads may nest at most \
         {MAX_NESTING} levels (Ruby's JSON max_nesting, which Sidekiq uses), counting the payload and its args array"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested(levels: usize) -> String {
        format!("{}1{}", "[".repeat(levels), "]".repeat(levels))
    }

    #[test]
    fn nesting_limit_is_exact() {
        // args itself is level 0; MAX_ARGS_DEPTH more levels of containers fit.
        assert!(parse(&nested(MAX_ARGS_DEPTH + 1), "args").is_ok());
        let err = parse(&nested(MAX_ARGS_DEPTH + 2), "args").unwrap_err().to_string();
        assert!(err.contains("nest more than 98 levels") && err.contains("max_nesting"), "{err}");
        // Beyond serde_json's own limit too, with the same message.
        let err = parse(&nested(5000), "args").unwrap_err().to_string();
        assert!(err.contains("nest more than"), "{err}");
    }

    #[test]
    fn a_float_out_of_range_is_named_by_its_place() {
        let err = parse(r#"[1, {"a": 2, "n": [3, 1e999]}]"#, "args").unwrap_err().to_string();
        assert!(err.starts_with(r#"args[1]["n"][1] is the number 1e+999, which is outside"#), "{err}");
        assert!(parse(r#"[1, {"n": [3, 1e300]}]"#, "args").is_ok());
    }

    #[test]
    fn numbers() {
        let v = parse("[1, -2, 1.5, 1e3, 123456789012345678901234567890]", "args").unwrap();
        let kinds: Vec<Num<'_>> = v.as_array().unwrap().iter().map(|n| number(n.as_number().unwrap())).collect();
        assert_eq!(
            kinds,
            vec![
                Num::Int(1),
                Num::Int(-2),
                Num::Float(1.5),
                Num::Float(1000.0),
                Num::Big("123456789012345678901234567890")
            ]
        );
        let big = format!("[{}]", "9".repeat(5000));
        assert!(parse(&big, "args").is_ok(), "integers of any size");
        let err = parse(r#"[1, {"n": [0, 1e400]}]"#, "args").unwrap_err().to_string();
        assert!(err.contains(r#"args[1]["n"][1] is the number 1e+400"#), "{err}");
        assert!(parse("[-1e400]", "args").is_err());
    }

    #[test]
    fn bad_text_is_a_clear_error() {
        let err = parse("[1,", "kwargs").unwrap_err().to_string();
        assert!(err.contains("kwargs are not valid JSON"), "{err}");
        assert!(parse(r#"["\ud800"]"#, "args").is_err(), "a lone surrogate is not text");
    }
}
