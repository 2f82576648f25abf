//! Roles and the one policy table: every REST API route (method + path pattern) and who may
//! call it. Anything not in the table is denied.
//!
//! The table is the single source the request guard consults; the OpenAPI document lists the
//! same routes and the end-to-end matrix test checks every documented route against it for
//! every role and for an unauthenticated caller.
//!
//! Beside the roles, [`scope_rule`] says how each route treats a caller limited to some
//! channels (see [`scope`](crate::scope)): a route with `{channel}` in its path is checked
//! against the scope by the guard; the others are listed in [`SCOPE_RULES`], and a route
//! missing there is refused to scoped callers (deny by default, so a new node-wide route
//! cannot leak other channels' data to them before someone decides how it should scope).

use axum::http::Method;

/// A role (PRODUCT.md §8). Roles are not ordered: each route names the roles it allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Manages users and API tokens and reads the audit log; everything else an operator may
    /// do.
    Admin,
    /// Edits channels; sees statistics, no message content.
    Developer,
    /// Deploys, reprocesses and views messages (PHI).
    Operator,
    /// Reads the audit log only.
    Auditor,
    /// Statistics only, no PHI.
    Viewer,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 5] = [
        Role::Admin,
        Role::Developer,
        Role::Operator,
        Role::Auditor,
        Role::Viewer,
    ];

    /// The stored and configured name, e.g. `"operator"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Developer => "developer",
            Role::Operator => "operator",
            Role::Auditor => "auditor",
            Role::Viewer => "viewer",
        }
    }

    /// Parse a role name.
    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == text)
    }

    /// Whether logging in with this role requires a TOTP code.
    pub fn requires_mfa(self) -> bool {
        self == Role::Admin
    }

    /// One line saying what the role is for (served by `GET /api/v1/roles`).
    pub fn description(self) -> &'static str {
        match self {
            Role::Admin => {
                "manages users and API tokens, reads the audit log, and may do what an operator does"
            }
            Role::Developer => "edits channels; sees statistics, no message content",
            Role::Operator => "deploys channels, views and reprocesses messages (PHI)",
            Role::Auditor => "reads and verifies the audit log; no statistics, no message content",
            Role::Viewer => "sees statistics only, no message content",
        }
    }
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No authentication (only the login itself).
    Public,
    /// Any authenticated caller, whatever the role.
    AnyRole,
    /// Authenticated callers with one of these roles.
    Roles(&'static [Role]),
}

impl Access {
    /// Whether a caller with `role` passes.
    pub fn allows(self, role: Role) -> bool {
        match self {
            Access::Public | Access::AnyRole => true,
            Access::Roles(roles) => roles.contains(&role),
        }
    }
}

/// One route of the REST API.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    /// HTTP method, upper case.
    pub method: &'static str,
    /// Path pattern with `{name}` parameters, as the router and the OpenAPI document spell it.
    pub path: &'static str,
    /// Who may call it.
    pub access: Access,
}

const ADMIN: &[Role] = &[Role::Admin];
/// Statistics (no PHI): everyone except the auditor, whose role is the audit log only.
const STATS: &[Role] = &[Role::Admin, Role::Developer, Role::Operator, Role::Viewer];
/// A channel's deployed configuration (no PHI, but hosts, paths and secret references):
/// the people who write, deploy and run channels; viewers see statistics only.
const CHANNEL_CONFIG: &[Role] = &[Role::Admin, Role::Developer, Role::Operator];
/// Message content, search, export and reprocessing (PHI).
const PHI: &[Role] = &[Role::Admin, Role::Operator];
/// The audit log (who did what; no message content, but names, addresses and activity).
const AUDIT: &[Role] = &[Role::Admin, Role::Auditor];
/// Channel lifecycle: deploy, undeploy, start, stop, pause. PRODUCT.md §8 gives deploying to
/// the operator and editing channels to the developer; the developer's edits live in the
/// configuration files (reviewed, in version control), and putting them into production is
/// the operator's act. Keeping the two apart means nobody changes a running channel alone, so
/// the developer is not here (nor the auditor or viewer, who only read).
const LIFECYCLE: &[Role] = &[Role::Admin, Role::Operator];

