//! The schemas of captured tables: CQL types and columns, parsed from `CREATE TABLE` statements.
//!
//! Commit logs carry no schema: a mutation names its table by id and its cells by column name,
//! and values are bare bytes whose framing depends on the type. So every captured table needs its
//! CQL definition, with the table id Cassandra gave it (`system_schema.tables.id`), written as
//! `WITH ID = <uuid>` — the clause `DESCRIBE TABLE` prints.

use std::fmt;

/// A CQL type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CqlType {
    /// `ascii`.
    Ascii,
    /// `text` / `varchar`.
    Text,
    /// `blob`.
    Blob,
    /// `boolean`.
    Boolean,
    /// `tinyint`.
    TinyInt,
    /// `smallint`.
    SmallInt,
    /// `int`.
    Int,
    /// `bigint`.
    BigInt,
    /// `counter`.
    Counter,
    /// `varint`.
    Varint,
    /// `float`.
    Float,
    /// `double`.
    Double,
    /// `decimal`.
    Decimal,
    /// `timestamp`.
    Timestamp,
    /// `date`.
    Date,
    /// `time`.
    Time,
    /// `uuid`.
    Uuid,
    /// `timeuuid`.
    TimeUuid,
    /// `inet`.
    Inet,
    /// `duration`.
    Duration,
    /// `list<t>`; `frozen` when serialized as one value.
    List(Box<CqlType>, bool),
    /// `set<t>`.
    Set(Box<CqlType>, bool),
    /// `map<k, v>`.
    Map(Box<CqlType>, Box<CqlType>, bool),
    /// `tuple<…>` (always frozen).
    Tuple(Vec<CqlType>),
}

impl CqlType {
    /// The byte length of every value of this type, or `None` for length-prefixed values
    /// (Cassandra's `AbstractType.valueLengthIfFixed`).
    pub fn fixed_length(&self) -> Option<usize> {
        match self {
            CqlType::Boolean => Some(1),
            CqlType::Int | CqlType::Float => Some(4),
            CqlType::BigInt | CqlType::Counter | CqlType::Double | CqlType::Timestamp => Some(8),
            CqlType::Uuid | CqlType::TimeUuid => Some(16),
            _ => None,
        }
    }

    /// Whether cells of this type are stored one per element (a non-frozen collection).
    pub fn is_complex(&self) -> bool {
        matches!(self, CqlType::List(_, false) | CqlType::Set(_, false) | CqlType::Map(_, _, false))
    }

    /// The type as CQL writes it (`text`, `frozen<map<text, int>>`, …).
    pub fn cql_name(&self) -> String {
        let frozen = |inner: String, f: bool| if f { format!("frozen<{inner}>") } else { inner };
        match self {
            CqlType::Ascii => "ascii".into(),
            CqlType::Text => "text".into(),
            CqlType::Blob => "blob".into(),
            CqlType::Boolean => "boolean".into(),
            CqlType::TinyInt => "tinyint".into(),
            CqlType::SmallInt => "smallint".into(),
            CqlType::Int => "int".into(),
            CqlType::BigInt => "bigint".into(),
            CqlType::Counter => "counter".into(),
            CqlType::Varint => "varint".into(),
            CqlType::Float => "float".into(),
            CqlType::Double => "double".into(),
            CqlType::Decimal => "decimal".into(),
            CqlType::Timestamp => "timestamp".into(),
            CqlType::Date => "date".into(),
            CqlType::Time => "time".into(),
            CqlType::Uuid => "uuid".into(),
            CqlType::TimeUuid => "timeuuid".into(),
            CqlType::Inet => "inet".into(),
            CqlType::Duration => "duration".into(),
            CqlType::List(e, f) => frozen(format!("list<{}>", e.cql_name()), *f),
            CqlType::Set(e, f) => frozen(format!("set<{}>", e.cql_name()), *f),
            CqlType::Map(k, v, f) => frozen(format!("map<{}, {}>", k.cql_name(), v.cql_name()), *f),
            CqlType::Tuple(items) => {
                format!("tuple<{}>", items.iter().map(CqlType::cql_name).collect::<Vec<_>>().join(", "))
            }
        }
    }

