//! The source's schema history: what a DDL statement or a snapshot did to the captured tables,
//! where in the binlog, written to `<prefix>.schema-history` as Debezium's `HistoryRecord` writes
//! it (`source`, `position`, `ts_ms`, `databaseName`, `ddl`, `tableChanges`) and read back on
//! start (records of earlier Weir versions too). The Debezium column description of each
//! [`ColumnType`] lives here, in both directions.

use serde::Deserialize;
use serde_json::{Map, Value as Json, json};
use weir_schemas::history::{ChangeKind, ColumnDoc, HistoryDoc, TableChangeDoc, TableDoc, parse_quoted_id, quoted_id};

use super::columns::{Column, ColumnType, Declared, TableDef};

/// One table's change.
#[derive(Debug, Clone, PartialEq)]
pub struct TableChange {
    /// What happened.
    pub change: ChangeKind,
    /// The definition after the change (before it, for drops).
    pub table: TableDef,
}

/// A DDL statement or snapshot, where it happened, and the definitions it produced. The position
/// is the binlog file and offset: Debezium's `gtids` is the GTID set completed before the
/// statement, which the source does not keep yet.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryRecord {
    /// Binlog file of the statement (or the snapshot's position).
    pub file: String,
    /// Position.
    pub pos: u64,
    /// When, ms since the epoch.
    pub ts_ms: i64,
    /// Database the statement ran in.
    pub database: String,
    /// The statement (`CREATE TABLE …` as the server shows it, for a snapshot).
    pub ddl: String,
    /// Read by a snapshot.
    pub snapshot: bool,
    /// Tables it changed.
    pub table_changes: Vec<TableChange>,
}

impl HistoryRecord {
    /// The record as Debezium's history writes it, for source `prefix` on server `server_id`.
    pub fn to_doc(&self, prefix: &str, server_id: u32) -> HistoryDoc {
        let mut position = Map::new();
        if server_id != 0 {
            position.insert("server_id".into(), json!(server_id));
        }
        position.insert("file".into(), json!(self.file));
        position.insert("pos".into(), json!(self.pos));
        position.insert("ts_sec".into(), json!(self.ts_ms.div_euclid(1000)));
        if self.snapshot {
            position.insert("snapshot".into(), json!("INITIAL"));
        }
        HistoryDoc {
            source: Map::from_iter([("server".to_string(), json!(prefix))]),
            position,
            ts_ms: self.ts_ms,
            database_name: Some(self.database.clone()),
            schema_name: None,
            ddl: (!self.ddl.is_empty()).then(|| self.ddl.clone()),
            table_changes: self
                .table_changes
                .iter()
                .map(|c| TableChangeDoc {
                    kind: c.change,
                    id: quoted_id(&[&c.table.db, &c.table.table]),
                    previous_id: None,
                    table: Some(table_doc(&c.table)),
                    comment: None,
                })
                .collect(),
        }
    }

    /// Reads a record of the history topic: Debezium's layout, or the one Weir wrote before it.
    pub fn from_json(bytes: &[u8]) -> Result<HistoryRecord, String> {
        let value: Json = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if value.get("source").is_none() {
            let legacy: LegacyRecord = serde_json::from_value(value).map_err(|e| e.to_string())?;
            return Ok(legacy.into());
        }
        let doc: HistoryDoc = serde_json::from_value(value).map_err(|e| e.to_string())?;
        let get = |key: &str| doc.position.get(key);
        let mut table_changes = Vec::new();
        for change in &doc.table_changes {
            let parts = parse_quoted_id(&change.id).ok_or_else(|| format!("table id {:?} is not quoted", change.id))?;
            let [db, table] = <[String; 2]>::try_from(parts)
                .map_err(|p| format!("table id {:?} has {} parts, not database and table", change.id, p.len()))?;
            let def = match &change.table {
                Some(doc) => table_def(&db, &table, doc)?,
                None if change.kind == ChangeKind::Drop => TableDef { db, table, columns: Vec::new(), key: Vec::new() },
                None => return Err(format!("{} of {} has no table", change.kind.as_str(), change.id)),
            };
            table_changes.push(TableChange { change: change.kind, table: def });
        }
        Ok(HistoryRecord {
            file: get("file").and_then(Json::as_str).unwrap_or_default().to_string(),
            pos: get("pos").and_then(Json::as_u64).unwrap_or(0),
            ts_ms: doc.ts_ms,
            database: doc.database_name.unwrap_or_default(),
            ddl: doc.ddl.unwrap_or_default(),
            snapshot: get("snapshot").is_some(),
            table_changes,
        })
    }
}

/// A definition as Debezium's history describes it.
pub fn table_doc(def: &TableDef) -> TableDoc {
    TableDoc {
        default_charset_name: None,
        primary_key_column_names: def.key.iter().map(|&i| def.columns[i].name.clone()).collect(),
        columns: def.columns.iter().enumerate().map(|(i, c)| column_doc(c, i as i32 + 1)).collect(),
        attributes: Vec::new(),
    }
}

