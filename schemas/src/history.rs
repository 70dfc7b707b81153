//! Debezium's schema-history shapes, shared by the two places a table definition is published:
//! schema-change events on the `<prefix>` topic (Connect structs `io.debezium.connector.schema.
//! Change`/`Table`/`Column`, in Avro) and records of the `<prefix>.schema-history` topic (JSON, as
//! Debezium's `HistoryRecord` and `JsonTableChangeSerializer` write them, so Debezium's own history
//! reader recovers Weir's history).
//!
//! Checked against Debezium 3.6 (`debezium-connector-common/src/main/java/io/debezium/{schema/
//! SchemaFactory,relational/history/{HistoryRecord,JsonTableChangeSerializer,
//! ConnectTableChangeSerializer},relational/TableId}.java`) by `ingest/tests/debezium_peer.rs`,
//! which runs those classes.

use serde::{Deserialize, Serialize};

use crate::connect::{ConnectSchema, Field, StructBuilder, Value, schema};

/// One column as Debezium's history describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ColumnDoc {
    /// Column name.
    pub name: String,
    /// `java.sql.Types` code.
    pub jdbc_type: i32,
    /// The database's own type code (unset for MySQL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub native_type: Option<i32>,
    /// Type name (`INT UNSIGNED`, `VARCHAR`, …).
    pub type_name: String,
    /// The type as written in DDL.
    #[serde(default)]
    pub type_expression: Option<String>,
    /// Character set of a text column.
    #[serde(default)]
    pub charset_name: Option<String>,
    /// Length or precision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<i32>,
    /// Scale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<i32>,
    /// 1-based position in the table.
    pub position: i32,
    /// `NULL` allowed.
    pub optional: bool,
    /// `AUTO_INCREMENT`.
    #[serde(default)]
    pub auto_incremented: bool,
    /// A generated column.
    #[serde(default)]
    pub generated: bool,
    /// Column comment.
    #[serde(default)]
    pub comment: Option<String>,
    /// Whether the column has a default (JSON history only).
    #[serde(default)]
    pub has_default_value: bool,
    /// The default, as an expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_value_expression: Option<String>,
    /// Members of an `ENUM` or `SET`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enum_values: Option<Vec<String>>,
}

/// A `(name, value)` attribute of a table (JSON history only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttributeDoc {
    /// Name.
    pub name: String,
    /// Value.
    pub value: Option<String>,
}

/// A table's definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TableDoc {
    /// The table's default character set.
    #[serde(default)]
    pub default_charset_name: Option<String>,
    /// Primary-key columns, in key order.
    #[serde(default)]
    pub primary_key_column_names: Vec<String>,
    /// Columns in table order.
    pub columns: Vec<ColumnDoc>,
    /// Table attributes (JSON history only).
    #[serde(default)]
    pub attributes: Vec<AttributeDoc>,
}

/// What happened to a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ChangeKind {
    /// Created (or read by a snapshot).
    Create,
    /// Altered.
    Alter,
    /// Dropped.
    Drop,
}

impl ChangeKind {
    /// The name Debezium writes.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Create => "CREATE",
            ChangeKind::Alter => "ALTER",
            ChangeKind::Drop => "DROP",
        }
    }
}

/// One table's change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TableChangeDoc {
    /// Create, alter or drop.
    #[serde(rename = "type")]
    pub kind: ChangeKind,
    /// The table id, quoted as [`quoted_id`] quotes it: `"db"."table"`.
    pub id: String,
    /// The id before a rename.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_id: Option<String>,
    /// The definition after the change (before it, for a drop).
    #[serde(default)]
    pub table: Option<TableDoc>,
    /// Table comment.
    #[serde(default)]
    pub comment: Option<String>,
}

/// A record of the schema-history topic, as Debezium's `HistoryRecord` writes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryDoc {
    /// The source partition (`{"server": <prefix>}` for the binlog connectors).
    pub source: serde_json::Map<String, serde_json::Value>,
    /// The source offset at the statement (for the binlog connectors `file`, `pos`, `server_id`,
    /// `ts_sec`, `gtids`, `snapshot`).
    pub position: serde_json::Map<String, serde_json::Value>,
    /// When it was recorded, ms since the epoch.
    #[serde(rename = "ts_ms")]
    pub ts_ms: i64,
    /// The database the statement ran in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database_name: Option<String>,
    /// The schema (unused by the binlog connectors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema_name: Option<String>,
    /// The DDL statement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ddl: Option<String>,
    /// The tables the statement changed.
    #[serde(default)]
    pub table_changes: Vec<TableChangeDoc>,
}

