//! A JSON object kept as its compact text.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{value::RawValue, Map, Value};

/// A JSON object held as the compact text `serde_json` writes for a [`Map`] (keys in order).
///
/// Task params and metadata are stored as that text and answered as it: a list page copies
/// each task's stored text into the answer instead of parsing it into `Value`s and serialising
/// them again, which was a fifth of a list page's CPU.
#[derive(Clone)]
pub struct JsonObject(Box<RawValue>);

impl JsonObject {
    pub fn new(map: &Map<String, Value>) -> Self {
        // A map with string keys always serialises; the fallback only keeps this total.
        serde_json::value::to_raw_value(map)
            .or_else(|_| RawValue::from_string("{}".to_owned()))
            .map_or_else(|_| Self(Box::default()), Self)
    }

    /// Stored text, checked to be one JSON object. The text is kept as it is, so it must be
    /// what [`JsonObject::new`] wrote (every writer of these columns goes through it).
    pub fn from_stored(text: String) -> Result<Self, serde_json::Error> {
        if !text.starts_with('{') {
            return Err(serde::de::Error::custom("not a JSON object"));
        }
        RawValue::from_string(text).map(Self)
    }

    pub fn as_str(&self) -> &str {
        self.0.get()
    }

    /// The object parsed, for the paths that need its entries (REST's limited answer, callbacks);
    /// gRPC reads the text straight into a `Struct`.
    pub fn to_map(&self) -> Map<String, Value> {
        serde_json::from_str(self.0.get()).unwrap_or_else(|err| {
            tracing::error!(error = %err, "a checked JSON object failed to parse");
            Map::new()
        })
    }
}

/// Equal texts: both are canonical, so equal objects have equal texts.
impl PartialEq for JsonObject {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for JsonObject {}

impl Default for JsonObject {
    /// `{}`.
    fn default() -> Self {
        Self::new(&Map::new())
    }
}

impl From<Map<String, Value>> for JsonObject {
    fn from(map: Map<String, Value>) -> Self {
        Self::new(&map)
    }
}

impl fmt::Debug for JsonObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for JsonObject {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

/// Read through a [`Map`], so any deserializer works and the text comes out canonical.
impl<'de> Deserialize<'de> for JsonObject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Map::<String, Value>::deserialize(deserializer).map(|map| Self::new(&map))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::JsonObject;

    fn object(value: serde_json::Value) -> JsonObject {
        match value {
            serde_json::Value::Object(map) => JsonObject::new(&map),
            _ => JsonObject::default(),
        }
    }

    #[test]
    fn answers_the_same_bytes_as_the_parsed_map() {
        let value = json!({"b": [1, 2.5, "x"], "a": {"z": null, "y": true}, "ü": "\u{1F600}\n"});
        let kept = object(value.clone());
        assert_eq!(
            serde_json::to_string(&kept).ok(),
            serde_json::to_string(&value).ok()
        );
        let stored = JsonObject::from_stored(kept.as_str().to_owned()).ok();
        assert_eq!(stored.as_ref(), Some(&kept));
        assert_eq!(serde_json::Value::Object(kept.to_map()), value);
    }

    #[test]
    fn stored_text_must_be_one_object() {
        assert!(JsonObject::from_stored("[1]".into()).is_err());
        assert!(JsonObject::from_stored("{\"a\":".into()).is_err());
        assert!(JsonObject::from_stored("{} {}".into()).is_err());
        assert!(JsonObject::from_stored("{\"a\":1}".into()).is_ok());
    }

    #[test]
    fn reads_back_from_its_own_serialisation_and_from_a_value() {
        let kept = object(json!({"k": [1, {"n": -3}]}));
        let text = serde_json::to_string(&kept).unwrap_or_default();
        let back: Option<JsonObject> = serde_json::from_str(&text).ok();
        assert_eq!(back.as_ref(), Some(&kept));
        let from_value: Option<JsonObject> =
            serde_json::from_value(json!({"k": [1, {"n": -3}]})).ok();
        assert_eq!(from_value.as_ref(), Some(&kept));
    }
}