/// `(jdbcType, typeName, length, scale)` of a column: `java.sql.Types` as Debezium's MySQL DDL
/// parser assigns them (`TINYINT` is `SMALLINT`, `TIMESTAMP` is `TIMESTAMP_WITH_TIMEZONE`,
/// `ENUM`/`SET` are `CHAR`, `JSON` and geometry `OTHER`).
fn jdbc(ty: &ColumnType) -> (i32, &'static str, Option<i32>, Option<i32>) {
    let unsigned = |u: bool, signed: &'static str, uns: &'static str| if u { uns } else { signed };
    match ty {
        ColumnType::Boolean => (-7, "BIT", Some(1), None),
        ColumnType::TinyInt { unsigned: u } => (5, unsigned(*u, "TINYINT", "TINYINT UNSIGNED"), None, None),
        ColumnType::SmallInt { unsigned: u } => (5, unsigned(*u, "SMALLINT", "SMALLINT UNSIGNED"), None, None),
        ColumnType::MediumInt { unsigned: u } => (4, unsigned(*u, "MEDIUMINT", "MEDIUMINT UNSIGNED"), None, None),
        ColumnType::Int { unsigned: u } => (4, unsigned(*u, "INT", "INT UNSIGNED"), None, None),
        ColumnType::BigInt { unsigned: u } => (-5, unsigned(*u, "BIGINT", "BIGINT UNSIGNED"), None, None),
        ColumnType::Float => (6, "FLOAT", None, None),
        ColumnType::Double => (8, "DOUBLE", None, None),
        ColumnType::Decimal { precision, scale } => (3, "DECIMAL", Some(*precision as i32), Some(*scale as i32)),
        ColumnType::Bit { length } => (-7, "BIT", Some(*length as i32), None),
        ColumnType::Year => (4, "YEAR", None, None),
        ColumnType::Date => (91, "DATE", None, None),
        ColumnType::Time { fsp } => (92, "TIME", (*fsp > 0).then_some(i32::from(*fsp)), None),
        ColumnType::DateTime { fsp } => (93, "DATETIME", (*fsp > 0).then_some(i32::from(*fsp)), None),
        ColumnType::Timestamp { fsp } => (2014, "TIMESTAMP", (*fsp > 0).then_some(i32::from(*fsp)), None),
        ColumnType::Text { .. } => (12, "VARCHAR", None, None),
        ColumnType::Binary => (-3, "VARBINARY", None, None),
        ColumnType::Json => (1111, "JSON", None, None),
        ColumnType::Enum { .. } => (1, "ENUM", None, None),
        ColumnType::Set { .. } => (1, "SET", None, None),
        ColumnType::Geometry => (1111, "GEOMETRY", None, None),
    }
}

fn column_doc(c: &Column, position: i32) -> ColumnDoc {
    let (jdbc_type, type_name, length, scale) = jdbc(&c.ty);
    let enum_values = match &c.ty {
        ColumnType::Enum { values } | ColumnType::Set { values } => Some(values.clone()),
        _ => None,
    };
    let charset_name = match c.ty {
        ColumnType::Text { latin1 } => Some(if latin1 { "latin1" } else { "utf8mb4" }.to_string()),
        _ => None,
    };
    ColumnDoc {
        name: c.name.clone(),
        jdbc_type,
        native_type: None,
        type_name: type_name.to_string(),
        type_expression: Some(type_name.to_string()),
        charset_name,
        length,
        scale,
        position,
        optional: c.nullable,
        auto_incremented: false,
        generated: false,
        comment: None,
        has_default_value: false,
        default_value_expression: None,
        enum_values,
    }
}

/// The [`ColumnType`] of a column Debezium's history describes. A `DECIMAL` or `BIT` without a
/// length is MySQL's default, `DECIMAL(10)` or `BIT(1)`.
fn column_type(c: &ColumnDoc) -> Result<ColumnType, String> {
    let name = c.type_name.to_ascii_lowercase();
    let (base, unsigned) = match name.strip_suffix(" unsigned") {
        Some(base) => (base.trim(), true),
        None => (name.as_str(), false),
    };
    let default_length = if base == "bit" { 1 } else { 10 };
    Declared {
        data_type: base,
        unsigned,
        precision: Some(c.length.map_or(default_length, |l| l.max(1) as u64)),
        scale: c.scale.map(|s| s.max(0) as u64),
        fsp: c.length.unwrap_or(0).clamp(0, 6) as u8,
        latin1: c.charset_name.as_deref().is_some_and(|s| s.eq_ignore_ascii_case("latin1")),
        json_checked: false,
        members: Some(c.enum_values.clone().unwrap_or_default()),
    }
    .column_type()
    .ok_or_else(|| format!("column {} has type {:?}, which Weir does not capture", c.name, c.type_name))
}