/// A table id as Debezium's `TableId.toDoubleQuotedString` writes it: each part in `"`, a `"`
/// inside a part doubled, parts joined by `.`.
pub fn quoted_id(parts: &[&str]) -> String {
    let quoted: Vec<String> = parts.iter().map(|p| format!("\"{}\"", p.replace('"', "\"\""))).collect();
    quoted.join(".")
}

/// The parts of a [`quoted_id`] (unquoted parts are accepted too), or `None` if a quote is not
/// closed.
pub fn parse_quoted_id(id: &str) -> Option<Vec<String>> {
    let mut parts = Vec::new();
    let mut chars = id.chars().peekable();
    loop {
        let mut part = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next()? {
                    '"' if chars.peek() == Some(&'"') => {
                        chars.next();
                        part.push('"');
                    }
                    '"' => break,
                    c => part.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == '.' {
                    break;
                }
                part.push(c);
                chars.next();
            }
        }
        parts.push(part);
        match chars.next() {
            None => return Some(parts),
            Some('.') => {}
            Some(_) => return None,
        }
    }
}

/// `io.debezium.connector.schema.Column`.
fn column_schema() -> ConnectSchema {
    ConnectSchema::struct_of(
        "io.debezium.connector.schema.Column",
        vec![
            Field::new("name", schema::string()),
            Field::new("jdbcType", schema::int32()),
            Field::new("nativeType", schema::int32().optional()),
            Field::new("typeName", schema::string()),
            Field::new("typeExpression", schema::string().optional()),
            Field::new("charsetName", schema::string().optional()),
            Field::new("length", schema::int32().optional()),
            Field::new("scale", schema::int32().optional()),
            Field::new("position", schema::int32()),
            Field::new("optional", schema::boolean().optional()),
            Field::new("autoIncremented", schema::boolean().optional()),
            Field::new("generated", schema::boolean().optional()),
            Field::new("comment", schema::string().optional()),
            Field::new("defaultValueExpression", schema::string().optional()),
            Field::new("enumValues", schema::array(schema::string()).optional()),
        ],
    )
    .version(1)
}

/// `io.debezium.connector.schema.Table` (optional: a drop may carry none).
fn table_schema() -> ConnectSchema {
    ConnectSchema::struct_of(
        "io.debezium.connector.schema.Table",
        vec![
            Field::new("defaultCharsetName", schema::string().optional()),
            Field::new("primaryKeyColumnNames", schema::array(schema::string()).optional()),
            Field::new("columns", schema::array(column_schema())),
            Field::new("comment", schema::string().optional()),
        ],
    )
    .version(1)
    .optional()
}

/// `io.debezium.connector.schema.Change`: one element of a schema-change event's `tableChanges`.
pub fn change_schema() -> ConnectSchema {
    ConnectSchema::struct_of(
        "io.debezium.connector.schema.Change",
        vec![
            Field::new("type", schema::string()),
            Field::new("id", schema::string()),
            Field::new("table", table_schema()),
        ],
    )
    .version(1)
}

/// The key of a schema-change event: `io.debezium.connector.<connector>.SchemaChangeKey`.
pub fn schema_change_key_schema(connector: &str) -> ConnectSchema {
    ConnectSchema::struct_of(
        format!("io.debezium.connector.{connector}.SchemaChangeKey"),
        vec![Field::new("databaseName", schema::string())],
    )
    .version(1)
}

/// The value of a schema-change event: `io.debezium.connector.<connector>.SchemaChangeValue`,
/// with the connector's `source` block.
pub fn schema_change_value_schema(connector: &str, source: ConnectSchema) -> ConnectSchema {
    ConnectSchema::struct_of(
        format!("io.debezium.connector.{connector}.SchemaChangeValue"),
        vec![
            Field::new("source", source),
            Field::new("ts_ms", schema::int64()),
            Field::new("databaseName", schema::string().optional()),
            Field::new("schemaName", schema::string().optional()),
            Field::new("ddl", schema::string().optional()),
            Field::new("tableChanges", schema::array(change_schema())),
        ],
    )
    .version(1)
}

