//! Connect schemas as Avro, and Connect values as Avro binary.
//!
//! The mapping follows Confluent's Avro converter (`AvroData`) with its defaults, which is what
//! Debezium deployments run: `int8`/`int16` become `int` with a `connect.type` property; names,
//! versions, parameters and defaults are kept as `connect.*` properties; Connect's Decimal, Date,
//! Time and Timestamp become Avro logical types; an optional schema becomes a union with `null`
//! (first, with a `null` default — or second, when the default is not null); a named record is
//! defined once and referred to by name afterwards. Names are made valid Avro names the way
//! Debezium's schema-name adjuster does (invalid characters become `_`).
//!
//! [`AvroSchema`] holds a schema's JSON text (what the registry stores) next to the Connect schema
//! and the union branch order, so encoding a value needs no lookups.

use serde_json::{Map, Value as Json, json};

use crate::connect::{ConnectSchema, ConnectType, Value, logical};

/// An error turning a schema or value into Avro.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AvroError {
    /// The value does not fit the schema at `path`.
    #[error("value does not match the schema at {path}: {reason}")]
    Mismatch {
        /// Field path, such as `after.amount`.
        path: String,
        /// What did not match.
        reason: String,
    },
    /// The schema cannot be expressed in Avro.
    #[error("schema cannot be expressed in Avro at {path}: {reason}")]
    Unsupported {
        /// Field path.
        path: String,
        /// Why.
        reason: String,
    },
}

/// A Connect schema with its Avro form.
#[derive(Debug, Clone, PartialEq)]
pub struct AvroSchema {
    /// The Connect schema values are encoded with.
    pub connect: ConnectSchema,
    /// The Avro schema as compact JSON text.
    pub json: String,
    /// The first 128 bits of the SHA-256 of `json`: identifies the schema without rehashing it.
    pub fingerprint: u128,
}

impl AvroSchema {
    /// Converts a Connect schema.
    pub fn new(connect: ConnectSchema) -> Result<Self, AvroError> {
        use sha2::Digest;
        let mut ctx = Ctx::default();
        let json = ctx.schema(&connect, "$")?.to_string();
        let digest = sha2::Sha256::digest(json.as_bytes());
        let fingerprint = u128::from_be_bytes(digest[..16].try_into().expect("16 bytes"));
        Ok(AvroSchema { connect, json, fingerprint })
    }

    /// Encodes a value as Avro binary (no framing).
    pub fn encode(&self, value: &Value) -> Result<Vec<u8>, AvroError> {
        let mut out = Vec::with_capacity(128);
        self.encode_into(value, &mut out)?;
        Ok(out)
    }

    /// Appends the Avro binary encoding of `value` to `out`.
    pub fn encode_into(&self, value: &Value, out: &mut Vec<u8>) -> Result<(), AvroError> {
        encode(&self.connect, value, out, &mut Path::root())
    }
}

/// Makes a name valid in Avro (`[A-Za-z_][A-Za-z0-9_]*` per dot-separated part), as Debezium does.
pub fn adjust_name(name: &str) -> String {
    name.split('.')
        .map(|part| {
            let mut s: String =
                part.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect();
            if s.is_empty() || s.starts_with(|c: char| c.is_ascii_digit()) {
                s.insert(0, '_');
            }
            s
        })
        .collect::<Vec<_>>()
        .join(".")
}

#[derive(Default)]
struct Ctx {
    /// Full names of records already defined in this schema.
    defined: Vec<String>,
    /// Counter for unnamed structs (`ConnectDefault`, `ConnectDefault2`, …).
    unnamed: usize,
    /// The namespace of the record being written, which nested names inherit.
    space: Option<String>,
}

impl Ctx {
    fn schema(&mut self, s: &ConnectSchema, path: &str) -> Result<Json, AvroError> {
        let base = self.non_null(s, path)?;
        if !s.optional {
            return Ok(base);
        }
        Ok(match &s.default {
            Some(d) if *d != Value::Null => json!([base, "null"]),
            _ => json!(["null", base]),
        })
    }

