//! The OpenAPI 3.1 document of the REST API, served at `GET /api/v1/openapi.json`.
//!
//! Hand-built: one entry per implemented route. A unit test checks that the document lists
//! exactly the routes of the policy table, so a route cannot be served undocumented or
//! documented without a policy.

use serde_json::{Map, Value, json};

use crate::policy::{Access, ROUTES};

/// One documented operation.
struct Operation {
    method: &'static str,
    path: &'static str,
    id: &'static str,
    summary: &'static str,
    /// Request body schema, if the operation takes one.
    body: Option<fn() -> Value>,
    /// Success status.
    ok: &'static str,
}

fn login_body() -> Value {
    json!({
        "type": "object", "additionalProperties": false, "required": ["user", "password"],
        "properties": {
            "user": {"type": "string"},
            "password": {"type": "string"},
            "totp": {"type": "string", "description": "6-digit TOTP code (required for admins)"}
        }
    })
}

fn user_body() -> Value {
    json!({
        "type": "object", "additionalProperties": false, "required": ["name", "role", "password"],
        "properties": {
            "name": {"type": "string", "pattern": "^[A-Za-z0-9._@-]{1,64}$"},
            "role": {"$ref": "#/components/schemas/Role"},
            "password": {"type": "string", "minLength": 12, "maxLength": 1024},
            "channels": {"$ref": "#/components/schemas/Channels"}
        }
    })
}

fn token_body() -> Value {
    json!({
        "type": "object", "additionalProperties": false, "required": ["name", "role"],
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 128},
            "role": {"$ref": "#/components/schemas/Role"},
            "channels": {"$ref": "#/components/schemas/Channels"}
        }
    })
}

fn bootstrap_body() -> Value {
    json!({
        "type": "object", "additionalProperties": false,
        "required": ["token", "name", "password"],
        "properties": {
            "token": {"type": "string",
                      "description": "the one-time token `ferry run` printed (`ferry_b_…`)"},
            "name": {"type": "string", "pattern": "^[A-Za-z0-9._@-]{1,64}$"},
            "password": {"type": "string", "minLength": 12, "maxLength": 1024}
        }
    })
}

fn reprocess_body() -> Value {
    json!({
        "type": "object", "additionalProperties": false,
        "properties": {
            "destinations": {"type": "array", "items": {"type": "string"},
                             "description": "only these destinations (default: all)"}
        }
    })
}

