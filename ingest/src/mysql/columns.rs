//! The column model of a captured table and its mapping to Debezium's Connect types and values.
//!
//! A table's definition comes from one of two places that must agree: `information_schema` (for
//! the snapshot, [`TableDef::from_information_schema`]) and the binlog's `TABLE_MAP` event with
//! `binlog_row_metadata=FULL` (for streaming, [`TableDef::from_table_map`]), so rows are always
//! decoded with the definition in force at their binlog position. Both produce the same
//! [`ColumnType`]s, and hence the same Connect schemas, for the same table.
//!
//! The mapping is Debezium's default (`decimal.handling.mode=precise`,
//! `time.precision.mode=adaptive_time_microseconds`, `bigint.unsigned.handling.mode=long`,
//! `binary.handling.mode=bytes`).

use mysql_async::{
    Value as MyValue,
    binlog::{
        events::{OptionalMetaExtractor, OptionalMetadataField, TableMapEvent},
        value::BinlogValue,
    },
    consts::ColumnType as Wire,
};
use serde::{Deserialize, Serialize};
use weir_schemas::connect::{ConnectSchema, Field, Value, schema};

/// The binary collation id: string columns with it are byte strings.
const BINARY_CHARSET: u16 = 63;
/// Collation ids of the `latin1` character set.
const LATIN1_COLLATIONS: [u16; 8] = [5, 8, 15, 31, 47, 48, 49, 94];

/// What a column holds, as far as the change events are concerned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ColumnType {
    /// `BIT(1)`.
    Boolean,
    /// `TINYINT`.
    TinyInt {
        /// `UNSIGNED`.
        unsigned: bool,
    },
    /// `SMALLINT`.
    SmallInt {
        /// `UNSIGNED`.
        unsigned: bool,
    },
    /// `MEDIUMINT`.
    MediumInt {
        /// `UNSIGNED`.
        unsigned: bool,
    },
    /// `INT`.
    Int {
        /// `UNSIGNED`.
        unsigned: bool,
    },
    /// `BIGINT`.
    BigInt {
        /// `UNSIGNED`.
        unsigned: bool,
    },
    /// `FLOAT`.
    Float,
    /// `DOUBLE`, `REAL`.
    Double,
    /// `DECIMAL(p, s)`, `NUMERIC`.
    Decimal {
        /// Digits.
        precision: u32,
        /// Digits after the point.
        scale: u32,
    },
    /// `BIT(n)`, n > 1.
    Bit {
        /// n.
        length: u32,
    },
    /// `YEAR`.
    Year,
    /// `DATE`.
    Date,
    /// `TIME(fsp)`.
    Time {
        /// Fractional-second digits.
        fsp: u8,
    },
    /// `DATETIME(fsp)`.
    DateTime {
        /// Fractional-second digits.
        fsp: u8,
    },
    /// `TIMESTAMP(fsp)`.
    Timestamp {
        /// Fractional-second digits.
        fsp: u8,
    },
    /// `CHAR`, `VARCHAR`, `TEXT` with a character set.
    Text {
        /// Stored in Latin-1 (the binlog carries the column's own bytes; UTF-8 otherwise).
        #[serde(default)]
        latin1: bool,
    },
    /// `BINARY`, `VARBINARY`, `BLOB`.
    Binary,
    /// `JSON` (MySQL's binary JSON; on MariaDB a `LONGTEXT` checked with `json_valid`).
    Json,
    /// `ENUM(…)`.
    Enum {
        /// The allowed values, in order.
        values: Vec<String>,
    },
    /// `SET(…)`.
    Set {
        /// The members, in bit order.
        values: Vec<String>,
    },
    /// `GEOMETRY`, `POINT`, `POLYGON`, …
    Geometry,
}

/// One column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Column {
    /// Name.
    pub name: String,
    /// Type.
    #[serde(flatten)]
    pub ty: ColumnType,
    /// `NULL` allowed.
    pub nullable: bool,
}

/// A table's definition at one binlog position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableDef {
    /// Database.
    pub db: String,
    /// Table.
    pub table: String,
    /// Columns in table order.
    pub columns: Vec<Column>,
    /// Indexes of the primary-key columns, in key order.
    pub key: Vec<usize>,
}

