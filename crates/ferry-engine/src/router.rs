//! Routing between the channels of one engine (`channel` destinations, scripts'
//! `router.route`).
//!
//! A [`Router`] is created before the channels are built, so the connectors of any channel can
//! hold one (channels may route to each other, even in a cycle), and it is filled with every
//! channel's [`ChannelIngest`] when [`Engine::start_with_router`](crate::Engine::start_with_router)
//! has built them, before any destination worker runs. Routing a message is receiving it on the
//! target channel: it is stored durably there before [`Router::route`] returns its ACK.
//!
//! Channels deployed later join the router and undeployed ones leave it; a paused or stopped
//! channel stays in it but refuses routed messages ([`RouteError::NotAccepting`]), so a
//! `channel` destination keeps them queued on the sending side until the target starts.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, Weak};

use crate::ingest::{ChannelIngest, IngestReply};

/// The channels by name, once the engine started (`None` before).
type Table = RwLock<Option<HashMap<String, ChannelIngest>>>;

/// A cloneable handle that hands messages to the engine's channels by name.
#[derive(Clone, Default)]
pub struct Router {
    channels: Arc<Table>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let started = self.channels.read().map(|t| t.is_some()).unwrap_or(false);
        f.debug_struct("Router")
            .field("started", &started)
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
    /// The channel is deployed but paused or stopped: it accepts nothing now.
    #[error("channel `{0}` is not accepting messages (paused or stopped)")]
    NotAccepting(String),
}

/// A router handle that does not keep the channels alive: what a channel holds to route its
/// scripts' messages (a strong handle there would be a reference cycle).
#[derive(Clone, Default)]
pub(crate) struct WeakRouter(Weak<Table>);

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
    /// A paused or stopped target refuses the message ([`RouteError::NotAccepting`]; should
    /// it pause in between, the reply is its `AE`); nothing is stored then.
    pub async fn route(&self, channel: &str, message: &[u8]) -> Result<IngestReply, RouteError> {
        let ingest = self.target(channel)?;
        if !ingest.accepting() {
            return Err(RouteError::NotAccepting(channel.to_owned()));
        }
        Ok(ingest.receive(message).await)
    }

    fn target(&self, channel: &str) -> Result<ChannelIngest, RouteError> {
        let table = self.channels.read().map_err(|_| RouteError::NotStarted)?;
        let channels = table.as_ref().ok_or(RouteError::NotStarted)?;
        channels
            .get(channel)
            .cloned()
            .ok_or_else(|| RouteError::UnknownChannel(channel.to_owned()))
    }

    /// Fill the router; false when it was filled already (by another engine).
    pub(crate) fn fill(&self, channels: Vec<ChannelIngest>) -> bool {
        let Ok(mut table) = self.channels.write() else {
            return false;
        };
        if table.is_some() {
            return false;
        }
        *table = Some(
            channels
                .into_iter()
                .map(|c| (c.channel().to_owned(), c))
                .collect(),
        );
        true
    }

    /// Add a (re)deployed channel, replacing the one of the same name.
    pub(crate) fn insert(&self, ingest: ChannelIngest) {
        if let Ok(mut table) = self.channels.write() {
            table
                .get_or_insert_with(HashMap::new)
                .insert(ingest.channel().to_owned(), ingest);
        }
    }

    /// Remove an undeployed channel.
    pub(crate) fn remove(&self, channel: &str) {
        if let Ok(mut table) = self.channels.write()
            && let Some(channels) = table.as_mut()
        {
            channels.remove(channel);
        }
    }
}
