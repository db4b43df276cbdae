//! Python values ⇄ the Marshal subset (`crate::marshal::Value`), for the
//! encrypted last argument of a job (Sidekiq Enterprise's secret bag).
//!
//! Going in: None, bool, int (any size), float (infinities and NaN too:
//! Marshal carries them), str (a UTF-8 Ruby String), bytes and bytearray (a
//! binary Ruby String), list and tuple, dataclass instances (as dicts), and
//! dicts whose keys are None, bool, int, float, str or bytes. Coming out, a
//! String is `str` when it is UTF-8 or US-ASCII text and `bytes` otherwise, a
//! Symbol is `str`, and a value the stream links to twice is one Python object
//! used twice, as it was one Ruby object.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyBool, PyByteArray, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};

use super::convert::{args_json, value_to_py};
use super::errors::{CodecError, py_result};
use crate::crypto::{Keyring, Seal};
use crate::lane;
use crate::marshal::{BigInt, MAX_DEPTH, Value};

/// A job's arguments split for encryption: the JSON of all but the last, and
/// the seal holding the last (see `crypto::Seal::split`).
pub fn sealed_args(args: &Bound<'_, PyAny>, keyring: Arc<Keyring>) -> PyResult<(String, Seal)> {
    let py = args.py();
    let items: Vec<Bound<'_, PyAny>> = args.try_iter()?.collect::<PyResult<_>>()?;
    let count = items.len();
    let (last, head) = match items.split_last() {
        Some((last, head)) => (to_value(last, &mut format!("args[{}]", count - 1), 0)?, head),
        None => (Value::Nil, &[][..]),
    };
    // args_json checks the type (list or tuple) and names bad values by index.
    let head = if args.cast::<PyList>().is_ok() || args.cast::<PyTuple>().is_ok() {
        args_json(PyList::new(py, head)?.as_any())?
    } else {
        args_json(args)?
    };
    py_result(Seal::split(keyring, count, head, last))
}

/// The arguments a worker gets: `args`, with an encrypted job's last one decrypted.
pub fn delivery_args<'py>(py: Python<'py>, d: &lane::Delivery) -> PyResult<Bound<'py, PyList>> {
    let Some(bag) = &d.bag else {
        return Ok(value_to_py(py, &d.args)?.cast_into::<PyList>()?);
    };
    // The ciphertext in `args` is never turned into a Python string.
    let items = d.args.as_array().map_or(&[][..], Vec::as_slice);
    let args = PyList::empty(py);
    for item in items.iter().take(items.len().saturating_sub(1)) {
        args.append(value_to_py(py, item)?)?;
    }
    args.append(to_py(py, bag, &mut HashMap::new())?)?;
    Ok(args)
}

/// A Python value as a Marshal value; `path` names it in errors (`args[1]["k"]`).
pub fn to_value(obj: &Bound<'_, PyAny>, path: &mut String, depth: usize) -> PyResult<Value> {
    if depth > MAX_DEPTH {
        return Err(CodecError::new_err(format!(
            "encrypted argument {path} is nested more than {MAX_DEPTH} levels deep (a reference cycle?)"
        )));
    }
    Ok(if obj.is_none() {
        Value::Nil
    } else if let Ok(b) = obj.cast::<PyBool>() {
        Value::Bool(b.is_true())
    } else if let Ok(i) = obj.cast::<PyInt>() {
        match i.extract::<i64>() {
            Ok(n) => Value::Int(n),
            Err(_) => big_value(i)?,
        }
    } else if let Ok(f) = obj.cast::<PyFloat>() {
        Value::Float(f.value())
    } else if let Ok(s) = obj.cast::<PyString>() {
        Value::Str(Arc::from(s.to_str()?))
    } else if let Ok(b) = obj.cast::<PyBytes>() {
        Value::Bytes(Arc::from(b.as_bytes()))
    } else if let Ok(b) = obj.cast::<PyByteArray>() {
        Value::Bytes(Arc::from(b.to_vec()))
    } else if obj.cast::<PyList>().is_ok() || obj.cast::<PyTuple>().is_ok() {
        let mut items = Vec::new();
        for (n, item) in obj.try_iter()?.enumerate() {
            let len = path.len();
            let _ = write!(path, "[{n}]");
            items.push(to_value(&item?, path, depth + 1)?);
            path.truncate(len);
        }
        Value::Array(items.into())
    } else if let Ok(dict) = obj.cast::<PyDict>() {
        let mut pairs = Vec::with_capacity(dict.len());
        for (k, v) in dict.iter() {
            let len = path.len();
            let _ = write!(path, "[{}]", k.repr()?);
            let key = to_value(&k, path, depth + 1)?;
            if matches!(key, Value::Array(_) | Value::Hash(_)) {
                return Err(CodecError::new_err(format!(
                    "encrypted argument {path} has a tuple key: use a scalar key"
                )));
            }
            pairs.push((key, to_value(&v, path, depth + 1)?));
            path.truncate(len);
        }
        Value::Hash(pairs.into())
    } else if !obj.is_instance_of::<pyo3::types::PyType>() && obj.hasattr("__dataclass_fields__")? {
        let fields = obj.getattr("__dataclass_fields__")?;
        let mut pairs = Vec::new();
        for name in fields.cast::<PyDict>()?.keys() {
            let name: String = name.extract()?;
            let len = path.len();
            let _ = write!(path, ".{name}");
            let value = to_value(&obj.getattr(name.as_str())?, path, depth + 1)?;
            path.truncate(len);
            pairs.push((Value::Str(Arc::from(name)), value));
        }
        Value::Hash(pairs.into())
    } else {
        return Err(CodecError::new_err(format!(
            "encrypted argument {path} has type {}, which kiq cannot encrypt: use None, bool, int, float, str, \
             bytes, list or dict",
            obj.get_type().name()?
        )));
    })
}

