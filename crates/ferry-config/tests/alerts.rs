//! `[alerts]` and `[[alert]]`: the documented example loads, mistakes are refused.

use std::path::Path;
use std::rc::Rc;

use ferry_config::Config;
use ferry_config::alerts::{AlertActionConfig, AlertCondition};

fn load(text: &str) -> Result<Config, String> {
    Config::from_str_with_env(
        text,
        Path::new("/etc/ferry/ferry.toml"),
        Rc::new(|name: &str| (name == "SMTP_PASSWORD").then(|| "pw".to_owned())),
    )
    .map_err(|e| e.to_string())
}

const EXAMPLE: &str = r#"
[alerts]
interval = "2s"
node = "ferry-01"

[alerts.actions.mail-oncall]
email = { smtp = "smtp.example.org:587", from = "ferry@example.org", to = ["oncall@example.org"], username = "ferry", password = "${env:SMTP_PASSWORD}", tls = { ca = "smtp-ca.pem" } }

[alerts.actions.webhook-ops]
webhook = { url = "https://ops.example.org/hooks/ferry", headers = { Authorization = "Bearer x" } }

[[alert]]
name = "adt-delivery-errors"
when = { errors = { channel = "adt*", text = "refused|timed out" } }
actions = ["mail-oncall", "webhook-ops"]
throttle = "15m"

[[alert]]
name = "silent"
when = { no_inbound = { channel = "adt-in", for = "15m" } }
actions = ["mail-oncall"]

[[alert]]
name = "certs"
when = { certificate_expiry = { within_days = 14, files = ["extra.pem"] } }
actions = ["mail-oncall"]
"#;

#[test]
fn the_documented_shape_loads_with_defaults_and_resolved_paths() {
    let config = load(EXAMPLE).expect("loads");
    assert_eq!(config.alerts.interval.get().as_secs(), 2);
    assert_eq!(config.alert_rules.len(), 3);
    assert_eq!(config.alert_rules[1].throttle.get().as_secs(), 900);
    match &config.alerts.actions["mail-oncall"] {
        AlertActionConfig::Email(e) => {
            assert!(e.starttls, "STARTTLS is the default");
            assert_eq!(e.password.as_ref().map(|p| p.expose()), Some("pw"));
            let ca = e.tls.as_ref().and_then(|t| t.ca.clone());
            assert_eq!(ca.as_deref(), Some(Path::new("/etc/ferry/smtp-ca.pem")));
        }
        other => panic!("{other:?}"),
    }
    match &config.alert_rules[1].when {
        AlertCondition::NoInbound(n) => assert_eq!(n.period.get().as_secs(), 900),
        other => panic!("{other:?}"),
    }
    match &config.alert_rules[2].when {
        AlertCondition::CertificateExpiry(c) => {
            assert_eq!(c.files, vec![Path::new("/etc/ferry/extra.pem")]);
        }
        other => panic!("{other:?}"),
    }
    assert!(
        !format!("{config:?}").contains("\"pw\""),
        "the password never prints"
    );
}

#[test]
fn mistakes_are_refused_with_a_reason() {
    let action =
        "[alerts.actions.m]\nemail = { smtp = \"h:587\", from = \"a@b\", to = [\"c@d\"] }\n";
    for (text, expected) in [
        (
            format!("{action}[[alert]]\nname = \"x\"\nwhen = {{ queue_depth = {{ above = 1 }} }}\nactions = [\"nope\"]\n"),
            "action `nope` is not defined",
        ),
        (
            "[alerts.actions.m]\nemail = { smtp = \"h:25\", starttls = false, username = \"u\", from = \"a@b\", to = [\"c@d\"] }\n".to_owned(),
            "credentials are never sent unencrypted",
        ),
        (
            format!("{action}[[alert]]\nname = \"x\"\nwhen = {{ queue_depth = {{ above = 1, chanel = \"a\" }} }}\nactions = [\"m\"]\n"),
            "chanel",
        ),
        (
            format!("{action}[[alert]]\nname = \"x\"\nwhen = {{ failed_logins = {{ count = 0, within = \"1m\" }} }}\nactions = [\"m\"]\n"),
            "count must be at least 1",
        ),
        (
            format!("{action}[[alert]]\nname = \"x\"\nwhen = {{ queue_depth = {{ above = 1 }} }}\nactions = [\"m\"]\n[[alert]]\nname = \"x\"\nwhen = {{ queue_depth = {{ above = 1 }} }}\nactions = [\"m\"]\n"),
            "defined twice",
        ),
        (
            format!("{action}[[alert]]\nname = \"x\"\nwhen = {{ bogus = {{ }} }}\nactions = [\"m\"]\n"),
            "bogus",
        ),
    ] {
        let err = load(&text).expect_err(&text);
        assert!(err.contains(expected), "{expected:?} not in {err}");
    }
}
