//! Channel lifecycle: the states a deployed channel can be in and the gate in front of its
//! ingest.
//!
//! A deployed channel is `started` (its source accepts messages and its destination workers
//! deliver), `paused` (the source accepts nothing new while the destination queues keep
//! draining) or `stopped` (nothing is accepted and the workers are stopped; queued messages
//! stay `QUEUED` in the store and are delivered after the next start). Undeployed channels are
//! not in the engine at all; their stored messages stay in the store.
//!
//! The engine moves the destination side ([`Engine::pause_channel`](crate::Engine::pause_channel),
//! [`stop_channel`](crate::Engine::stop_channel), [`start_channel`](crate::Engine::start_channel),
//! [`deploy_channel`](crate::Engine::deploy_channel),
//! [`undeploy_channel`](crate::Engine::undeploy_channel)); listeners and pollers belong to
//! the connectors, which stop their source *before* they pause or stop the engine's channel and
//! start it *after* starting it.
//!
//! The [`Gate`] is what makes a transition safe for acknowledged messages: every receive
//! enters it for as long as it runs (processing, the durable commit, building the answer), and
//! closing it refuses new receives with a negative acknowledgement (`AE`, nothing stored, so
//! the sender resends) and then waits until the receives already inside have committed and
//! answered. A message is therefore either stored and answered positively before the channel
//! pauses or stops, or refused and never acknowledged.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

/// The lifecycle state of a deployed channel (Mirth Connect's STARTED, PAUSED, STOPPED).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ChannelState {
    /// The source accepts messages and the destination workers deliver.
    Started = 0,
    /// The source accepts no new message; the destination workers keep draining the queues.
    Paused = 1,
    /// Nothing is accepted and nothing is delivered; queued messages wait in the store.
    Stopped = 2,
}

impl ChannelState {
    /// Every state, in declaration order.
    pub const ALL: [ChannelState; 3] = [
        ChannelState::Started,
        ChannelState::Paused,
        ChannelState::Stopped,
    ];

    /// The name used in the API and the metrics: `started`, `paused`, `stopped`.
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelState::Started => "started",
            ChannelState::Paused => "paused",
            ChannelState::Stopped => "stopped",
        }
    }

    /// Whether the destination workers run in this state.
    pub fn delivers(self) -> bool {
        matches!(self, ChannelState::Started | ChannelState::Paused)
    }

    pub(crate) fn from_u8(value: u8) -> ChannelState {
        match value {
            0 => ChannelState::Started,
            1 => ChannelState::Paused,
            _ => ChannelState::Stopped,
        }
    }
}

impl std::fmt::Display for ChannelState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a lifecycle operation did to a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    /// The state before (`None`: the channel was not deployed).
    pub from: Option<ChannelState>,
    /// The state after (`None`: the channel is no longer deployed).
    pub to: Option<ChannelState>,
    /// False when the receives in flight had not all finished when the drain time ran out;
    /// they still finish (and commit) on their own, the transition did not wait for them.
    pub drained: bool,
}

impl Transition {
    /// Whether the state changed.
    pub fn changed(&self) -> bool {
        self.from != self.to
    }
}

/// The gate every receive of a channel passes: open while the channel is started.
#[derive(Debug)]
pub(crate) struct Gate {
    open: AtomicBool,
    inside: AtomicUsize,
    left: Notify,
}

/// A receive inside the gate; leaving (drop) wakes a closer waiting for the last one.
pub(crate) struct Inside<'a>(&'a Gate);

impl Drop for Inside<'_> {
    fn drop(&mut self) {
        if self.0.inside.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.left.notify_waiters();
        }
    }
}

impl Gate {
    /// A closed gate.
    pub(crate) fn closed() -> Gate {
        Gate {
            open: AtomicBool::new(false),
            inside: AtomicUsize::new(0),
            left: Notify::new(),
        }
    }

    /// Enter, when the gate is open.
    pub(crate) fn enter(&self) -> Option<Inside<'_>> {
        // Count first, then look: a closer that set `open = false` before this load sees the
        // count and waits; one that set it after let this receive in and waits for it too.
        self.inside.fetch_add(1, Ordering::SeqCst);
        let inside = Inside(self);
        self.open.load(Ordering::SeqCst).then_some(inside)
    }

    /// Whether receives are let in.
    pub(crate) fn is_open(&self) -> bool {
        self.open.load(Ordering::SeqCst)
    }

    pub(crate) fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
    }

    /// Refuse new receives, then wait up to `drain` for the ones inside to finish. True when
    /// none is left inside.
    pub(crate) async fn close(&self, drain: Duration) -> bool {
        self.open.store(false, Ordering::SeqCst);
        let wait = async {
            loop {
                let left = self.left.notified();
                tokio::pin!(left);
                left.as_mut().enable();
                if self.inside.load(Ordering::SeqCst) == 0 {
                    return;
                }
                left.await;
            }
        };
        tokio::time::timeout(drain, wait).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn states_round_trip() {
        for s in ChannelState::ALL {
            assert_eq!(ChannelState::from_u8(s as u8), s);
        }
        assert!(ChannelState::Paused.delivers());
        assert!(!ChannelState::Stopped.delivers());
    }

    #[tokio::test]
    async fn closing_waits_for_those_inside_and_refuses_the_rest() {
        let gate = Arc::new(Gate::closed());
        assert!(gate.enter().is_none(), "a new gate is closed");
        gate.open();
        let (entered_tx, entered_rx) = tokio::sync::oneshot::channel();
        let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
        let inside = tokio::spawn({
            let gate = gate.clone();
            async move {
                let guard = gate.enter();
                let _ = entered_tx.send(guard.is_some());
                let _ = release_rx.await;
                drop(guard);
            }
        });
        assert_eq!(entered_rx.await, Ok(true));
        // Still inside after the drain time: the close reports it and returns.
        assert!(!gate.close(Duration::from_millis(20)).await);
        assert!(gate.enter().is_none(), "closed to newcomers meanwhile");
        let closing = tokio::spawn({
            let gate = gate.clone();
            async move { gate.close(Duration::from_secs(30)).await }
        });
        let _ = release_tx.send(());
        inside.await.expect("inside");
        assert!(
            closing.await.expect("close"),
            "drained once the last one left"
        );
        assert!(
            gate.close(Duration::ZERO).await,
            "nobody inside: drained at once"
        );
    }
}
