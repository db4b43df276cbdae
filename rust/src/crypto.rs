//! Sidekiq Enterprise's encryption of a job's last argument, both ways.
//!
//! With `encrypt: true` only the last argument (the "secret bag") is
//! encrypted; the payload says `"encrypt": true` and keeps the other
//! arguments, class and queue in clear. The encrypted argument is a string:
//! strict Base64 of `Marshal.dump(Sidekiq::Enc.new(c, tag, iv, v, blob))`,
//! where `c` is `"aes-256-gcm"`, `v` the key version, and `blob` the AES-256-GCM
//! encryption of `Marshal.dump(bag)` under the key of version `v`, with a
//! 12-byte random IV, a 16-byte tag and no additional data. (Recovered from a
//! public Enterprise ciphertext, sidekiq/sidekiq issue 3368: see `tests`.)
//!
//! Sealing happens at every push (a fresh IV each time); opening happens when
//! the job is fetched, before any Python code sees it, and the tag is checked
//! before a byte of the plaintext is read. Errors never quote plaintext or keys.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use aes_gcm::Aes256Gcm;
use aes_gcm::aead::{AeadInOut, KeyInit, Nonce, Tag};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::value::RawValue;

use crate::error::{KiqError, Result};
use crate::job::json_string;
use crate::marshal::{self, Value};

/// The only cipher Enterprise has written since 1.3.2.
pub const CIPHER: &str = "aes-256-gcm";
/// The Struct the ciphertext is wrapped in, and its members in order.
pub const ENVELOPE: &str = "Sidekiq::Enc";
const MEMBERS: [&str; 5] = ["c", "tag", "iv", "v", "blob"];
pub const KEY_LEN: usize = 32;
const IV_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// What Sidekiq's Web UI and API show in place of an encrypted argument.
pub const REDACTED: &str = "[encrypted data]";
/// The `error_class` of a job that could not be decrypted.
pub const DECRYPTION_ERROR: &str = "kiq.errors.DecryptionError";

fn fail(why: impl fmt::Display) -> KiqError {
    KiqError::Decryption(format!("cannot decrypt the job's last argument: {why}"))
}

/// Where keys come from when they are not all given up front (Enterprise's
/// `Crypto.enable { |version| key }` block, e.g. a secret manager).
pub trait KeySource: Send + Sync {
    /// The key of `version`, `Ok(None)` when there is none. An error says
    /// why the lookup failed, never what a key is.
    fn key(&self, version: u32) -> std::result::Result<Option<Vec<u8>>, String>;
}

/// The keys a process encrypts and decrypts with, by version. New pushes use
/// the active version; any version the keyring knows (or its source gives)
/// decrypts, so jobs encrypted before a rotation still run after it.
pub struct Keyring {
    active: u32,
    /// Ready ciphers by version; the raw keys are not kept.
    ciphers: RwLock<HashMap<u32, Arc<Aes256Gcm>>>,
    source: Option<Box<dyn KeySource>>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the ciphers (they hold the keys): the versions only.
        f.debug_struct("Keyring")
            .field("active", &self.active)
            .field("versions", &self.versions())
            .finish_non_exhaustive()
    }
}

fn cipher_for(version: u32, key: &[u8]) -> Result<Aes256Gcm> {
    if key.len() != KEY_LEN {
        return Err(KiqError::config(format!(
            "the encryption key for version {version} is {} bytes; AES-256 keys are exactly {KEY_LEN} bytes",
            key.len()
        )));
    }
    Aes256Gcm::new_from_slice(key).map_err(|_| KiqError::config("invalid AES-256 key"))
}

impl Keyring {
    /// A keyring of these keys (each exactly 32 bytes), `active` among them.
    pub fn new(active: u32, keys: impl IntoIterator<Item = (u32, Vec<u8>)>) -> Result<Self> {
        let mut ciphers = HashMap::new();
        for (version, key) in keys {
            ciphers.insert(version, Arc::new(cipher_for(version, &key)?));
        }
        if !ciphers.contains_key(&active) {
            return Err(KiqError::config(format!("encryption_version {active} has no key in encryption_keys")));
        }
        Ok(Self { active, ciphers: RwLock::new(ciphers), source: None })
    }