/// A definition could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ColumnError {
    /// The binlog table map lacks what `binlog_row_metadata=FULL` provides.
    #[error(
        "table map of {db}.{table} has no column names: set binlog_row_metadata=FULL on the server (and restart \
         from a position written after that)"
    )]
    NoMetadata {
        /// Database.
        db: String,
        /// Table.
        table: String,
    },
    /// A type Weir does not know.
    #[error("{db}.{table}.{column}: unsupported column type {ty}")]
    Unsupported {
        /// Database.
        db: String,
        /// Table.
        table: String,
        /// Column.
        column: String,
        /// The type as the server names it.
        ty: String,
    },
    /// The table map could not be read.
    #[error("table map of {db}.{table}: {reason}")]
    TableMap {
        /// Database.
        db: String,
        /// Table.
        table: String,
        /// Why.
        reason: String,
    },
}

/// One row of `information_schema.COLUMNS` (plus what the caller knows about JSON on MariaDB).
#[derive(Debug, Clone, Default)]
pub struct InfoColumn {
    /// `COLUMN_NAME`.
    pub name: String,
    /// `DATA_TYPE`, e.g. `int`.
    pub data_type: String,
    /// `COLUMN_TYPE`, e.g. `int(10) unsigned`, `enum('a','b')`.
    pub column_type: String,
    /// `IS_NULLABLE = 'YES'`.
    pub nullable: bool,
    /// `NUMERIC_PRECISION`.
    pub precision: Option<u64>,
    /// `NUMERIC_SCALE`.
    pub scale: Option<u64>,
    /// `DATETIME_PRECISION`.
    pub datetime_precision: Option<u64>,
    /// `CHARACTER_SET_NAME`.
    pub charset: Option<String>,
    /// A `json_valid(col)` check constraint (how MariaDB declares JSON).
    pub json_checked: bool,
}

/// A column type as SQL declares it, in the words of `information_schema` or of Debezium's
/// schema history: the one mapping from a type name to a [`ColumnType`].
#[derive(Debug, Clone)]
pub struct Declared<'a> {
    /// The type's name in lower case without attributes (`int`, `varchar`, `enum`, …).
    pub data_type: &'a str,
    /// `UNSIGNED`.
    pub unsigned: bool,
    /// Digits of a `DECIMAL`, bits of a `BIT`.
    pub precision: Option<u64>,
    /// Digits after the point of a `DECIMAL`.
    pub scale: Option<u64>,
    /// Fractional-second digits of `TIME`, `DATETIME`, `TIMESTAMP`.
    pub fsp: u8,
    /// A text column stored in Latin-1.
    pub latin1: bool,
    /// A text column checked with `json_valid` (how MariaDB declares JSON).
    pub json_checked: bool,
    /// Members of an `ENUM` or `SET`.
    pub members: Option<Vec<String>>,
}

impl Declared<'_> {
    /// The type, or `None` for a type Weir does not capture (or a `DECIMAL`/`BIT` without its
    /// precision, an `ENUM`/`SET` without members).
    pub fn column_type(self) -> Option<ColumnType> {
        let unsigned = self.unsigned;
        let fsp = self.fsp;
        Some(match self.data_type {
            "bool" | "boolean" => ColumnType::TinyInt { unsigned: false },
            "tinyint" => ColumnType::TinyInt { unsigned },
            "smallint" => ColumnType::SmallInt { unsigned },
            "mediumint" => ColumnType::MediumInt { unsigned },
            "int" | "integer" => ColumnType::Int { unsigned },
            "bigint" => ColumnType::BigInt { unsigned },
            "float" => ColumnType::Float,
            "double" | "real" | "double precision" => ColumnType::Double,
            "decimal" | "numeric" | "dec" | "fixed" => {
                ColumnType::Decimal { precision: self.precision? as u32, scale: self.scale.unwrap_or(0) as u32 }
            }
            "bit" => match self.precision? {
                1 => ColumnType::Boolean,
                n => ColumnType::Bit { length: n as u32 },
            },
            "year" => ColumnType::Year,
            "date" => ColumnType::Date,
            "time" => ColumnType::Time { fsp },
            "datetime" => ColumnType::DateTime { fsp },
            "timestamp" => ColumnType::Timestamp { fsp },
            "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" | "nchar" | "nvarchar"
                if self.json_checked =>
            {
                ColumnType::Json
            }
            "char" | "varchar" | "tinytext" | "text" | "mediumtext" | "longtext" | "nchar" | "nvarchar" => {
                ColumnType::Text { latin1: self.latin1 }
            }
            "binary" | "varbinary" | "tinyblob" | "blob" | "mediumblob" | "longblob" => ColumnType::Binary,
            "json" => ColumnType::Json,
            "enum" => ColumnType::Enum { values: self.members? },
            "set" => ColumnType::Set { values: self.members? },
            "geometry" | "point" | "linestring" | "polygon" | "multipoint" | "multilinestring" | "multipolygon"
            | "geometrycollection" => ColumnType::Geometry,
            _ => return None,
        })
    }
}

