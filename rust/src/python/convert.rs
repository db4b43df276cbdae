//! Python values ⇄ JSON text, under Sidekiq's strict-args rule.
//!
//! Arguments must survive a JSON round trip unchanged: None, bool, int
//! (any size), finite float, str, list, and dict with str keys. Tuples become
//! lists and dataclass instances become dicts of their fields; anything else is
//! refused at enqueue time with the path of the offending value.

use std::fmt::Write as _;

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};

use super::errors::{CodecError, py_result};
use crate::args::{self, MAX_ARGS_DEPTH, MAX_NESTING, Num};
use crate::job::json_string;
use crate::newjob::push_json_str;
use crate::timestamp::push_float_json;

/// Why a value cannot be written as JSON: a Python error as raised, or a
/// value refused where `at` says (path segments, innermost first, collected
/// only on the way out of a failure so that a success never formats a path).
enum Bad {
    Py(PyErr),
    Value { at: Vec<String>, why: Why },
}

enum Why {
    NotFinite(f64),
    KeyType(String),
    Type(String),
    TooDeep,
}

impl From<PyErr> for Bad {
    fn from(e: PyErr) -> Self {
        Self::Py(e)
    }
}

impl Bad {
    fn refused(why: Why) -> Self {
        Self::Value { at: Vec::new(), why }
    }

    /// Adds the segment of the container the failure happened inside.
    fn within(mut self, segment: impl FnOnce() -> String) -> Self {
        if let Self::Value { at, .. } = &mut self {
            at.push(segment());
        }
        self
    }

    /// The Python exception, naming the value by its path from `base` (e.g. `args[1]["when"]`).
    fn into_err(self, base: &str) -> PyErr {
        let (at, why) = match self {
            Self::Py(e) => return e,
            Self::Value { at, why } => (at, why),
        };
        let mut path = base.to_owned();
        for segment in at.iter().rev() {
            path.push_str(segment);
        }
        CodecError::new_err(match why {
            Why::NotFinite(v) => format!("job argument {path} is {v}, which JSON cannot carry"),
            Why::KeyType(t) => {
                format!("job argument {path} has a key of type {t}: Sidekiq job hashes need str keys")
            }
            Why::Type(t) => format!(
                "job argument {path} has type {t}, which Sidekiq jobs cannot carry: use None, bool, int, float, str, list or dict with str keys"
            ),
            Why::TooDeep => format!(
                "job argument {path} is nested more than {MAX_ARGS_DEPTH} levels deep (a reference cycle?): job \
                 payloads may nest at most {MAX_NESTING} levels (Ruby's JSON max_nesting, which Sidekiq uses), \
                 counting the payload and its args array"
            ),
        })
    }
}

/// Refuses a container deeper than workers (kiq's and Ruby's) accept.
fn check_depth(depth: usize) -> Result<(), Bad> {
    if depth > MAX_ARGS_DEPTH { Err(Bad::refused(Why::TooDeep)) } else { Ok(()) }
}

/// Appends `obj` as JSON to `out`.
fn write_json(obj: &Bound<'_, PyAny>, out: &mut String, depth: usize) -> Result<(), Bad> {
    if obj.is_none() {
        out.push_str("null");
    } else if let Ok(b) = obj.cast::<PyBool>() {
        out.push_str(if b.is_true() { "true" } else { "false" });
    } else if let Ok(i) = obj.cast::<PyInt>() {
        if let Ok(v) = i.extract::<i64>() {
            out.push_str(itoa::Buffer::new().format(v));
        } else {
            // Big integers keep every digit, as Ruby's Integer does (and
            // without Python's 4,300-digit limit on int -> str).
            let big: num_bigint::BigInt = i.extract()?;
            let _ = write!(out, "{big}");
        }
    } else if let Ok(f) = obj.cast::<PyFloat>() {
        let v = f.value();
        if !v.is_finite() {
            return Err(Bad::refused(Why::NotFinite(v)));
        }
        push_float_json(out, v);
    } else if let Ok(s) = obj.cast::<PyString>() {
        push_json_str(out, s.to_str()?);
    } else if let Ok(list) = obj.cast::<PyList>() {
        check_depth(depth)?;
        write_seq(list.iter(), out, depth)?;
    } else if let Ok(tuple) = obj.cast::<PyTuple>() {
        check_depth(depth)?;
        write_seq(tuple.iter(), out, depth)?;
    } else if let Ok(dict) = obj.cast::<PyDict>() {
        check_depth(depth)?;
        out.push('{');
        for (n, (k, v)) in dict.iter().enumerate() {
            let Ok(key) = k.cast::<PyString>() else {
                return Err(Bad::refused(Why::KeyType(type_name(&k))));
            };
            let key = key.to_str()?;
            if n > 0 {
                out.push(',');
            }
            push_json_str(out, key);
            out.push(':');
            write_json(&v, out, depth + 1).map_err(|e| e.within(|| format!("[{}]", json_string(key))))?;
        }
        out.push('}');
    } else if !obj.is_instance_of::<pyo3::types::PyType>() && obj.hasattr("__dataclass_fields__")? {
        check_depth(depth)?;
        let fields = obj.getattr("__dataclass_fields__")?;
        let fields = fields.cast::<PyDict>().map_err(PyErr::from)?;
        out.push('{');
        for (n, name) in fields.keys().iter().enumerate() {
            let name: String = name.extract()?;
            if n > 0 {
                out.push(',');
            }
            out.push_str(&json_string(&name));
            out.push(':');
            write_json(&obj.getattr(name.as_str())?, out, depth + 1).map_err(|e| e.within(|| format!(".{name}")))?;
        }
        out.push('}');
    } else {
        return Err(Bad::refused(Why::Type(type_name(obj))));
    }
    Ok(())
}

