//! A worker's options: Python's `kiq.WorkerOptions`, field for field.
//!
//! Declared once in Python (a dataclass users set through class keywords or
//! `@worker(...)`), converted by attribute into this struct, checked here
//! (the one home of every option rule, for jobs too), and registered with the
//! server at start, so the core applies a worker's `retry`, `dead`,
//! `backtrace` and `retry_queue` wherever its job fails: a thread, a lost
//! decode, or a swarm killing a child for its `hard_timeout`.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use crate::error::{KiqError, Result};
use crate::job::{Backtrace, Retry, UniqueUntil};
use crate::throttle;

/// `sidekiq_options` of one worker.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub queue: String,
    pub retry: Retry,
    /// False: a job out of retries is dropped, not kept in the dead set.
    pub dead: bool,
    pub backtrace: Backtrace,
    pub retry_queue: Option<String>,
    pub tags: Vec<String>,
    /// The wire `class` name, when not the Python default.
    pub name: Option<String>,
    pub unique_for: Option<f64>,
    pub unique_until: UniqueUntil,
    pub expires_in: Option<f64>,
    pub timeout: Option<f64>,
    pub encrypt: bool,
    pub hard_timeout: Option<f64>,
    /// The throttle and rate combined, as the core applies them.
    pub throttle: Option<throttle::Spec>,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        Self {
            queue: crate::job::DEFAULT_QUEUE.to_owned(),
            retry: Retry::Default,
            dead: true,
            backtrace: Backtrace::Off,
            retry_queue: None,
            tags: Vec::new(),
            name: None,
            unique_for: None,
            unique_until: UniqueUntil::Success,
            expires_in: None,
            timeout: None,
            encrypt: false,
            hard_timeout: None,
            throttle: None,
        }
    }
}

impl WorkerOptions {
    /// Every rule the options must follow, with an error naming the first broken.
    pub fn check(&self) -> Result<()> {
        non_empty("queue", Some(&self.queue))?;
        non_empty("retry_queue", self.retry_queue.as_deref())?;
        non_empty("name", self.name.as_deref())?;
        for (name, value) in [
            ("unique_for", self.unique_for),
            ("expires_in", self.expires_in),
            ("timeout", self.timeout),
            ("hard_timeout", self.hard_timeout),
        ] {
            positive_seconds(name, value)?;
        }
        if self.encrypt && self.unique_for.is_some() {
            return Err(KiqError::config(
                "unique_for and encrypt cannot be combined: each push encrypts the last argument under a fresh IV, \
                 so two pushes of the same arguments never look alike (as in Sidekiq Enterprise)",
            ));
        }
        Ok(())
    }
}

/// A job's own options (`kiq.Job`): its class name, then the options it shares with workers.
pub fn check_job(class_name: &str, options: &WorkerOptions) -> Result<()> {
    if class_name.is_empty() {
        return Err(KiqError::config("a job's class_name must be a non-empty str, not ''"));
    }
    options.check()
}

/// `unique_until`: "success" or "start".
pub fn unique_until(value: &str) -> Result<UniqueUntil> {
    UniqueUntil::parse(value)
        .ok_or_else(|| KiqError::config(format!("unique_until must be \"success\" or \"start\", not {value:?}")))
}

/// A duration option: absent, or a positive (finite) number of seconds.
pub fn positive_seconds(name: &str, value: Option<f64>) -> Result<Option<f64>> {
    match value {
        Some(secs) if !(secs.is_finite() && secs > 0.0) => {
            Err(KiqError::config(format!("{name} must be a positive number of seconds, not {secs}")))
        }
        _ => Ok(value),
    }
}

fn non_empty(name: &str, value: Option<&str>) -> Result<()> {
    match value {
        Some("") => Err(KiqError::config(format!("{name} must be a non-empty str, not ''"))),
        _ => Ok(()),
    }
}

/// The workers a server runs, by wire class name, registered at start.
#[derive(Debug, Clone, Default)]
pub struct Workers(Arc<HashMap<String, WorkerOptions>>);

static UNKNOWN: LazyLock<WorkerOptions> = LazyLock::new(WorkerOptions::default);

impl Workers {
    pub fn new(by_class: HashMap<String, WorkerOptions>) -> Self {
        Self(Arc::new(by_class))
    }

    /// The options of `class`'s worker; the defaults for a class no worker
    /// registered (a job with a missing `retry` still retries: dropping it
    /// would lose it silently).
    pub fn of(&self, class: &str) -> &WorkerOptions {
        self.0.get(class).unwrap_or(&UNKNOWN)
    }

    /// Throttle specs by class, for the workers that have one.
    pub fn throttles(&self) -> HashMap<String, throttle::Spec> {
        self.0.iter().filter_map(|(class, w)| Some((class.clone(), w.throttle.clone()?))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_pass_and_each_rule_names_its_option() {
        assert!(WorkerOptions::default().check().is_ok());
        let bad = |w: WorkerOptions| w.check().unwrap_err().to_string();
        assert!(bad(WorkerOptions { queue: String::new(), ..Default::default() }).contains("queue must be"));
        assert!(bad(WorkerOptions { retry_queue: Some(String::new()), ..Default::default() }).contains("retry_queue"));
        assert!(
            bad(WorkerOptions { hard_timeout: Some(0.0), ..Default::default() })
                .contains("hard_timeout must be a positive number of seconds, not 0")
        );
        assert!(bad(WorkerOptions { timeout: Some(f64::NAN), ..Default::default() }).contains("timeout"));
        assert!(bad(WorkerOptions { expires_in: Some(f64::INFINITY), ..Default::default() }).contains("expires_in"));
        let both = WorkerOptions { unique_for: Some(5.0), encrypt: true, ..Default::default() };
        assert!(bad(both).contains("fresh IV"));
        assert!(check_job("", &WorkerOptions::default()).is_err());
        assert!(unique_until("never").unwrap_err().to_string().contains("unique_until"));
    }

    #[test]
    fn unknown_classes_get_the_defaults() {
        let mut by_class = HashMap::new();
        by_class.insert("Hard".to_owned(), WorkerOptions { retry: Retry::Never, ..Default::default() });
        let workers = Workers::new(by_class);
        assert_eq!(workers.of("Hard").retry, Retry::Never);
        assert_eq!(workers.of("Other").retry, Retry::Default);
        assert!(workers.throttles().is_empty());
    }
}