impl TableDef {
    /// The definition from `information_schema.COLUMNS` rows in `ORDINAL_POSITION` order and the
    /// primary key's column names in key order.
    pub fn from_information_schema(
        db: &str,
        table: &str,
        rows: &[InfoColumn],
        key_names: &[String],
    ) -> Result<TableDef, ColumnError> {
        let mut columns = Vec::with_capacity(rows.len());
        let mut key = Vec::new();
        for c in rows {
            let unsupported = || ColumnError::Unsupported {
                db: db.into(),
                table: table.into(),
                column: c.name.clone(),
                ty: c.column_type.clone(),
            };
            let data_type = c.data_type.to_ascii_lowercase();
            let members = matches!(data_type.as_str(), "enum" | "set").then(|| parse_members(&c.column_type));
            let ty = Declared {
                data_type: &data_type,
                unsigned: c.column_type.to_ascii_lowercase().contains("unsigned"),
                precision: c.precision,
                scale: c.scale,
                fsp: c.datetime_precision.unwrap_or(0) as u8,
                latin1: c.charset.as_deref() == Some("latin1"),
                json_checked: c.json_checked,
                members: members.flatten(),
            }
            .column_type()
            .ok_or_else(unsupported)?;
            columns.push(Column { name: c.name.clone(), ty, nullable: c.nullable });
        }
        for name in key_names {
            if let Some(i) = columns.iter().position(|c| &c.name == name) {
                key.push(i);
            }
        }
        Ok(TableDef { db: db.into(), table: table.into(), columns, key })
    }

    /// The columns declared JSON (for [`TableDef::from_table_map`] on MariaDB).
    pub fn json_columns(&self) -> Vec<String> {
        self.columns.iter().filter(|c| c.ty == ColumnType::Json).map(|c| c.name.clone()).collect()
    }

