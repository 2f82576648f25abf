//! The text of one channel's `[[channel]]` section, in a canonical form, for the audit trail's
//! record of a configuration change.
//!
//! The section is rendered from the file's TOML as written (before `${env:…}`/`${file:…}`
//! interpolation, so a secret read from the environment or a file never appears), with keys
//! in a fixed order and comments and layout dropped, so two renderings differ exactly when the
//! channel's settings differ. Values that hold secrets (`headers`, the scripts' `config` map,
//! keys named like a password, secret or token, the password of a URL's `user:password@`) are
//! written as `"[redacted]"` unless they are made of `${…}` references only, which name where
//! the secret comes from and are kept.

use toml::{Table, Value};

/// What a redacted literal secret is written as.
pub const REDACTED: &str = "[redacted]";

/// The canonical section of every `[[channel]]` table in `text`, as (name, section) pairs in
/// file order. Tables without a string `name` are left out (validation refuses them anyway).
pub(crate) fn channel_sections(text: &str) -> Vec<(String, String)> {
    let Ok(table) = text.parse::<Table>() else {
        return Vec::new();
    };
    let Some(Value::Array(channels)) = table.get("channel") else {
        return Vec::new();
    };
    channels
        .iter()
        .filter_map(|c| {
            let Value::Table(channel) = c else {
                return None;
            };
            let name = channel.get("name")?.as_str()?.to_owned();
            Some((name, render(channel)))
        })
        .collect()
}

/// One channel table as a `[[channel]]` section with secrets redacted.
fn render(channel: &Table) -> String {
    let mut channel = channel.clone();
    redact_table(&mut channel, false);
    let mut wrapper = Table::new();
    wrapper.insert(
        "channel".to_owned(),
        Value::Array(vec![Value::Table(channel)]),
    );
    toml::to_string(&wrapper).unwrap_or_default()
}

/// Whether the values under `key` are secrets.
fn secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["password", "secret", "token", "authorization"]
        .iter()
        .any(|s| key.contains(s))
}

fn redact_table(table: &mut Table, secret: bool) {
    let in_scripts = table.contains_key("libraries") || table.contains_key("memory_limit");
    for (key, value) in table.iter_mut() {
        let secret = secret
            || secret_key(key)
            || key == "headers"
            || (key == "config" && (in_scripts || matches!(value, Value::Table(_))));
        redact_value(value, secret);
    }
}

fn redact_value(value: &mut Value, secret: bool) {
    match value {
        Value::String(s) if secret && !only_references(s) => *s = REDACTED.to_owned(),
        Value::String(s) => {
            if let Some(url) = without_userinfo(s) {
                *s = url;
            }
        }
        Value::Table(t) => redact_table(t, secret),
        Value::Array(items) => items.iter_mut().for_each(|v| redact_value(v, secret)),
        _ => {}
    }
}

/// `s` with the password of a URL's `user:password@` replaced, when it has a literal one.
fn without_userinfo(s: &str) -> Option<String> {
    let (scheme, rest) = s.split_once("://")?;
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (userinfo, _) = rest[..authority_end].rsplit_once('@')?;
    let (user, password) = userinfo.split_once(':')?;
    if only_references(password) {
        return None;
    }
    let host_and_rest = &rest[userinfo.len()..];
    Some(format!("{scheme}://{user}:{REDACTED}{host_and_rest}"))
}

/// Whether `s` has no literal text besides `${…}` references (and spaces, or an
/// authorization scheme word such as `Bearer ` in front of the first one).
fn only_references(s: &str) -> bool {
    let mut rest = s;
    let mut found = false;
    while let Some(start) = rest.find("${") {
        let before = &rest[..start];
        let scheme = !found
            && before.ends_with(' ')
            && before.trim_end().chars().all(|c| c.is_ascii_alphabetic());
        if !(before.trim().is_empty() || scheme) {
            return false;
        }
        let Some(end) = rest[start..].find('}') else {
            return false;
        };
        found = true;
        rest = &rest[start + end + 1..];
    }
    found && rest.trim().is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_are_canonical_and_keep_no_literal_secret() {
        let a = r#"
[store]
path = "x.db"

[[channel]]
name = "a"   # a comment
source = { type = "mllp", listen = "127.0.0.1:2575" }
  [channel.scripts]
  config = { api_key = "s3cr3t-config", from_env = "${env:KEY}" }

  [[channel.destination]]
  name = "api"
  type = "http"
  url = "https://example.com"
  headers = { Authorization = "Bearer ${env:TOKEN}", X-Key = "literal-s3cr3t" }

[[channel]]
name = "b"
source = { type = "channel" }
[[channel.destination]]
name = "d"
type = "file"
directory = "out"

[[alert]]
name = "x"
"#;
        let sections = channel_sections(a);
        let names: Vec<&str> = sections.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        let text = &sections[0].1;
        assert!(text.starts_with("[[channel]]\n"), "{text}");
        assert!(text.contains("Bearer ${env:TOKEN}"), "{text}");
        assert!(text.contains("${env:KEY}"), "{text}");
        assert!(!text.contains("s3cr3t"), "{text}");
        assert!(text.contains(REDACTED), "{text}");
        assert!(!text.contains("comment"), "{text}");
        assert!(!sections[1].1.contains("alert"), "{}", sections[1].1);

        // Layout and comments do not change the section; a setting does.
        let relaid = a.replace("name = \"a\"   # a comment", "name    = \"a\"");
        assert_eq!(channel_sections(&relaid)[0].1, *text);
        let changed = a.replace("127.0.0.1:2575", "127.0.0.1:2576");
        assert_ne!(channel_sections(&changed)[0].1, *text);
    }

    #[test]
    fn passwords_in_urls_are_redacted() {
        assert_eq!(
            without_userinfo("https://bob:hunter2@api.example.com/x?y=1").as_deref(),
            Some("https://bob:[redacted]@api.example.com/x?y=1")
        );
        assert_eq!(without_userinfo("https://bob:${env:P}@h/"), None);
        assert_eq!(without_userinfo("https://api.example.com/a@b"), None);
        assert_eq!(without_userinfo("not a url"), None);
    }

    #[test]
    fn only_reference_values_are_kept() {
        assert!(only_references("${env:A}"));
        assert!(only_references("Bearer ${file:/run/t}"));
        assert!(only_references("${env:A}${env:B}"));
        assert!(!only_references("Bearer abc"));
        assert!(!only_references("x${env:A}"));
        assert!(!only_references("${env:A}tail"));
        assert!(!only_references("${env:A"));
        assert!(!only_references(""));
    }
}