    /// A keyring that asks `source` for each version the first time it is
    /// needed (the active one at once, so a bad source fails here).
    pub fn with_source(active: u32, source: Box<dyn KeySource>) -> Result<Self> {
        let ring = Self { active, ciphers: RwLock::new(HashMap::new()), source: Some(source) };
        ring.lookup(active).map_err(KiqError::config)?;
        Ok(ring)
    }

    /// The version new pushes are encrypted with.
    pub fn active_version(&self) -> u32 {
        self.active
    }

    /// The versions known so far, in order.
    pub fn versions(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.ciphers.read().unwrap_or_else(PoisonError::into_inner).keys().copied().collect();
        v.sort_unstable();
        v
    }

    fn cipher(&self, version: u32) -> Result<Arc<Aes256Gcm>> {
        self.lookup(version).map_err(fail)
    }

    /// The cipher of `version`, asking the source the first time; else why not.
    fn lookup(&self, version: u32) -> std::result::Result<Arc<Aes256Gcm>, String> {
        if let Some(c) = self.ciphers.read().unwrap_or_else(PoisonError::into_inner).get(&version) {
            return Ok(c.clone());
        }
        let Some(source) = &self.source else {
            return Err(format!("no key for version {version} (this process has versions {:?})", self.versions()));
        };
        let key = match source.key(version) {
            Ok(Some(key)) => key,
            Ok(None) => return Err(format!("the key source has no key for version {version}")),
            Err(why) => return Err(format!("the key source failed for version {version}: {why}")),
        };
        let cipher = Arc::new(cipher_for(version, &key).map_err(|e| e.to_string())?);
        self.ciphers.write().unwrap_or_else(PoisonError::into_inner).insert(version, cipher.clone());
        Ok(cipher)
    }

    /// The encrypted argument for `bag`: sealed with the active key and a fresh IV.
    pub fn seal(&self, bag: &Value) -> Result<String> {
        let cipher = self.cipher(self.active)?;
        let iv: [u8; IV_LEN] = rand::random();
        let mut blob = marshal::dump(bag);
        let tag = cipher
            .encrypt_inout_detached(&Nonce::<Aes256Gcm>::from(iv), b"", blob.as_mut_slice().into())
            .map_err(|_| KiqError::codec("the secret bag is too large to encrypt"))?;
        let envelope = Envelope {
            cipher: CIPHER.to_owned(),
            tag: tag.to_vec(),
            iv: iv.to_vec(),
            version: self.active.into(),
            blob,
        };
        Ok(envelope.to_text())
    }

    /// The bag inside an encrypted argument. The tag is verified before the
    /// plaintext is read as Marshal.
    pub fn open(&self, text: &str) -> Result<Value> {
        let env = Envelope::parse(text)?;
        if env.cipher != CIPHER {
            return Err(fail(format!(
                "its cipher is {:?}; kiq reads {CIPHER} only (Enterprise's since 1.3.2)",
                env.cipher
            )));
        }
        let (Ok(iv), Ok(tag)) =
            (<[u8; IV_LEN]>::try_from(env.iv.as_slice()), <[u8; TAG_LEN]>::try_from(env.tag.as_slice()))
        else {
            return Err(fail(format!(
                "its IV is {} bytes and its tag {} (AES-256-GCM uses {IV_LEN} and {TAG_LEN})",
                env.iv.len(),
                env.tag.len()
            )));
        };
        let version = u32::try_from(env.version).map_err(|_| fail(format!("no key for version {}", env.version)))?;
        let cipher = self.cipher(version)?;
        let mut plain = env.blob;
        cipher
            .decrypt_inout_detached(&Nonce::<Aes256Gcm>::from(iv), b"", plain.as_mut_slice().into(), &Tag::<Aes256Gcm>::from(tag))
            .map_err(|_| {
                fail(format!(
                    "the GCM tag does not match: the data was altered, or it was encrypted with another key than this process's version {version}"
                ))
            })?;
        marshal::load(&plain).map_err(|e| fail(format!("the decrypted value is not one kiq can read: {e}")))
    }
}

/// The parts of an encrypted argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    pub cipher: String,
    pub tag: Vec<u8>,
    pub iv: Vec<u8>,
    pub version: i64,
    pub blob: Vec<u8>,
}

