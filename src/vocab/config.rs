//! Scope configuration: every setting of a scope, validated, and loadable from registry files
//! (TOML or YAML, in the entry shape of [`parse_scopes_toml`]).

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Why a configuration is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A field has a value outside its range.
    #[error("{field}: {reason}")]
    InvalidField {
        /// The field, as written in a config file.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A scope id is not of the form `namespace:name`.
    #[error("scope id {id:?}: {reason}")]
    InvalidScopeId {
        /// The id.
        id: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The same scope id is configured twice.
    #[error("scope {0:?} is configured twice")]
    DuplicateScope(String),
    /// A configuration file could not be read or parsed.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
}

/// The configuration of one scope: every setting with its default.
///
/// Build one with [`ScopeConfig::builder`]; `Default` goes through the same validation. In a
/// file, durations are written `"5s"`, `"100ms"`; `0` (or `"0s"`) disables anti-entropy and
/// retries.
///
/// ```
/// use std::time::Duration;
/// use procgroups::ScopeConfig;
/// let config = ScopeConfig::builder()
///     .max_members_per_group(10_000)
///     .anti_entropy_interval(Duration::ZERO) // off
///     .build()?;
/// assert_eq!(config.max_members_per_group(), 10_000);
/// # Ok::<(), procgroups::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RawScopeConfig", into = "RawScopeConfig")]
pub struct ScopeConfig {
    protocol_timeout: Duration,
    broadcast_timeout: Duration,
    anti_entropy_interval: Duration,
    circuit_breaker_failures: u32,
    circuit_breaker_reset_time: Duration,
    max_retries: u32,
    retry_base_delay: Duration,
    retry_max_delay: Duration,
    action_queue_size: usize,
    action_queue_max_size: usize,
    monitor_buffer: usize,
    max_groups: usize,
    max_members_per_group: usize,
    node_down_grace: Duration,
    max_meta_bytes: usize,
}

impl Default for ScopeConfig {
    fn default() -> Self {
        ScopeConfigBuilder::default()
            .build()
            .expect("the default scope configuration is valid")
    }
}

impl ScopeConfig {
    /// A builder starting from the defaults.
    pub fn builder() -> ScopeConfigBuilder {
        ScopeConfigBuilder::default()
    }

    /// A builder starting from this configuration.
    pub fn to_builder(&self) -> ScopeConfigBuilder {
        ScopeConfigBuilder {
            config: self.clone(),
        }
    }

    /// Timeout of each Discover and Sync exchange with a peer. Default 5 s.
    pub fn protocol_timeout(&self) -> Duration {
        self.protocol_timeout
    }
    /// Timeout for delivering a broadcast batch to one node. Default 5 s.
    pub fn broadcast_timeout(&self) -> Duration {
        self.broadcast_timeout
    }
    /// Cadence of anti-entropy (one peer per tick); `None` when disabled (`0`). Default 30 s.
    pub fn anti_entropy_interval(&self) -> Option<Duration> {
        (!self.anti_entropy_interval.is_zero()).then_some(self.anti_entropy_interval)
    }
    /// Consecutive failures to a node before its circuit opens. Default 3.
    pub fn circuit_breaker_failures(&self) -> u32 {
        self.circuit_breaker_failures
    }
    /// How long an open circuit waits before letting one probe through. Default 10 s.
    pub fn circuit_breaker_reset_time(&self) -> Duration {
        self.circuit_breaker_reset_time
    }
    /// Retries of a failed delivery; `0` disables retries. Default 3.
    pub fn max_retries(&self) -> u32 {
        self.max_retries
    }
    /// First retry backoff. Default 100 ms.
    pub fn retry_base_delay(&self) -> Duration {
        self.retry_base_delay
    }
    /// Largest retry backoff. Default 1 s.
    pub fn retry_max_delay(&self) -> Duration {
        self.retry_max_delay
    }
    /// Depth of the outgoing change queue at which a warning is logged. Default 256.
    ///
    /// The queue holds this node's changes that the network task has not yet published,
    /// counted in deltas (one delta carries up to about 60 KiB of changes: a few thousand
    /// joins), because a local join applies at once and only its publication can fall behind.
    /// A loop of joins never fills it while the network task keeps up; a wedged or starved
    /// network task does.
    pub fn action_queue_size(&self) -> usize {
        self.action_queue_size
    }
    /// Depth of the outgoing change queue (in deltas, see
    /// [`action_queue_size`](Self::action_queue_size)) at which joins and leaves get
    /// [`Unavailable`](crate::ErrorKind::Unavailable) at once. Default 1024. Exits are never
    /// refused, and neither is anything a peer sends.
    pub fn action_queue_max_size(&self) -> usize {
        self.action_queue_max_size
    }
    /// Events buffered per subscription before further ones are dropped and counted.
    /// Default 64.
    pub fn monitor_buffer(&self) -> usize {
        self.monitor_buffer
    }
    /// Maximum number of groups one node's processes are in; `0` is unlimited. Default 0.
    ///
    /// A budget per node: a local join is refused when this node's own processes would be in
    /// more groups, whatever peers hold; each peer gets the same budget on this node, and
    /// its slots in groups beyond it are refused and counted
    /// ([`ScopeStats::slots_refused`](crate::ScopeStats::slots_refused)) without taking room
    /// from anyone else. A node therefore holds at most `max_groups` groups per node it knows
    /// of, itself included.
    pub fn max_groups(&self) -> usize {
        self.max_groups
    }
    /// Maximum member slots one node's processes hold in one group, counting multi-joins;
    /// `0` is unlimited. Default 0.
    ///
    /// A budget per node and group, like [`max_groups`](Self::max_groups): local joins count
    /// this node's own slots, and each peer's slots are counted on their own.
    pub fn max_members_per_group(&self) -> usize {
        self.max_members_per_group
    }
    /// How long a peer may be unreachable before its members are removed. Default 2 s.
    pub fn node_down_grace(&self) -> Duration {
        self.node_down_grace
    }
    /// The largest metadata value (of a membership or a registered name), CBOR-encoded, in
    /// bytes. Default [`DEFAULT_MAX_META_BYTES`](crate::DEFAULT_MAX_META_BYTES) (1024), at
    /// most [`MAX_META_BYTES_CEILING`](crate::MAX_META_BYTES_CEILING). A larger local value
    /// is `LimitReached`; a larger one from a peer is refused and counted
    /// ([`ScopeStats::meta_refused`](crate::ScopeStats::meta_refused)), its member held
    /// without metadata.
    pub fn max_meta_bytes(&self) -> usize {
        self.max_meta_bytes
    }
}

/// Builds a validated [`ScopeConfig`]. Starts from the defaults.
#[derive(Debug, Clone)]
pub struct ScopeConfigBuilder {
    config: ScopeConfig,
}

impl Default for ScopeConfigBuilder {
    fn default() -> Self {
        Self {
            config: ScopeConfig {
                protocol_timeout: Duration::from_secs(5),
                broadcast_timeout: Duration::from_secs(5),
                anti_entropy_interval: Duration::from_secs(30),
                circuit_breaker_failures: 3,
                circuit_breaker_reset_time: Duration::from_secs(10),
                max_retries: 3,
                retry_base_delay: Duration::from_millis(100),
                retry_max_delay: Duration::from_secs(1),
                action_queue_size: 256,
                action_queue_max_size: 1024,
                monitor_buffer: 64,
                max_groups: 0,
                max_members_per_group: 0,
                node_down_grace: Duration::from_secs(2),
                max_meta_bytes: DEFAULT_MAX_META_BYTES,
            },
        }
    }
}

macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident: $ty:ty;)*) => {
        $(
            $(#[$doc])*
            pub fn $name(mut self, value: $ty) -> Self {
                self.config.$name = value;
                self
            }
        )*
    };
}

