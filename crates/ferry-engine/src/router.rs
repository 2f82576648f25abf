//! Routing between the channels of one engine (`channel` destinations, scripts'
//! `router.route`).
//!
//! A [`Router`] is created before the channels are built, so the connectors of any channel can
//! hold one (channels may route to each other, even in a cycle), and it is filled with every
//! channel's [`ChannelIngest`] when [`Engine::start_with_router`](crate::Engine::start_with_router)
//! has built them, before any destination worker runs. Routing a message is receiving it on the
//! target channel: it is stored durably there before [`Router::route`] returns its ACK.

use std::sync::{Arc, OnceLock, Weak};

use crate::ingest::{ChannelIngest, IngestReply};

/// A cloneable handle that hands messages to the engine's channels by name.
#[derive(Clone, Default)]
pub struct Router {
    channels: Arc<OnceLock<Vec<ChannelIngest>>>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("started", &self.channels.get().is_some())
            .finish_non_exhaustive()
    }
}

/// Why a message could not be routed. Nothing was stored in either case.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The engine this router belongs to has not started yet.
    #[error("the engine has not started yet")]
    NotStarted,
    /// No channel of that name runs in the engine.
    #[error("no channel `{0}` is deployed")]
    UnknownChannel(String),
}

/// A router handle that does not keep the channels alive: what a channel holds to route its
/// scripts' messages (a strong handle there would be a reference cycle).
#[derive(Clone, Default)]
pub(crate) struct WeakRouter(Weak<OnceLock<Vec<ChannelIngest>>>);

impl WeakRouter {
    /// The router, while its engine exists.
    pub(crate) fn upgrade(&self) -> Option<Router> {
        self.0.upgrade().map(|channels| Router { channels })
    }
}

impl Router {
    /// A handle that does not keep the channels alive.
    pub(crate) fn downgrade(&self) -> WeakRouter {
        WeakRouter(Arc::downgrade(&self.channels))
    }

    /// An empty router; [`Engine::start_with_router`](crate::Engine::start_with_router) fills it.
    pub fn new() -> Router {
        Router::default()
    }

    /// Receive `message` on `channel` as its source would ([`ChannelIngest::receive`]): stored
    /// durably (or rejected, or answered `AE` when the store failed) before the reply returns.
    pub async fn route(&self, channel: &str, message: &[u8]) -> Result<IngestReply, RouteError> {
        let channels = self.channels.get().ok_or(RouteError::NotStarted)?;
        let ingest = channels
            .iter()
            .find(|c| c.channel() == channel)
            .ok_or_else(|| RouteError::UnknownChannel(channel.to_owned()))?;
        Ok(ingest.receive(message).await)
    }

    /// Fill the router; false when it was filled already (by another engine).
    pub(crate) fn fill(&self, channels: Vec<ChannelIngest>) -> bool {
        self.channels.set(channels).is_ok()
    }
}