impl Envelope {
    /// Reads an encrypted argument (strict Base64 of the Marshal'd struct).
    pub fn parse(text: &str) -> Result<Self> {
        let bytes = STANDARD.decode(text).map_err(|_| fail("it is not strict Base64 (cut short or altered?)"))?;
        let members = marshal::load_struct(&bytes, ENVELOPE)
            .map_err(|e| fail(format!("it is not a {ENVELOPE} envelope: {e}")))?;
        let mut found: [Option<Value>; 5] = Default::default();
        for (name, value) in members {
            let i = MEMBERS
                .iter()
                .position(|m| *m == &*name)
                .ok_or_else(|| fail(format!("its envelope has an unknown member {name:?}")))?;
            found[i] = Some(value);
        }
        let [c, tag, iv, v, blob] = found;
        let bytes_of = |name: &str, v: Option<Value>| match v {
            Some(Value::Bytes(b)) => Ok(b.to_vec()),
            Some(Value::Str(s)) => Ok(s.as_bytes().to_vec()),
            Some(_) => Err(fail(format!("its envelope's {name} is not a String"))),
            None => Err(fail(format!("its envelope has no {name}"))),
        };
        let cipher =
            String::from_utf8(bytes_of("c", c)?).map_err(|_| fail("its envelope's cipher name is not text"))?;
        let Some(Value::Int(version)) = v else {
            return Err(fail("its envelope's key version is not an Integer"));
        };
        Ok(Self { cipher, tag: bytes_of("tag", tag)?, iv: bytes_of("iv", iv)?, version, blob: bytes_of("blob", blob)? })
    }

    /// The encrypted argument, as Enterprise writes it.
    pub fn to_text(&self) -> String {
        let members = [
            ("c", Value::Str(Arc::from(self.cipher.as_str()))),
            ("tag", Value::Bytes(Arc::from(self.tag.as_slice()))),
            ("iv", Value::Bytes(Arc::from(self.iv.as_slice()))),
            ("v", Value::Int(self.version)),
            ("blob", Value::Bytes(Arc::from(self.blob.as_slice()))),
        ];
        STANDARD.encode(marshal::dump_struct(ENVELOPE, &members))
    }
}

/// Whether a string is already an encrypted argument (strict Base64 of a
/// `Sidekiq::Enc` envelope). Such a last argument is not encrypted again:
/// Enterprise's guard against double encryption, narrowed from "any Base64
/// text" so that a secret which merely looks like Base64 is still encrypted.
pub fn is_envelope(text: &str) -> bool {
    let head = marshal::dump_struct(ENVELOPE, &[]);
    let head = &head[..head.len() - 1]; // without the member count
    text.len().is_multiple_of(4) && STANDARD.decode(text).is_ok_and(|b| b.starts_with(head))
}

/// The bag of a fetched job whose payload says `encrypt`: its last argument,
/// opened with `keyring`.
pub fn open_last(keyring: Option<&Keyring>, args_json: &str) -> Result<Value> {
    let args: Vec<&RawValue> =
        serde_json::from_str(args_json).map_err(|_| fail("the job's args are not a JSON array"))?;
    let last = args.last().ok_or_else(|| fail("the job has no arguments"))?;
    // Base64 has nothing JSON escapes, so the text is borrowed from the payload.
    let text: std::borrow::Cow<'_, str> = serde_json::from_str::<&str>(last.get())
        .map(Into::into)
        .or_else(|_| serde_json::from_str::<String>(last.get()).map(Into::into))
        .map_err(|_| fail("it is not a string"))?;
    let keyring = keyring.ok_or_else(|| {
        fail("the job is encrypted and this process has no encryption keys (Kiq(encryption_keys=...))")
    })?;
    keyring.open(&text)
}

/// How a new job's last argument is encrypted: sealed afresh at every push,
/// or already an encrypted argument (left as it is).
#[derive(Clone)]
pub struct Seal {
    keyring: Arc<Keyring>,
    bag: Option<Arc<Value>>,
}

impl fmt::Debug for Seal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the bag: it is the secret.
        f.debug_struct("Seal").field("version", &self.keyring.active).field("sealed", &self.bag.is_none()).finish()
    }
}