/// The definition of `db`.`table` from Debezium's description.
pub fn table_def(db: &str, table: &str, doc: &TableDoc) -> Result<TableDef, String> {
    let mut columns = doc.columns.clone();
    columns.sort_by_key(|c| c.position);
    let columns = columns
        .iter()
        .map(|c| Ok(Column { name: c.name.clone(), ty: column_type(c)?, nullable: c.optional }))
        .collect::<Result<Vec<_>, String>>()
        .map_err(|e| format!("{db}.{table}: {e}"))?;
    let key = doc
        .primary_key_column_names
        .iter()
        .map(|k| {
            columns
                .iter()
                .position(|c| &c.name == k)
                .ok_or_else(|| format!("{db}.{table}: key column {k} is not a column"))
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(TableDef { db: db.to_string(), table: table.to_string(), columns, key })
}

/// A history record as Weir wrote it before it wrote Debezium's layout.
#[derive(Deserialize)]
struct LegacyRecord {
    file: String,
    pos: u64,
    ts_ms: i64,
    #[serde(rename = "databaseName")]
    database: String,
    ddl: String,
    #[serde(rename = "tableChanges")]
    table_changes: Vec<LegacyChange>,
}

#[derive(Deserialize)]
struct LegacyChange {
    #[serde(rename = "type")]
    change: ChangeKind,
    table: TableDef,
}

impl From<LegacyRecord> for HistoryRecord {
    fn from(r: LegacyRecord) -> Self {
        HistoryRecord {
            file: r.file,
            pos: r.pos,
            ts_ms: r.ts_ms,
            database: r.database,
            snapshot: r.ddl == "SNAPSHOT",
            ddl: r.ddl,
            table_changes: r
                .table_changes
                .into_iter()
                .map(|c| TableChange { change: c.change, table: c.table })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn every_type() -> TableDef {
        let types = vec![
            ColumnType::Boolean,
            ColumnType::TinyInt { unsigned: true },
            ColumnType::SmallInt { unsigned: false },
            ColumnType::MediumInt { unsigned: true },
            ColumnType::Int { unsigned: false },
            ColumnType::BigInt { unsigned: true },
            ColumnType::Float,
            ColumnType::Double,
            ColumnType::Decimal { precision: 12, scale: 3 },
            ColumnType::Bit { length: 9 },
            ColumnType::Year,
            ColumnType::Date,
            ColumnType::Time { fsp: 3 },
            ColumnType::DateTime { fsp: 0 },
            ColumnType::Timestamp { fsp: 6 },
            ColumnType::Text { latin1: true },
            ColumnType::Text { latin1: false },
            ColumnType::Binary,
            ColumnType::Json,
            ColumnType::Enum { values: vec!["a".into(), "b,c".into()] },
            ColumnType::Set { values: vec!["x".into()] },
            ColumnType::Geometry,
        ];
        TableDef {
            db: "sh\"op".into(),
            table: "t.1".into(),
            columns: types
                .into_iter()
                .enumerate()
                .map(|(i, ty)| Column { name: format!("c{i}"), ty, nullable: i % 2 == 0 })
                .collect(),
            key: vec![4, 1],
        }
    }

    #[test]
    fn every_column_type_survives_the_debezium_layout() {
        let record = HistoryRecord {
            file: "mysql-bin.000002".into(),
            pos: 1234,
            ts_ms: 1_700_000_000_123,
            database: "shop".into(),
            ddl: "ALTER TABLE t ADD c INT".into(),
            snapshot: false,
            table_changes: vec![TableChange { change: ChangeKind::Alter, table: every_type() }],
        };
        let json = serde_json::to_vec(&record.to_doc("shop", 1)).unwrap();
        assert_eq!(HistoryRecord::from_json(&json).unwrap(), record);
        let doc: Json = serde_json::from_slice(&json).unwrap();
        assert_eq!(doc["source"], json!({"server": "shop"}));
        assert_eq!(
            doc["position"],
            json!({"server_id": 1, "file": "mysql-bin.000002", "pos": 1234, "ts_sec": 1_700_000_000})
        );
        assert_eq!(doc["tableChanges"][0]["id"], r#""sh""op"."t.1""#);
    }

    #[test]
    fn records_written_before_the_debezium_layout_still_read() {
        let legacy = json!({"file": "f.000001", "pos": 4, "gtid": null, "ts_ms": 5, "databaseName": "", "ddl": "SNAPSHOT",
            "tableChanges": [{"type": "CREATE", "id": "shop.t", "table": serde_json::to_value(every_type()).unwrap()}]});
        let record = HistoryRecord::from_json(&serde_json::to_vec(&legacy).unwrap()).unwrap();
        assert!(record.snapshot);
        assert_eq!(record.table_changes[0].table, every_type());
    }

    #[test]
    fn an_unknown_type_names_the_column() {
        let mut doc = table_doc(&every_type());
        doc.columns[3].type_name = "HYPERLOGLOG".into();
        let err = table_def("shop", "t", &doc).unwrap_err();
        assert!(err.contains("c3") && err.contains("HYPERLOGLOG"), "{err}");
    }
}