const OPERATIONS: &[Operation] = &[
    Operation {
        method: "POST",
        path: "/api/v1/session",
        id: "login",
        summary: "Log in: starts a session (cookie `ferry_session` and bearer id) and returns its CSRF token",
        body: Some(login_body),
        ok: "200",
    },
    Operation {
        method: "POST",
        path: "/api/v1/bootstrap",
        id: "bootstrap",
        summary: "Create the first admin with the one-time bootstrap token `ferry run` printed \
                  on a store without users; returns the TOTP secret and otpauth URI, shown \
                  once. The token then no longer works (nor once any user exists)",
        body: Some(bootstrap_body),
        ok: "201",
    },
    Operation {
        method: "GET",
        path: "/api/v1/session",
        id: "whoami",
        summary: "The caller's name, role and kind of credential",
        body: None,
        ok: "200",
    },
    Operation {
        method: "DELETE",
        path: "/api/v1/session",
        id: "logout",
        summary: "Log out: ends the session",
        body: None,
        ok: "204",
    },
    Operation {
        method: "GET",
        path: "/api/v1/users",
        id: "listUsers",
        summary: "List users with their channel scope (a scoped caller sees only users within \
                  its scope)",
        body: None,
        ok: "200",
    },
    Operation {
        method: "POST",
        path: "/api/v1/users",
        id: "createUser",
        summary: "Create a user (admins get a TOTP secret, shown once), optionally limited to \
                  `channels` (never beyond the caller's own scope)",
        body: Some(user_body),
        ok: "201",
    },
    Operation {
        method: "POST",
        path: "/api/v1/users/{name}/disable",
        id: "disableUser",
        summary: "Disable a user and end their sessions",
        body: None,
        ok: "204",
    },
    Operation {
        method: "GET",
        path: "/api/v1/tokens",
        id: "listTokens",
        summary: "List API tokens with their channel scope, never their values (a scoped caller \
                  sees only tokens within its scope)",
        body: None,
        ok: "200",
    },
    Operation {
        method: "POST",
        path: "/api/v1/tokens",
        id: "createToken",
        summary: "Create an API token acting with a role, optionally limited to `channels` \
                  (never beyond the caller's own scope); the token is returned once",
        body: Some(token_body),
        ok: "201",
    },
    Operation {
        method: "DELETE",
        path: "/api/v1/tokens/{id}",
        id: "revokeToken",
        summary: "Revoke an API token",
        body: None,
        ok: "204",
    },
    Operation {
        method: "GET",
        path: "/api/v1/channels",
        id: "listChannels",
        summary: "Channels and their counters (only those in the caller's scope)",
        body: None,
        ok: "200",
    },
    Operation {
        method: "GET",
        path: "/api/v1/channels/{channel}",
        id: "getChannel",
        summary: "One channel: its state, listener, destinations and the configuration section it runs from (canonical TOML, literal secrets redacted)",
        body: None,
        ok: "200",
    },
    Operation {
        method: "GET",
        path: "/api/v1/alerts",
        id: "listAlerts",
        summary: "Every configured alert: rule, actions, throttle, firings and notifications since the node started, the last observation (never message content)",
        body: None,
        ok: "200",
    },
    Operation {
        method: "GET",
        path: "/api/v1/channels/{channel}/stats",
        id: "channelStats",
        summary: "One channel's counters, per destination too",
        body: None,
        ok: "200",
    },
    Operation {
        method: "GET",
        path: "/api/v1/channels/{channel}/messages",
        id: "searchMessages",
        summary: "Search a channel's messages, newest first: summaries with each connector's status, no content (PHI access, audited). Bounded: at most `limit` matches and `max_examined` rows examined; continue with `before_id = next_before_id` until it is null",
        body: None,
        ok: "200",
    },
    Operation {
        method: "GET",
        path: "/api/v1/channels/{channel}/messages/export",
        id: "exportMessages",
        summary: "Export the matching messages' raw content as NDJSON (one object per line: the summary and `raw`, or `raw_base64` when not UTF-8), streamed newest first, as an attachment (PHI access, audited)",
        body: None,
        ok: "200",
    },
    Operation {
        method: "GET",
        path: "/api/v1/channels/{channel}/messages/{id}",
        id: "getMessage",
        summary: "One message: status per connector and raw content (PHI)",
        body: None,
        ok: "200",
    },
    Operation {
        method: "POST",
        path: "/api/v1/channels/{channel}/messages/{id}/reprocess",
        id: "reprocessMessage",
        summary: "Run a stored message through the channel again, as a new message",
        body: Some(reprocess_body),
        ok: "200",
    },
    Operation {
        method: "POST",
        path: "/api/v1/channels/{channel}/start",
        id: "startChannel",
        summary: "Start a paused or stopped channel: its source accepts messages and its destinations deliver again",
        body: None,
        ok: "200",
    },
    Operation {
        method: "POST",
        path: "/api/v1/channels/{channel}/stop",
        id: "stopChannel",
        summary: "Stop a channel: the source stops accepting (messages in flight are stored and answered first), then the destination workers; queued messages stay queued",
        body: None,
        ok: "200",
    },
    Operation {
        method: "POST",
        path: "/api/v1/channels/{channel}/pause",
        id: "pauseChannel",
        summary: "Pause a channel: the source accepts no new message while the destination queues keep draining",
        body: None,
        ok: "200",
    },
    Operation {
        method: "POST",
        path: "/api/v1/channels/{channel}/deploy",
        id: "deployChannel",
        summary: "Re-read and check the configuration file (as `ferry check`; 422 with the error and no change when it fails), then deploy the channel from it, started; a channel new in the file is added. Answers the section's diff",
        body: None,
        ok: "200",
    },
    Operation {
        method: "POST",
        path: "/api/v1/channels/{channel}/undeploy",
        id: "undeployChannel",
        summary: "Undeploy a channel: it leaves the runtime; its stored messages, queued ones included, stay",
        body: None,
        ok: "200",
    },
    Operation {
        method: "GET",
        path: "/api/v1/openapi.json",
        id: "openapi",
        summary: "This document",
        body: None,
        ok: "200",
    },
    Operation {
        method: "GET",
        path: "/api/v1/audit",
        id: "searchAudit",
        summary: "Audit records matching the query, oldest first, a page at a time \
                  (`records`, and `next_after_seq` to pass as `after_seq` for the next page, \
                  null on the last); the read is itself audited",
        body: None,
        ok: "200",
    },
    Operation {
        method: "GET",
        path: "/api/v1/audit/verify",
        id: "verifyAudit",
        summary: "Check the audit log's hash chain: `ok`, `records` checked, the `head` to keep \
                  elsewhere, and every `problems` entry (edited, deleted, reordered, inserted, \
                  truncated records); the check is itself audited",
        body: None,
        ok: "200",
    },
    Operation {
        method: "GET",
        path: "/api/v1/roles",
        id: "listRoles",
        summary: "The roles: name, what each is for, and whether its users need MFA",
        body: None,
        ok: "200",
    },
];

