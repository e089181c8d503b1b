//! The value stored under an endpoint's key: a plain `host:port`, or a JSON object with
//! the address, a weight and metadata. [`EndpointValue`] reads and writes it; the format is
//! described in the [module docs](super#the-value-of-a-key).

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::endpoint::Metadata;

/// The longest host name accepted (RFC 1035: 253 characters in text form).
const MAX_HOST: usize = 253;

/// What one key's value says about its endpoint: address, weight and metadata.
///
/// [`parse`](EndpointValue::parse) reads either form of the
/// [format](super#the-value-of-a-key); [`to_json`](EndpointValue::to_json) writes the JSON
/// form, which is what [`Registration`](super::Registration) stores.
///
/// ```
/// use tower_lb::discover::etcd::EndpointValue;
///
/// let value = EndpointValue::new("10.0.0.7:8080")?.with_weight(3).with_zone("eu-west-1a");
/// let json = value.to_json();
/// assert_eq!(json, r#"{"addr":"10.0.0.7:8080","weight":3,"zone":"eu-west-1a"}"#);
/// assert_eq!(EndpointValue::parse(json.as_bytes())?, value);
///
/// // The plain form: weight 1, no metadata.
/// let plain = EndpointValue::parse(b"api-1.internal:8080")?;
/// assert_eq!((plain.addr(), plain.weight()), ("api-1.internal:8080", 1));
/// # Ok::<(), tower_lb::discover::etcd::ValueError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointValue {
    addr: Arc<str>,
    weight: u32,
    metadata: Metadata,
}

/// Why a value could not be read as an endpoint. The key is skipped (see the
/// [module docs](super#bad-values)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ValueError {
    /// The value is empty (or only white space).
    Empty,
    /// The value is not UTF-8.
    NotUtf8,
    /// The key is not UTF-8 (keys are bytes in etcd; endpoints' keys must be text).
    KeyNotUtf8,
    /// The value starts with `{` but is not a JSON object.
    Json(String),
    /// The JSON object has no `addr` (or `address`) field.
    MissingAddr,
    /// A JSON field appears twice, in any mix of case (`addr` and `Addr`), or both `addr`
    /// and `address` are given.
    DuplicateField(String),
    /// A JSON field has the wrong type.
    WrongType {
        /// The field as written.
        field: String,
        /// What it must be.
        expected: &'static str,
    },
    /// The address is not a `host:port` with a port from 1 to 65535.
    InvalidAddr {
        /// The address as given.
        addr: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The weight is not a whole number from 0 to 4294967295.
    InvalidWeight(String),
}

impl fmt::Display for ValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValueError::Empty => f.write_str("the value is empty"),
            ValueError::NotUtf8 => f.write_str("the value is not UTF-8"),
            ValueError::KeyNotUtf8 => f.write_str("the key is not UTF-8"),
            ValueError::Json(e) => write!(f, "the value is not a JSON object: {e}"),
            ValueError::MissingAddr => f.write_str("the JSON object has no \"addr\" field"),
            ValueError::DuplicateField(field) => {
                write!(f, "the JSON field {field:?} is given twice")
            }
            ValueError::WrongType { field, expected } => {
                write!(f, "the JSON field {field:?} must be {expected}")
            }
            ValueError::InvalidAddr { addr, reason } => {
                write!(f, "invalid address {addr:?}: {reason}")
            }
            ValueError::InvalidWeight(w) => {
                write!(
                    f,
                    "invalid weight {w}: it must be a whole number from 0 to 4294967295"
                )
            }
        }
    }
}

impl std::error::Error for ValueError {}

impl EndpointValue {
    /// A value with this address, weight 1 and no metadata.
    ///
    /// Fails with [`ValueError::InvalidAddr`] unless `addr` is an IP address and port
    /// (`10.0.0.7:8080`, `[2001:db8::7]:8080`) or a host name and port
    /// (`api-1.internal:8080`), with a port from 1 to 65535.
    pub fn new(addr: impl AsRef<str>) -> Result<Self, ValueError> {
        Ok(EndpointValue {
            addr: parse_addr(addr.as_ref())?,
            weight: 1,
            metadata: Metadata::default(),
        })
    }

    /// Sets the weight.
    pub fn with_weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// Sets the zone.
    pub fn with_zone(mut self, zone: impl Into<Arc<str>>) -> Self {
        self.metadata.zone = Some(zone.into());
        self
    }

