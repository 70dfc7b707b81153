//! Kafka Connect's data model: typed schemas with names, versions and parameters, and values.
//!
//! Debezium defines its events in this model (`io.debezium.time.Date` is an `int32` schema with
//! that name, a DECIMAL column is `bytes` named `org.apache.kafka.connect.data.Decimal` with a
//! `scale` parameter, …); the Avro converter then maps it to Avro (see [`crate::avro`]). Keeping
//! the same model means the Avro a Debezium consumer sees is the Avro Debezium itself would write.

/// The type of a Connect schema.
#[derive(Debug, Clone, PartialEq)]
pub enum ConnectType {
    /// 8-bit signed integer.
    Int8,
    /// 16-bit signed integer.
    Int16,
    /// 32-bit signed integer.
    Int32,
    /// 64-bit signed integer.
    Int64,
    /// 32-bit float.
    Float32,
    /// 64-bit float.
    Float64,
    /// Boolean.
    Boolean,
    /// UTF-8 string.
    String,
    /// Bytes.
    Bytes,
    /// Array of one element schema.
    Array(Box<ConnectSchema>),
    /// Map from key schema to value schema.
    Map(Box<ConnectSchema>, Box<ConnectSchema>),
    /// Struct of ordered, named fields.
    Struct(Vec<Field>),
}

/// A named field of a struct.
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    /// Field name.
    pub name: String,
    /// Field schema.
    pub schema: ConnectSchema,
}

/// A Connect schema.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectSchema {
    /// The type.
    pub ty: ConnectType,
    /// Whether the value may be null.
    pub optional: bool,
    /// Logical or record name (`io.debezium.time.Timestamp`, `prefix.db.table.Value`).
    pub name: Option<String>,
    /// Schema version.
    pub version: Option<i32>,
    /// Documentation.
    pub doc: Option<String>,
    /// Parameters, in insertion order (`scale`, `allowed`, …).
    pub parameters: Vec<(String, String)>,
    /// Default value.
    pub default: Option<Value>,
}

impl ConnectSchema {
    /// A required schema of type `ty`.
    pub fn new(ty: ConnectType) -> Self {
        ConnectSchema {
            ty,
            optional: false,
            name: None,
            version: None,
            doc: None,
            parameters: Vec::new(),
            default: None,
        }
    }

    /// A required struct with these fields.
    pub fn struct_of(name: impl Into<String>, fields: Vec<Field>) -> Self {
        ConnectSchema::new(ConnectType::Struct(fields)).named(name)
    }

    /// Makes the schema optional.
    pub fn optional(mut self) -> Self {
        self.optional = true;
        self
    }

    /// Names the schema.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Sets the version.
    pub fn version(mut self, version: i32) -> Self {
        self.version = Some(version);
        self
    }

    /// Adds a parameter.
    pub fn param(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.parameters.push((key.into(), value.into()));
        self
    }

    /// Sets the default value.
    pub fn default_value(mut self, value: Value) -> Self {
        self.default = Some(value);
        self
    }

    /// The fields, if this is a struct.
    pub fn fields(&self) -> &[Field] {
        match &self.ty {
            ConnectType::Struct(fields) => fields,
            _ => &[],
        }
    }

    /// The position of a field by name.
    pub fn field_index(&self, name: &str) -> Option<usize> {
        self.fields().iter().position(|f| f.name == name)
    }

