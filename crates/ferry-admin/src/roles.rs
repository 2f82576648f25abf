//! `GET /api/v1/roles`: the roles, one line each on what they are for, and whether their
//! users must log in with a TOTP code. Open to every role (see the policy table for why).

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use crate::api::json_response;
use crate::policy::Role;

/// The roles as JSON: `[{"name", "description", "mfa_required"}]`, in [`Role::ALL`] order.
pub fn roles_json() -> Value {
    Value::Array(
        Role::ALL
            .iter()
            .map(|r| {
                json!({
                    "name": r.as_str(),
                    "description": r.description(),
                    "mfa_required": r.requires_mfa(),
                })
            })
            .collect(),
    )
}

pub(crate) async fn list() -> Response {
    json_response(StatusCode::OK, &roles_json())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_roles_and_only_admins_need_mfa() {
        let roles = roles_json();
        let roles = roles.as_array().expect("array");
        let names: Vec<&str> = roles.iter().filter_map(|r| r["name"].as_str()).collect();
        assert_eq!(
            names,
            ["admin", "developer", "operator", "auditor", "viewer"]
        );
        for r in roles {
            assert_eq!(r["mfa_required"], r["name"] == "admin", "{r}");
            assert!(r["description"].as_str().is_some_and(|d| d.len() > 10));
        }
    }
}