    /// Sets the [name](Metadata::name) that consistent hashing places the endpoint by.
    pub fn with_name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.metadata.name = Some(name.into());
        self
    }

    /// Adds a label.
    pub fn with_label(mut self, name: impl Into<Arc<str>>, value: impl Into<Arc<str>>) -> Self {
        self.metadata.labels.push((name.into(), value.into()));
        self
    }

    /// The address, normalised: an IP address as Rust prints a [`SocketAddr`] (IPv6 in
    /// brackets, shortest form), a host name as given.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The weight (1 unless the value gives one).
    pub fn weight(&self) -> u32 {
        self.weight
    }

    /// The metadata (zone, name, labels) the value gives; the discovery source names an
    /// endpoint by its address when the value gives no name.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    pub(super) fn into_parts(self) -> (Arc<str>, u32, Metadata) {
        (self.addr, self.weight, self.metadata)
    }

    /// Reads a value in either form of the [format](super#the-value-of-a-key).
    pub fn parse(value: &[u8]) -> Result<Self, ValueError> {
        let text = std::str::from_utf8(value).map_err(|_| ValueError::NotUtf8)?;
        let text = text.trim();
        if text.is_empty() {
            return Err(ValueError::Empty);
        }
        if !text.starts_with('{') {
            return EndpointValue::new(text);
        }
        match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(object)) => from_object(object),
            Ok(_) => Err(ValueError::Json("not an object".into())),
            Err(e) => Err(ValueError::Json(e.to_string())),
        }
    }

    /// The JSON form: `addr`, `weight`, then `zone`, `name` and `labels` when set.
    pub fn to_json(&self) -> String {
        let mut object = Map::new();
        object.insert("addr".into(), Value::String(self.addr.to_string()));
        object.insert("weight".into(), Value::from(self.weight));
        let text = |s: &Arc<str>| Value::String(s.to_string());
        if let Some(zone) = &self.metadata.zone {
            object.insert("zone".into(), text(zone));
        }
        if let Some(name) = &self.metadata.name {
            object.insert("name".into(), text(name));
        }
        if !self.metadata.labels.is_empty() {
            let labels = self
                .metadata
                .labels
                .iter()
                .map(|(k, v)| (k.to_string(), text(v)))
                .collect();
            object.insert("labels".into(), Value::Object(labels));
        }
        Value::Object(object).to_string()
    }
}

/// Checks a `host:port` and returns it normalised.
fn parse_addr(addr: &str) -> Result<Arc<str>, ValueError> {
    let invalid = |reason| ValueError::InvalidAddr {
        addr: addr.to_string(),
        reason,
    };
    let addr = addr.trim();
    if let Ok(socket) = addr.parse::<SocketAddr>() {
        if socket.port() == 0 {
            return Err(invalid("port 0"));
        }
        return Ok(socket.to_string().into());
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(invalid("no port"));
    };
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid("the port is not a number"));
    }
    match port.parse::<u16>() {
        Ok(0) => return Err(invalid("port 0")),
        Ok(_) => {}
        Err(_) => return Err(invalid("the port is above 65535")),
    }
    if host.is_empty() {
        return Err(invalid("no host"));
    }
    if host.starts_with('[') || host.contains(':') {
        return Err(invalid("not an IPv6 address in brackets"));
    }
    if host.len() > MAX_HOST {
        return Err(invalid("the host name is longer than 253 characters"));
    }
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_');
    if !host.bytes().all(allowed) {
        return Err(invalid(
            "the host name has characters other than letters, digits, '-', '.' and '_'",
        ));
    }
    Ok(addr.into())
}

/// A JSON string field's text.
fn string_field(field: &str, value: Value) -> Result<Arc<str>, ValueError> {
    match value {
        Value::String(s) => Ok(s.into()),
        _ => Err(ValueError::WrongType {
            field: field.to_string(),
            expected: "a string",
        }),
    }
}