/// An int past 64 bits as sign and little-endian magnitude.
fn big_value(i: &Bound<'_, PyInt>) -> PyResult<Value> {
    let negative = i.lt(0)?;
    let magnitude = i.call_method0("__abs__")?;
    let bits: usize = magnitude.call_method0("bit_length")?.extract()?;
    let bytes = magnitude.call_method1("to_bytes", (bits.div_ceil(8), "little"))?;
    Ok(Value::Big(Arc::new(BigInt { negative, magnitude: bytes.cast::<PyBytes>()?.as_bytes().to_vec() })))
}

/// The memo key of a value held more than once in the tree (a Ruby link), else None.
fn shared<T: ?Sized>(a: &Arc<T>) -> Option<usize> {
    (Arc::strong_count(a) > 1).then(|| Arc::as_ptr(a).cast::<u8>() as usize)
}

/// A Marshal value as Python objects; `memo` makes a value the stream linked
/// to (an `Arc` held more than once) one Python object.
pub fn to_py<'py>(py: Python<'py>, v: &Value, memo: &mut HashMap<usize, Py<PyAny>>) -> PyResult<Bound<'py, PyAny>> {
    let shared = match v {
        Value::Array(a) => shared(a),
        Value::Hash(h) => shared(h),
        Value::Str(s) | Value::Symbol(s) => shared(s),
        Value::Bytes(b) => shared(b),
        Value::Big(b) => shared(b),
        _ => None,
    };
    if let Some(obj) = shared.and_then(|k| memo.get(&k)) {
        return Ok(obj.bind(py).clone());
    }
    let obj = match v {
        Value::Nil => py.None().into_bound(py),
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        Value::Int(n) => n.into_pyobject(py)?.into_any(),
        Value::Big(b) => {
            let n = py.get_type::<PyInt>().call_method1("from_bytes", (PyBytes::new(py, &b.magnitude), "little"))?;
            if b.negative { n.neg()? } else { n }
        }
        Value::Float(f) => PyFloat::new(py, *f).into_any(),
        Value::Str(s) | Value::Symbol(s) => PyString::new(py, s).into_any(),
        Value::Bytes(b) => PyBytes::new(py, b).into_any(),
        Value::Array(items) => {
            let list = PyList::empty(py);
            for item in items.iter() {
                list.append(to_py(py, item, memo)?)?;
            }
            list.into_any()
        }
        Value::Hash(pairs) => {
            let dict = PyDict::new(py);
            for (k, item) in pairs.iter() {
                dict.set_item(to_py(py, k, memo)?, to_py(py, item, memo)?)?;
            }
            dict.into_any()
        }
    };
    if let Some(k) = shared {
        memo.insert(k, obj.clone().unbind());
    }
    Ok(obj)
}