    fn non_null(&mut self, s: &ConnectSchema, path: &str) -> Result<Json, AvroError> {
        let primitive = |ty: &str| Json::String(ty.to_string());
        let mut obj = Map::new();
        let base = match &s.ty {
            ConnectType::Int8 | ConnectType::Int16 => {
                obj.insert("type".into(), primitive("int"));
                let connect_type = if s.ty == ConnectType::Int8 { "int8" } else { "int16" };
                obj.insert("connect.type".into(), primitive(connect_type));
                None
            }
            ConnectType::Int32 => Some("int"),
            ConnectType::Int64 => Some("long"),
            ConnectType::Float32 => Some("float"),
            ConnectType::Float64 => Some("double"),
            ConnectType::Boolean => Some("boolean"),
            ConnectType::String => Some("string"),
            ConnectType::Bytes => Some("bytes"),
            ConnectType::Array(items) => {
                obj.insert("type".into(), primitive("array"));
                obj.insert("items".into(), self.schema(items, &format!("{path}[]"))?);
                None
            }
            ConnectType::Map(k, v) if k.ty == ConnectType::String && !k.optional => {
                obj.insert("type".into(), primitive("map"));
                obj.insert("values".into(), self.schema(v, &format!("{path}{{}}"))?);
                None
            }
            ConnectType::Map(k, v) => {
                // Non-string keys: an array of key/value records, as Confluent's converter does.
                let entry = ConnectSchema::struct_of(
                    "io.confluent.connect.avro.MapEntry",
                    vec![
                        crate::connect::Field::new("key", (**k).clone()),
                        crate::connect::Field::new("value", (**v).clone()),
                    ],
                );
                obj.insert("type".into(), primitive("array"));
                obj.insert("items".into(), self.record(&entry, path, false)?);
                None
            }
            ConnectType::Struct(_) => return self.record(s, path, true),
        };
        if let Some(ty) = base {
            obj.insert("type".into(), primitive(ty));
        }
        let name = s.name.as_deref();
        if name == Some(logical::DECIMAL) {
            let scale: u32 =
                s.parameter("scale").and_then(|v| v.parse().ok()).ok_or_else(|| AvroError::Unsupported {
                    path: path.to_string(),
                    reason: "Decimal without an integer 'scale' parameter".into(),
                })?;
            let precision: u32 = s.parameter("connect.decimal.precision").and_then(|v| v.parse().ok()).unwrap_or(64);
            obj.insert("scale".into(), json!(scale));
            obj.insert("precision".into(), json!(precision));
        }
        self.connect_meta(s, &mut obj, path)?;
        match name {
            Some(logical::DECIMAL) => obj.insert("logicalType".into(), primitive("decimal")),
            Some(logical::DATE) => obj.insert("logicalType".into(), primitive("date")),
            Some(logical::TIME) => obj.insert("logicalType".into(), primitive("time-millis")),
            Some(logical::TIMESTAMP) => obj.insert("logicalType".into(), primitive("timestamp-millis")),
            _ => None,
        };
        if obj.len() == 1 {
            return Ok(obj.remove("type").unwrap());
        }
        Ok(Json::Object(obj))
    }

    /// `connect.doc`, `connect.version`, `connect.parameters`, `connect.default`, `connect.name`.
    fn connect_meta(&mut self, s: &ConnectSchema, obj: &mut Map<String, Json>, path: &str) -> Result<(), AvroError> {
        if let Some(doc) = &s.doc {
            obj.insert("connect.doc".into(), json!(doc));
        }
        if let Some(v) = s.version {
            obj.insert("connect.version".into(), json!(v));
        }
        if !s.parameters.is_empty() {
            let params: Map<String, Json> = s.parameters.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
            obj.insert("connect.parameters".into(), Json::Object(params));
        }
        if let Some(d) = &s.default
            && *d != Value::Null
        {
            obj.insert("connect.default".into(), default_json(s, d, path)?);
        }
        if let Some(name) = &s.name {
            obj.insert("connect.name".into(), json!(name));
        }
        Ok(())
    }