/// Reads the JSON form; field names match in any case, unknown fields are ignored.
fn from_object(object: Map<String, Value>) -> Result<EndpointValue, ValueError> {
    let mut seen = std::collections::HashSet::new();
    let mut addr = None;
    let mut weight = 1;
    let mut metadata = Metadata::default();
    let mut nested = None;
    for (field, value) in object {
        let lower = field.to_ascii_lowercase();
        let slot = if lower == "address" {
            "addr"
        } else {
            lower.as_str()
        };
        let known = matches!(
            slot,
            "addr" | "weight" | "zone" | "name" | "labels" | "metadata"
        );
        if known && !seen.insert(slot.to_string()) {
            return Err(ValueError::DuplicateField(field));
        }
        match slot {
            "addr" => addr = Some(parse_addr(&string_field(&field, value)?)?),
            "weight" => weight = parse_weight(value)?,
            "zone" => metadata.zone = Some(string_field(&field, value)?),
            "name" => metadata.name = Some(string_field(&field, value)?),
            "labels" => match value {
                Value::Object(labels) => {
                    for (name, value) in labels {
                        let value = string_field(&format!("{field}.{name}"), value)?;
                        metadata.labels.push((name.into(), value));
                    }
                }
                _ => {
                    return Err(ValueError::WrongType {
                        field,
                        expected: "an object of strings",
                    })
                }
            },
            // etcd's own Go naming package writes `{"Addr": ..., "Metadata": <any JSON>}`;
            // an object's string members are read, anything else is ignored.
            "metadata" => nested = Some(value),
            _ => {}
        }
    }
    if let Some(Value::Object(members)) = nested {
        for (name, value) in members {
            let Value::String(value) = value else {
                continue;
            };
            match name.to_ascii_lowercase().as_str() {
                "zone" if metadata.zone.is_none() => metadata.zone = Some(value.into()),
                "name" if metadata.name.is_none() => metadata.name = Some(value.into()),
                "zone" | "name" => {}
                _ => metadata.labels.push((name.into(), value.into())),
            }
        }
    }
    Ok(EndpointValue {
        addr: addr.ok_or(ValueError::MissingAddr)?,
        weight,
        metadata,
    })
}

