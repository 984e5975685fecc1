//! `google.protobuf.Struct` as the server holds it: decoded from a request, or written for an
//! answer straight from JSON into protobuf's wire format.
//!
//! A page of 100 tasks carries 200 of these. Built as `prost_types::Struct`s, each JSON key
//! and value became its own allocation in a `BTreeMap`, and prost then measured every nested
//! message again at each level while encoding. Written here, a stored JSON object's text is read
//! once into one buffer of wire bytes, which prost copies into the answer.

use std::fmt;

use prost::{
    bytes::{Buf, BufMut},
    encoding::{encode_varint, DecodeContext, WireType},
    DecodeError, Message,
};
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

#[derive(Clone, PartialEq)]
pub enum JsonStruct {
    /// Read from a request.
    Decoded(prost_types::Struct),
    /// Written for an answer: the Struct's fields in protobuf's wire format.
    Encoded(Vec<u8>),
}

impl Default for JsonStruct {
    fn default() -> Self {
        JsonStruct::Decoded(prost_types::Struct::default())
    }
}

impl fmt::Debug for JsonStruct {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JsonStruct::Decoded(fields) => fields.fmt(formatter),
            JsonStruct::Encoded(bytes) => write!(formatter, "Struct({} bytes)", bytes.len()),
        }
    }
}

impl JsonStruct {
    /// A JSON object's text (already checked to be one) as wire bytes; an error if it is not
    /// one object after all.
    pub fn from_object_text(text: &str) -> Result<Self, serde_json::Error> {
        let mut wire = Vec::with_capacity(text.len() + text.len() / 4);
        let mut deserializer = serde_json::Deserializer::from_str(text);
        FieldsSeed(&mut wire).deserialize(&mut deserializer)?;
        deserializer.end()?;
        Ok(JsonStruct::Encoded(wire))
    }

    pub fn from_object(object: &Map<String, Value>) -> Self {
        let mut wire = Vec::new();
        write_fields(&mut wire, object);
        JsonStruct::Encoded(wire)
    }

    /// The fields as `prost_types::Struct`, decoding written ones again (not on a hot path).
    pub fn into_fields(self) -> Result<prost_types::Struct, DecodeError> {
        match self {
            JsonStruct::Decoded(fields) => Ok(fields),
            JsonStruct::Encoded(wire) => prost_types::Struct::decode(wire.as_slice()),
        }
    }
}

impl Message for JsonStruct {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        match self {
            JsonStruct::Decoded(fields) => fields.encode_raw(buf),
            JsonStruct::Encoded(wire) => buf.put_slice(wire),
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        let mut fields = std::mem::take(self).into_fields()?;
        let merged = fields.merge_field(tag, wire_type, buf, ctx);
        *self = JsonStruct::Decoded(fields);
        merged
    }

    fn encoded_len(&self) -> usize {
        match self {
            JsonStruct::Decoded(fields) => fields.encoded_len(),
            JsonStruct::Encoded(wire) => wire.len(),
        }
    }

    fn clear(&mut self) {
        *self = JsonStruct::default();
    }
}

// Tags (field number << 3 | wire type) of google/protobuf/struct.proto.
const STRUCT_FIELD: u8 = 0x0A; // Struct.fields = 1: a map entry, length-delimited
const ENTRY_KEY: u8 = 0x0A; // key = 1
const ENTRY_VALUE: u8 = 0x12; // value = 2
const NULL_VALUE: u8 = 0x08; // Value.null_value = 1, varint
const NUMBER_VALUE: u8 = 0x11; // number_value = 2, 64-bit
const STRING_VALUE: u8 = 0x1A; // string_value = 3
const BOOL_VALUE: u8 = 0x20; // bool_value = 4, varint
const STRUCT_VALUE: u8 = 0x2A; // struct_value = 5
const LIST_VALUE: u8 = 0x32; // list_value = 6
const LIST_ELEMENT: u8 = 0x0A; // ListValue.values = 1

