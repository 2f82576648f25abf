//! Configuration values with their own syntax.

use std::cell::RefCell;
use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

/// Looks up an environment variable by name (the real environment, or a map in tests).
pub type EnvLookup = std::rc::Rc<dyn Fn(&str) -> Option<String>>;

/// How `${env:…}` and `${file:…}` are resolved while a configuration is being read.
pub(crate) struct Interpolation {
    /// Looks up an environment variable.
    pub env: EnvLookup,
    /// Directory that relative `${file:…}` paths are relative to.
    pub base: PathBuf,
}

thread_local! {
    static CONTEXT: RefCell<Option<Interpolation>> = const { RefCell::new(None) };
}

/// Run `f` with `context` as the interpolation context of this thread.
pub(crate) fn with_interpolation<T>(context: Interpolation, f: impl FnOnce() -> T) -> T {
    CONTEXT.with(|c| *c.borrow_mut() = Some(context));
    let result = f();
    CONTEXT.with(|c| *c.borrow_mut() = None);
    result
}

/// Replace `${env:NAME}` and `${file:PATH}` in `raw`; `$${` is a literal `${`. Substituted
/// values are not scanned again. Errors name the variable or file, never a value.
pub fn interpolate(raw: &str) -> Result<String, String> {
    CONTEXT.with(|c| {
        let context = c.borrow();
        let lookup = |name: &str| -> Option<String> {
            match context.as_ref() {
                Some(ctx) => (ctx.env)(name),
                None => std::env::var(name).ok(),
            }
        };
        let base = context.as_ref().map(|ctx| ctx.base.clone()).unwrap_or_default();
        let mut out = String::with_capacity(raw.len());
        let mut rest = raw;
        while let Some(i) = rest.find('$') {
            out.push_str(&rest[..i]);
            let after = &rest[i..];
            if let Some(tail) = after.strip_prefix("$${") {
                out.push_str("${");
                rest = tail;
                continue;
            }
            let Some(body) = after.strip_prefix("${") else {
                out.push('$');
                rest = &after[1..];
                continue;
            };
            let close = body
                .find('}')
                .ok_or_else(|| "unterminated `${`: expected `${env:NAME}` or `${file:PATH}`".to_owned())?;
            let reference = &body[..close];
            let value = if let Some(name) = reference.strip_prefix("env:") {
                lookup(name).ok_or_else(|| format!("environment variable `{name}` is not set"))?
            } else if let Some(path) = reference.strip_prefix("file:") {
                let full = base.join(path);
                let mut text = std::fs::read_to_string(&full)
                    .map_err(|e| format!("cannot read secret file `{}`: {e}", full.display()))?;
                if text.ends_with('\n') {
                    text.pop();
                    if text.ends_with('\r') {
                        text.pop();
                    }
                }
                text
            } else {
                return Err(format!(
                    "unknown reference `${{{reference}}}`: expected `${{env:NAME}}` or `${{file:PATH}}` (write `$${{` for a literal `${{`)"
                ));
            };
            out.push_str(&value);
            rest = &body[close + 1..];
        }
        out.push_str(rest);
        Ok(out)
    })
}

/// A string value after `${env:…}`/`${file:…}` interpolation.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Text(String);

impl Text {
    /// The value.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Text {
        Text(s.to_owned())
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Text, D::Error> {
        let raw = String::deserialize(d)?;
        interpolate(&raw).map(Text).map_err(de::Error::custom)
    }
}

/// A secret value (a token, a password): interpolated like [`Text`], but its `Debug` and
/// `Display` print `[redacted]`, so it cannot leak into logs or error messages by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret value, for the one place that must use it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Secret {
        Secret(s.to_owned())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
        let raw = String::deserialize(d)?;
        interpolate(&raw).map(Secret).map_err(de::Error::custom)
    }
}

/// A duration written as a string: `"500ms"`, `"2s"`, `"5m"`, `"1h"`, `"1d"`, or compound
/// `"1m30s"`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Duration(std::time::Duration);

/// Why a duration or size string is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ValueError(String);

impl Duration {
    /// Wrap a std duration.
    pub const fn from_std(d: std::time::Duration) -> Duration {
        Duration(d)
    }

    /// Seconds, for defaults.
    pub const fn secs(s: u64) -> Duration {
        Duration(std::time::Duration::from_secs(s))
    }

    /// Milliseconds, for defaults.
    pub const fn millis(ms: u64) -> Duration {
        Duration(std::time::Duration::from_millis(ms))
    }

    /// The std duration.
    pub fn get(&self) -> std::time::Duration {
        self.0
    }