    fn record(&mut self, s: &ConnectSchema, path: &str, meta: bool) -> Result<Json, AvroError> {
        let full = match &s.name {
            Some(n) => adjust_name(n),
            None => {
                self.unnamed += 1;
                match self.unnamed {
                    1 => "io.confluent.connect.avro.ConnectDefault".to_string(),
                    n => format!("io.confluent.connect.avro.ConnectDefault{n}"),
                }
            }
        };
        let (namespace, name) = match full.rsplit_once('.') {
            Some((ns, n)) => (Some(ns.to_string()), n.to_string()),
            None => (None, full.clone()),
        };
        // Written as Avro's Java library writes names (and so as Debezium's registered schemas
        // read): a reference or namespace inside the enclosing namespace is left implicit, and a
        // name without a namespace inside one says so with `"namespace": ""`.
        if self.defined.contains(&full) {
            return Ok(Json::String(if namespace.is_some() && namespace == self.space { name } else { full }));
        }
        self.defined.push(full.clone());
        let mut obj = Map::new();
        obj.insert("type".into(), json!("record"));
        obj.insert("name".into(), json!(name));
        match (&namespace, &self.space) {
            (Some(ns), space) if Some(ns) != space.as_ref() => {
                obj.insert("namespace".into(), json!(ns));
            }
            (None, Some(_)) => {
                obj.insert("namespace".into(), json!(""));
            }
            _ => {}
        }
        let saved_space = std::mem::replace(&mut self.space, namespace);
        if let Some(doc) = &s.doc {
            obj.insert("doc".into(), json!(doc));
        }
        let mut fields = Vec::new();
        for f in s.fields() {
            let fpath = if path == "$" { f.name.clone() } else { format!("{path}.{}", f.name) };
            let mut field = Map::new();
            field.insert("name".into(), json!(adjust_name(&f.name)));
            field.insert("type".into(), self.schema(&f.schema, &fpath)?);
            match (&f.schema.default, f.schema.optional) {
                (Some(d), _) if *d != Value::Null => {
                    field.insert("default".into(), default_json(&f.schema, d, &fpath)?);
                }
                (_, true) => {
                    field.insert("default".into(), Json::Null);
                }
                _ => {}
            }
            fields.push(Json::Object(field));
        }
        self.space = saved_space;
        obj.insert("fields".into(), Json::Array(fields));
        if meta {
            if let Some(v) = s.version {
                obj.insert("connect.version".into(), json!(v));
            }
            if let Some(n) = &s.name {
                obj.insert("connect.name".into(), json!(n));
            }
        }
        Ok(Json::Object(obj))
    }
}

/// A default value as Avro JSON.
fn default_json(s: &ConnectSchema, v: &Value, path: &str) -> Result<Json, AvroError> {
    let bad = || AvroError::Mismatch { path: path.to_string(), reason: format!("default {v:?} does not fit") };
    Ok(match (v, &s.ty) {
        (Value::Null, _) => Json::Null,
        (Value::Boolean(b), ConnectType::Boolean) => json!(b),
        (Value::Int8(n), ConnectType::Int8) => json!(n),
        (Value::Int16(n), ConnectType::Int16) => json!(n),
        (Value::Int32(n), ConnectType::Int32) => json!(n),
        (Value::Int64(n), ConnectType::Int64) => json!(n),
        (Value::Float32(n), ConnectType::Float32) => json!(n),
        (Value::Float64(n), ConnectType::Float64) => json!(n),
        (Value::String(t), ConnectType::String) => json!(t),
        // Avro writes byte defaults as a string of code points 0–255.
        (Value::Bytes(b), ConnectType::Bytes) => json!(b.iter().map(|&c| char::from(c)).collect::<String>()),
        _ => return Err(bad()),
    })
}

