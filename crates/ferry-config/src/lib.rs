//! Ferry's configuration: the TOML schema, its loading and its validation.
//!
//! The structs in this crate *are* the configuration reference: every field's doc comment says
//! what it does, its default and its unit. Every table is `deny_unknown_fields`, so a typo is an
//! error with `file:line:column` and a "did you mean". Secrets never live in the file:
//! `${env:NAME}` and `${file:/path}` in any string value are replaced at load ([`Text`],
//! [`Secret`]), and a [`Secret`] never prints.
//!
//! - [`schema`]: the tables (`[store]`, `[admin]`, `[[channel]]`, sources, destinations, `tls`,
//!   `[[channel.transform]]` steps, `encode`).
//! - [`values`]: value types with their own syntax: [`Duration`] (`"500ms"`, `"2s"`, `"5m"`),
//!   [`ByteSize`] (`"16MiB"`), [`Text`] and [`Secret`] (interpolated strings).
//! - [`alerts`]: `[alerts]` and `[[alert]]` (rules, actions, throttling).
//! - [`load`]: reading files, `include`, relative paths, error positions, validation.
//! - [`section`] and [`diff`]: a channel's section in canonical form and the line diff between
//!   two versions, for the audit record of a configuration change.

pub mod alerts;
pub mod diff;
pub mod load;
pub mod schema;
pub mod section;
pub mod values;

pub use load::ConfigError;
pub use schema::{
    AddSegmentConfig, AdminConfig, AuditConfig, AuditSyslogConfig, AuditSyslogFormat,
    ChannelConfig, ChannelDestinationConfig, ChannelSourceConfig, ClusterConfig, Config,
    CopyConfig, DEFAULT_LEASE_TTL, DEFAULT_QUEUE_POLL, DedupeConfig, DeleteConfig,
    DestinationConfig, EncodeConfig, EncryptionConfig, FileDestinationConfig, FilterConfig,
    HttpDestinationConfig, HttpPollSourceConfig, HttpSourceConfig, Keep, MapConfig,
    MllpDestinationConfig, MllpSourceConfig, NakAction, RenameSegmentConfig, ResponseMode,
    Retention, RetentionConfig, RetentionDefaults, RetryConfig, ScriptConfig, ScriptSettings,
    SetConfig, SourceConfig, StoreConfig, StoreTlsConfig, TlsConfig, TransformConfig,
};
pub use values::{ByteSize, Duration, EnvLookup, Secret, Text};