    /// A parameter's value.
    pub fn parameter(&self, key: &str) -> Option<&str> {
        self.parameters.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

impl Field {
    /// A field.
    pub fn new(name: impl Into<String>, schema: ConnectSchema) -> Self {
        Field { name: name.into(), schema }
    }
}

/// Shorthands for the schemas Connect predefines.
pub mod schema {
    use super::{ConnectSchema, ConnectType};

    /// Required int8.
    pub fn int8() -> ConnectSchema {
        ConnectSchema::new(ConnectType::Int8)
    }
    /// Required int16.
    pub fn int16() -> ConnectSchema {
        ConnectSchema::new(ConnectType::Int16)
    }
    /// Required int32.
    pub fn int32() -> ConnectSchema {
        ConnectSchema::new(ConnectType::Int32)
    }
    /// Required int64.
    pub fn int64() -> ConnectSchema {
        ConnectSchema::new(ConnectType::Int64)
    }
    /// Required float32.
    pub fn float32() -> ConnectSchema {
        ConnectSchema::new(ConnectType::Float32)
    }
    /// Required float64.
    pub fn float64() -> ConnectSchema {
        ConnectSchema::new(ConnectType::Float64)
    }
    /// Required boolean.
    pub fn boolean() -> ConnectSchema {
        ConnectSchema::new(ConnectType::Boolean)
    }
    /// Required string.
    pub fn string() -> ConnectSchema {
        ConnectSchema::new(ConnectType::String)
    }
    /// Required bytes.
    pub fn bytes() -> ConnectSchema {
        ConnectSchema::new(ConnectType::Bytes)
    }
    /// Required array of `element`.
    pub fn array(element: ConnectSchema) -> ConnectSchema {
        ConnectSchema::new(ConnectType::Array(Box::new(element)))
    }
    /// `org.apache.kafka.connect.data.Decimal`: unscaled two's-complement big-endian bytes.
    pub fn decimal(precision: u32, scale: u32) -> ConnectSchema {
        bytes()
            .named(super::logical::DECIMAL)
            .version(1)
            .param("scale", scale.to_string())
            .param("connect.decimal.precision", precision.to_string())
    }
}

/// Names of Connect's own logical types, which map to Avro logical types.
pub mod logical {
    /// Decimal as bytes with a `scale` parameter.
    pub const DECIMAL: &str = "org.apache.kafka.connect.data.Decimal";
    /// Days since the epoch, int32.
    pub const DATE: &str = "org.apache.kafka.connect.data.Date";
    /// Milliseconds since midnight, int32.
    pub const TIME: &str = "org.apache.kafka.connect.data.Time";
    /// Milliseconds since the epoch, int64.
    pub const TIMESTAMP: &str = "org.apache.kafka.connect.data.Timestamp";
}

/// A Connect value. Struct values hold one value per schema field, in field order.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Null (only where the schema is optional).
    Null,
    /// Boolean.
    Boolean(bool),
    /// int8.
    Int8(i8),
    /// int16.
    Int16(i16),
    /// int32.
    Int32(i32),
    /// int64.
    Int64(i64),
    /// float32.
    Float32(f32),
    /// float64.
    Float64(f64),
    /// String.
    String(String),
    /// Bytes.
    Bytes(Vec<u8>),
    /// Array.
    Array(Vec<Value>),
    /// Map entries in order.
    Map(Vec<(Value, Value)>),
    /// Struct field values in schema order.
    Struct(Vec<Value>),
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::String(s.to_string())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::String(s)
    }
}
impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int64(v)
    }
}
impl From<i32> for Value {
    fn from(v: i32) -> Self {
        Value::Int32(v)
    }
}
impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Boolean(v)
    }
}
impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Self {
        v.map_or(Value::Null, Into::into)
    }
}

/// Builds a struct value field by field, by name, against its schema.
pub struct StructBuilder<'a> {
    schema: &'a ConnectSchema,
    values: Vec<Value>,
}

impl<'a> StructBuilder<'a> {
    /// Starts a struct of `schema` with every field null (or its default).
    pub fn new(schema: &'a ConnectSchema) -> Self {
        let values = schema.fields().iter().map(|f| f.schema.default.clone().unwrap_or(Value::Null)).collect();
        StructBuilder { schema, values }
    }

    /// Sets a field. Panics if the schema has no such field: that is a bug in the caller.
    pub fn put(mut self, field: &str, value: impl Into<Value>) -> Self {
        let i = self
            .schema
            .field_index(field)
            .unwrap_or_else(|| panic!("schema {:?} has no field {field:?}", self.schema.name));
        self.values[i] = value.into();
        self
    }

    /// The finished struct value.
    pub fn build(self) -> Value {
        Value::Struct(self.values)
    }
}

/// The unscaled value of a decimal as Connect's Decimal bytes: minimal two's complement, big-endian.
pub fn decimal_bytes(unscaled: i128) -> Vec<u8> {
    let bytes = unscaled.to_be_bytes();
    let mut start = 0;
    while start < bytes.len() - 1 {
        let (b, next) = (bytes[start], bytes[start + 1]);
        if (b == 0x00 && next & 0x80 == 0) || (b == 0xff && next & 0x80 != 0) {
            start += 1;
        } else {
            break;
        }
    }
    bytes[start..].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_bytes_are_minimal_twos_complement() {
        assert_eq!(decimal_bytes(0), vec![0x00]);
        assert_eq!(decimal_bytes(127), vec![0x7f]);
        assert_eq!(decimal_bytes(128), vec![0x00, 0x80]);
        assert_eq!(decimal_bytes(-1), vec![0xff]);
        assert_eq!(decimal_bytes(-129), vec![0xff, 0x7f]);
        assert_eq!(decimal_bytes(12345), vec![0x30, 0x39]);
    }
}
