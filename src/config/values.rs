//! The option values and their one parser each: flags, `ELECTOR_*` variables and the YAML file
//! all read a value through its `FromStr`, so a value is checked the same way wherever it was
//! set, and a YAML error keeps the field and the line (see [`ParseVisitor`]).

use std::fmt;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use clap::ValueEnum;
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// How candidates use keys in etcd.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// One lock key: `If CreateRevision(key) == 0 Then Put(key, id, lease) Else Get(key)`.
    #[default]
    Lock,
    /// etcd's concurrency.Election / Mutex: `<name>/<lease hex>` per candidate, lowest create
    /// revision leads.
    Election,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Deserializes a YAML scalar through the type's `FromStr`, the parser flags and variables
/// use. The check runs inside the visitor, so serde_yaml_ng gives its error the field and the
/// line; `#[serde(try_from)]` checks after the deserializer returns, which loses both.
struct ParseVisitor<T>(PhantomData<T>);

impl<T: FromStr<Err = String>> Visitor<'_> for ParseVisitor<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string or a number")
    }
    fn visit_str<E: de::Error>(self, s: &str) -> Result<T, E> {
        s.parse().map_err(E::custom)
    }
    fn visit_u64<E: de::Error>(self, n: u64) -> Result<T, E> {
        self.visit_str(&n.to_string())
    }
    fn visit_i64<E: de::Error>(self, n: i64) -> Result<T, E> {
        self.visit_str(&n.to_string())
    }
    fn visit_f64<E: de::Error>(self, n: f64) -> Result<T, E> {
        self.visit_str(&n.to_string())
    }
}

/// Implements `Deserialize` with [`ParseVisitor`] for types whose `FromStr` is their check.
macro_rules! deserialize_by_parsing {
    ($($t:ty),*) => {$(
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_any(ParseVisitor(PhantomData))
            }
        }
    )*};
}
deserialize_by_parsing!(OptionalAddr, Endpoint, Ttl, Seconds, HealthUrl);

/// An address, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionalAddr(pub Option<SocketAddr>);

impl FromStr for OptionalAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim().eq_ignore_ascii_case("off") {
            return Ok(OptionalAddr(None));
        }
        s.trim()
            .parse::<SocketAddr>()
            .map(|a| OptionalAddr(Some(a)))
            .map_err(|e| format!("'{s}' is not an address (host:port) or `off`: {e}"))
    }
}

/// An etcd client URL: `http://host:port` or `https://host:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint(pub String);

impl FromStr for Endpoint {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let uri: hyper::Uri = s.parse().map_err(|e| format!("'{s}' is not a URL: {e}"))?;
        match uri.scheme_str() {
            Some("http") | Some("https") => {}
            _ => return Err(format!("'{s}' must start with http:// or https://")),
        }
        let authority = uri
            .authority()
            .ok_or_else(|| format!("'{s}' has no host"))?;
        if authority.host().is_empty() || authority.port_u16().is_none() {
            return Err(format!(
                "'{s}' must name a host and a port, e.g. http://127.0.0.1:2379"
            ));
        }
        if !matches!(uri.path(), "" | "/") {
            return Err(format!("'{s}' must not have a path"));
        }
        Ok(Endpoint(s.trim_end_matches('/').to_string()))
    }
}

/// An `http://host:port/path` URL to ask for the application's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthUrl(pub hyper::Uri);

impl FromStr for HealthUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let uri: hyper::Uri = s
            .trim()
            .parse()
            .map_err(|e| format!("'{s}' is not a URL: {e}"))?;
        if uri.scheme_str() != Some("http") || uri.authority().is_none() {
            return Err(format!(
                "'{s}' must be an http:// URL with a host, e.g. http://127.0.0.1:8080/ready"
            ));
        }
        Ok(HealthUrl(uri))
    }
}

/// A lease TTL: whole seconds, 2 to 3600 (etcd leases have one-second granularity).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ttl(pub Duration);

impl FromStr for Ttl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let secs: u64 = s
            .trim()
            .parse()
            .map_err(|_| format!("'{s}' is not a whole number of seconds"))?;
        if !(2..=3600).contains(&secs) {
            return Err(format!(
                "TTL {secs} is out of range: must be 2 to 3600 seconds"
            ));
        }
        Ok(Ttl(Duration::from_secs(secs)))
    }
}

/// A non-negative number of seconds, fractions allowed, at most an hour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seconds(pub Duration);

impl FromStr for Seconds {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let secs: f64 = s
            .trim()
            .parse()
            .map_err(|_| format!("'{s}' is not a number of seconds"))?;
        if !(secs.is_finite() && (0.0..=3600.0).contains(&secs)) {
            return Err(format!("{secs} is out of range: must be 0 to 3600 seconds"));
        }
        Ok(Seconds(Duration::from_secs_f64(secs)))
    }
}

/// A secret string: never printed by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub(super) String);

impl Secret {
    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_not_debug_printed() {
        assert_eq!(format!("{:?}", Secret("hunter2".into())), "Secret(***)");
    }

    #[test]
    fn each_value_has_one_parser_with_a_readable_refusal() {
        assert_eq!("7".parse::<Ttl>(), Ok(Ttl(Duration::from_secs(7))));
        assert!("1".parse::<Ttl>().unwrap_err().contains("2 to 3600"));
        assert_eq!(
            "0.5".parse::<Seconds>(),
            Ok(Seconds(Duration::from_millis(500)))
        );
        assert!("-1".parse::<Seconds>().is_err());
        assert_eq!("off".parse::<OptionalAddr>(), Ok(OptionalAddr(None)));
        assert_eq!(
            "http://a:1/".parse::<Endpoint>(),
            Ok(Endpoint("http://a:1".into()))
        );
        assert!("http://a".parse::<Endpoint>().unwrap_err().contains("port"));
    }
}