    fn parse(tokens: &mut Tokens<'_>) -> Result<CqlType, SchemaError> {
        let name = tokens.ident()?.to_ascii_lowercase();
        let simple = match name.as_str() {
            "ascii" => CqlType::Ascii,
            "text" | "varchar" => CqlType::Text,
            "blob" => CqlType::Blob,
            "boolean" => CqlType::Boolean,
            "tinyint" => CqlType::TinyInt,
            "smallint" => CqlType::SmallInt,
            "int" => CqlType::Int,
            "bigint" => CqlType::BigInt,
            "counter" => CqlType::Counter,
            "varint" => CqlType::Varint,
            "float" => CqlType::Float,
            "double" => CqlType::Double,
            "decimal" => CqlType::Decimal,
            "timestamp" => CqlType::Timestamp,
            "date" => CqlType::Date,
            "time" => CqlType::Time,
            "uuid" => CqlType::Uuid,
            "timeuuid" => CqlType::TimeUuid,
            "inet" => CqlType::Inet,
            "duration" => CqlType::Duration,
            "frozen" => {
                tokens.expect("<")?;
                let inner = CqlType::parse(tokens)?;
                tokens.expect(">")?;
                return Ok(inner.frozen());
            }
            "list" | "set" => {
                tokens.expect("<")?;
                let element = Box::new(CqlType::parse(tokens)?);
                tokens.expect(">")?;
                return Ok(if name == "list" { CqlType::List(element, false) } else { CqlType::Set(element, false) });
            }
            "map" => {
                tokens.expect("<")?;
                let key = Box::new(CqlType::parse(tokens)?);
                tokens.expect(",")?;
                let value = Box::new(CqlType::parse(tokens)?);
                tokens.expect(">")?;
                return Ok(CqlType::Map(key, value, false));
            }
            "tuple" => {
                tokens.expect("<")?;
                let mut items = vec![CqlType::parse(tokens)?];
                while tokens.eat(",") {
                    items.push(CqlType::parse(tokens)?);
                }
                tokens.expect(">")?;
                return Ok(CqlType::Tuple(items));
            }
            other => return Err(tokens.error(format!("unknown or unsupported CQL type {other:?}"))),
        };
        Ok(simple)
    }

    fn frozen(self) -> CqlType {
        match self {
            CqlType::List(e, _) => CqlType::List(e, true),
            CqlType::Set(e, _) => CqlType::Set(e, true),
            CqlType::Map(k, v, _) => CqlType::Map(k, v, true),
            other => other,
        }
    }
}

/// The role of a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind {
    /// Part of the partition key.
    PartitionKey,
    /// A clustering column.
    Clustering,
    /// A static column (one value per partition).
    Static,
    /// A regular column.
    Regular,
}

/// One column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Name as stored (case kept for quoted identifiers, lower-cased otherwise).
    pub name: String,
    /// Type.
    pub ty: CqlType,
    /// Role.
    pub kind: ColumnKind,
}

/// A captured table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableSchema {
    /// Keyspace.
    pub keyspace: String,
    /// Table name.
    pub table: String,
    /// Table id, as in `system_schema.tables.id`.
    pub id: [u8; 16],
    /// Columns in definition order.
    pub columns: Vec<Column>,
}

impl TableSchema {
    /// Partition-key columns, in key order.
    pub fn partition_key(&self) -> impl Iterator<Item = &Column> {
        self.columns.iter().filter(|c| c.kind == ColumnKind::PartitionKey)
    }

    /// Clustering columns, in clustering order.
    pub fn clustering(&self) -> impl Iterator<Item = &Column> {
        self.columns.iter().filter(|c| c.kind == ColumnKind::Clustering)
    }

    /// A column by name.
    pub fn column(&self, name: &[u8]) -> Option<&Column> {
        self.columns.iter().find(|c| c.name.as_bytes() == name)
    }

    /// Parses every `CREATE TABLE` statement in `cql`; other statements are ignored.
    pub fn parse_all(cql: &str) -> Result<Vec<TableSchema>, SchemaError> {
        let mut tables = Vec::new();
        let mut tokens = Tokens::new(cql)?;
        while !tokens.at_end() {
            if tokens.eat_keyword("create") && tokens.eat_keyword("table") {
                tables.push(Self::parse_table(&mut tokens)?);
            } else {
                // Skip to the end of this statement.
                while !tokens.at_end() && !tokens.eat(";") {
                    tokens.next();
                }
            }
        }
        Ok(tables)
    }

