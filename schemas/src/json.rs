//! Connect values as JSON, as Kafka Connect's `JsonConverter` writes them with
//! `schemas.enable=true`: `{"schema": <schema>, "payload": <value>}`.
//!
//! Schemas: `{"type": "struct", "fields": [{"type": "int32", "optional": false, "field": "id"}],
//! "optional": false, "name": …, "version": …, "parameters": {…}, "default": …}`. Payloads: bytes
//! (and so Decimal) as base64, structs as objects, maps with string keys as objects and other maps
//! as `[key, value]` pairs. A Debezium consumer configured with the JSON converter reads these
//! unchanged.

use base64::{Engine, engine::general_purpose::STANDARD};
use serde_json::{Map, Value as Json, json};

use crate::connect::{ConnectSchema, ConnectType, Value};

/// The JSON form of a schema.
pub fn schema_json(schema: &ConnectSchema) -> Json {
    let mut out = Map::new();
    let ty = match &schema.ty {
        ConnectType::Int8 => "int8",
        ConnectType::Int16 => "int16",
        ConnectType::Int32 => "int32",
        ConnectType::Int64 => "int64",
        ConnectType::Float32 => "float",
        ConnectType::Float64 => "double",
        ConnectType::Boolean => "boolean",
        ConnectType::String => "string",
        ConnectType::Bytes => "bytes",
        ConnectType::Array(items) => {
            out.insert("items".into(), schema_json(items));
            "array"
        }
        ConnectType::Map(k, v) => {
            out.insert("keys".into(), schema_json(k));
            out.insert("values".into(), schema_json(v));
            "map"
        }
        ConnectType::Struct(fields) => {
            let fields = fields
                .iter()
                .map(|f| {
                    let mut j = schema_json(&f.schema);
                    j.as_object_mut().expect("schemas are objects").insert("field".into(), json!(f.name));
                    j
                })
                .collect();
            out.insert("fields".into(), Json::Array(fields));
            "struct"
        }
    };
    out.insert("type".into(), json!(ty));
    out.insert("optional".into(), json!(schema.optional));
    if let Some(name) = &schema.name {
        out.insert("name".into(), json!(name));
    }
    if let Some(version) = schema.version {
        out.insert("version".into(), json!(version));
    }
    if let Some(doc) = &schema.doc {
        out.insert("doc".into(), json!(doc));
    }
    if !schema.parameters.is_empty() {
        let params: Map<String, Json> = schema.parameters.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        out.insert("parameters".into(), Json::Object(params));
    }
    if let Some(default) = &schema.default {
        out.insert("default".into(), payload(schema, default));
    }
    Json::Object(out)
}

/// The JSON payload of `value` under `schema`.
pub fn payload(schema: &ConnectSchema, value: &Value) -> Json {
    match (value, &schema.ty) {
        (Value::Null, _) => Json::Null,
        (Value::Boolean(b), _) => json!(b),
        (Value::Int8(v), _) => json!(v),
        (Value::Int16(v), _) => json!(v),
        (Value::Int32(v), _) => json!(v),
        (Value::Int64(v), _) => json!(v),
        (Value::Float32(v), _) => json!(v),
        (Value::Float64(v), _) => json!(v),
        (Value::String(s), _) => json!(s),
        (Value::Bytes(b), _) => json!(STANDARD.encode(b)),
        (Value::Array(items), ConnectType::Array(item)) => {
            Json::Array(items.iter().map(|v| payload(item, v)).collect())
        }
        (Value::Map(entries), ConnectType::Map(k, v)) if k.ty == ConnectType::String => Json::Object(
            entries
                .iter()
                .map(|(key, value)| {
                    let key = match key {
                        Value::String(s) => s.clone(),
                        other => format!("{other:?}"),
                    };
                    (key, payload(v, value))
                })
                .collect(),
        ),
        (Value::Map(entries), ConnectType::Map(k, v)) => {
            Json::Array(entries.iter().map(|(key, value)| json!([payload(k, key), payload(v, value)])).collect())
        }
        (Value::Struct(values), ConnectType::Struct(fields)) => {
            Json::Object(fields.iter().zip(values).map(|(f, v)| (f.name.clone(), payload(&f.schema, v))).collect())
        }
        // A value that does not fit its schema is a bug in the caller; show it rather than lose it.
        (other, _) => json!(format!("{other:?}")),
    }
}

/// `{"schema": …, "payload": …}` as bytes.
pub fn encode(schema: &ConnectSchema, value: &Value) -> Vec<u8> {
    serde_json::to_vec(&json!({"schema": schema_json(schema), "payload": payload(schema, value)}))
        .expect("JSON values serialize")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connect::{Field, schema};

    #[test]
    fn envelopes_as_the_json_converter_writes_them() {
        let s = ConnectSchema::struct_of(
            "t.Value",
            vec![
                Field::new("id", schema::int32()),
                Field::new("price", schema::decimal(10, 2).optional()),
                Field::new("tags", ConnectSchema::new(ConnectType::Array(Box::new(schema::string()))).optional()),
            ],
        )
        .version(1);
        let v = Value::Struct(vec![
            Value::Int32(7),
            Value::Bytes(crate::connect::decimal_bytes(1250)),
            Value::Array(vec![Value::from("a")]),
        ]);
        let j: Json = serde_json::from_slice(&encode(&s, &v)).unwrap();
        assert_eq!(j["payload"], json!({"id": 7, "price": "BOI=", "tags": ["a"]}));
        assert_eq!(j["schema"]["type"], "struct");
        assert_eq!(j["schema"]["name"], "t.Value");
        assert_eq!(j["schema"]["fields"][0], json!({"type": "int32", "optional": false, "field": "id"}));
        assert_eq!(j["schema"]["fields"][1]["name"], "org.apache.kafka.connect.data.Decimal");
        assert_eq!(j["schema"]["fields"][1]["parameters"]["scale"], "2");
        assert_eq!(j["schema"]["fields"][2]["items"]["type"], "string");
    }
}