impl ScopeConfigBuilder {
    setters! {
        /// See [`ScopeConfig::protocol_timeout`]; must be > 0.
        protocol_timeout: Duration;
        /// See [`ScopeConfig::broadcast_timeout`]; must be > 0.
        broadcast_timeout: Duration;
        /// See [`ScopeConfig::anti_entropy_interval`]; zero disables.
        anti_entropy_interval: Duration;
        /// See [`ScopeConfig::circuit_breaker_failures`]; must be ≥ 1.
        circuit_breaker_failures: u32;
        /// See [`ScopeConfig::circuit_breaker_reset_time`]; must be > 0.
        circuit_breaker_reset_time: Duration;
        /// See [`ScopeConfig::max_retries`]; zero disables retries.
        max_retries: u32;
        /// See [`ScopeConfig::retry_base_delay`]; must be > 0 and ≤ `retry_max_delay`.
        retry_base_delay: Duration;
        /// See [`ScopeConfig::retry_max_delay`].
        retry_max_delay: Duration;
        /// See [`ScopeConfig::action_queue_size`]; must be ≥ 1 and ≤ `action_queue_max_size`.
        action_queue_size: usize;
        /// See [`ScopeConfig::action_queue_max_size`].
        action_queue_max_size: usize;
        /// See [`ScopeConfig::monitor_buffer`]; must be ≥ 1.
        monitor_buffer: usize;
        /// See [`ScopeConfig::max_groups`]; zero is unlimited.
        max_groups: usize;
        /// See [`ScopeConfig::max_members_per_group`]; zero is unlimited.
        max_members_per_group: usize;
        /// See [`ScopeConfig::node_down_grace`]; must be > 0.
        node_down_grace: Duration;
        /// See [`ScopeConfig::max_meta_bytes`]; between 1 and `MAX_META_BYTES_CEILING`.
        max_meta_bytes: usize;
    }