/// Answers some operations give besides the common ones.
fn extra_responses(id: &str) -> &'static [(&'static str, &'static str)] {
    match id {
        "deployChannel" => &[
            (
                "409",
                "channel disabled in the file, its listener cannot bind, or no configuration file",
            ),
            (
                "422",
                "the configuration does not pass `ferry check` (the error names file, line and column)",
            ),
            ("503", "the engine is shutting down"),
        ],
        "startChannel" => &[
            ("409", "the channel's listener cannot bind"),
            ("503", "the engine is shutting down"),
        ],
        "stopChannel" | "pauseChannel" | "undeployChannel" => {
            &[("503", "the engine is shutting down")]
        }
        _ => &[],
    }
}

fn query(name: &str, schema: Value, description: &str) -> Value {
    json!({"name": name, "in": "query", "required": false, "schema": schema,
           "description": description})
}

/// Query parameters of the operations that take them (unknown parameters are refused).
fn query_parameters(path: &str) -> Vec<Value> {
    let time = || {
        json!({"oneOf": [{"type": "string", "format": "date-time"},
                         {"type": "integer", "format": "int64"}]})
    };
    match path {
        "/api/v1/audit" => vec![
            query(
                "since",
                time(),
                "only records at or after this time (RFC 3339, or Unix ms)",
            ),
            query(
                "until",
                time(),
                "only records before this time (RFC 3339, or Unix ms)",
            ),
            query(
                "action",
                json!({"type": "array", "items": {"type": "string"}}),
                "only these actions (repeat the parameter or give a comma list), e.g. \
                 `login_failed,permission_denied`",
            ),
            query("actor", json!({"type": "string"}), "only this actor"),
            query(
                "target",
                json!({"type": "string"}),
                "only this target or targets under it (`user` matches `user/olga`)",
            ),
            query(
                "outcome",
                json!({"type": "string", "enum": ["success", "failure"]}),
                "only this outcome",
            ),
            query(
                "after_seq",
                json!({"type": "integer", "format": "int64"}),
                "only records after this sequence number (the previous page's `next_after_seq`)",
            ),
            query(
                "limit",
                json!({"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}),
                "records per page",
            ),
        ],
        "/api/v1/audit/verify" => vec![query(
            "expect_head",
            json!({"type": "string"}),
            "a head (`SEQ:HASH` or `HASH`) kept outside the database: it must still be a \
             record of the chain",
        )],
        "/api/v1/channels/{channel}/messages" => message_query(true),
        "/api/v1/channels/{channel}/messages/export" => message_query(false),
        _ => Vec::new(),
    }
}

/// The query parameters of message search (`search`) and export.
fn message_query(search: bool) -> Vec<Value> {
    let string = json!({"type": "string"});
    let int = json!({"type": "integer", "format": "int64"});
    let limit = if search {
        (
            "matches per page (default 100)",
            json!({"type": "integer", "minimum": 1, "maximum": 1000}),
        )
    } else {
        (
            "messages in all (default 10000)",
            json!({"type": "integer", "minimum": 1, "maximum": 1_000_000}),
        )
    };
    let mut list = vec![
        (
            "status",
            "a connector status (RECEIVED, FILTERED, TRANSFORMED, QUEUED, SENT, ERROR, PENDING)",
            json!({"type": "string", "enum": ["RECEIVED", "FILTERED", "TRANSFORMED", "QUEUED", "SENT", "ERROR", "PENDING"]}),
        ),
        (
            "connector",
            "only this connector's status (`source` or a destination); needs `status`",
            string.clone(),
        ),
        (
            "since_ms",
            "received at or after, Unix milliseconds",
            int.clone(),
        ),
        (
            "until_ms",
            "received before, Unix milliseconds",
            int.clone(),
        ),
        ("control_id", "MSH-10, exactly", string.clone()),
        ("type", "MSH-9, exactly or followed by `^`", string.clone()),
        (
            "meta",
            "`key:value` of the channel's indexed metadata, exactly (e.g. `mrn:12345`)",
            string.clone(),
        ),
        (
            "text",
            "a substring of the raw message, case-sensitive, 1 to 256 bytes",
            string,
        ),
        ("before_id", "only ids below (the cursor)", int.clone()),
        ("after_id", "only ids above", int),
        ("limit", limit.0, limit.1),
    ];
    if search {
        list.push((
            "max_examined",
            "rows examined at most (default 10000)",
            json!({"type": "integer", "minimum": 1, "maximum": 100_000}),
        ));
    }
    list.into_iter()
        .map(|(name, description, schema)| query(name, schema, description))
        .collect()
}

fn parameters(path: &str) -> Vec<Value> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|name| {
            let schema = if name == "id" {
                json!({"type": "integer", "format": "int64"})
            } else {
                json!({"type": "string"})
            };
            json!({"name": name, "in": "path", "required": true, "schema": schema})
        })
        .collect()
}

