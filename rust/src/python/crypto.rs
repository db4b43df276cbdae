//! `kiq._kiq.Keyring`: encryption keys by version (bindings only; the logic is `crate::crypto`).

use std::collections::HashMap;
use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use super::errors::{ConfigError, py_result};
use super::gil;
use super::marshal::{to_py, to_value};
use crate::crypto::{self, Envelope, KeySource};

/// Keys by version for Sidekiq Enterprise's encryption; never shows a key.
#[pyclass(module = "kiq._kiq", frozen)]
pub struct Keyring {
    pub(crate) inner: Arc<crypto::Keyring>,
}

/// Keys from a Python callable `version -> bytes | None` (Enterprise's block),
/// asked once per version; the core caches the result.
struct CallableSource(Py<PyAny>);

impl KeySource for CallableSource {
    fn key(&self, version: u32) -> Result<Option<Vec<u8>>, String> {
        Python::try_attach(|py| {
            let got = self.0.call1(py, (version,)).map_err(|e| {
                // Only the exception's type: its message could hold anything.
                format!("it raised {}", e.get_type(py).name().map_or_else(|_| "an exception".into(), |n| n.to_string()))
            })?;
            let got = got.bind(py);
            if got.is_none() {
                return Ok(None);
            }
            got.cast::<PyBytes>().map(|b| Some(b.as_bytes().to_vec())).map_err(|_| {
                format!(
                    "it returned {}, not bytes",
                    got.get_type().name().map_or_else(|_| "?".into(), |n| n.to_string())
                )
            })
        })
        .unwrap_or_else(|| Err("Python is shutting down".into()))
    }
}

#[pymethods]
impl Keyring {
    /// `keys` is `{version: 32-byte key}` (the active version defaults to the
    /// highest) or a callable `version -> key` (then `active_version` is required).
    #[new]
    #[pyo3(signature = (keys, active_version = None))]
    fn new(keys: &Bound<'_, PyAny>, active_version: Option<u32>) -> PyResult<Self> {
        let inner = if let Ok(dict) = keys.cast::<PyDict>() {
            let mut pairs = Vec::with_capacity(dict.len());
            for (k, v) in dict.iter() {
                let Ok(version) = k.extract::<u32>() else {
                    return Err(ConfigError::new_err(format!(
                        "encryption key versions are ints from 0 to 2**32-1, not {}",
                        k.repr()?
                    )));
                };
                let Ok(key) = v.cast::<PyBytes>() else {
                    return Err(ConfigError::new_err(format!(
                        "the encryption key for version {version} must be bytes (32 random bytes), not {}",
                        v.get_type().name()?
                    )));
                };
                pairs.push((version, key.as_bytes().to_vec()));
            }
            let Some(highest) = pairs.iter().map(|(v, _)| *v).max() else {
                return Err(ConfigError::new_err("encryption_keys is empty"));
            };
            py_result(crypto::Keyring::new(active_version.unwrap_or(highest), pairs))?
        } else if keys.is_callable() {
            let active = active_version
                .ok_or_else(|| ConfigError::new_err("a key callable needs encryption_version (the active version)"))?;
            py_result(crypto::Keyring::with_source(active, Box::new(CallableSource(keys.clone().unbind()))))?
        } else {
            return Err(ConfigError::new_err(
                "encryption_keys must be a dict {version: key} or a callable version -> key",
            ));
        };
        Ok(Self { inner: Arc::new(inner) })
    }

    /// The version new jobs are encrypted with.
    #[getter]
    fn active_version(&self) -> u32 {
        self.inner.active_version()
    }

    /// The versions known so far (those of a callable as they are asked for).
    #[getter]
    fn versions(&self) -> Vec<u32> {
        self.inner.versions()
    }

    /// The encrypted argument for `value`, as Sidekiq Enterprise writes it.
    fn encrypt(&self, py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<String> {
        let value = to_value(value, &mut "value".to_owned(), 0)?;
        let inner = self.inner.clone();
        gil::run(py, move || inner.seal(&value))
    }

    /// The value inside an encrypted argument; raises `DecryptionError`.
    fn decrypt<'py>(&self, py: Python<'py>, text: String) -> PyResult<Bound<'py, PyAny>> {
        let inner = self.inner.clone();
        let value = gil::run(py, move || inner.open(&text))?;
        to_py(py, &value, &mut HashMap::new())
    }

    fn __repr__(&self) -> String {
        format!("<Keyring active_version={} versions={:?}>", self.inner.active_version(), self.inner.versions())
    }
}

/// `(cipher, tag, iv, version, blob)`.
type Parts = (String, Py<PyBytes>, Py<PyBytes>, i64, Py<PyBytes>);

/// The parts of an encrypted argument: `(cipher, tag, iv, version, blob)`.
#[pyfunction]
pub fn read_envelope(py: Python<'_>, text: &str) -> PyResult<Parts> {
    let e: Envelope = py_result(Envelope::parse(text))?;
    let b = |v: &[u8]| PyBytes::new(py, v).unbind();
    Ok((e.cipher.clone(), b(&e.tag), b(&e.iv), e.version, b(&e.blob)))
}