/// Starts a length-delimited field whose length is not known yet: one byte is kept for it, and
/// [`close`] makes room for more if the field turns out longer than 127 bytes.
fn open(wire: &mut Vec<u8>, tag: u8) -> usize {
    wire.extend_from_slice(&[tag, 0]);
    wire.len()
}

fn close(wire: &mut Vec<u8>, start: usize) {
    let length = wire.len() - start;
    if let Ok(short @ 0..=0x7F) = u8::try_from(length) {
        wire[start - 1] = short;
        return;
    }
    let mut varint = Vec::with_capacity(10);
    encode_varint(length as u64, &mut varint);
    wire[start - 1] = varint[0];
    wire.splice(start..start, varint[1..].iter().copied());
}

/// Takes back a field opened for an element that did not come (the end of a list or map).
fn cancel(wire: &mut Vec<u8>, start: usize) {
    wire.truncate(start - 2);
}

fn bytes_field(wire: &mut Vec<u8>, tag: u8, bytes: &[u8]) {
    wire.push(tag);
    encode_varint(bytes.len() as u64, wire);
    wire.extend_from_slice(bytes);
}

fn null(wire: &mut Vec<u8>) {
    wire.extend_from_slice(&[NULL_VALUE, 0]);
}

fn boolean(wire: &mut Vec<u8>, flag: bool) {
    wire.extend_from_slice(&[BOOL_VALUE, u8::from(flag)]);
}

fn number(wire: &mut Vec<u8>, number: f64) {
    wire.push(NUMBER_VALUE);
    wire.extend_from_slice(&number.to_le_bytes());
}

fn write_fields(wire: &mut Vec<u8>, object: &Map<String, Value>) {
    for (key, value) in object {
        let entry = open(wire, STRUCT_FIELD);
        bytes_field(wire, ENTRY_KEY, key.as_bytes());
        let value_start = open(wire, ENTRY_VALUE);
        write_value(wire, value);
        close(wire, value_start);
        close(wire, entry);
    }
}

/// A `Value` message's fields.
fn write_value(wire: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => null(wire),
        Value::Bool(flag) => boolean(wire, *flag),
        Value::Number(value) => number(wire, value.as_f64().unwrap_or(0.0)),
        Value::String(text) => bytes_field(wire, STRING_VALUE, text.as_bytes()),
        Value::Array(items) => {
            let list = open(wire, LIST_VALUE);
            for item in items {
                let element = open(wire, LIST_ELEMENT);
                write_value(wire, item);
                close(wire, element);
            }
            close(wire, list);
        }
        Value::Object(object) => {
            let fields = open(wire, STRUCT_VALUE);
            write_fields(wire, object);
            close(wire, fields);
        }
    }
}

/// A JSON object read into a `Struct`'s fields.
struct FieldsSeed<'a>(&'a mut Vec<u8>);

impl<'de> DeserializeSeed<'de> for FieldsSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for FieldsSeed<'_> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        read_fields(self.0, map)
    }
}

fn read_fields<'de, A: MapAccess<'de>>(wire: &mut Vec<u8>, mut map: A) -> Result<(), A::Error> {
    loop {
        let entry = open(wire, STRUCT_FIELD);
        if map.next_key_seed(KeySeed(wire))?.is_none() {
            cancel(wire, entry);
            return Ok(());
        }
        let value = open(wire, ENTRY_VALUE);
        map.next_value_seed(ValueSeed(wire))?;
        close(wire, value);
        close(wire, entry);
    }
}

struct KeySeed<'a>(&'a mut Vec<u8>);

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a key")
    }

    fn visit_str<E>(self, key: &str) -> Result<(), E> {
        bytes_field(self.0, ENTRY_KEY, key.as_bytes());
        Ok(())
    }
}