    /// Validates and returns the configuration.
    pub fn build(self) -> Result<ScopeConfig, ConfigError> {
        let c = self.config;
        let bad = |field, reason: &str| {
            Err(ConfigError::InvalidField {
                field,
                reason: reason.to_owned(),
            })
        };
        for (field, value) in [
            ("protocol_timeout", c.protocol_timeout),
            ("broadcast_timeout", c.broadcast_timeout),
            ("circuit_breaker_reset_time", c.circuit_breaker_reset_time),
            ("retry_base_delay", c.retry_base_delay),
            ("node_down_grace", c.node_down_grace),
        ] {
            if value.is_zero() {
                return bad(field, "must be greater than zero");
            }
        }
        if c.retry_max_delay < c.retry_base_delay {
            return bad("retry_max_delay", "must not be below retry_base_delay");
        }
        if c.circuit_breaker_failures == 0 {
            return bad("circuit_breaker_failures", "must be at least 1");
        }
        if c.monitor_buffer == 0 {
            return bad("monitor_buffer", "must be at least 1");
        }
        if c.action_queue_size == 0 {
            return bad("action_queue_size", "must be at least 1");
        }
        if c.max_meta_bytes == 0 || c.max_meta_bytes > MAX_META_BYTES_CEILING {
            return bad("max_meta_bytes", "must be between 1 and 16384");
        }
        if c.action_queue_max_size < c.action_queue_size {
            return bad(
                "action_queue_max_size",
                "must not be below action_queue_size",
            );
        }
        Ok(c)
    }
}

/// A duration in a config file: `"5s"`, `"100ms"`, `"1m 30s"`, or the number `0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileDuration(Duration);

impl Serialize for FileDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        humantime_serde::serialize(&self.0, s)
    }
}