impl TableChangeDoc {
    /// The change as a `io.debezium.connector.schema.Change` value, as Debezium's
    /// `ConnectTableChangeSerializer` fills it.
    pub fn to_value(&self) -> Value {
        let change = change_schema();
        let table = self.table.as_ref().map_or(Value::Null, |t| {
            let table_schema = table_schema();
            let column_schema = column_schema();
            let columns = t
                .columns
                .iter()
                .map(|c| {
                    StructBuilder::new(&column_schema)
                        .put("name", c.name.as_str())
                        .put("jdbcType", c.jdbc_type)
                        .put("nativeType", c.native_type)
                        .put("typeName", c.type_name.as_str())
                        .put("typeExpression", c.type_expression.clone())
                        .put("charsetName", c.charset_name.clone())
                        .put("length", c.length)
                        .put("scale", c.scale)
                        .put("position", c.position)
                        .put("optional", c.optional)
                        .put("autoIncremented", c.auto_incremented)
                        .put("generated", c.generated)
                        .put("comment", c.comment.clone())
                        .put("defaultValueExpression", c.default_value_expression.clone())
                        .put(
                            "enumValues",
                            c.enum_values.as_ref().filter(|v| !v.is_empty()).map_or(Value::Null, |v| {
                                Value::Array(v.iter().map(|s| Value::from(s.as_str())).collect())
                            }),
                        )
                        .build()
                })
                .collect();
            StructBuilder::new(&table_schema)
                .put("defaultCharsetName", t.default_charset_name.clone())
                .put(
                    "primaryKeyColumnNames",
                    Value::Array(t.primary_key_column_names.iter().map(|s| Value::from(s.as_str())).collect()),
                )
                .put("columns", Value::Array(columns))
                .put("comment", self.comment.clone())
                .build()
        });
        StructBuilder::new(&change)
            .put("type", self.kind.as_str())
            .put("id", self.id.as_str())
            .put("table", table)
            .build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_quoted_as_debezium_quotes_them_and_parse_back() {
        assert_eq!(quoted_id(&["shop", "orders"]), r#""shop"."orders""#);
        assert_eq!(quoted_id(&["a\"b", "c.d"]), r#""a""b"."c.d""#);
        for parts in [vec!["shop", "orders"], vec!["a\"b", "c.d"], vec!["", "x"]] {
            let id = quoted_id(&parts);
            assert_eq!(parse_quoted_id(&id), Some(parts.iter().map(|s| s.to_string()).collect()), "{id}");
        }
        assert_eq!(parse_quoted_id("shop.orders"), Some(vec!["shop".to_string(), "orders".to_string()]));
        assert_eq!(parse_quoted_id(r#""shop"x"#), None);
        assert_eq!(parse_quoted_id(r#""shop"#), None);
    }

    #[test]
    fn history_records_read_back_and_tolerate_what_debezium_adds() {
        let json = r#"{"source":{"server":"shop"},"position":{"file":"mysql-bin.000003","pos":154,"ts_sec":1},
            "ts_ms":1000,"databaseName":"shop","ddl":"CREATE TABLE t (id INT PRIMARY KEY)",
            "tableChanges":[{"type":"CREATE","id":"\"shop\".\"t\"","table":{"defaultCharsetName":"utf8mb4",
            "primaryKeyColumnNames":["id"],"columns":[{"name":"id","jdbcType":4,"typeName":"INT",
            "typeExpression":"INT","charsetName":null,"position":1,"optional":false,"autoIncremented":false,
            "generated":false,"comment":null,"hasDefaultValue":false,"somethingNew":1}],"attributes":[]},
            "comment":null}]}"#;
        let doc: HistoryDoc = serde_json::from_str(json).unwrap();
        assert_eq!(doc.table_changes[0].kind, ChangeKind::Create);
        assert_eq!(doc.table_changes[0].table.as_ref().unwrap().columns[0].type_name, "INT");
        let again: HistoryDoc = serde_json::from_slice(&serde_json::to_vec(&doc).unwrap()).unwrap();
        assert_eq!(again, doc);
    }
}
