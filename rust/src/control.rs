//! The run state shared by a server's background tasks.

use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    Running,
    /// No new fetches; running jobs go on (Sidekiq's TSTP).
    Quiet,
    /// Shutting down: tasks finish their current step and exit.
    Stopping,
}

/// A handle to watch or change the run state.
#[derive(Clone)]
pub struct Control {
    tx: watch::Sender<RunState>,
}

impl Default for Control {
    fn default() -> Self {
        Self { tx: watch::Sender::new(RunState::Running) }
    }
}

impl Control {
    pub fn state(&self) -> RunState {
        *self.tx.borrow()
    }

    /// Moves to `next`; `Stopping` is final.
    pub fn set(&self, next: RunState) {
        self.tx.send_if_modified(|s| {
            if *s == RunState::Stopping || *s == next {
                false
            } else {
                *s = next;
                true
            }
        });
    }

    pub fn subscribe(&self) -> watch::Receiver<RunState> {
        self.tx.subscribe()
    }

    /// Sleeps for `d`, returning early (with `false`) once stopping.
    pub async fn sleep(&self, d: std::time::Duration) -> bool {
        let mut rx = self.subscribe();
        if *rx.borrow_and_update() == RunState::Stopping {
            return false;
        }
        tokio::select! {
            () = tokio::time::sleep(d) => true,
            _ = rx.wait_for(|s| *s == RunState::Stopping) => false,
        }
    }
}