/// The field path while encoding, built only when an error needs it.
struct Path<'a> {
    parts: Vec<&'a str>,
}

impl<'a> Path<'a> {
    fn root() -> Self {
        Path { parts: Vec::new() }
    }
    fn render(&self) -> String {
        if self.parts.is_empty() { "$".to_string() } else { self.parts.join(".") }
    }
    fn mismatch(&self, reason: impl Into<String>) -> AvroError {
        AvroError::Mismatch { path: self.render(), reason: reason.into() }
    }
}

fn put_long(out: &mut Vec<u8>, n: i64) {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_long(out, b.len() as i64);
    out.extend_from_slice(b);
}

fn encode<'a>(s: &'a ConnectSchema, v: &Value, out: &mut Vec<u8>, path: &mut Path<'a>) -> Result<(), AvroError> {
    if s.optional {
        let null_first = !matches!(&s.default, Some(d) if *d != Value::Null);
        let (null_branch, value_branch) = if null_first { (0, 1) } else { (1, 0) };
        if *v == Value::Null {
            put_long(out, null_branch);
            return Ok(());
        }
        put_long(out, value_branch);
    }
    match (&s.ty, v) {
        (_, Value::Null) => return Err(path.mismatch("null for a required value")),
        (ConnectType::Int8, Value::Int8(n)) => put_long(out, i64::from(*n)),
        (ConnectType::Int16, Value::Int16(n)) => put_long(out, i64::from(*n)),
        (ConnectType::Int32, Value::Int32(n)) => put_long(out, i64::from(*n)),
        (ConnectType::Int64, Value::Int64(n)) => put_long(out, *n),
        (ConnectType::Float32, Value::Float32(f)) => out.extend_from_slice(&f.to_le_bytes()),
        (ConnectType::Float64, Value::Float64(f)) => out.extend_from_slice(&f.to_le_bytes()),
        (ConnectType::Boolean, Value::Boolean(b)) => out.push(u8::from(*b)),
        (ConnectType::String, Value::String(t)) => put_bytes(out, t.as_bytes()),
        (ConnectType::Bytes, Value::Bytes(b)) => put_bytes(out, b),
        (ConnectType::Array(items), Value::Array(vs)) => {
            if !vs.is_empty() {
                put_long(out, vs.len() as i64);
                for item in vs {
                    encode(items, item, out, path)?;
                }
            }
            put_long(out, 0);
        }
        (ConnectType::Map(k, val), Value::Map(entries)) => {
            // A string-keyed map is an Avro map; any other is an array of key/value records:
            // both write each entry as key then value inside counted blocks.
            if !entries.is_empty() {
                put_long(out, entries.len() as i64);
                for (key, value) in entries {
                    encode(k, key, out, path)?;
                    encode(val, value, out, path)?;
                }
            }
            put_long(out, 0);
        }
        (ConnectType::Struct(fields), Value::Struct(values)) => {
            if fields.len() != values.len() {
                return Err(path.mismatch(format!("struct has {} values for {} fields", values.len(), fields.len())));
            }
            for (f, value) in fields.iter().zip(values) {
                path.parts.push(&f.name);
                encode(&f.schema, value, out, path)?;
                path.parts.pop();
            }
        }
        (ty, value) => return Err(path.mismatch(format!("{value:?} for a {ty:?} schema"))),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connect::{Field, StructBuilder, schema};

    fn table_value() -> ConnectSchema {
        ConnectSchema::struct_of(
            "shop.inventory.orders.Value",
            vec![
                Field::new("id", schema::int32()),
                Field::new("tiny", schema::int8()),
                Field::new("amount", schema::decimal(10, 2).optional()),
                Field::new("note", schema::string().optional()),
                Field::new("status", schema::string().optional().default_value(Value::from("new"))),
            ],
        )
        .optional()
    }

    #[test]
    fn maps_types_like_confluents_converter() {
        let s = AvroSchema::new(table_value()).unwrap();
        let j: Json = serde_json::from_str(&s.json).unwrap();
        assert_eq!(j[0], json!("null"));
        let rec = &j[1];
        assert_eq!(rec["name"], "Value");
        assert_eq!(rec["namespace"], "shop.inventory.orders");
        assert_eq!(rec["connect.name"], "shop.inventory.orders.Value");
        assert_eq!(rec["fields"][1]["type"], json!({"type": "int", "connect.type": "int8"}));
        let amount = &rec["fields"][2]["type"][1];
        assert_eq!(amount["logicalType"], "decimal");
        assert_eq!(amount["scale"], 2);
        assert_eq!(amount["precision"], 10);
        assert_eq!(amount["connect.parameters"]["scale"], "2");
        assert_eq!(rec["fields"][4]["type"][1], "null", "non-null default puts null second");
        assert_eq!(rec["fields"][4]["default"], "new");
    }

    #[test]
    fn a_named_record_is_defined_once() {
        let value = table_value();
        let env = ConnectSchema::struct_of(
            "x.Envelope",
            vec![Field::new("before", value.clone()), Field::new("after", value)],
        );
        let s = AvroSchema::new(env).unwrap();
        let j: Json = serde_json::from_str(&s.json).unwrap();
        assert_eq!(j["fields"][1]["type"], json!(["null", "shop.inventory.orders.Value"]));
        apache_avro::Schema::parse_str(&s.json).expect("valid Avro");
    }

    #[test]
    fn adjusts_invalid_names() {
        assert_eq!(adjust_name("mysql-server-1.inventory.customers.Value"), "mysql_server_1.inventory.customers.Value");
        assert_eq!(adjust_name("1db.t"), "_1db.t");
    }

    #[test]
    fn encodes_what_apache_avro_decodes() {
        let s = AvroSchema::new(table_value()).unwrap();
        let value = StructBuilder::new(&s.connect)
            .put("id", 42)
            .put("tiny", Value::Int8(-3))
            .put("amount", Value::Bytes(crate::connect::decimal_bytes(12345)))
            .build();
        let bytes = s.encode(&value).unwrap();
        let parsed = apache_avro::Schema::parse_str(&s.json).unwrap();
        let decoded = apache_avro::from_avro_datum(&parsed, &mut &bytes[..], None).unwrap();
        use apache_avro::types::Value as A;
        let A::Union(1, rec) = decoded else { panic!("expected the record branch: {decoded:?}") };
        let A::Record(fields) = *rec else { panic!("record") };
        assert_eq!(fields[0], ("id".into(), A::Int(42)));
        assert_eq!(fields[1], ("tiny".into(), A::Int(-3)));
        let A::Union(1, amount) = &fields[2].1 else { panic!("amount") };
        let A::Decimal(d) = &**amount else { panic!("decimal: {amount:?}") };
        assert_eq!(Vec::<u8>::try_from(d.clone()).unwrap(), vec![0x30, 0x39]);
        assert_eq!(fields[3].1, A::Union(0, Box::new(A::Null)));
        assert_eq!(fields[4].1, A::Union(0, Box::new(A::String("new".into()))));
    }

    #[test]
    fn mismatches_name_the_field() {
        let s = AvroSchema::new(table_value()).unwrap();
        let bad = StructBuilder::new(&s.connect).put("id", "not a number").build();
        let err = s.encode(&bad).unwrap_err();
        assert!(matches!(&err, AvroError::Mismatch { path, .. } if path == "id"), "{err}");
        let missing = StructBuilder::new(&s.connect).put("id", 1).build();
        let err = s.encode(&missing).unwrap_err();
        assert!(matches!(&err, AvroError::Mismatch { path, .. } if path == "tiny"), "{err}");
    }
}
