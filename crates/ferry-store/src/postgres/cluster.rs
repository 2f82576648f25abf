//! The SQL of [`crate::cluster`]: node registry and leases.
//!
//! Every time comparison uses the database's clock (`now()`, the start of the statement's
//! transaction), so the nodes' clocks do not matter. Times are returned as milliseconds since
//! the Unix epoch, or as ages in milliseconds computed by the database.

use postgres::Client;

use crate::StoreError;
use crate::cluster::{ChannelStateRow, LeaseRow, NodeRow};

/// Create the cluster tables when they do not exist yet (safe to run on every start, by every
/// node at once: `CREATE … IF NOT EXISTS` under an advisory lock).
pub(crate) fn create(client: &mut Client) -> Result<(), StoreError> {
    let mut tx = client.transaction().map_err(StoreError::postgres(
        "starting the cluster schema transaction",
    ))?;
    tx.batch_execute(
        "SET LOCAL client_min_messages = warning;
         SELECT pg_advisory_xact_lock(7262617374657200);
         CREATE TABLE IF NOT EXISTS cluster_nodes (
             node          TEXT PRIMARY KEY,
             address       TEXT NOT NULL,
             started_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
             heartbeat_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
             lease_ttl_ms  BIGINT NOT NULL,
             stopped_at    TIMESTAMPTZ
         );
         CREATE TABLE IF NOT EXISTS cluster_leases (
             resource      TEXT PRIMARY KEY,
             owner         TEXT NOT NULL,
             epoch         BIGINT NOT NULL,
             acquired_at   TIMESTAMPTZ NOT NULL,
             expires_at    TIMESTAMPTZ NOT NULL
         );
         CREATE TABLE IF NOT EXISTS cluster_channel_state (
             channel       TEXT PRIMARY KEY,
             state         TEXT NOT NULL,
             changed_by    TEXT NOT NULL,
             changed_at    TIMESTAMPTZ NOT NULL DEFAULT now()
         );",
    )
    .map_err(StoreError::postgres("creating the cluster tables"))?;
    tx.commit()
        .map_err(StoreError::postgres("committing the cluster tables"))
}

/// Register `node` (again) and record a heartbeat.
pub(crate) fn heartbeat(
    client: &mut Client,
    node: &str,
    address: &str,
    ttl_ms: i64,
) -> Result<(), StoreError> {
    client
        .execute(
            "INSERT INTO cluster_nodes (node, address, lease_ttl_ms) VALUES ($1, $2, $3)
             ON CONFLICT (node) DO UPDATE
                SET heartbeat_at = now(), address = EXCLUDED.address,
                    lease_ttl_ms = EXCLUDED.lease_ttl_ms, stopped_at = NULL",
            &[&node, &address, &ttl_ms],
        )
        .map_err(StoreError::postgres("recording the node heartbeat"))?;
    Ok(())
}

/// How long ago `node` was last heard from, when a row for it exists that did not leave
/// cleanly and is younger than its lease time (then another process may be using the id).
pub(crate) fn live_age_ms(client: &mut Client, node: &str) -> Result<Option<i64>, StoreError> {
    let sql = format!(
        "SELECT {} FROM cluster_nodes
         WHERE node = $1 AND stopped_at IS NULL
           AND heartbeat_at > now() - lease_ttl_ms * interval '1 millisecond'",
        ms("now() - heartbeat_at")
    );
    let row = client
        .query_opt(&sql, &[&node])
        .map_err(StoreError::postgres("checking the node id"))?;
    Ok(row.map(|r| r.get(0)))
}

/// Mark `node` as having left cleanly.
pub(crate) fn leave(client: &mut Client, node: &str) -> Result<(), StoreError> {
    client
        .execute(
            "UPDATE cluster_nodes SET stopped_at = now() WHERE node = $1",
            &[&node],
        )
        .map_err(StoreError::postgres("marking the node stopped"))?;
    Ok(())
}

/// Take or renew `resource` for `node` until `now() + ttl_ms`, in one statement: it succeeds
/// when nobody holds the lease, `node` holds it, or the holder let it expire. The epoch goes
/// up by one whenever the owner changes. `Some(epoch)` when `node` holds it now.
pub(crate) fn acquire(
    client: &mut Client,
    resource: &str,
    node: &str,
    ttl_ms: i64,
) -> Result<Option<i64>, StoreError> {
    let row = client
        .query_opt(
            "INSERT INTO cluster_leases AS l (resource, owner, epoch, acquired_at, expires_at)
             VALUES ($1, $2, 1, now(), now() + $3::BIGINT * interval '1 millisecond')
             ON CONFLICT (resource) DO UPDATE
                SET epoch = CASE WHEN l.owner = EXCLUDED.owner THEN l.epoch ELSE l.epoch + 1 END,
                    acquired_at = CASE WHEN l.owner = EXCLUDED.owner THEN l.acquired_at
                                       ELSE now() END,
                    owner = EXCLUDED.owner,
                    expires_at = EXCLUDED.expires_at
                WHERE l.owner = EXCLUDED.owner OR l.expires_at <= now()
             RETURNING epoch",
            &[&resource, &node, &ttl_ms],
        )
        .map_err(StoreError::postgres("acquiring a lease"))?;
    Ok(row.map(|r| r.get(0)))
}