impl<'de> Deserialize<'de> for FileDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Number(u64),
            #[serde(with = "humantime_serde")]
            Text(Duration),
        }
        match Either::deserialize(d) {
            Ok(Either::Number(0)) => Ok(FileDuration(Duration::ZERO)),
            Ok(Either::Number(n)) => Err(serde::de::Error::custom(format!(
                "duration {n} has no unit: write it as \"{n}s\" or \"{n}ms\""
            ))),
            Ok(Either::Text(d)) => Ok(FileDuration(d)),
            Err(_) => Err(serde::de::Error::custom(
                "expected a duration such as \"5s\" or \"100ms\", or 0",
            )),
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawScopeConfig {
    protocol_timeout: FileDuration,
    broadcast_timeout: FileDuration,
    anti_entropy_interval: FileDuration,
    circuit_breaker_failures: u32,
    circuit_breaker_reset_time: FileDuration,
    max_retries: u32,
    retry_base_delay: FileDuration,
    retry_max_delay: FileDuration,
    action_queue_size: usize,
    action_queue_max_size: usize,
    monitor_buffer: usize,
    max_groups: usize,
    max_members_per_group: usize,
    node_down_grace: FileDuration,
    max_meta_bytes: usize,
}

impl Default for RawScopeConfig {
    fn default() -> Self {
        ScopeConfigBuilder::default().config.into()
    }
}

impl From<ScopeConfig> for RawScopeConfig {
    fn from(c: ScopeConfig) -> Self {
        Self {
            protocol_timeout: FileDuration(c.protocol_timeout),
            broadcast_timeout: FileDuration(c.broadcast_timeout),
            anti_entropy_interval: FileDuration(c.anti_entropy_interval),
            circuit_breaker_failures: c.circuit_breaker_failures,
            circuit_breaker_reset_time: FileDuration(c.circuit_breaker_reset_time),
            max_retries: c.max_retries,
            retry_base_delay: FileDuration(c.retry_base_delay),
            retry_max_delay: FileDuration(c.retry_max_delay),
            action_queue_size: c.action_queue_size,
            action_queue_max_size: c.action_queue_max_size,
            monitor_buffer: c.monitor_buffer,
            max_groups: c.max_groups,
            max_members_per_group: c.max_members_per_group,
            node_down_grace: FileDuration(c.node_down_grace),
            max_meta_bytes: c.max_meta_bytes,
        }
    }
}

impl TryFrom<RawScopeConfig> for ScopeConfig {
    type Error = ConfigError;
    fn try_from(r: RawScopeConfig) -> Result<Self, ConfigError> {
        ScopeConfigBuilder {
            config: ScopeConfig {
                protocol_timeout: r.protocol_timeout.0,
                broadcast_timeout: r.broadcast_timeout.0,
                anti_entropy_interval: r.anti_entropy_interval.0,
                circuit_breaker_failures: r.circuit_breaker_failures,
                circuit_breaker_reset_time: r.circuit_breaker_reset_time.0,
                max_retries: r.max_retries,
                retry_base_delay: r.retry_base_delay.0,
                retry_max_delay: r.retry_max_delay.0,
                action_queue_size: r.action_queue_size,
                action_queue_max_size: r.action_queue_max_size,
                monitor_buffer: r.monitor_buffer,
                max_groups: r.max_groups,
                max_members_per_group: r.max_members_per_group,
                node_down_grace: r.node_down_grace.0,
                max_meta_bytes: r.max_meta_bytes,
            },
        }
        .build()
    }
}

/// The default of [`ScopeConfig::max_meta_bytes`](crate::ScopeConfig::max_meta_bytes): the
/// largest encoded metadata value a scope takes.
pub const DEFAULT_MAX_META_BYTES: usize = 1024;

/// The largest [`ScopeConfig::max_meta_bytes`](crate::ScopeConfig::max_meta_bytes) may be: a
/// delta that carries one such value still fits far below the delta size cap.
pub const MAX_META_BYTES_CEILING: usize = 16 * 1024;

/// The longest scope id, in bytes.
pub const MAX_SCOPE_ID_LEN: usize = 255;

/// Checks that `id` is a scope id: `namespace:name`, both parts non-empty, no white space,
/// at most [`MAX_SCOPE_ID_LEN`] bytes.
pub fn validate_scope_id(id: &str) -> Result<(), ConfigError> {
    let bad = |reason| {
        Err(ConfigError::InvalidScopeId {
            id: id.to_owned(),
            reason,
        })
    };
    if id.len() > MAX_SCOPE_ID_LEN {
        return bad("longer than 255 bytes");
    }
    if id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("contains white space or control characters");
    }
    match id.split_once(':') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains(':') => Ok(()),
        _ => bad("expected namespace:name"),
    }
}

/// One scope read from a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeEntry {
    /// The scope id, `namespace:name`.
    pub id: String,
    /// Its configuration.
    pub config: ScopeConfig,
    /// `lifecycle.auto_start`; entries with `false` are not started by the node.
    pub auto_start: bool,
}

/// The kind of registry entry that describes a scope.
pub const SCOPE_KIND: &str = "pg.scope";

