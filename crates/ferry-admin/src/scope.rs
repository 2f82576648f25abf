//! Per-channel scope (PRODUCT.md §8, "optional per-channel scope"): a user or an API token
//! may be limited to a list of channels; without a list it reaches every channel.
//!
//! The scope narrows what the role allows, never widens it. It is enforced in one place, the
//! request guard (`api.rs`), from the route's [`ScopeRule`](crate::policy::ScopeRule) in the
//! policy table:
//!
//! - a route whose path names a channel (`{channel}`) answers a scoped caller `404 not found`
//!   for a channel outside its scope, byte for byte what an unknown channel gets, so a scope
//!   does not reveal which other channels exist (a `403` would confirm that the channel is
//!   real);
//! - list routes show only what is in scope (channels; users and tokens whose own scope lies
//!   within the caller's);
//! - routes with node-wide data that cannot be cut by channel (the audit log) are refused to
//!   scoped callers with `403`.
//!
//! A scoped caller cannot create a user or token reaching further than itself: the requested
//! scope must lie within the caller's ([`ChannelScope::covers`]).

use std::collections::BTreeSet;

use serde_json::Value;

/// The most channels one scope may name.
pub const MAX_CHANNELS: usize = 1024;

/// Which channels a caller reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChannelScope {
    /// Every channel (no list).
    All,
    /// Only these channels. Empty only when a stored list was empty: then it reaches none.
    Only(BTreeSet<String>),
}

/// Why a requested scope was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    /// The list is empty (omit it for every channel).
    #[error("`channels` names no channel; omit it to reach every channel")]
    Empty,
    /// A name is not a possible channel name.
    #[error(
        "`{0}` is not a channel name (letters, digits, `-`, `_` and `.`, at most 255 characters)"
    )]
    BadName(String),
    /// Too many names.
    #[error("a scope names at most {MAX_CHANNELS} channels")]
    TooMany,
}

/// Whether `name` could be a channel's name (the rule `ferry check` applies to channels).
pub fn valid_channel_name(name: &str) -> bool {
    (1..=255).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl ChannelScope {
    /// A requested scope (API body or CLI): `None` is every channel; a list must name 1 to
    /// [`MAX_CHANNELS`] valid channel names (duplicates are merged).
    pub fn requested(channels: Option<Vec<String>>) -> Result<ChannelScope, ScopeError> {
        let Some(channels) = channels else {
            return Ok(ChannelScope::All);
        };
        if channels.is_empty() {
            return Err(ScopeError::Empty);
        }
        if channels.len() > MAX_CHANNELS {
            return Err(ScopeError::TooMany);
        }
        let mut set = BTreeSet::new();
        for c in channels {
            if !valid_channel_name(&c) {
                // Only a valid-looking prefix of the name is echoed.
                let shown: String = c.chars().take(64).filter(|c| !c.is_control()).collect();
                return Err(ScopeError::BadName(shown));
            }
            set.insert(c);
        }
        Ok(ChannelScope::Only(set))
    }

    /// A comma-separated list (`--channels a,b`); spaces around names are ignored.
    pub fn parse_list(text: &str) -> Result<ChannelScope, ScopeError> {
        let names = text
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .collect();
        ChannelScope::requested(Some(names))
    }

    /// The scope as the store holds it (`None`: every channel).
    pub fn from_stored(channels: Option<Vec<String>>) -> ChannelScope {
        match channels {
            None => ChannelScope::All,
            Some(list) => ChannelScope::Only(list.into_iter().collect()),
        }
    }

    /// The scope to store: `None` for every channel, else the sorted names.
    pub fn to_stored(&self) -> Option<Vec<String>> {
        match self {
            ChannelScope::All => None,
            ChannelScope::Only(set) => Some(set.iter().cloned().collect()),
        }
    }

    /// Whether it reaches every channel.
    pub fn is_all(&self) -> bool {
        matches!(self, ChannelScope::All)
    }

    /// Whether it reaches `channel`.
    pub fn allows(&self, channel: &str) -> bool {
        match self {
            ChannelScope::All => true,
            ChannelScope::Only(set) => set.contains(channel),
        }
    }

    /// Whether everything `other` reaches, this reaches too.
    pub fn covers(&self, other: &ChannelScope) -> bool {
        match (self, other) {
            (ChannelScope::All, _) => true,
            (ChannelScope::Only(_), ChannelScope::All) => false,
            (ChannelScope::Only(mine), ChannelScope::Only(theirs)) => theirs.is_subset(mine),
        }
    }

    /// As JSON: `null` for every channel, else the array of names.
    pub fn to_json(&self) -> Value {
        match self {
            ChannelScope::All => Value::Null,
            ChannelScope::Only(set) => Value::from(set.iter().cloned().collect::<Vec<_>>()),
        }
    }

    /// For people: `all` or `a,b`.
    pub fn describe(&self) -> String {
        match self {
            ChannelScope::All => "all".to_owned(),
            ChannelScope::Only(set) => set.iter().cloned().collect::<Vec<_>>().join(","),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn only(names: &[&str]) -> ChannelScope {
        ChannelScope::Only(names.iter().map(|n| (*n).to_owned()).collect())
    }

    #[test]
    fn covers_is_the_subset_relation_and_all_is_on_top() {
        let (all, a, ab, b) = (
            ChannelScope::All,
            only(&["a"]),
            only(&["a", "b"]),
            only(&["b"]),
        );
        assert!(all.covers(&all) && all.covers(&ab));
        assert!(ab.covers(&a) && ab.covers(&ab) && !a.covers(&ab));
        assert!(
            !a.covers(&b) && !a.covers(&all),
            "a scope never covers every channel"
        );
        assert!(a.allows("a") && !a.allows("b") && all.allows("anything"));
        assert!(
            !ChannelScope::from_stored(Some(Vec::new())).allows("a"),
            "an empty stored list reaches nothing"
        );
    }

    #[test]
    fn requested_scopes_are_checked_and_normalised() {
        assert_eq!(ChannelScope::requested(None), Ok(ChannelScope::All));
        assert_eq!(
            ChannelScope::requested(Some(Vec::new())),
            Err(ScopeError::Empty)
        );
        assert_eq!(ChannelScope::parse_list("b, a,,a"), Ok(only(&["a", "b"])));
        assert_eq!(ChannelScope::parse_list(" , "), Err(ScopeError::Empty));
        assert!(matches!(
            ChannelScope::parse_list("a,../b"),
            Err(ScopeError::BadName(n)) if n == "../b"
        ));
        let many = (0..=MAX_CHANNELS).map(|i| format!("c{i}")).collect();
        assert_eq!(
            ChannelScope::requested(Some(many)),
            Err(ScopeError::TooMany)
        );
        let s = only(&["b", "a"]);
        assert_eq!(s.to_stored(), Some(vec!["a".to_owned(), "b".to_owned()]));
        assert_eq!(ChannelScope::from_stored(s.to_stored()), s);
        assert_eq!(s.to_json(), serde_json::json!(["a", "b"]));
        assert_eq!(ChannelScope::All.to_json(), Value::Null);
        assert_eq!(s.describe(), "a,b");
    }
}