    /// The definition a `TABLE_MAP` event carries (requires `binlog_row_metadata=FULL`).
    /// `json_columns` names the columns the server declares JSON by a check constraint
    /// (MariaDB), which the table map cannot show.
    pub fn from_table_map(tme: &TableMapEvent<'_>, json_columns: &[String]) -> Result<TableDef, ColumnError> {
        let db = tme.database_name().to_string();
        let table = tme.table_name().to_string();
        let map_error = |reason: String| ColumnError::TableMap { db: db.clone(), table: table.clone(), reason };
        let meta = OptionalMetaExtractor::new(tme.iter_optional_meta()).map_err(|e| map_error(e.to_string()))?;
        let names: Vec<String> = meta
            .iter_column_name()
            .map(|n| n.map(|n| n.name().to_string()))
            .collect::<Result<_, _>>()
            .map_err(|e| map_error(e.to_string()))?;
        let count = tme.columns_count() as usize;
        if names.len() != count {
            return Err(ColumnError::NoMetadata { db, table });
        }
        let mut enums = Vec::new();
        let mut sets = Vec::new();
        for field in tme.iter_optional_meta() {
            match field.map_err(|e| map_error(e.to_string()))? {
                OptionalMetadataField::EnumStrValue(v) => {
                    for values in v.iter_values() {
                        let values = values.map_err(|e| map_error(e.to_string()))?;
                        enums.push(values.values().iter().map(|s| s.value().to_string()).collect::<Vec<_>>());
                    }
                }
                OptionalMetadataField::SetStrValue(v) => {
                    for values in v.iter_values() {
                        let values = values.map_err(|e| map_error(e.to_string()))?;
                        sets.push(values.values().iter().map(|s| s.value().to_string()).collect::<Vec<_>>());
                    }
                }
                _ => {}
            }
        }
        let (mut enums, mut sets) = (enums.into_iter(), sets.into_iter());
        let mut signedness = meta.iter_signedness();
        let mut charsets = meta.iter_charset();
        let nulls = tme.null_bitmask();
        let mut columns = Vec::with_capacity(count);
        for (i, name) in names.into_iter().enumerate() {
            let wire = tme
                .get_column_type(i)
                .map_err(|e| map_error(format!("column {name}: {e}")))?
                .ok_or_else(|| map_error(format!("column {name}: no type")))?;
            let m = tme.get_column_metadata(i).unwrap_or(&[]);
            let byte = |k: usize| m.get(k).copied().unwrap_or(0);
            let unsigned = if wire.is_numeric_type() { signedness.next().unwrap_or(false) } else { false };
            let charset = if wire.is_character_type() {
                charsets.next().transpose().map_err(|e| map_error(e.to_string()))?.unwrap_or(0)
            } else {
                0
            };
            let unsupported = || ColumnError::Unsupported {
                db: db.clone(),
                table: table.clone(),
                column: name.clone(),
                ty: format!("{wire:?}"),
            };
            let ty = match wire {
                Wire::MYSQL_TYPE_TINY => ColumnType::TinyInt { unsigned },
                Wire::MYSQL_TYPE_SHORT => ColumnType::SmallInt { unsigned },
                Wire::MYSQL_TYPE_INT24 => ColumnType::MediumInt { unsigned },
                Wire::MYSQL_TYPE_LONG => ColumnType::Int { unsigned },
                Wire::MYSQL_TYPE_LONGLONG => ColumnType::BigInt { unsigned },
                Wire::MYSQL_TYPE_FLOAT => ColumnType::Float,
                Wire::MYSQL_TYPE_DOUBLE => ColumnType::Double,
                Wire::MYSQL_TYPE_NEWDECIMAL => {
                    ColumnType::Decimal { precision: u32::from(byte(0)), scale: u32::from(byte(1)) }
                }
                Wire::MYSQL_TYPE_BIT => match u32::from(byte(1)) * 8 + u32::from(byte(0)) {
                    1 => ColumnType::Boolean,
                    length => ColumnType::Bit { length },
                },
                Wire::MYSQL_TYPE_YEAR => ColumnType::Year,
                Wire::MYSQL_TYPE_DATE | Wire::MYSQL_TYPE_NEWDATE => ColumnType::Date,
                Wire::MYSQL_TYPE_TIME => ColumnType::Time { fsp: 0 },
                Wire::MYSQL_TYPE_TIME2 => ColumnType::Time { fsp: byte(0) },
                Wire::MYSQL_TYPE_DATETIME => ColumnType::DateTime { fsp: 0 },
                Wire::MYSQL_TYPE_DATETIME2 => ColumnType::DateTime { fsp: byte(0) },
                Wire::MYSQL_TYPE_TIMESTAMP => ColumnType::Timestamp { fsp: 0 },
                Wire::MYSQL_TYPE_TIMESTAMP2 => ColumnType::Timestamp { fsp: byte(0) },
                Wire::MYSQL_TYPE_JSON => ColumnType::Json,
                Wire::MYSQL_TYPE_ENUM => ColumnType::Enum { values: enums.next().ok_or_else(unsupported)? },
                Wire::MYSQL_TYPE_SET => ColumnType::Set { values: sets.next().ok_or_else(unsupported)? },
                Wire::MYSQL_TYPE_GEOMETRY => ColumnType::Geometry,
                Wire::MYSQL_TYPE_VARCHAR
                | Wire::MYSQL_TYPE_VAR_STRING
                | Wire::MYSQL_TYPE_STRING
                | Wire::MYSQL_TYPE_BLOB
                | Wire::MYSQL_TYPE_TINY_BLOB
                | Wire::MYSQL_TYPE_MEDIUM_BLOB
                | Wire::MYSQL_TYPE_LONG_BLOB => {
                    if charset == BINARY_CHARSET {
                        ColumnType::Binary
                    } else if json_columns.contains(&name) {
                        ColumnType::Json
                    } else {
                        ColumnType::Text { latin1: LATIN1_COLLATIONS.contains(&charset) }
                    }
                }
                _ => return Err(unsupported()),
            };
            let nullable = nulls.get(i).map(|b| *b).unwrap_or(true);
            columns.push(Column { name, ty, nullable });
        }
        let key = meta
            .iter_primary_key()
            .map(|k| k.map(|k| k as usize))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| map_error(e.to_string()))?;
        Ok(TableDef { db, table, columns, key })
    }

    /// The row's fields, as Debezium names and types them.
    pub fn fields(&self) -> Vec<Field> {
        self.columns.iter().map(|c| Field::new(&c.name, c.schema())).collect()
    }

    /// The key's fields (primary-key columns, required).
    pub fn key_fields(&self) -> Vec<Field> {
        self.key
            .iter()
            .map(|&i| {
                let c = &self.columns[i];
                let mut s = c.schema();
                s.optional = false;
                Field::new(&c.name, s)
            })
            .collect()
    }
}

