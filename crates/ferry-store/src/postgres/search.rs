//! Message search on PostgreSQL: the walk of `search.rs` (same drivers, same bounds, same
//! cursor), in PostgreSQL's SQL. The candidate walk is bounded in SQL by `max_examined`
//! (`LIMIT`), and streamed, so no request holds more than one page of matches in memory.

use postgres::fallible_iterator::FallibleIterator;
use postgres::types::ToSql;

use crate::StoreError;
use crate::crypto::{self, Keyring, Place};
use crate::model::{ContentStage, MessageId, SOURCE, Status};
use crate::search::{
    ConnectorStatus, FoundMessage, MAX_SEARCH_EXAMINED, MAX_SEARCH_LIMIT, MessagePage, MessageQuery,
};

type Param = Box<dyn ToSql + Sync + Send>;

struct Sql {
    args: Vec<Param>,
}

impl Sql {
    fn arg(&mut self, value: impl ToSql + Sync + Send + 'static) -> String {
        self.args.push(Box::new(value));
        format!("${}", self.args.len())
    }
}

fn stored_forms(keyring: Option<&Keyring>, key: &str, value: &str) -> Vec<Vec<u8>> {
    let mut forms = vec![value.as_bytes().to_vec()];
    if let Some(ring) = keyring {
        forms.extend(ring.blind_indexes(key, value).iter().map(|t| t.to_vec()));
    }
    forms
}

enum Driver {
    Metadata,
    ControlId,
    Queued,
    Scan,
}

fn pg(context: &'static str) -> impl FnOnce(postgres::Error) -> StoreError {
    StoreError::postgres(context)
}