/// The document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for op in OPERATIONS {
        let access = ROUTES
            .iter()
            .find(|r| r.method == op.method && r.path == op.path)
            .map(|r| r.access);
        let mut responses = Map::new();
        responses.insert(op.ok.into(), json!({"description": "success"}));
        for (code, what) in [
            ("400", "invalid request"),
            (
                "404",
                "not found (also a channel outside the caller's scope, alike)",
            ),
            ("413", "body too large"),
        ] {
            responses.insert(code.into(), json!({"description": what}));
        }
        for (code, what) in extra_responses(op.id) {
            responses.insert((*code).into(), json!({"description": what}));
        }
        let mut o = Map::new();
        o.insert("operationId".into(), op.id.into());
        o.insert("summary".into(), op.summary.into());
        if access == Some(Access::Public) {
            o.insert("security".into(), json!([]));
            responses.insert("401".into(), json!({"description": "invalid credentials"}));
            responses.insert(
                "429".into(),
                json!({"description": "locked after repeated failures"}),
            );
        } else {
            responses.insert("401".into(), json!({"description": "not authenticated"}));
            responses.insert(
                "403".into(),
                json!({"description": "role not allowed, CSRF header missing, or the route \
                                       is not open to callers limited to some channels"}),
            );
        }
        let mut params = parameters(op.path);
        params.extend(query_parameters(op.path));
        if !params.is_empty() {
            o.insert("parameters".into(), Value::Array(params));
        }
        if let Some(schema) = op.body {
            o.insert(
                "requestBody".into(),
                json!({"required": op.method != "POST" || op.id != "reprocessMessage",
                       "content": {"application/json": {"schema": schema()}}}),
            );
        }
        o.insert("responses".into(), Value::Object(responses));
        let entry = paths
            .entry(op.path.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        if let Some(e) = entry.as_object_mut() {
            e.insert(op.method.to_ascii_lowercase(), Value::Object(o));
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Ferry admin API", "version": env!("CARGO_PKG_VERSION")},
        "paths": paths,
        "security": [{"bearer": []}, {"session": []}],
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer",
                           "description": "an API token (`ferry_t_…`) or a session id"},
                "session": {"type": "apiKey", "in": "cookie", "name": "ferry_session",
                            "description": "unsafe methods also need header X-Ferry-CSRF"}
            },
            "schemas": {
                "Role": {"type": "string",
                         "enum": ["admin", "developer", "operator", "auditor", "viewer"]},
                "Channels": {"type": ["array", "null"], "minItems": 1, "maxItems": 1024,
                             "items": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,255}$"},
                             "description": "the channels reached; absent or null: every channel"}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_exactly_the_policy_routes() {
        let doc = document();
        let mut documented = Vec::new();
        for (path, ops) in doc["paths"].as_object().expect("paths") {
            for method in ops.as_object().expect("ops").keys() {
                documented.push((method.to_ascii_uppercase(), path.clone()));
            }
        }
        let mut policy: Vec<_> = ROUTES
            .iter()
            .map(|r| (r.method.to_owned(), r.path.to_owned()))
            .collect();
        documented.sort();
        policy.sort();
        assert_eq!(documented, policy);
    }
}
