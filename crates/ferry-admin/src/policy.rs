//! Roles and the one policy table: every REST API route (method + path pattern) and who may
//! call it. Anything not in the table is denied.
//!
//! The table is the single source the request guard consults; the OpenAPI document lists the
//! same routes and the end-to-end matrix test checks every documented route against it for
//! every role and for an unauthenticated caller.

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