/// The members of `enum('a','b''c')` / `set(…)`.
fn parse_members(column_type: &str) -> Option<Vec<String>> {
    let open = column_type.find('(')?;
    let inner = column_type[open + 1..].strip_suffix(')')?;
    let mut out = Vec::new();
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                let mut value = String::new();
                loop {
                    match chars.next()? {
                        '\'' if chars.peek() == Some(&'\'') => {
                            chars.next();
                            value.push('\'');
                        }
                        '\'' => break,
                        '\\' => value.push(chars.next()?),
                        other => value.push(other),
                    }
                }
                out.push(value);
            }
            ',' | ' ' => {}
            _ => return None,
        }
    }
    Some(out)
}

/// Days from 1970-01-01 to a civil date (proleptic Gregorian).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (i64::from(m) + 9) % 12;
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day number (inverse of [`days_from_civil`]).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// `1529476623.123456` (seconds since the epoch, UTC) as Debezium's ZonedTimestamp text with
/// `fsp` fractional digits: `2018-06-20T06:37:03.123456Z`.
fn zoned_timestamp(secs: i64, micros: u32, fsp: u8) -> String {
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let t = secs.rem_euclid(86_400);
    let mut s = format!("{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}", t / 3600, t / 60 % 60, t % 60);
    if fsp > 0 {
        let frac = format!("{micros:06}");
        s.push('.');
        s.push_str(&frac[..usize::from(fsp.min(6))]);
    }
    s.push('Z');
    s
}

/// A decimal in text (`-12.5`) as Connect Decimal bytes at `scale`: the unscaled value in minimal
/// two's complement, big-endian, of any size (MySQL allows 65 digits).
pub fn decimal_text_bytes(text: &str, scale: u32) -> Option<Vec<u8>> {
    let text = text.trim();
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let scale = scale as usize;
    let mut all: Vec<u8> = int.bytes().chain(frac.bytes().chain(std::iter::repeat(b'0')).take(scale)).collect();
    if all.is_empty()
        || !all.iter().all(u8::is_ascii_digit)
        || !frac[frac.len().min(scale)..].bytes().all(|b| b == b'0')
    {
        return None;
    }
    // Base-256 magnitude, little-endian, from the decimal digits.
    let mut magnitude: Vec<u8> = vec![0];
    for d in all.drain(..) {
        let mut carry = u32::from(d - b'0');
        for byte in magnitude.iter_mut() {
            let v = u32::from(*byte) * 10 + carry;
            *byte = (v & 0xff) as u8;
            carry = v >> 8;
        }
        while carry > 0 {
            magnitude.push((carry & 0xff) as u8);
            carry >>= 8;
        }
    }
    magnitude.push(0); // room for the sign bit
    if negative {
        let mut carry = 1u16;
        for byte in magnitude.iter_mut() {
            let v = u16::from(!*byte) + carry;
            *byte = (v & 0xff) as u8;
            carry = v >> 8;
        }
    }
    magnitude.reverse();
    // Minimal: drop leading bytes that only repeat the sign.
    let mut start = 0;
    while start + 1 < magnitude.len() {
        let (b, next) = (magnitude[start], magnitude[start + 1]);
        if (b == 0x00 && next & 0x80 == 0) || (b == 0xff && next & 0x80 != 0) {
            start += 1;
        } else {
            break;
        }
    }
    Some(magnitude[start..].to_vec())
}