/// The policy table.
pub const ROUTES: &[Route] = &[
    Route {
        method: "POST",
        path: "/api/v1/session",
        access: Access::Public,
    },
    // Public: the one-time bootstrap token in the body is the credential (and works only
    // while the store has no user).
    Route {
        method: "POST",
        path: "/api/v1/bootstrap",
        access: Access::Public,
    },
    Route {
        method: "GET",
        path: "/api/v1/session",
        access: Access::AnyRole,
    },
    Route {
        method: "DELETE",
        path: "/api/v1/session",
        access: Access::AnyRole,
    },
    Route {
        method: "GET",
        path: "/api/v1/users",
        access: Access::Roles(ADMIN),
    },
    Route {
        method: "POST",
        path: "/api/v1/users",
        access: Access::Roles(ADMIN),
    },
    Route {
        method: "POST",
        path: "/api/v1/users/{name}/disable",
        access: Access::Roles(ADMIN),
    },
    Route {
        method: "GET",
        path: "/api/v1/tokens",
        access: Access::Roles(ADMIN),
    },
    Route {
        method: "POST",
        path: "/api/v1/tokens",
        access: Access::Roles(ADMIN),
    },
    Route {
        method: "DELETE",
        path: "/api/v1/tokens/{id}",
        access: Access::Roles(ADMIN),
    },
    Route {
        method: "GET",
        path: "/api/v1/channels",
        access: Access::Roles(STATS),
    },
    Route {
        method: "GET",
        path: "/api/v1/channels/{channel}",
        access: Access::Roles(CHANNEL_CONFIG),
    },
    Route {
        method: "GET",
        path: "/api/v1/alerts",
        access: Access::Roles(STATS),
    },
    Route {
        method: "GET",
        path: "/api/v1/channels/{channel}/stats",
        access: Access::Roles(STATS),
    },
    Route {
        method: "GET",
        path: "/api/v1/channels/{channel}/messages",
        access: Access::Roles(PHI),
    },
    Route {
        method: "GET",
        path: "/api/v1/channels/{channel}/messages/export",
        access: Access::Roles(PHI),
    },
    Route {
        method: "GET",
        path: "/api/v1/channels/{channel}/messages/{id}",
        access: Access::Roles(PHI),
    },
    Route {
        method: "POST",
        path: "/api/v1/channels/{channel}/messages/{id}/reprocess",
        access: Access::Roles(PHI),
    },
    Route {
        method: "POST",
        path: "/api/v1/channels/{channel}/start",
        access: Access::Roles(LIFECYCLE),
    },
    Route {
        method: "POST",
        path: "/api/v1/channels/{channel}/stop",
        access: Access::Roles(LIFECYCLE),
    },
    Route {
        method: "POST",
        path: "/api/v1/channels/{channel}/pause",
        access: Access::Roles(LIFECYCLE),
    },
    Route {
        method: "POST",
        path: "/api/v1/channels/{channel}/deploy",
        access: Access::Roles(LIFECYCLE),
    },
    Route {
        method: "POST",
        path: "/api/v1/channels/{channel}/undeploy",
        access: Access::Roles(LIFECYCLE),
    },
    Route {
        method: "GET",
        path: "/api/v1/openapi.json",
        access: Access::AnyRole,
    },
    Route {
        method: "GET",
        path: "/api/v1/audit",
        access: Access::Roles(AUDIT),
    },
    Route {
        method: "GET",
        path: "/api/v1/audit/verify",
        access: Access::Roles(AUDIT),
    },
    // Any role: the roles, what they are for and who needs MFA are no secret (the OpenAPI
    // document, readable by every role, lists them too), and every caller's console needs
    // them to explain the caller's own role.
    Route {
        method: "GET",
        path: "/api/v1/roles",
        access: Access::AnyRole,
    },
];

/// How a route treats a caller whose scope is limited to some channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopeRule {
    /// The path names the channel (`{channel}`): the guard answers `404 not found`, exactly
    /// as for an unknown channel, when it is outside the caller's scope.
    PathChannel,
    /// The handler shows and changes only what lies within the caller's scope (the channel
    /// list; users and tokens whose own scope lies within it).
    Filtered,
    /// Holds no channel's data (the caller's own session, the API description, the roles;
    /// the public login and bootstrap).
    NoChannelData,
    /// Node-wide data that cannot be cut by channel (the audit log): `403` for scoped
    /// callers.
    Refused,
}