fn parse_weight(value: Value) -> Result<u32, ValueError> {
    match &value {
        Value::Number(n) => n
            .as_u64()
            .and_then(|w| u32::try_from(w).ok())
            .ok_or_else(|| ValueError::InvalidWeight(n.to_string())),
        _ => Err(ValueError::WrongType {
            field: "weight".into(),
            expected: "a whole number",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(s: &str) -> Result<EndpointValue, ValueError> {
        EndpointValue::parse(s.as_bytes())
    }

    fn bad_addr(s: &str) -> &'static str {
        match parse(s) {
            Err(ValueError::InvalidAddr { reason, .. }) => reason,
            other => panic!("{s:?} gave {other:?}"),
        }
    }

    #[test]
    fn plain_addresses() {
        assert_eq!(parse("10.0.0.1:80").unwrap().addr(), "10.0.0.1:80");
        assert_eq!(parse(" 10.0.0.1:80\n").unwrap().addr(), "10.0.0.1:80");
        assert_eq!(
            parse("[2001:DB8::0:1]:443").unwrap().addr(),
            "[2001:db8::1]:443"
        );
        assert_eq!(
            parse("api-1.internal:8080").unwrap().addr(),
            "api-1.internal:8080"
        );
        let v = parse("localhost:65535").unwrap();
        assert_eq!((v.weight(), v.metadata()), (1, &Metadata::default()));
    }

    #[test]
    fn bad_plain_values() {
        assert_eq!(parse(""), Err(ValueError::Empty));
        assert_eq!(parse("  \n"), Err(ValueError::Empty));
        assert_eq!(
            EndpointValue::parse(&[0xff, b':', b'1']),
            Err(ValueError::NotUtf8)
        );
        assert_eq!(bad_addr("10.0.0.1"), "no port");
        assert_eq!(bad_addr("10.0.0.1:0"), "port 0");
        assert_eq!(bad_addr("host:0"), "port 0");
        assert_eq!(bad_addr("host:65536"), "the port is above 65535");
        assert_eq!(bad_addr("host:+80"), "the port is not a number");
        assert_eq!(bad_addr("host:"), "the port is not a number");
        assert_eq!(bad_addr(":80"), "no host");
        assert_eq!(bad_addr("::1:80"), "not an IPv6 address in brackets");
        assert_eq!(bad_addr("[::g]:80"), "not an IPv6 address in brackets");
        assert_eq!(
            bad_addr("a/b:80"),
            "the host name has characters other than letters, digits, '-', '.' and '_'"
        );
        assert_eq!(
            bad_addr(&format!("{}:80", "a".repeat(254))),
            "the host name is longer than 253 characters"
        );
    }

    #[test]
    fn json_values() {
        let v = parse(
            r#"{"addr":"10.0.0.2:81","weight":0,"zone":"z1","name":"n","labels":{"v":"1.2"}}"#,
        )
        .unwrap();
        assert_eq!(v.addr(), "10.0.0.2:81");
        assert_eq!(v.weight(), 0);
        let mut expected = Metadata::zone("z1").with_label("v", "1.2");
        expected.name = Some("n".into());
        assert_eq!(v.metadata(), &expected);
        // Case-insensitive names, `address`, unknown fields ignored, etcd's Go naming form.
        let v =
            parse(r#"{"Op":0,"Addr":"10.0.0.3:82","Metadata":{"zone":"z2","rack":"r7"}}"#).unwrap();
        assert_eq!(v.addr(), "10.0.0.3:82");
        assert_eq!(v.metadata(), &Metadata::zone("z2").with_label("rack", "r7"));
        let v = parse(r#"{"address":"h:1","weight":4294967295,"Metadata":"anything"}"#).unwrap();
        assert_eq!((v.addr(), v.weight()), ("h:1", u32::MAX));
        // A top-level zone wins over the nested one.
        let v = parse(r#"{"addr":"h:1","zone":"top","metadata":{"zone":"nested"}}"#).unwrap();
        assert_eq!(v.metadata().zone.as_deref(), Some("top"));
    }

    #[test]
    fn bad_json_values() {
        assert!(matches!(parse("{"), Err(ValueError::Json(_))));
        assert!(matches!(parse("{}x"), Err(ValueError::Json(_))));
        assert_eq!(parse("{}"), Err(ValueError::MissingAddr));
        assert_eq!(parse(r#"{"weight":2}"#), Err(ValueError::MissingAddr));
        // Members come in name order: "Address" before "addr".
        assert_eq!(
            parse(r#"{"addr":"h:1","Address":"h:2"}"#),
            Err(ValueError::DuplicateField("addr".into()))
        );
        assert_eq!(
            parse(r#"{"zone":"a","ZONE":"b"}"#),
            Err(ValueError::DuplicateField("zone".into()))
        );
        assert_eq!(
            parse(r#"{"addr":5}"#),
            Err(ValueError::WrongType {
                field: "addr".into(),
                expected: "a string"
            })
        );
        for w in ["-1", "1.5", "4294967296", "1e3"] {
            assert_eq!(
                parse(&format!(r#"{{"addr":"h:1","weight":{w}}}"#)),
                Err(ValueError::InvalidWeight(
                    serde_json::from_str::<Value>(w).unwrap().to_string()
                )),
                "{w}"
            );
        }
        assert!(matches!(
            parse(r#"{"addr":"h:1","weight":"2"}"#),
            Err(ValueError::WrongType { .. })
        ));
        assert!(matches!(
            parse(r#"{"addr":"h:1","labels":{"a":1}}"#),
            Err(ValueError::WrongType { .. })
        ));
        assert!(matches!(
            parse(r#"{"addr":"h:1","labels":[]}"#),
            Err(ValueError::WrongType { .. })
        ));
        assert_eq!(
            parse(r#"{"addr":"h"}"#),
            Err(ValueError::InvalidAddr {
                addr: "h".into(),
                reason: "no port"
            })
        );
    }

    fn host() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<std::net::Ipv4Addr>().prop_map(|ip| ip.to_string()),
            any::<std::net::Ipv6Addr>().prop_map(|ip| format!("[{ip}]")),
            "[a-z0-9][a-z0-9._-]{0,30}",
        ]
    }

    fn text() -> impl Strategy<Value = String> {
        // Any text, quotes, backslashes and control characters included.
        "\\PC{0,12}|[\"\\\\\n\t]{0,3}"
    }

    proptest! {
        #[test]
        fn json_round_trips(
            host in host(),
            port in 1u16..,
            weight in any::<u32>(),
            zone in proptest::option::of(text()),
            name in proptest::option::of(text()),
            labels in proptest::collection::vec((text(), text()), 0..4),
        ) {
            let mut value = EndpointValue::new(format!("{host}:{port}")).unwrap().with_weight(weight);
            if let Some(zone) = zone { value = value.with_zone(zone); }
            if let Some(name) = name { value = value.with_name(name); }
            // JSON objects keep one member per name.
            let mut unique = std::collections::BTreeMap::new();
            for (k, v) in labels { unique.insert(k, v); }
            for (k, v) in unique { value = value.with_label(k, v); }
            let json = value.to_json();
            prop_assert_eq!(EndpointValue::parse(json.as_bytes()), Ok(value));
        }

        #[test]
        fn plain_round_trips(host in host(), port in 1u16..) {
            let value = EndpointValue::parse(format!("{host}:{port}").as_bytes()).unwrap();
            prop_assert_eq!(EndpointValue::parse(value.addr().as_bytes()), Ok(value.clone()));
            prop_assert_eq!(value.weight(), 1);
        }

        #[test]
        fn any_bytes_give_a_value_or_an_error(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = EndpointValue::parse(&bytes);
        }

        #[test]
        fn any_json_like_text_gives_a_value_or_an_error(
            s in "\\{(\"(addr|Addr|address|weight|zone|name|labels|metadata)\":(\"[a-z0-9.:]{0,8}\"|-?[0-9]{1,12}|\\{\\}|null|true),?){0,4}\\}"
        ) {
            let _ = EndpointValue::parse(s.as_bytes());
        }
    }
}