impl Column {
    /// The Connect schema Debezium gives this column.
    pub fn schema(&self) -> ConnectSchema {
        let s = match &self.ty {
            ColumnType::Boolean => schema::boolean(),
            ColumnType::TinyInt { .. } | ColumnType::SmallInt { unsigned: false } => schema::int16(),
            ColumnType::SmallInt { unsigned: true }
            | ColumnType::MediumInt { .. }
            | ColumnType::Int { unsigned: false } => schema::int32(),
            ColumnType::Int { unsigned: true } | ColumnType::BigInt { .. } => schema::int64(),
            ColumnType::Float => schema::float32(),
            ColumnType::Double => schema::float64(),
            ColumnType::Decimal { precision, scale } => schema::decimal(*precision, *scale),
            ColumnType::Bit { length } => {
                schema::bytes().named("io.debezium.data.Bits").version(1).param("length", length.to_string())
            }
            ColumnType::Year => schema::int32().named("io.debezium.time.Year").version(1),
            ColumnType::Date => schema::int32().named("io.debezium.time.Date").version(1),
            ColumnType::Time { .. } => schema::int64().named("io.debezium.time.MicroTime").version(1),
            ColumnType::DateTime { fsp } if *fsp <= 3 => schema::int64().named("io.debezium.time.Timestamp").version(1),
            ColumnType::DateTime { .. } => schema::int64().named("io.debezium.time.MicroTimestamp").version(1),
            ColumnType::Timestamp { .. } => schema::string().named("io.debezium.time.ZonedTimestamp").version(1),
            ColumnType::Text { .. } => schema::string(),
            ColumnType::Binary => schema::bytes(),
            ColumnType::Json => schema::string().named("io.debezium.data.Json").version(1),
            ColumnType::Enum { values } => {
                schema::string().named("io.debezium.data.Enum").version(1).param("allowed", values.join(","))
            }
            ColumnType::Set { values } => {
                schema::string().named("io.debezium.data.EnumSet").version(1).param("allowed", values.join(","))
            }
            ColumnType::Geometry => ConnectSchema::struct_of(
                "io.debezium.data.geometry.Geometry",
                vec![Field::new("wkb", schema::bytes()), Field::new("srid", schema::int32().optional())],
            )
            .version(1),
        };
        if self.nullable { s.optional() } else { s }
    }

    /// A binlog value as the event's Connect value.
    pub fn binlog_value(&self, value: &BinlogValue<'_>) -> Result<Value, String> {
        match value {
            BinlogValue::Value(v) => self.value(v, true),
            BinlogValue::Jsonb(j) => {
                let json = serde_json::Value::try_from(j.clone()).map_err(|e| format!("binary JSON: {e}"))?;
                Ok(Value::String(json.to_string()))
            }
            BinlogValue::JsonDiff(_) => {
                Err("partial JSON update: set binlog_row_value_options='' (full JSON images)".to_string())
            }
        }
    }