#[derive(Deserialize)]
struct RegistryFile {
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    entries: Vec<toml::Table>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Lifecycle {
    #[serde(default = "yes")]
    auto_start: bool,
}

fn yes() -> bool {
    true
}

/// Parses a registry file in the registry-entry shape, written in TOML:
///
/// ```toml
/// namespace = "app"
///
/// [[entries]]
/// name = "pg"                    # the scope id is "app:pg"; a name with ':' is taken whole
/// kind = "pg.scope"
/// anti_entropy_interval = "30s"
/// max_members_per_group = 10000
/// lifecycle = { auto_start = true }
/// ```
///
/// Entries of other kinds are skipped (a registry holds many kinds). Unknown fields of a
/// `pg.scope` entry, invalid values and duplicate ids are errors. A missing `lifecycle`
/// means `auto_start = true`. `examples/procgroups.toml` is a commented example.
///
/// ```
/// let scopes = procgroups::config::parse_scopes_toml(r#"
///     namespace = "app"
///     [[entries]]
///     name = "pg"
///     kind = "pg.scope"
///     node_down_grace = "5s"
/// "#)?;
/// assert_eq!(scopes[0].id, "app:pg");
/// assert_eq!(scopes[0].config.node_down_grace(), std::time::Duration::from_secs(5));
/// # Ok::<(), procgroups::ConfigError>(())
/// ```
pub fn parse_scopes_toml(text: &str) -> Result<Vec<ScopeEntry>, ConfigError> {
    let file: RegistryFile = toml::from_str(text).map_err(|e| ConfigError::File {
        path: "<toml>".into(),
        reason: e.to_string(),
    })?;
    scopes_of(file, "<toml>")
}

/// Parses a registry file in the registry-entry shape, written in YAML; the same entries and
/// rules as [`parse_scopes_toml`]:
///
/// ```
/// let scopes = procgroups::config::parse_scopes_yaml("
/// namespace: app
/// entries:
///   - name: pg
///     kind: pg.scope
///     anti_entropy_interval: 0   # off
///     lifecycle: { auto_start: true }
/// ")?;
/// assert_eq!(scopes[0].id, "app:pg");
/// assert_eq!(scopes[0].config.anti_entropy_interval(), None);
/// # Ok::<(), procgroups::ConfigError>(())
/// ```
pub fn parse_scopes_yaml(text: &str) -> Result<Vec<ScopeEntry>, ConfigError> {
    // The entries are read as TOML tables, so that both formats share one validation.
    let file: RegistryFile = serde_yaml_ng::from_str(text).map_err(|e| ConfigError::File {
        path: "<yaml>".into(),
        reason: e.to_string(),
    })?;
    scopes_of(file, "<yaml>")
}

fn scopes_of(file: RegistryFile, path: &str) -> Result<Vec<ScopeEntry>, ConfigError> {
    let mut scopes: Vec<ScopeEntry> = Vec::new();
    for mut entry in file.entries {
        let field_error = |reason: String| ConfigError::File {
            path: path.into(),
            reason,
        };
        let kind = match entry.remove("kind") {
            Some(toml::Value::String(kind)) => kind,
            _ => return Err(field_error("an entry has no string `kind`".into())),
        };
        let name = match entry.remove("name") {
            Some(toml::Value::String(name)) => name,
            _ => return Err(field_error("an entry has no string `name`".into())),
        };
        if kind != SCOPE_KIND {
            tracing::debug!(%name, %kind, "skipping registry entry of another kind");
            continue;
        }
        let id = match (&file.namespace, name.contains(':')) {
            (_, true) => name,
            (Some(ns), false) => format!("{ns}:{name}"),
            (None, false) => {
                return Err(field_error(format!(
                    "entry {name:?} has no namespace: set `namespace` or name it `ns:{name}`"
                )));
            }
        };
        validate_scope_id(&id)?;
        let auto_start = match entry.remove("lifecycle") {
            None => true,
            Some(value) => {
                value
                    .try_into::<Lifecycle>()
                    .map_err(|e| field_error(format!("{id}: lifecycle: {e}")))?
                    .auto_start
            }
        };
        entry.remove("meta");
        let config: ScopeConfig = toml::Value::Table(entry)
            .try_into()
            .map_err(|e| field_error(format!("{id}: {e}")))?;
        if scopes.iter().any(|s| s.id == id) {
            return Err(ConfigError::DuplicateScope(id));
        }
        scopes.push(ScopeEntry {
            id,
            config,
            auto_start,
        });
    }
    Ok(scopes)
}

/// Reads a registry file: TOML ([`parse_scopes_toml`]) for a `.toml` file, YAML
/// ([`parse_scopes_yaml`]) for `.yaml` and `.yml`.
pub fn load_scopes_file(path: impl AsRef<Path>) -> Result<Vec<ScopeEntry>, ConfigError> {
    let path = path.as_ref();
    let shown = path.display().to_string();
    let parse = match path.extension().and_then(|e| e.to_str()) {
        Some("toml") => parse_scopes_toml,
        Some("yaml" | "yml") => parse_scopes_yaml,
        _ => {
            return Err(ConfigError::File {
                path: shown,
                reason: "unsupported file type: expected .toml, .yaml or .yml".into(),
            });
        }
    };
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
        path: shown.clone(),
        reason: e.to_string(),
    })?;
    parse(&text).map_err(|e| match e {
        ConfigError::File { reason, .. } => ConfigError::File {
            path: shown,
            reason,
        },
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_seeds_table() {
        let c = ScopeConfig::default();
        assert_eq!(c.protocol_timeout(), Duration::from_secs(5));
        assert_eq!(c.broadcast_timeout(), Duration::from_secs(5));
        assert_eq!(c.anti_entropy_interval(), Some(Duration::from_secs(30)));
        assert_eq!(c.circuit_breaker_failures(), 3);
        assert_eq!(c.circuit_breaker_reset_time(), Duration::from_secs(10));
        assert_eq!(c.max_retries(), 3);
        assert_eq!(c.retry_base_delay(), Duration::from_millis(100));
        assert_eq!(c.retry_max_delay(), Duration::from_secs(1));
        assert_eq!(c.action_queue_size(), 256);
        assert_eq!(c.action_queue_max_size(), 1024);
        assert_eq!(c.monitor_buffer(), 64);
        assert_eq!(c.max_groups(), 0);
        assert_eq!(c.max_members_per_group(), 0);
        assert_eq!(c.node_down_grace(), Duration::from_secs(2));
    }

    #[test]
    fn builder_rejects_out_of_range_values() {
        let cases = [
            ScopeConfig::builder().monitor_buffer(0),
            ScopeConfig::builder().protocol_timeout(Duration::ZERO),
            ScopeConfig::builder().circuit_breaker_failures(0),
            ScopeConfig::builder().retry_max_delay(Duration::from_millis(10)),
            ScopeConfig::builder()
                .action_queue_size(10)
                .action_queue_max_size(5),
        ];
        for case in cases {
            assert!(case.clone().build().is_err(), "{case:?} accepted");
        }
    }

    #[test]
    fn toml_entries_in_the_seeds_shape() {
        let text = r#"
            namespace = "app"

            [[entries]]
            name = "pg"
            kind = "pg.scope"
            anti_entropy_interval = "30s"
            circuit_breaker_failures = 3
            max_members_per_group = 10000
            retry_base_delay = "50ms"
            lifecycle = { auto_start = true }

            [[entries]]
            name = "other"
            kind = "http.service"
            port = 8080

            [[entries]]
            name = "chat:rooms"
            kind = "pg.scope"
            anti_entropy_interval = 0
            max_retries = 0
            lifecycle = { auto_start = false }
        "#;
        let scopes = parse_scopes_toml(text).unwrap();
        assert_eq!(scopes.len(), 2);
        assert_eq!(scopes[0].id, "app:pg");
        assert!(scopes[0].auto_start);
        assert_eq!(scopes[0].config.max_members_per_group(), 10_000);
        assert_eq!(
            scopes[0].config.retry_base_delay(),
            Duration::from_millis(50)
        );
        assert_eq!(scopes[1].id, "chat:rooms");
        assert!(!scopes[1].auto_start);
        assert_eq!(scopes[1].config.anti_entropy_interval(), None);
        assert_eq!(scopes[1].config.max_retries(), 0);
    }

    #[test]
    fn toml_errors_are_clear() {
        let unknown =
            "namespace = \"a\"\n[[entries]]\nname = \"pg\"\nkind = \"pg.scope\"\nmax_grups = 3\n";
        let err = parse_scopes_toml(unknown).unwrap_err().to_string();
        assert!(err.contains("max_grups"), "{err}");
        let unitless = "namespace = \"a\"\n[[entries]]\nname = \"pg\"\nkind = \"pg.scope\"\nprotocol_timeout = 5\n";
        let err = parse_scopes_toml(unitless).unwrap_err().to_string();
        assert!(
            err.contains("protocol_timeout") || err.contains("unit"),
            "{err}"
        );
        let invalid = "namespace = \"a\"\n[[entries]]\nname = \"pg\"\nkind = \"pg.scope\"\nmonitor_buffer = 0\n";
        let err = parse_scopes_toml(invalid).unwrap_err().to_string();
        assert!(err.contains("monitor_buffer"), "{err}");
        let dup = "namespace = \"a\"\n[[entries]]\nname = \"pg\"\nkind = \"pg.scope\"\n[[entries]]\nname = \"a:pg\"\nkind = \"pg.scope\"\n";
        assert_eq!(
            parse_scopes_toml(dup).unwrap_err(),
            ConfigError::DuplicateScope("a:pg".into())
        );
    }

    #[test]
    fn yaml_entries_read_like_toml() {
        let yaml = "
namespace: app
entries:
  - name: pg
    kind: pg.scope
    anti_entropy_interval: 30s
    circuit_breaker_failures: 3
    max_members_per_group: 10000
    retry_base_delay: 50ms
    lifecycle: { auto_start: true }
  - name: other
    kind: http.service
    port: 8080
  - name: chat:rooms
    kind: pg.scope
    anti_entropy_interval: 0
    max_retries: 0
    lifecycle:
      auto_start: false
";
        let toml = r#"
            namespace = "app"
            [[entries]]
            name = "pg"
            kind = "pg.scope"
            anti_entropy_interval = "30s"
            circuit_breaker_failures = 3
            max_members_per_group = 10000
            retry_base_delay = "50ms"
            [[entries]]
            name = "chat:rooms"
            kind = "pg.scope"
            anti_entropy_interval = 0
            max_retries = 0
            lifecycle = { auto_start = false }
        "#;
        assert_eq!(
            parse_scopes_yaml(yaml).unwrap(),
            parse_scopes_toml(toml).unwrap()
        );
        let err = parse_scopes_yaml(
            "namespace: a\nentries:\n  - name: pg\n    kind: pg.scope\n    max_grups: 3\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("max_grups"), "{err}");
        let err = parse_scopes_yaml("entries: [1, 2").unwrap_err();
        assert!(matches!(err, ConfigError::File { .. }), "{err}");
    }

    #[test]
    fn the_examples_scope_files_agree() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
        let toml = load_scopes_file(dir.join("procgroups.toml")).unwrap();
        let yaml = load_scopes_file(dir.join("procgroups.yaml")).unwrap();
        assert_eq!(toml, yaml);
        let ids: Vec<&str> = toml.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["chat:rooms", "chat:users", "cluster:work"]);
        let err = load_scopes_file(dir.join("procgroups.json")).unwrap_err();
        assert!(err.to_string().contains("unsupported"), "{err}");
    }

    #[test]
    fn serde_round_trip() {
        let c = ScopeConfig::builder()
            .max_groups(7)
            .anti_entropy_interval(Duration::ZERO)
            .build()
            .unwrap();
        let text = toml::to_string(&c).unwrap();
        let back: ScopeConfig = toml::from_str(&text).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn scope_ids() {
        for good in ["app:pg", "chat:rooms", "a.b:c-d"] {
            validate_scope_id(good).unwrap();
        }
        for bad in ["", "pg", ":pg", "app:", "a:b:c", "a b:c", &"x".repeat(300)] {
            assert!(validate_scope_id(bad).is_err(), "{bad:?} accepted");
        }
    }
}