/// [`ScopeRule`]s of the routes without `{channel}` in their path. Any route not here (and
/// without `{channel}`) is [`ScopeRule::Refused`].
pub const SCOPE_RULES: &[(&str, &str, ScopeRule)] = &[
    ("POST", "/api/v1/session", ScopeRule::NoChannelData),
    ("GET", "/api/v1/session", ScopeRule::NoChannelData),
    ("DELETE", "/api/v1/session", ScopeRule::NoChannelData),
    ("POST", "/api/v1/bootstrap", ScopeRule::NoChannelData),
    ("GET", "/api/v1/openapi.json", ScopeRule::NoChannelData),
    ("GET", "/api/v1/roles", ScopeRule::NoChannelData),
    ("GET", "/api/v1/channels", ScopeRule::Filtered),
    ("GET", "/api/v1/users", ScopeRule::Filtered),
    ("POST", "/api/v1/users", ScopeRule::Filtered),
    ("POST", "/api/v1/users/{name}/disable", ScopeRule::Filtered),
    ("GET", "/api/v1/tokens", ScopeRule::Filtered),
    ("POST", "/api/v1/tokens", ScopeRule::Filtered),
    ("DELETE", "/api/v1/tokens/{id}", ScopeRule::Filtered),
    // The audit trail names every channel, user and peer, and a filtered chain could not be
    // verified: it is for unscoped admins and auditors.
    ("GET", "/api/v1/audit", ScopeRule::Refused),
    ("GET", "/api/v1/audit/verify", ScopeRule::Refused),
    // Alert rules and observations span channels (queue depths, error reasons by channel).
    ("GET", "/api/v1/alerts", ScopeRule::Refused),
];

/// How `route` treats channel-scoped callers: [`ScopeRule::PathChannel`] when its path has a
/// `{channel}` parameter, else its entry in [`SCOPE_RULES`], else [`ScopeRule::Refused`].
pub fn scope_rule(route: &Route) -> ScopeRule {
    if route.path.split('/').any(|seg| seg == "{channel}") {
        return ScopeRule::PathChannel;
    }
    SCOPE_RULES
        .iter()
        .find(|(m, p, _)| *m == route.method && *p == route.path)
        .map_or(ScopeRule::Refused, |(_, _, rule)| *rule)
}

/// The policy entry of a method and a matched path pattern; `None` means deny.
pub fn lookup(method: &Method, pattern: &str) -> Option<&'static Route> {
    ROUTES
        .iter()
        .find(|r| r.method == method.as_str() && r.path == pattern)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip_and_unknown_routes_are_denied() {
        for r in Role::ALL {
            assert_eq!(Role::parse(r.as_str()), Some(r));
        }
        assert_eq!(Role::parse("root"), None);
        assert!(lookup(&Method::GET, "/api/v1/nothing").is_none());
        assert!(lookup(&Method::PUT, "/api/v1/users").is_none());
        let users = lookup(&Method::POST, "/api/v1/users").map(|r| r.access);
        assert_eq!(users, Some(Access::Roles(ADMIN)));
        let audit = lookup(&Method::GET, "/api/v1/audit").map(|r| r.access);
        assert_eq!(audit, Some(Access::Roles(AUDIT)));
        for role in Role::ALL {
            let allowed = matches!(role, Role::Admin | Role::Auditor);
            assert_eq!(AUDIT.contains(&role), allowed, "{role:?} and the audit log");
            assert!(!role.description().is_empty());
        }
        assert!(
            !Access::Roles(PHI).allows(Role::Auditor),
            "auditors see no message content"
        );
    }

    #[test]
    fn channel_routes_are_checked_by_path_and_unlisted_routes_refuse_scoped_callers() {
        for route in ROUTES {
            let rule = scope_rule(route);
            if route.path.contains("{channel}") {
                assert_eq!(
                    rule,
                    ScopeRule::PathChannel,
                    "{} {}",
                    route.method,
                    route.path
                );
            }
        }
        for (method, path, _) in SCOPE_RULES {
            assert!(
                ROUTES
                    .iter()
                    .any(|r| r.method == *method && r.path == *path),
                "{method} {path} has a scope rule but no policy entry"
            );
        }
        let rule = |m: &'static str, p: &'static str| {
            scope_rule(&Route {
                method: m,
                path: p,
                access: Access::AnyRole,
            })
        };
        assert_eq!(rule("GET", "/api/v1/audit"), ScopeRule::Refused);
        assert_eq!(rule("GET", "/api/v1/channels"), ScopeRule::Filtered);
        assert_eq!(
            rule("GET", "/api/v1/channels/{channel}/messages"),
            ScopeRule::PathChannel,
            "routes added later under a channel are covered by the path rule"
        );
        assert_eq!(
            rule("GET", "/api/v1/messages/search"),
            ScopeRule::Refused,
            "a new node-wide route is refused to scoped callers until it is listed"
        );
    }

    #[test]
    fn operators_deploy_and_developers_do_not() {
        for action in ["start", "stop", "pause", "deploy", "undeploy"] {
            let path = format!("/api/v1/channels/{{channel}}/{action}");
            let access = lookup(&Method::POST, &path).map(|r| r.access);
            let Some(access) = access else {
                panic!("no policy for {path}");
            };
            assert!(access.allows(Role::Admin) && access.allows(Role::Operator));
            for role in [Role::Developer, Role::Auditor, Role::Viewer] {
                assert!(!access.allows(role), "{role:?} may not {action}");
            }
        }
    }
}