impl Seal {
    /// Splits a job's `count` arguments for encryption: `head` is the JSON
    /// array of all but the last, `last` the bag. Returns the job's `args`
    /// until it is sealed (the head, or every argument when the bag is
    /// already encrypted) and the seal. Enterprise's rules: at least 2
    /// arguments, and a last argument already encrypted stays as it is.
    pub fn split(keyring: Arc<Keyring>, count: usize, head: String, last: Value) -> Result<(String, Self)> {
        if count < 2 {
            return Err(KiqError::codec(format!(
                "an encrypted job needs at least 2 arguments, not {count}: only the last one is encrypted \
                 (Sidekiq Enterprise's rule; pass None first to keep nothing in clear)"
            )));
        }
        if let Value::Str(s) = &last
            && is_envelope(s)
        {
            return Ok((append(&head, &json_string(s)), Self { keyring, bag: None }));
        }
        Ok((head, Self { keyring, bag: Some(Arc::new(last)) }))
    }

    /// The `args` of one push: `args` (the head) with the bag sealed under a fresh IV.
    pub fn args(&self, args: &str) -> Result<String> {
        match &self.bag {
            Some(bag) => Ok(append(args, &json_string(&self.keyring.seal(bag)?))),
            None => Ok(args.to_owned()),
        }
    }
}