/// Any JSON value read into a `Value` message's fields.
struct ValueSeed<'a>(&'a mut Vec<u8>);

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = ();

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        null(self.0);
        Ok(())
    }

    fn visit_bool<E>(self, flag: bool) -> Result<(), E> {
        boolean(self.0, flag);
        Ok(())
    }

    fn visit_i64<E>(self, value: i64) -> Result<(), E> {
        number(self.0, value as f64);
        Ok(())
    }

    fn visit_u64<E>(self, value: u64) -> Result<(), E> {
        number(self.0, value as f64);
        Ok(())
    }

    fn visit_f64<E>(self, value: f64) -> Result<(), E> {
        number(self.0, value);
        Ok(())
    }

    fn visit_str<E>(self, text: &str) -> Result<(), E> {
        bytes_field(self.0, STRING_VALUE, text.as_bytes());
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let wire = self.0;
        let list = open(wire, LIST_VALUE);
        loop {
            let element = open(wire, LIST_ELEMENT);
            if seq.next_element_seed(ValueSeed(wire))?.is_none() {
                cancel(wire, element);
                break;
            }
            close(wire, element);
        }
        close(wire, list);
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        let wire = self.0;
        let fields = open(wire, STRUCT_VALUE);
        read_fields(wire, map)?;
        close(wire, fields);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::proto::struct_from_json;

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(object) => object,
            other => panic!("not an object: {other}"),
        }
    }

    fn samples() -> Vec<Value> {
        let long_text = "é".repeat(200);
        // Lengths on both sides of a one-byte varint (127), a two-byte one and a three-byte one.
        let edge_text = "x".repeat(150);
        let many: Vec<Value> = (0..3000).map(|n| json!({"n": n, "s": "x"})).collect();
        vec![
            json!({}),
            json!({"a": 3, "b": 1.5, "c": [true, null, "x", {"y": []}], "d": {"e": -7, "f": "é\n"}}),
            json!({"big": 18446744073709551615u64, "neg": -9007199254740993i64, "z": {}, "e": ""}),
            json!({"long": long_text, "nested": {"deeper": {"list": [[1, [2, [3]]], {}]}}}),
            json!({"edge": edge_text, "just": "y".repeat(120), "over": ["z".repeat(124)]}),
            json!({"many": many}),
        ]
    }

    #[test]
    fn written_fields_are_the_bytes_prost_encodes_for_the_same_struct() {
        for sample in samples() {
            let expected = struct_from_json(&object(sample.clone())).encode_to_vec();
            let from_text = JsonStruct::from_object_text(&sample.to_string()).unwrap();
            let from_value = JsonStruct::from_object(&object(sample.clone()));
            assert_eq!(from_text.encode_to_vec(), expected, "{sample}");
            assert_eq!(from_value.encode_to_vec(), expected, "{sample}");
        }
    }

    #[test]
    fn written_fields_decode_as_the_struct_even_where_prost_writes_fewer_bytes() {
        // prost leaves out an empty map key; written here it is kept, which decodes the same.
        let sample = json!({"": 1, "a": {"": [null]}});
        let written = JsonStruct::from_object_text(&sample.to_string()).unwrap();
        let decoded = prost_types::Struct::decode(written.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded, struct_from_json(&object(sample)));
    }

    #[test]
    fn text_that_is_not_one_object_is_refused() {
        for text in ["[1]", "3", "{", "{} {}", "{\"a\":}"] {
            assert!(JsonStruct::from_object_text(text).is_err(), "{text}");
        }
    }

    #[test]
    fn a_decoded_struct_encodes_and_merges_as_prost_does() {
        let fields = struct_from_json(&object(json!({"a": [1, "b"], "c": {"d": true}})));
        let wire = fields.encode_to_vec();
        let decoded = JsonStruct::decode(wire.as_slice()).unwrap();
        assert_eq!(decoded, JsonStruct::Decoded(fields.clone()));
        assert_eq!(decoded.encode_to_vec(), wire);
        let mut written = JsonStruct::from_object(&object(json!({"x": 1})));
        written.merge(wire.as_slice()).unwrap();
        let merged = written.into_fields().unwrap();
        assert_eq!(merged.fields.len(), 3);
    }
}