    fn parse_table(tokens: &mut Tokens<'_>) -> Result<TableSchema, SchemaError> {
        if tokens.eat_keyword("if") {
            tokens.expect_keyword("not")?;
            tokens.expect_keyword("exists")?;
        }
        let first = tokens.name()?;
        let (keyspace, table) = if tokens.eat(".") {
            (first, tokens.name()?)
        } else {
            return Err(tokens.error(format!("table {first:?} needs its keyspace (keyspace.table)")));
        };
        tokens.expect("(")?;
        let mut columns: Vec<Column> = Vec::new();
        let mut partition: Vec<String> = Vec::new();
        let mut clustering: Vec<String> = Vec::new();
        loop {
            if tokens.eat_keyword("primary") {
                tokens.expect_keyword("key")?;
                tokens.expect("(")?;
                if tokens.eat("(") {
                    partition.push(tokens.name()?);
                    while tokens.eat(",") {
                        partition.push(tokens.name()?);
                    }
                    tokens.expect(")")?;
                } else {
                    partition.push(tokens.name()?);
                }
                while tokens.eat(",") {
                    clustering.push(tokens.name()?);
                }
                tokens.expect(")")?;
            } else {
                let name = tokens.name()?;
                let ty = CqlType::parse(tokens)?;
                let mut kind = ColumnKind::Regular;
                loop {
                    if tokens.eat_keyword("static") {
                        kind = ColumnKind::Static;
                    } else if tokens.eat_keyword("primary") {
                        tokens.expect_keyword("key")?;
                        partition.push(name.clone());
                    } else {
                        break;
                    }
                }
                columns.push(Column { name, ty, kind });
            }
            if tokens.eat(")") {
                break;
            }
            tokens.expect(",")?;
        }
        let mut id = None;
        if tokens.eat_keyword("with") {
            loop {
                if tokens.eat_keyword("id") {
                    tokens.expect("=")?;
                    let text = tokens.next().ok_or_else(|| tokens.error("expected a table id".into()))?;
                    id = Some(parse_uuid(text).ok_or_else(|| tokens.error(format!("{text:?} is not a UUID")))?);
                } else {
                    // Other options (clustering order, compaction, cdc, …) do not affect decoding.
                    while !tokens.at_end() && !tokens.peek_is(";") && !tokens.peek_keyword("and") {
                        tokens.next();
                    }
                }
                if !tokens.eat_keyword("and") {
                    break;
                }
            }
        }
        tokens.eat(";");
        let id = id.ok_or_else(|| {
            SchemaError::new(format!("table {keyspace}.{table}: add WITH ID = <uuid> (system_schema.tables.id)"), 0)
        })?;
        if partition.is_empty() {
            return Err(SchemaError::new(format!("table {keyspace}.{table} has no PRIMARY KEY"), 0));
        }
        for (names, kind) in [(&partition, ColumnKind::PartitionKey), (&clustering, ColumnKind::Clustering)] {
            for n in names {
                let column = columns.iter_mut().find(|c| &c.name == n).ok_or_else(|| {
                    SchemaError::new(format!("table {keyspace}.{table}: key column {n:?} is not defined"), 0)
                })?;
                column.kind = kind;
            }
        }
        // Keep key columns in key order, then the rest in definition order.
        let mut ordered: Vec<Column> = Vec::with_capacity(columns.len());
        for n in partition.iter().chain(&clustering) {
            ordered.push(columns.iter().find(|c| &c.name == n).unwrap().clone());
        }
        ordered.extend(
            columns.into_iter().filter(|c| !matches!(c.kind, ColumnKind::PartitionKey | ColumnKind::Clustering)),
        );
        Ok(TableSchema { keyspace, table, id, columns: ordered })
    }
}

