//! Command updates waiting for a session to carry them. Commands outlive
//! sessions (a reconnect does not stop a deploy), so their updates queue
//! here and whichever session is up sends them.

use std::collections::VecDeque;
use std::sync::Mutex;

use drover_proto::v1::CommandUpdate;
use drover_proto::v1::command_update::Phase;
use tokio::sync::Notify;

/// Updates kept while no session is up; past this, progress updates are
/// dropped first, then the oldest.
const MAX_QUEUED: usize = 1000;

#[derive(Debug, Default)]
pub struct Outbox {
    queue: Mutex<VecDeque<CommandUpdate>>,
    notify: Notify,
}

fn is_final(u: &CommandUpdate) -> bool {
    matches!(
        u.phase(),
        Phase::Succeeded | Phase::Failed | Phase::TimedOut
    )
}

impl Outbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<CommandUpdate>> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn push(&self, update: CommandUpdate) {
        {
            let mut q = self.lock();
            if q.len() >= MAX_QUEUED {
                match q.iter().position(|u| !is_final(u)) {
                    Some(i) => {
                        q.remove(i);
                    }
                    None => {
                        q.pop_front();
                    }
                }
            }
            q.push_back(update);
        }
        self.notify.notify_one();
    }

    pub fn pop(&self) -> Option<CommandUpdate> {
        self.lock().pop_front()
    }

    /// Puts back an update that could not be sent, first in line.
    pub fn unpop(&self, update: CommandUpdate) {
        self.lock().push_front(update);
    }

    /// Drops what only mattered to a session that is gone (acceptances and
    /// progress); results stay, for the next session.
    pub fn drop_transient(&self) {
        self.lock().retain(is_final);
    }

    /// Resolves when something was pushed since the last call.
    pub async fn notified(&self) {
        self.notify.notified().await;
    }
}