    /// Parse `"500ms"`, `"2s"`, `"1m30s"`…
    pub fn parse(text: &str) -> Result<Duration, ValueError> {
        let bad = || {
            ValueError(format!(
                "invalid duration `{text}`: expected a number and a unit (ms, s, m, h, d), like \"500ms\", \"2s\" or \"1m30s\""
            ))
        };
        let t = text.trim();
        if t.is_empty() {
            return Err(bad());
        }
        let mut total = std::time::Duration::ZERO;
        let mut rest = t;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(bad());
            }
            let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
            rest = &rest[digits..];
            let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
            let unit = &rest[..unit_len];
            rest = &rest[unit_len..];
            let part = match unit {
                "ms" => std::time::Duration::from_millis(n),
                "s" => std::time::Duration::from_secs(n),
                "m" => std::time::Duration::from_secs(n.saturating_mul(60)),
                "h" => std::time::Duration::from_secs(n.saturating_mul(3600)),
                "d" => std::time::Duration::from_secs(n.saturating_mul(86_400)),
                _ => return Err(bad()),
            };
            total = total.saturating_add(part);
        }
        Ok(Duration(total))
    }
}

impl fmt::Debug for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration string like \"2s\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                Duration::parse(v).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
                Err(E::custom(format!(
                    "durations are strings with a unit, like \"{v}s\" or \"{v}ms\", not bare numbers"
                )))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
                self.visit_i64(v as i64)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Duration, E> {
                Err(E::custom(
                    "durations are strings with a unit, like \"500ms\"",
                ))
            }
        }
        d.deserialize_any(V)
    }
}

/// A size in bytes: an integer, or a string `"16MiB"`, `"512KiB"`, `"1MB"`, `"1024"`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(usize);

impl ByteSize {
    /// A size in bytes.
    pub const fn new(bytes: usize) -> ByteSize {
        ByteSize(bytes)
    }

    /// The size in bytes.
    pub fn bytes(&self) -> usize {
        self.0
    }

    /// Parse `"16MiB"`, `"1MB"`, `"1024"`.
    pub fn parse(text: &str) -> Result<ByteSize, ValueError> {
        let bad = || {
            ValueError(format!(
                "invalid size `{text}`: expected bytes or a number with a unit (B, KB, KiB, MB, MiB, GB, GiB), like \"16MiB\""
            ))
        };
        let t = text.trim();
        let digits = t.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let n: usize = t[..digits].parse().map_err(|_| bad())?;
        let factor: usize = match t[digits..].trim() {
            "" | "B" => 1,
            "KB" | "kB" => 1_000,
            "KiB" => 1 << 10,
            "MB" => 1_000_000,
            "MiB" => 1 << 20,
            "GB" => 1_000_000_000,
            "GiB" => 1 << 30,
            _ => return Err(bad()),
        };
        n.checked_mul(factor).map(ByteSize).ok_or_else(bad)
    }
}

impl fmt::Debug for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bytes", self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ByteSize, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size like \"16MiB\" or a number of bytes")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                ByteSize::parse(v).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                usize::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                usize::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("size too large"))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_env<T>(vars: &[(&str, &str)], f: impl FnOnce() -> T) -> T {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        with_interpolation(
            Interpolation {
                env: std::rc::Rc::new(move |name: &str| {
                    vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
                }),
                base: PathBuf::new(),
            },
            f,
        )
    }

    #[test]
    fn interpolates_env_and_escapes() {
        with_env(&[("TOKEN", "abc${env:X}")], || {
            assert_eq!(
                interpolate("Bearer ${env:TOKEN}").as_deref(),
                Ok("Bearer abc${env:X}")
            );
            assert_eq!(
                interpolate("cost $5 and $${literal}").as_deref(),
                Ok("cost $5 and ${literal}")
            );
            let err = interpolate("${env:MISSING}").expect_err("missing");
            assert!(err.contains("`MISSING` is not set"));
            assert!(interpolate("${vault:x}").is_err());
            assert!(interpolate("${env:OPEN").is_err());
        });
    }

    #[test]
    fn interpolates_files_trimming_one_newline() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("token"), "s3cret\n").expect("write");
        let base = dir.path().to_owned();
        with_interpolation(
            Interpolation {
                env: std::rc::Rc::new(|_: &str| None),
                base,
            },
            || {
                assert_eq!(interpolate("${file:token}").as_deref(), Ok("s3cret"));
                assert!(
                    interpolate("${file:nope}")
                        .expect_err("missing")
                        .contains("nope")
                );
            },
        );
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(
            Duration::parse("500ms").map(|d| d.get().as_millis()),
            Ok(500)
        );
        assert_eq!(Duration::parse("1m30s").map(|d| d.get().as_secs()), Ok(90));
        assert_eq!(Duration::parse("1d").map(|d| d.get().as_secs()), Ok(86_400));
        for bad in ["", "5", "s", "5x", "1.5s", "-1s"] {
            assert!(Duration::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(ByteSize::parse("16MiB").map(|b| b.bytes()), Ok(16 << 20));
        assert_eq!(ByteSize::parse("1MB").map(|b| b.bytes()), Ok(1_000_000));
        assert_eq!(ByteSize::parse("1024").map(|b| b.bytes()), Ok(1024));
        assert!(ByteSize::parse("lots").is_err());
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret::from("hunter2");
        assert_eq!(format!("{s} {s:?}"), "[redacted] [redacted]");
        assert_eq!(s.expose(), "hunter2");
    }
}