    /// A value from the binlog (`from_binlog`: strings in the column's character set) or from
    /// the snapshot's binary-protocol rows (strings in the connection's UTF-8) as the event's
    /// Connect value. Zero dates become null (or the epoch for `NOT NULL` columns), as in Debezium.
    pub fn value(&self, value: &MyValue, from_binlog: bool) -> Result<Value, String> {
        if matches!(value, MyValue::NULL) {
            return Ok(Value::Null);
        }
        let bad = || format!("column {}: unexpected value {value:?} for {:?}", self.name, self.ty);
        let int = || -> Result<i64, String> {
            match value {
                MyValue::Int(i) => Ok(*i),
                MyValue::UInt(u) => Ok(*u as i64),
                MyValue::Bytes(b) => std::str::from_utf8(b).ok().and_then(|s| s.trim().parse().ok()).ok_or_else(bad),
                _ => Err(bad()),
            }
        };
        let zero = |v: Value| if self.nullable { Value::Null } else { v };
        Ok(match &self.ty {
            ColumnType::Boolean => match value {
                MyValue::Bytes(b) => Value::Boolean(b.iter().any(|&x| x != 0)),
                _ => Value::Boolean(int()? != 0),
            },
            ColumnType::TinyInt { .. } | ColumnType::SmallInt { unsigned: false } => Value::Int16(int()? as i16),
            ColumnType::MediumInt { unsigned: false } => {
                // mysql_common reads the binlog's 3-byte signed integer without sign extension;
                // a signed MEDIUMINT never reaches 2^23, so anything there is a negative number.
                let v = int()?;
                Value::Int32(if v >= 0x80_0000 { v - 0x100_0000 } else { v } as i32)
            }
            ColumnType::SmallInt { unsigned: true }
            | ColumnType::MediumInt { unsigned: true }
            | ColumnType::Int { unsigned: false } => Value::Int32(int()? as i32),
            ColumnType::Int { unsigned: true } | ColumnType::BigInt { .. } => Value::Int64(int()?),
            ColumnType::Float => match value {
                MyValue::Float(f) => Value::Float32(*f),
                MyValue::Double(d) => Value::Float32(*d as f32),
                _ => return Err(bad()),
            },
            ColumnType::Double => match value {
                MyValue::Double(d) => Value::Float64(*d),
                MyValue::Float(f) => Value::Float64(f64::from(*f)),
                _ => return Err(bad()),
            },
            ColumnType::Decimal { scale, .. } => match value {
                MyValue::Bytes(b) => Value::Bytes(
                    std::str::from_utf8(b).ok().and_then(|t| decimal_text_bytes(t, *scale)).ok_or_else(bad)?,
                ),
                _ => return Err(bad()),
            },
            ColumnType::Bit { length } => match value {
                MyValue::Bytes(b) => {
                    // The server sends BIT big-endian; Debezium's Bits are little-endian, sized to n bits.
                    let n = (*length as usize).div_ceil(8);
                    let mut le: Vec<u8> = b.iter().rev().copied().collect();
                    le.resize(n, 0);
                    Value::Bytes(le)
                }
                _ => {
                    let v = int()? as u64;
                    Value::Bytes(v.to_le_bytes()[..(*length as usize).div_ceil(8)].to_vec())
                }
            },
            ColumnType::Year => Value::Int32(int()? as i32),
            ColumnType::Date => match value {
                MyValue::Date(0, 0, 0, ..) => zero(Value::Int32(0)),
                MyValue::Date(y, m, d, ..) => {
                    Value::Int32(days_from_civil(i64::from(*y), u32::from(*m), u32::from(*d)) as i32)
                }
                _ => return Err(bad()),
            },
            ColumnType::Time { .. } => match value {
                MyValue::Time(negative, days, h, m, s, us) => {
                    let secs = ((i64::from(*days) * 24 + i64::from(*h)) * 60 + i64::from(*m)) * 60 + i64::from(*s);
                    let micros = secs * 1_000_000 + i64::from(*us);
                    Value::Int64(if *negative { -micros } else { micros })
                }
                _ => return Err(bad()),
            },
            ColumnType::DateTime { fsp } => match value {
                MyValue::Date(0, 0, 0, ..) => zero(Value::Int64(0)),
                MyValue::Date(y, mo, d, h, mi, s, us) => {
                    let days = days_from_civil(i64::from(*y), u32::from(*mo), u32::from(*d));
                    let secs = days * 86_400 + i64::from(*h) * 3600 + i64::from(*mi) * 60 + i64::from(*s);
                    if *fsp <= 3 {
                        Value::Int64(secs * 1000 + i64::from(*us) / 1000)
                    } else {
                        Value::Int64(secs * 1_000_000 + i64::from(*us))
                    }
                }
                _ => return Err(bad()),
            },
            ColumnType::Timestamp { fsp } => {
                let (secs, micros) = match value {
                    // Binlog: "seconds[.micros]" since the epoch.
                    MyValue::Bytes(b) => {
                        let text = std::str::from_utf8(b).map_err(|_| bad())?;
                        let (s, us) = text.split_once('.').unwrap_or((text, "0"));
                        (s.parse::<i64>().map_err(|_| bad())?, us.parse::<u32>().map_err(|_| bad())?)
                    }
                    // Snapshot (session time zone UTC).
                    MyValue::Date(0, 0, 0, ..) => (0, 0),
                    MyValue::Date(y, mo, d, h, mi, s, us) => {
                        let days = days_from_civil(i64::from(*y), u32::from(*mo), u32::from(*d));
                        (days * 86_400 + i64::from(*h) * 3600 + i64::from(*mi) * 60 + i64::from(*s), *us)
                    }
                    _ => return Err(bad()),
                };
                if secs == 0 && micros == 0 {
                    zero(Value::String(zoned_timestamp(0, 0, *fsp)))
                } else {
                    Value::String(zoned_timestamp(secs, micros, *fsp))
                }
            }
            ColumnType::Text { latin1 } => match value {
                MyValue::Bytes(b) if *latin1 && from_binlog => {
                    Value::String(b.iter().map(|&x| char::from(x)).collect())
                }
                MyValue::Bytes(b) => Value::String(String::from_utf8_lossy(b).into_owned()),
                _ => return Err(bad()),
            },
            ColumnType::Binary => match value {
                MyValue::Bytes(b) => Value::Bytes(b.clone()),
                _ => return Err(bad()),
            },
            ColumnType::Json => match value {
                MyValue::Bytes(b) => {
                    // Text JSON (MariaDB, or MySQL's snapshot rows): normalised like the binlog's.
                    let json: serde_json::Value =
                        serde_json::from_slice(b).map_err(|e| format!("{}: {e}", self.name))?;
                    Value::String(json.to_string())
                }
                _ => return Err(bad()),
            },
            ColumnType::Enum { values } => match value {
                // Binlog: 1-based index (0 = the empty error value).
                MyValue::Int(i) => {
                    Value::String(usize::try_from(*i - 1).ok().and_then(|i| values.get(i)).cloned().unwrap_or_default())
                }
                MyValue::Bytes(b) => Value::String(String::from_utf8_lossy(b).into_owned()),
                _ => return Err(bad()),
            },
            ColumnType::Set { values } => {
                // Binlog: little-endian bitmask; snapshot selects `col+0`, the same bitmask as a number.
                let mask: u64 = match value {
                    MyValue::Bytes(b) => b.iter().rev().fold(0u64, |acc, &x| (acc << 8) | u64::from(x)),
                    _ => int()? as u64,
                };
                let members: Vec<&str> = values
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| *i < 64 && mask & (1 << i) != 0)
                    .map(|(_, v)| v.as_str())
                    .collect();
                Value::String(members.join(","))
            }
            ColumnType::Geometry => match value {
                // MySQL's internal geometry: 4-byte little-endian SRID, then WKB.
                MyValue::Bytes(b) if b.len() >= 4 => {
                    let srid = i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                    Value::Struct(vec![Value::Bytes(b[4..].to_vec()), Value::Int32(srid)])
                }
                _ => return Err(bad()),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_schemas::connect::decimal_bytes;

    #[test]
    fn decimals_of_any_size() {
        for (text, scale, unscaled) in
            [("12.50", 2, 1250i128), ("-12.5", 2, -1250), ("0", 3, 0), ("-0.001", 3, -1), ("99999999", 0, 99_999_999)]
        {
            assert_eq!(decimal_text_bytes(text, scale).unwrap(), decimal_bytes(unscaled), "{text}");
        }
        // 65 digits: beyond i128.
        let big = "9".repeat(65);
        let bytes = decimal_text_bytes(&big, 0).unwrap();
        assert_eq!(bytes.len(), 28);
        assert_eq!(bytes[0] & 0x80, 0, "positive");
        assert!(decimal_text_bytes("1.234", 2).is_none(), "more digits than the scale");
        assert!(decimal_text_bytes("abc", 0).is_none());
    }

    #[test]
    fn dates_and_timestamps() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2018, 6, 20), 17_702);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
        assert_eq!(civil_from_days(17_702), (2018, 6, 20));
        assert_eq!(zoned_timestamp(1_529_501_823, 0, 0), "2018-06-20T13:37:03Z");
        assert_eq!(zoned_timestamp(1_529_501_823, 120_000, 3), "2018-06-20T13:37:03.120Z");
    }

    #[test]
    fn enum_members_with_quotes() {
        assert_eq!(parse_members("enum('a','b''c','d,e')").unwrap(), ["a", "b'c", "d,e"]);
        assert_eq!(parse_members("set('x')").unwrap(), ["x"]);
    }
}