/// Give up `resource` if `node` holds it: it expires now, so another node may take it at
/// once. True when it was held.
pub(crate) fn release(client: &mut Client, resource: &str, node: &str) -> Result<bool, StoreError> {
    let n = client
        .execute(
            "UPDATE cluster_leases SET expires_at = now()
             WHERE resource = $1 AND owner = $2 AND expires_at > now()",
            &[&resource, &node],
        )
        .map_err(StoreError::postgres("releasing a lease"))?;
    Ok(n > 0)
}

/// Give up every lease `node` holds; how many it held.
pub(crate) fn release_all(client: &mut Client, node: &str) -> Result<u64, StoreError> {
    client
        .execute(
            "UPDATE cluster_leases SET expires_at = now()
             WHERE owner = $1 AND expires_at > now()",
            &[&node],
        )
        .map_err(StoreError::postgres("releasing the node's leases"))
}

const MS: &str = "(EXTRACT(EPOCH FROM {}) * 1000)::BIGINT";

fn ms(expr: &str) -> String {
    MS.replace("{}", expr)
}

/// Every node, by name.
pub(crate) fn nodes(client: &mut Client) -> Result<Vec<NodeRow>, StoreError> {
    let sql = format!(
        "SELECT node, address, {}, {}, {}, lease_ttl_ms, stopped_at IS NOT NULL
         FROM cluster_nodes ORDER BY node",
        ms("started_at"),
        ms("heartbeat_at"),
        ms("now() - heartbeat_at"),
    );
    let rows = client
        .query(&sql, &[])
        .map_err(StoreError::postgres("listing the cluster nodes"))?;
    Ok(rows
        .iter()
        .map(|r| NodeRow {
            node: r.get(0),
            address: r.get(1),
            started_ms: r.get(2),
            heartbeat_ms: r.get(3),
            heartbeat_age_ms: r.get(4),
            lease_ttl_ms: r.get(5),
            stopped: r.get(6),
        })
        .collect())
}

/// Every lease, by resource.
pub(crate) fn leases(client: &mut Client) -> Result<Vec<LeaseRow>, StoreError> {
    let sql = format!(
        "SELECT resource, owner, epoch, {}, {}, {}
         FROM cluster_leases ORDER BY resource",
        ms("acquired_at"),
        ms("expires_at"),
        ms("expires_at - now()"),
    );
    let rows = client
        .query(&sql, &[])
        .map_err(StoreError::postgres("listing the cluster leases"))?;
    Ok(rows
        .iter()
        .map(|r| LeaseRow {
            resource: r.get(0),
            owner: r.get(1),
            epoch: r.get(2),
            acquired_ms: r.get(3),
            expires_ms: r.get(4),
            expires_in_ms: r.get(5),
        })
        .collect())
}

/// Record the lifecycle state an operator gave `channel`.
pub(crate) fn set_channel_state(
    client: &mut Client,
    channel: &str,
    state: &str,
    node: &str,
) -> Result<(), StoreError> {
    client
        .execute(
            "INSERT INTO cluster_channel_state (channel, state, changed_by) VALUES ($1, $2, $3)
             ON CONFLICT (channel) DO UPDATE
                SET state = EXCLUDED.state, changed_by = EXCLUDED.changed_by, changed_at = now()",
            &[&channel, &state, &node],
        )
        .map_err(StoreError::postgres("recording a channel's state"))?;
    Ok(())
}

/// The recorded lifecycle state of every channel that has one.
pub(crate) fn channel_states(client: &mut Client) -> Result<Vec<ChannelStateRow>, StoreError> {
    let sql = format!(
        "SELECT channel, state, changed_by, {} FROM cluster_channel_state ORDER BY channel",
        ms("changed_at")
    );
    let rows = client
        .query(&sql, &[])
        .map_err(StoreError::postgres("listing the channels' states"))?;
    Ok(rows
        .iter()
        .map(|r| ChannelStateRow {
            channel: r.get(0),
            state: r.get(1),
            changed_by: r.get(2),
            changed_ms: r.get(3),
        })
        .collect())
}