/// Run a search on a read connection.
pub(crate) fn search(
    client: &mut postgres::Client,
    keyring: Option<&Keyring>,
    query: &MessageQuery,
) -> Result<MessagePage, StoreError> {
    let channel_id: Option<i64> = client
        .query_opt("SELECT id FROM channels WHERE name = $1", &[&query.channel])
        .map_err(pg("resolving a channel"))?
        .map(|r| r.get(0));
    let Some(channel_id) = channel_id else {
        return Ok(MessagePage::default());
    };
    let limit = query.limit.clamp(1, MAX_SEARCH_LIMIT);
    let max_examined = query.max_examined.clamp(1, MAX_SEARCH_EXAMINED);
    let queued_at = match (&query.status, &query.connector) {
        (Some(Status::Queued), Some(c)) => Some(c.clone()),
        _ => None,
    };
    let driver = if !query.metadata.is_empty() {
        Driver::Metadata
    } else if query.control_id.is_some() {
        Driver::ControlId
    } else if queued_at.is_some() {
        Driver::Queued
    } else {
        Driver::Scan
    };
    let mut sql = Sql { args: Vec::new() };
    let c = sql.arg(channel_id);
    let before = sql.arg(query.before_id.unwrap_or(MessageId::MAX));
    let after = sql.arg(query.after_id.unwrap_or(MessageId::MIN));
    let (from, id) = match driver {
        Driver::Metadata => {
            let (key, value) = &query.metadata[0];
            let k = sql.arg(key.clone());
            let values = sql.arg(stored_forms(keyring, key, value));
            (
                format!(
                    "message_metadata x JOIN messages m ON m.channel = x.channel AND m.id = x.message_id \
                     WHERE x.channel = {c} AND x.key = {k} AND x.value = ANY({values}) \
                       AND x.message_id < {before} AND x.message_id > {after}"
                ),
                "x.message_id",
            )
        }
        Driver::ControlId => {
            let v = sql.arg(query.control_id.clone().unwrap_or_default());
            (
                format!(
                    "messages m WHERE m.channel = {c} AND m.control_id = {v} \
                     AND m.id < {before} AND m.id > {after}"
                ),
                "m.id",
            )
        }
        Driver::Queued => {
            let n = sql.arg(queued_at.clone().unwrap_or_default());
            (
                format!(
                    "connector_messages q JOIN messages m ON m.channel = q.channel AND m.id = q.message_id \
                     WHERE q.channel = {c} AND q.connector = {n} AND q.status = 'QUEUED' \
                       AND q.message_id < {before} AND q.message_id > {after}"
                ),
                "q.message_id",
            )
        }
        Driver::Scan => (
            format!("messages m WHERE m.channel = {c} AND m.id < {before} AND m.id > {after}"),
            "m.id",
        ),
    };
    let mut matches: Vec<String> = Vec::new();
    if let Some(since) = query.received_since_ms {
        matches.push(format!("m.received_at_ms >= {}", sql.arg(since)));
    }
    if let Some(until) = query.received_until_ms {
        matches.push(format!("m.received_at_ms < {}", sql.arg(until)));
    }
    if let (Some(control_id), false) = (&query.control_id, matches!(driver, Driver::ControlId)) {
        matches.push(format!("m.control_id = {}", sql.arg(control_id.clone())));
    }
    if let Some(t) = &query.message_type {
        let exact = sql.arg(t.clone());
        let p = sql.arg(format!("{t}^"));
        matches.push(format!(
            "(m.message_type = {exact} OR starts_with(m.message_type, {p}))"
        ));
    }
    if let (Some(status), None) = (query.status, &queued_at) {
        let s = sql.arg(status.as_str().to_owned());
        let at = match &query.connector {
            Some(name) => format!(" AND s.connector = {}", sql.arg(name.clone())),
            None => String::new(),
        };
        matches.push(format!(
            "EXISTS (SELECT 1 FROM connector_messages s \
             WHERE s.channel = m.channel AND s.message_id = m.id AND s.status = {s}{at})"
        ));
    }
    let skip = usize::from(matches!(driver, Driver::Metadata));
    for (key, value) in query.metadata.iter().skip(skip) {
        let k = sql.arg(key.clone());
        let values = sql.arg(stored_forms(keyring, key, value));
        matches.push(format!(
            "EXISTS (SELECT 1 FROM message_metadata y WHERE y.channel = m.channel \
             AND y.key = {k} AND y.value = ANY({values}) AND y.message_id = m.id)"
        ));
    }
    let hit = if matches.is_empty() {
        "TRUE".to_owned()
    } else {
        format!("COALESCE({}, FALSE)", matches.join(" AND "))
    };
    let raw = if query.text.is_some() || query.with_raw {
        format!("CASE WHEN {hit} AND m.content_pruned_at_ms IS NULL THEN m.raw END")
    } else {
        "NULL::bytea".to_owned()
    };
    let lim = sql.arg(max_examined as i64);
    let text = format!(
        "SELECT m.id, m.received_at_ms, m.control_id, m.message_type, {hit}, {raw}, \
         m.content_pruned_at_ms IS NOT NULL \
         FROM {from} ORDER BY {id} DESC LIMIT {lim}"
    );
    let finder = query.text.as_deref().map(memchr::memmem::Finder::new);
    let params: Vec<&(dyn ToSql + Sync)> = sql
        .args
        .iter()
        .map(|a| &**a as &(dyn ToSql + Sync))
        .collect();
    let mut page = MessagePage::default();
    let mut last = None;
    let mut exhausted = true;
    {
        let mut rows = client
            .query_raw(&text, params)
            .map_err(pg("searching messages"))?;
        while let Some(row) = rows.next().map_err(pg("reading a search row"))? {
            let id: MessageId = row.get(0);
            page.examined += 1;
            last = Some(id);
            let matched: bool = row.get(4);
            if matched {
                let raw = match row.get::<_, Option<Vec<u8>>>(5) {
                    Some(blob) => {
                        let place = Place {
                            channel: &query.channel,
                            message_id: id,
                            connector: SOURCE,
                            stage: ContentStage::Raw.as_str(),
                        };
                        Some(zeroize::Zeroizing::new(crypto::open(
                            keyring, &place, blob,
                        )?))
                    }
                    None => None,
                };
                let text_ok = match (&finder, &raw) {
                    (Some(f), Some(raw)) => f.find(raw).is_some(),
                    (Some(_), None) => false,
                    (None, _) => true,
                };
                if text_ok {
                    page.messages.push(FoundMessage {
                        id,
                        received_at_ms: row.get(1),
                        control_id: row.get(2),
                        message_type: row.get(3),
                        connectors: Vec::new(),
                        content_pruned: row.get(6),
                        raw: if query.with_raw {
                            raw.map(|r| r.to_vec())
                        } else {
                            None
                        },
                    });
                }
            }
            if page.messages.len() >= limit || page.examined >= max_examined as u64 {
                exhausted = false;
                break;
            }
        }
    }
    page.next_before_id = if exhausted { None } else { last };
    for found in &mut page.messages {
        found.connectors = connectors(client, channel_id, found.id)?;
    }
    Ok(page)
}

fn connectors(
    client: &mut postgres::Client,
    channel: i64,
    id: MessageId,
) -> Result<Vec<ConnectorStatus>, StoreError> {
    let rows = client
        .query(
            "SELECT connector, status FROM connector_messages \
             WHERE channel = $1 AND message_id = $2 ORDER BY connector <> $3, connector COLLATE \"C\"",
            &[&channel, &id, &SOURCE],
        )
        .map_err(pg("reading connector statuses"))?;
    rows.iter()
        .map(|r| {
            Ok(ConnectorStatus {
                connector: r.get(0),
                status: r.get::<_, &str>(1).parse().map_err(StoreError::Corrupt)?,
            })
        })
        .collect()
}