/// Parses `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
pub fn parse_uuid(text: &str) -> Option<[u8; 16]> {
    let hex: String = text.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 || text.len() != 36 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Formats a UUID.
pub fn format_uuid(id: &[u8; 16]) -> String {
    let h: String = id.iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// A CQL definition that could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("CQL schema, line {line}: {message}")]
pub struct SchemaError {
    /// What is wrong.
    pub message: String,
    /// 1-based line (0 when not tied to a line).
    pub line: usize,
}

impl SchemaError {
    fn new(message: String, line: usize) -> Self {
        SchemaError { message, line }
    }
}

/// A token and the line it starts on.
struct Tokens<'a> {
    items: Vec<(&'a str, usize)>,
    at: usize,
}

impl<'a> Tokens<'a> {
    fn new(text: &'a str) -> Result<Self, SchemaError> {
        let mut items = Vec::new();
        let bytes = text.as_bytes();
        let (mut i, mut line) = (0, 1);
        while i < bytes.len() {
            let c = bytes[i];
            if c == b'\n' {
                line += 1;
                i += 1;
            } else if c.is_ascii_whitespace() {
                i += 1;
            } else if text[i..].starts_with("--") || text[i..].starts_with("//") {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            } else if text[i..].starts_with("/*") {
                let end = text[i + 2..].find("*/").ok_or_else(|| SchemaError::new("unclosed comment".into(), line))?;
                line += text[i..i + 2 + end].matches('\n').count();
                i += end + 4;
            } else if c == b'"' || c == b'\'' {
                let end =
                    text[i + 1..].find(c as char).ok_or_else(|| SchemaError::new("unclosed quote".into(), line))?;
                items.push((&text[i..i + end + 2], line));
                i += end + 2;
            } else if c.is_ascii_alphanumeric() || c == b'_' || c == b'-' {
                let start = i;
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_' || bytes[i] == b'-') {
                    i += 1;
                }
                items.push((&text[start..i], line));
            } else {
                items.push((&text[i..i + 1], line));
                i += 1;
            }
        }
        Ok(Tokens { items, at: 0 })
    }

    fn at_end(&self) -> bool {
        self.at >= self.items.len()
    }

    fn next(&mut self) -> Option<&'a str> {
        let t = self.items.get(self.at).map(|(t, _)| *t);
        self.at += 1;
        t
    }

    fn peek_is(&self, s: &str) -> bool {
        self.items.get(self.at).is_some_and(|(t, _)| *t == s)
    }

    fn peek_keyword(&self, k: &str) -> bool {
        self.items.get(self.at).is_some_and(|(t, _)| t.eq_ignore_ascii_case(k))
    }

    fn eat(&mut self, s: &str) -> bool {
        let hit = self.peek_is(s);
        if hit {
            self.at += 1;
        }
        hit
    }

    fn eat_keyword(&mut self, k: &str) -> bool {
        let hit = self.peek_keyword(k);
        if hit {
            self.at += 1;
        }
        hit
    }

    fn error(&self, message: String) -> SchemaError {
        let line = self.items.get(self.at.min(self.items.len().saturating_sub(1))).map_or(0, |(_, l)| *l);
        SchemaError::new(message, line)
    }

    fn expect(&mut self, s: &str) -> Result<(), SchemaError> {
        if self.eat(s) {
            Ok(())
        } else {
            Err(self.error(format!("expected {s:?}, found {:?}", self.items.get(self.at).map(|t| t.0))))
        }
    }

    fn expect_keyword(&mut self, k: &str) -> Result<(), SchemaError> {
        if self.eat_keyword(k) { Ok(()) } else { Err(self.error(format!("expected {k}"))) }
    }

    fn ident(&mut self) -> Result<&'a str, SchemaError> {
        match self.items.get(self.at) {
            Some((t, _)) if t.as_bytes()[0].is_ascii_alphabetic() => {
                self.at += 1;
                Ok(t)
            }
            other => Err(self.error(format!("expected a name, found {:?}", other.map(|t| t.0)))),
        }
    }

    /// An identifier: quoted keeps its case, unquoted is lower-cased (CQL's rule).
    fn name(&mut self) -> Result<String, SchemaError> {
        match self.items.get(self.at) {
            Some((t, _)) if t.starts_with('"') => {
                self.at += 1;
                Ok(t[1..t.len() - 1].to_string())
            }
            _ => Ok(self.ident()?.to_ascii_lowercase()),
        }
    }
}

impl fmt::Display for TableSchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.keyspace, self.table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_table_with_keys_statics_and_collections() {
        let cql = r#"
            -- the fixture table
            CREATE TABLE IF NOT EXISTS "Keyspace1"."Standard1" (
                key ascii, col ascii, val blob, val0 blob,
                PRIMARY KEY (key, col)
            ) WITH ID = 241bcee0-7cae-11ee-8a02-094014504250 AND comment = 'x';
            CREATE KEYSPACE other WITH replication = {'class': 'SimpleStrategy'};
            create table shop.orders (
                region text, id bigint, day date, note text static, tags set<text>, attrs frozen<map<text, int>>,
                PRIMARY KEY ((region, id), day)
            ) with clustering order by (day desc) and id = 00000000-0000-0000-0000-000000000001;
        "#;
        let tables = TableSchema::parse_all(cql).unwrap();
        assert_eq!(tables.len(), 2);
        let t = &tables[0];
        assert_eq!((t.keyspace.as_str(), t.table.as_str()), ("Keyspace1", "Standard1"));
        assert_eq!(format_uuid(&t.id), "241bcee0-7cae-11ee-8a02-094014504250");
        assert_eq!(t.partition_key().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["key"]);
        assert_eq!(t.clustering().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["col"]);
        let o = &tables[1];
        assert_eq!(o.partition_key().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["region", "id"]);
        assert_eq!(o.column(b"note").unwrap().kind, ColumnKind::Static);
        assert!(o.column(b"tags").unwrap().ty.is_complex());
        assert!(!o.column(b"attrs").unwrap().ty.is_complex(), "frozen collections are one cell");
    }

    #[test]
    fn errors_say_what_and_where() {
        let err = TableSchema::parse_all("CREATE TABLE ks.t (\n a int,\n b nosuchtype,\n PRIMARY KEY (a)) WITH ID = 00000000-0000-0000-0000-000000000001;").unwrap_err();
        assert_eq!(err.line, 3);
        assert!(err.message.contains("nosuchtype"), "{err}");
        let err = TableSchema::parse_all("CREATE TABLE ks.t (a int PRIMARY KEY);").unwrap_err();
        assert!(err.message.contains("WITH ID"), "{err}");
    }
}