/// A JSON array (`[...]`, not empty) with one more item.
fn append(array: &str, item: &str) -> String {
    let body = array.trim_end().strip_suffix(']').unwrap_or(array);
    format!("{body},{item}]")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ciphertext Sidekiq Enterprise 1.5.1 wrote for `{"ssn" => "123-45-6789"}`,
    /// published in github:sidekiq/sidekiq issue 3368 (its key is not public).
    const ISSUE_3368: &str = include_str!("../../tests/fixtures/sidekiq_ent_issue_3368.txt");

    fn ring(active: u32) -> Keyring {
        Keyring::new(active, [(1, vec![1; 32]), (2, vec![2; 32])]).unwrap()
    }

    fn bag() -> Value {
        Value::Hash(vec![(Value::Str(Arc::from("ssn")), Value::Str(Arc::from("123-45-6789")))].into())
    }

    #[test]
    fn reads_enterprises_published_ciphertext() {
        let env = Envelope::parse(ISSUE_3368.trim()).unwrap();
        assert_eq!(env.cipher, "aes-256-gcm");
        assert_eq!((env.tag.len(), env.iv.len(), env.version, env.blob.len()), (16, 12, 1, 33));
        // The blob is exactly as long as Marshal.dump of the bag shown in the issue: the plaintext is Marshal.
        assert_eq!(marshal::dump(&bag()).len(), env.blob.len());
        assert_eq!(env.to_text(), ISSUE_3368.trim(), "kiq writes the envelope byte for byte as Enterprise did");
        assert!(is_envelope(ISSUE_3368.trim()));
        let e = ring(1).open(ISSUE_3368.trim()).unwrap_err().to_string();
        assert!(e.contains("GCM tag does not match"), "{e}");
    }

    #[test]
    fn seals_and_opens_across_versions() {
        let old = ring(1);
        let text = old.seal(&bag()).unwrap();
        assert!(is_envelope(&text));
        assert_ne!(text, old.seal(&bag()).unwrap(), "a fresh IV per seal");
        let new = ring(2);
        assert_eq!(new.open(&text).unwrap(), bag(), "rotation: version 1 still opens");
        assert_eq!(Envelope::parse(&new.seal(&bag()).unwrap()).unwrap().version, 2);
        let only2 = Keyring::new(2, [(2, vec![2; 32])]).unwrap();
        let e = only2.open(&text).unwrap_err().to_string();
        assert!(e.contains("no key for version 1") && e.contains("[2]"), "{e}");
    }

    #[test]
    fn damage_is_refused_without_quoting_the_secret() {
        let ring = ring(1);
        let text = ring.seal(&bag()).unwrap();
        let mut env = Envelope::parse(&text).unwrap();
        env.tag[0] ^= 1;
        let tampered = ring.open(&env.to_text()).unwrap_err();
        assert!(matches!(tampered, KiqError::Decryption(_)));
        assert!(tampered.to_string().contains("tag does not match"));
        assert!(ring.open(&text[..text.len() - 4]).unwrap_err().to_string().contains("not a Sidekiq::Enc"));
        assert!(ring.open(&text[..text.len() - 1]).unwrap_err().to_string().contains("Base64"));
        let mut env = Envelope::parse(&text).unwrap();
        env.cipher = "aes-256-cbc".into();
        assert!(ring.open(&env.to_text()).unwrap_err().to_string().contains("aes-256-cbc"));
        // A sealed Object (Marshal.dump(Object.new)) is refused after the tag checks, by type.
        let cipher = ring.cipher(1).unwrap();
        let mut blob = b"\x04\x08[\x07I\"\x0b123-45\x06:\x06ETo:\x0bObject\x00".to_vec();
        let iv = [7u8; 12];
        let tag =
            cipher.encrypt_inout_detached(&Nonce::<Aes256Gcm>::from(iv), b"", blob.as_mut_slice().into()).unwrap();
        let env = Envelope { cipher: CIPHER.into(), tag: tag.to_vec(), iv: iv.to_vec(), version: 1, blob };
        let e = ring.open(&env.to_text()).unwrap_err().to_string();
        assert!(e.contains("(Object)") && !e.contains("123-45"), "{e}");
        for e in [&e, &tampered.to_string()] {
            assert!(!e.contains("123-45-6789"));
        }
    }

    #[test]
    fn keys_are_checked_and_never_shown() {
        assert!(Keyring::new(1, [(1, vec![0; 31])]).unwrap_err().to_string().contains("exactly 32"));
        assert!(Keyring::new(3, [(1, vec![0; 32])]).unwrap_err().to_string().contains("version 3"));
        let debug = format!("{:?}", Keyring::new(1, [(1, vec![0xab; 32])]).unwrap());
        assert_eq!(debug, "Keyring { active: 1, versions: [1], .. }");
        struct Source;
        impl KeySource for Source {
            fn key(&self, version: u32) -> std::result::Result<Option<Vec<u8>>, String> {
                match version {
                    1 | 2 => Ok(Some(vec![version as u8; 32])),
                    3 => Err("vault is down".into()),
                    _ => Ok(None),
                }
            }
        }
        let lazy = Keyring::with_source(2, Box::new(Source)).unwrap();
        assert_eq!(lazy.versions(), vec![2]);
        assert_eq!(lazy.open(&ring(1).seal(&bag()).unwrap()).unwrap(), bag());
        assert_eq!(lazy.versions(), vec![1, 2]);
        assert!(Keyring::with_source(3, Box::new(Source)).unwrap_err().to_string().contains("vault is down"));
        assert!(Keyring::with_source(4, Box::new(Source)).is_err());
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(500))]

        /// Any text, and any envelope around any blob, is refused cleanly (never a panic).
        #[test]
        fn any_input_is_refused_without_panicking(
            text in ".{0,300}",
            blob in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            version in -3i64..5,
        ) {
            let ring = ring(1);
            let _ = ring.open(&text);
            let _ = ring.open(&STANDARD.encode(&blob));
            let env = Envelope { cipher: CIPHER.into(), tag: vec![0; 16], iv: vec![0; 12], version, blob };
            proptest::prop_assert!(ring.open(&env.to_text()).is_err());
        }
    }

    #[test]
    fn splits_args_as_enterprise_does() {
        let ring = Arc::new(ring(1));
        let e = Seal::split(ring.clone(), 1, "[]".into(), bag()).unwrap_err().to_string();
        assert!(e.contains("at least 2 arguments"), "{e}");
        let (head, seal) = Seal::split(ring.clone(), 2, "[1]".into(), bag()).unwrap();
        assert_eq!(head, "[1]");
        let args: Vec<serde_json::Value> = serde_json::from_str(&seal.args(&head).unwrap()).unwrap();
        assert_eq!(args[0], 1);
        let sealed = args[1].as_str().unwrap();
        assert_eq!(open_last(Some(&ring), &seal.args(&head).unwrap()).unwrap(), bag());
        assert!(!format!("{seal:?}").contains("ssn"));
        // Already encrypted: left alone. Merely Base64-looking: encrypted.
        let (again, seal) = Seal::split(ring.clone(), 2, "[1]".into(), Value::Str(Arc::from(sealed))).unwrap();
        assert_eq!(seal.args(&again).unwrap(), format!("[1,{}]", json_string(sealed)));
        let (head, seal) = Seal::split(ring.clone(), 2, "[1]".into(), Value::Str(Arc::from("UGFzc3cwcmQ="))).unwrap();
        assert!(!seal.args(&head).unwrap().contains("UGFzc3cwcmQ="));
        assert!(open_last(None, &seal.args(&head).unwrap()).unwrap_err().to_string().contains("no encryption keys"));
        assert!(open_last(Some(&ring), "[1,2]").unwrap_err().to_string().contains("not a string"));
    }
}