fn write_seq<'py>(items: impl Iterator<Item = Bound<'py, PyAny>>, out: &mut String, depth: usize) -> Result<(), Bad> {
    out.push('[');
    for (n, item) in items.enumerate() {
        if n > 0 {
            out.push(',');
        }
        write_json(&item, out, depth + 1).map_err(|e| e.within(|| format!("[{n}]")))?;
    }
    out.push(']');
    Ok(())
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    let t = obj.get_type();
    let module = t.module().map(|m| m.to_string()).unwrap_or_default();
    let name = t.qualname().map_or_else(|_| "object".to_owned(), |n| n.to_string());
    if module == "builtins" || module.is_empty() { name } else { format!("{module}.{name}") }
}

/// JSON text of a sequence of job arguments (`args`).
pub fn args_json(args: &Bound<'_, PyAny>) -> PyResult<String> {
    let mut out = String::with_capacity(64);
    if args.cast::<PyList>().is_err() && args.cast::<PyTuple>().is_err() {
        return Err(CodecError::new_err(format!("job args must be a list or tuple, not {}", type_name(args))));
    }
    write_json(args, &mut out, 0).map_err(|e| e.into_err("args"))?;
    Ok(out)
}

/// JSON text of one option value (for payload fields such as `tags`).
pub fn value_json(value: &Bound<'_, PyAny>, name: &str) -> PyResult<String> {
    let mut out = String::new();
    write_json(value, &mut out, 0).map_err(|e| e.into_err(&format!("option {name:?}")))?;
    Ok(out)
}

/// Python objects for JSON text (big integers stay exact), held to the
/// limits job arguments have (`crate::args`).
pub fn json_to_py<'py>(py: Python<'py>, text: &str) -> PyResult<Bound<'py, PyAny>> {
    value_to_py(py, &py_result(args::parse(text, "value"))?)
}

/// Python objects for a JSON value the core has checked (`crate::args`):
/// floats are finite, and integers of any size become exact Python ints.
pub fn value_to_py<'py>(py: Python<'py>, v: &serde_json::Value) -> PyResult<Bound<'py, PyAny>> {
    use serde_json::Value;
    Ok(match v {
        Value::Null => py.None().into_bound(py),
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        Value::Number(n) => match args::number(n) {
            Num::Int(i) => i.into_pyobject(py)?.into_any(),
            Num::Float(f) => PyFloat::new(py, f).into_any(),
            // Through bytes, not str, so Python's int-string digit limit does not apply.
            Num::Big(digits) => match digits.parse::<num_bigint::BigInt>() {
                Ok(big) => big.into_pyobject(py)?.into_any(),
                Err(e) => return Err(CodecError::new_err(format!("the number {digits} cannot be read: {e}"))),
            },
        },
        Value::String(s) => PyString::new(py, s).into_any(),
        Value::Array(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(value_to_py(py, item)?)?;
            }
            list.into_any()
        }
        Value::Object(map) => {
            let dict = PyDict::new(py);
            for (k, item) in map {
                dict.set_item(k, value_to_py(py, item)?)?;
            }
            dict.into_any()
        }
    })
}

/// A Redis reply as Python values: bulk strings as `str` (invalid UTF-8 replaced).
pub fn redis_to_py<'py>(py: Python<'py>, v: &redis::Value) -> PyResult<Bound<'py, PyAny>> {
    use redis::Value;
    Ok(match v {
        Value::Nil => py.None().into_bound(py),
        Value::Int(i) => i.into_pyobject(py)?.into_any(),
        Value::BulkString(b) => PyString::new(py, &String::from_utf8_lossy(b)).into_any(),
        Value::SimpleString(s) => PyString::new(py, s).into_any(),
        Value::Okay => PyString::new(py, "OK").into_any(),
        Value::Double(f) => PyFloat::new(py, *f).into_any(),
        Value::Boolean(b) => PyBool::new(py, *b).to_owned().into_any(),
        Value::Array(items) | Value::Set(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(redis_to_py(py, item)?)?;
            }
            list.into_any()
        }
        Value::Map(pairs) => {
            let dict = PyDict::new(py);
            for (k, item) in pairs {
                dict.set_item(redis_to_py(py, k)?, redis_to_py(py, item)?)?;
            }
            dict.into_any()
        }
        // An error reply inside a reply: the core's error, mapped as every other is.
        Value::ServerError(e) => return py_result(Err(crate::KiqError::Redis(e.clone().into()))),
        other => PyString::new(py, &format!("{other:?}")).into_any(),
    })
}
