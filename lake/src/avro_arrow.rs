//! Change-event envelopes (Avro, Confluent wire format) straight into Arrow columns, driven by the
//! registry's writer schema: no intermediate value tree per record.
//!
//! A [`Layout`] is built once per schema id from the schema's JSON: it knows where `before`,
//! `after`, `source` and `op` sit in the envelope and how each row column maps to Arrow. Connect's
//! logical names decide the Arrow type: `io.debezium.time.Date` → Date32, `…Timestamp` /
//! `…MicroTimestamp` / `…NanoTimestamp` → Timestamp(ms/µs/ns, UTC), Decimal with precision ≤ 38 →
//! Decimal128, `int16`/`int8` → Int16/Int8, other ints and longs as they are, strings and bytes as
//! Utf8/Binary. Nested records, arrays, maps, enums and fixed values (a Cassandra cell, a
//! geometry) are kept losslessly as JSON text.
//!
//! Each decoded change becomes one row: the row image (`after`, or `before` for deletes) plus
//! `_op`, `_source_ts_ms`, `_pos` (`file:pos:row`, the source position), `_topic`, `_partition`,
//! `_offset` and `_date` (the event's UTC date, the partition column).
//!
//! Text (string columns, `_pos`) is checked to be UTF-8 once per column when a batch is
//! finished; bytes that are not UTF-8 become U+FFFD and the row is kept. An `op` that is not
//! UTF-8 makes the record a dead letter.

use std::{collections::HashMap, sync::Arc};

use deltalake::arrow::array::builder::NullBufferBuilder;
use deltalake::arrow::{
    array::{
        ArrayRef, BinaryArray, BooleanArray, BooleanBuilder, Date32Array, Date32Builder, Decimal128Builder,
        Float32Builder, Float64Builder, Int8Builder, Int16Builder, Int32Array, Int32Builder, Int64Array, Int64Builder,
        StringArray, StringBuilder, TimestampMicrosecondBuilder, TimestampMillisecondBuilder,
        TimestampNanosecondBuilder,
    },
    buffer::{Buffer, OffsetBuffer},
    datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit},
    record_batch::RecordBatch,
};
use serde_json::{Map, Value as Json};

/// A record could not be decoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// The schema is not an envelope Weir can read.
    #[error("schema: {0}")]
    Schema(String),
    /// The bytes do not follow the schema.
    #[error("at byte {at}: {reason}")]
    Data {
        /// Where in the Avro body.
        at: usize,
        /// What was wrong.
        reason: String,
    },
}

/// What the decoder's steps return: the error boxed, so that a result fits in two registers
/// (a `DecodeError` is four words, returned through memory by every step not inlined).
type Read<T> = Result<T, Box<DecodeError>>;

/// The Avro types the decoder walks.
#[derive(Debug, Clone)]
enum Avro {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    Record(Vec<(String, Avro)>),
    Enum(Vec<String>),
    Array(Box<Avro>),
    Map(Box<Avro>),
    Fixed(usize),
    Union(Vec<Avro>),
}

/// Resolves schema JSON into [`Avro`], recording logical information per node.
struct Parser {
    named: HashMap<String, (Avro, Option<String>)>,
}

/// A parsed node and its Connect name / type hints.
struct Node {
    avro: Avro,
    connect_name: Option<String>,
    connect_type: Option<String>,
    decimal: Option<(u8, i8)>,
}

impl Parser {
    fn parse(&mut self, json: &Json, namespace: &str) -> Result<Node, DecodeError> {
        let plain = |avro| Node { avro, connect_name: None, connect_type: None, decimal: None };
        match json {
            Json::String(name) => Ok(match name.as_str() {
                "null" => plain(Avro::Null),
                "boolean" => plain(Avro::Boolean),
                "int" => plain(Avro::Int),
                "long" => plain(Avro::Long),
                "float" => plain(Avro::Float),
                "double" => plain(Avro::Double),
                "bytes" => plain(Avro::Bytes),
                "string" => plain(Avro::String),
                other => {
                    let full = if other.contains('.') || namespace.is_empty() {
                        other.to_string()
                    } else {
                        format!("{namespace}.{other}")
                    };
                    let (avro, connect_name) = self
                        .named
                        .get(&full)
                        .or_else(|| self.named.get(other))
                        .cloned()
                        .ok_or_else(|| DecodeError::Schema(format!("unknown type {other}")))?;
                    Node { avro, connect_name, connect_type: None, decimal: None }
                }
            }),
            Json::Array(branches) => {
                let avro =
                    branches.iter().map(|b| self.parse(b, namespace).map(|n| n.avro)).collect::<Result<_, _>>()?;
                // The logical hints of a nullable column live on its non-null branch.
                let hinted = branches.iter().find(|b| b.as_str() != Some("null"));
                let mut node = match hinted {
                    Some(b) => self.parse(b, namespace)?,
                    None => plain(Avro::Null),
                };
                node.avro = Avro::Union(avro);
                Ok(node)
            }
            Json::Object(obj) => self.parse_object(obj, namespace),
            other => Err(DecodeError::Schema(format!("not a schema: {other}"))),
        }
    }

    fn parse_object(&mut self, obj: &Map<String, Json>, namespace: &str) -> Result<Node, DecodeError> {
        let ty = obj.get("type").ok_or_else(|| DecodeError::Schema("a schema object without type".into()))?;
        let connect_name = obj.get("connect.name").and_then(Json::as_str).map(String::from);
        let connect_type = obj.get("connect.type").and_then(Json::as_str).map(String::from);
        let name_of = |obj: &Map<String, Json>| {
            let name = obj.get("name").and_then(Json::as_str).unwrap_or_default();
            let ns = obj.get("namespace").and_then(Json::as_str).unwrap_or(namespace);
            if name.contains('.') || ns.is_empty() { name.to_string() } else { format!("{ns}.{name}") }
        };
        let avro = match ty.as_str() {
            Some("record") | Some("error") => {
                let full = name_of(obj);
                let ns = full.rsplit_once('.').map(|(ns, _)| ns.to_string()).unwrap_or_default();
                let fields = obj
                    .get("fields")
                    .and_then(Json::as_array)
                    .ok_or_else(|| DecodeError::Schema(format!("record {full} without fields")))?;
                let mut parsed = Vec::with_capacity(fields.len());
                for f in fields {
                    let name = f.get("name").and_then(Json::as_str).unwrap_or_default().to_string();
                    let ty = f.get("type").ok_or_else(|| DecodeError::Schema(format!("field {name} without type")))?;
                    parsed.push((name, self.parse(ty, &ns)?.avro));
                }
                let avro = Avro::Record(parsed);
                self.named.insert(full, (avro.clone(), connect_name.clone()));
                avro
            }
            Some("enum") => {
                let symbols = obj
                    .get("symbols")
                    .and_then(Json::as_array)
                    .map(|s| s.iter().filter_map(Json::as_str).map(String::from).collect())
                    .unwrap_or_default();
                let avro = Avro::Enum(symbols);
                self.named.insert(name_of(obj), (avro.clone(), connect_name.clone()));
                avro
            }
            Some("fixed") => {
                let avro = Avro::Fixed(obj.get("size").and_then(Json::as_u64).unwrap_or(0) as usize);
                self.named.insert(name_of(obj), (avro.clone(), connect_name.clone()));
                avro
            }
            Some("array") => {
                Avro::Array(Box::new(self.parse(obj.get("items").unwrap_or(&Json::Null), namespace)?.avro))
            }
            Some("map") => Avro::Map(Box::new(self.parse(obj.get("values").unwrap_or(&Json::Null), namespace)?.avro)),
            _ => {
                let mut node = self.parse(ty, namespace)?;
                node.connect_name = connect_name.or(node.connect_name);
                node.connect_type = connect_type;
                if obj.get("logicalType").and_then(Json::as_str) == Some("decimal") {
                    let p = obj.get("precision").and_then(Json::as_u64).unwrap_or(64);
                    let s = obj.get("scale").and_then(Json::as_u64).unwrap_or(0);
                    if p <= 38 && s <= p {
                        node.decimal = Some((p as u8, s as i8));
                    }
                }
                return Ok(node);
            }
        };
        Ok(Node { avro, connect_name, connect_type, decimal: None })
    }
}

/// How one row column is stored in Arrow.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Boolean,
    Int8,
    Int16,
    Int32,
    Int64,
    Float32,
    Float64,
    Utf8,
    Binary,
    Date32,
    TimestampMs,
    TimestampUs,
    TimestampNs,
    Decimal(u8, i8),
    /// Anything nested, as JSON text.
    Json,
}

impl Kind {
    fn of(node: &Node) -> Kind {
        let inner = match &node.avro {
            Avro::Union(branches) => branches.iter().find(|b| !matches!(b, Avro::Null)).unwrap_or(&Avro::Null),
            other => other,
        };
        let name = node.connect_name.as_deref().unwrap_or_default();
        match inner {
            Avro::Boolean => Kind::Boolean,
            Avro::Int => match (name, node.connect_type.as_deref()) {
                ("io.debezium.time.Date" | "org.apache.kafka.connect.data.Date", _) => Kind::Date32,
                (_, Some("int8")) => Kind::Int8,
                (_, Some("int16")) => Kind::Int16,
                _ => Kind::Int32,
            },
            Avro::Long => match name {
                "io.debezium.time.Timestamp" | "org.apache.kafka.connect.data.Timestamp" => Kind::TimestampMs,
                "io.debezium.time.MicroTimestamp" => Kind::TimestampUs,
                "io.debezium.time.NanoTimestamp" => Kind::TimestampNs,
                _ => Kind::Int64,
            },
            Avro::Float => Kind::Float32,
            Avro::Double => Kind::Float64,
            Avro::String => Kind::Utf8,
            Avro::Bytes => match node.decimal {
                Some((p, s)) => Kind::Decimal(p, s),
                None => Kind::Binary,
            },
            _ => Kind::Json,
        }
    }

    fn data_type(self) -> DataType {
        match self {
            Kind::Boolean => DataType::Boolean,
            Kind::Int8 => DataType::Int8,
            Kind::Int16 => DataType::Int16,
            Kind::Int32 => DataType::Int32,
            Kind::Int64 => DataType::Int64,
            Kind::Float32 => DataType::Float32,
            Kind::Float64 => DataType::Float64,
            Kind::Utf8 | Kind::Json => DataType::Utf8,
            Kind::Binary => DataType::Binary,
            Kind::Date32 => DataType::Date32,
            Kind::TimestampMs => DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            Kind::TimestampUs => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            Kind::TimestampNs => DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
            Kind::Decimal(p, s) => DataType::Decimal128(p, s),
        }
    }
}

/// The field names of an Avro record schema (a change-event key: the primary-key columns), `None`
/// for anything else.
pub fn record_field_names(schema_json: &str) -> Option<Vec<String>> {
    let json: Json = serde_json::from_str(schema_json).ok()?;
    if json.get("type").and_then(Json::as_str) != Some("record") {
        return None;
    }
    let names: Vec<String> = json
        .get("fields")?
        .as_array()?
        .iter()
        .filter_map(|f| f.get("name").and_then(Json::as_str).map(String::from))
        .collect();
    (!names.is_empty()).then_some(names)
}

/// The metadata columns every change-log row carries, after the row's own columns.
pub const META_COLUMNS: [&str; 7] = ["_op", "_source_ts_ms", "_pos", "_topic", "_partition", "_offset", "_date"];

/// The [`META_COLUMNS`] as the change log's columns, after the row's.
pub fn meta_fields() -> [Field; 7] {
    [
        Field::new("_op", DataType::Utf8, false),
        Field::new("_source_ts_ms", DataType::Int64, true),
        Field::new("_pos", DataType::Utf8, true),
        Field::new("_topic", DataType::Utf8, false),
        Field::new("_partition", DataType::Int32, false),
        Field::new("_offset", DataType::Int64, false),
        Field::new("_date", DataType::Date32, false),
    ]
}

/// The decoding plan of one envelope schema.
#[derive(Debug, Clone)]
pub struct Layout {
    envelope: Vec<(String, Avro)>,
    before: usize,
    after: usize,
    op: usize,
    row: Vec<(String, Avro, Kind)>,
    source_fields: Vec<(String, Avro)>,
    program: Program,
    schema: SchemaRef,
}

impl Layout {
    /// The plan for an envelope's Avro schema JSON.
    pub fn new(schema_json: &str) -> Result<Layout, DecodeError> {
        let json: Json = serde_json::from_str(schema_json).map_err(|e| DecodeError::Schema(e.to_string()))?;
        let mut parser = Parser { named: HashMap::new() };
        let Json::Object(obj) = &json else { return Err(DecodeError::Schema("the envelope is not a record".into())) };
        let ns = obj.get("namespace").and_then(Json::as_str).unwrap_or_default().to_string();
        let fields =
            obj.get("fields").and_then(Json::as_array).ok_or_else(|| DecodeError::Schema("no fields".into()))?;
        // The row record is defined inline at its first use (`before`); `after` refers to it by name.
        let row_record = fields
            .iter()
            .filter(|f| matches!(f.get("name").and_then(Json::as_str), Some("before" | "after")))
            .filter_map(|f| match f.get("type") {
                Some(Json::Array(b)) => b.iter().find(|b| b.is_object()).cloned(),
                Some(o @ Json::Object(_)) => Some(o.clone()),
                _ => None,
            })
            .next()
            .ok_or_else(|| DecodeError::Schema("no row record in before/after".into()))?;
        let row_ns = row_record
            .get("namespace")
            .and_then(Json::as_str)
            .map(String::from)
            .or_else(|| {
                row_record
                    .get("name")
                    .and_then(Json::as_str)
                    .and_then(|n| n.rsplit_once('.'))
                    .map(|(ns, _)| ns.to_string())
            })
            .unwrap_or_else(|| ns.clone());
        let mut row = Vec::new();
        for c in row_record.get("fields").and_then(Json::as_array).into_iter().flatten() {
            let cname = c.get("name").and_then(Json::as_str).unwrap_or_default().to_string();
            let node = parser.parse(c.get("type").unwrap_or(&Json::Null), &row_ns)?;
            row.push((cname, node));
        }
        let mut envelope = Vec::new();
        for f in fields {
            let name = f.get("name").and_then(Json::as_str).unwrap_or_default().to_string();
            envelope.push((name, parser.parse(f.get("type").unwrap_or(&Json::Null), &ns)?.avro));
        }
        let index = |n: &str| {
            envelope.iter().position(|(name, _)| name == n).ok_or_else(|| DecodeError::Schema(format!("no {n} field")))
        };
        let (before, after, source, op) = (index("before")?, index("after")?, index("source")?, index("op")?);
        let source_fields = match &envelope[source].1 {
            Avro::Record(f) => f.clone(),
            _ => return Err(DecodeError::Schema("source is not a record".into())),
        };
        let row: Vec<(String, Avro, Kind)> = row
            .into_iter()
            .map(|(n, node)| {
                let kind = Kind::of(&node);
                (n, node.avro, kind)
            })
            .collect();
        let mut fields: Vec<Field> = row.iter().map(|(n, _, k)| Field::new(n, k.data_type(), true)).collect();
        fields.extend(meta_fields());
        let mut program = Program::default();
        for (i, (_, avro)) in envelope.iter().enumerate() {
            if i == before {
                let from = program.steps.len();
                program.flatten(avro);
                program.parts.push(Part::Before(from as u32, program.steps.len() as u32));
            } else if i == after {
                program.parts.push(Part::After);
            } else if i == op {
                program.parts.push(Part::Op);
            } else if i == source {
                for (f, (name, avro)) in source_fields.iter().enumerate() {
                    let role = match name.as_str() {
                        "ts_ms" => SourceRole::TsMs,
                        "file" => SourceRole::File,
                        "pos" => SourceRole::Pos,
                        "row" => SourceRole::Row,
                        _ => {
                            program.skip(avro);
                            continue;
                        }
                    };
                    program.parts.push(Part::Source(role, f as u32));
                }
            } else {
                program.skip(avro);
            }
        }
        Ok(Layout { envelope, before, after, op, row, source_fields, program, schema: Arc::new(Schema::new(fields)) })
    }

    /// The Arrow schema of the change-log rows.
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    /// Builders for a batch of about `capacity` rows.
    pub fn batch(&self, capacity: usize) -> BatchBuilder {
        BatchBuilder {
            columns: self.row.iter().map(|(_, _, k)| Column::new(*k, capacity)).collect(),
            op: ByteColumn::with_capacity(capacity, capacity),
            source_ts: Int64Builder::with_capacity(capacity),
            pos: ByteColumn::with_capacity(capacity, capacity * 32),
            topics: Vec::new(),
            partition: Vec::with_capacity(capacity),
            offset: Vec::with_capacity(capacity),
            date: Vec::with_capacity(capacity),
            rows: 0,
            void: Vec::new(),
        }
    }

    /// Appends the change in `body` (the Avro body after the 5-byte wire header) to `batch`.
    /// A tombstone or an envelope with neither image appends nothing and returns `false`.
    ///
    /// One pass: the `after` image (the row of creates, updates and reads) is decoded straight
    /// into the builders while the rest of the envelope is checked around it; `before` is decoded
    /// only for deletes. A record that turns out bad part-way leaves a void row that
    /// [`BatchBuilder::finish`] drops, so it changes nothing in the batch.
    pub fn append(
        &self,
        body: &[u8],
        topic: &str,
        partition: i32,
        offset: i64,
        batch: &mut BatchBuilder,
    ) -> Result<bool, DecodeError> {
        let mut filled = 0usize;
        let result = self.append_inner(body, topic, partition, offset, batch, &mut filled);
        if result.is_err() && filled > 0 {
            batch.void_row(filled);
        }
        result.map_err(|e| *e)
    }

    fn append_inner(
        &self,
        body: &[u8],
        topic: &str,
        partition: i32,
        offset: i64,
        batch: &mut BatchBuilder,
        filled: &mut usize,
    ) -> Read<bool> {
        let mut r = Reader { buf: body, at: 0 };
        let mut before = (0usize, 0usize);
        let mut after_decoded = false;
        let mut op: Option<u8> = None;
        let (mut ts_ms, mut file, mut pos, mut row) = (None, None, None, None);
        let Program { parts, steps, nested } = &self.program;
        let steps_of = |from: u32, to: u32| &steps[from as usize..to as usize];
        for part in parts {
            match *part {
                Part::Skip(from, to) => r.skip_steps(steps_of(from, to), nested)?,
                Part::Before(from, to) => {
                    let start = r.at;
                    r.skip_steps(steps_of(from, to), nested)?;
                    before = (start, r.at);
                }
                Part::After => after_decoded = self.image(&mut r, &self.envelope[self.after].1, batch, filled)?,
                Part::Source(role, f) => {
                    let f = &self.source_fields[f as usize].1;
                    match role {
                        SourceRole::TsMs => ts_ms = r.long_in(f)?,
                        SourceRole::File => file = r.text_in(f)?.map(|v| (v.len(), r.window(v))),
                        SourceRole::Pos => pos = r.long_in(f)?,
                        SourceRole::Row => row = r.long_in(f)?,
                    }
                }
                Part::Op => {
                    let at = r.at;
                    let s = r.text_in(&self.envelope[self.op].1)?.unwrap_or_default();
                    // Debezium's ops are one ASCII letter: only other text needs the UTF-8 check.
                    if !s.is_ascii() && std::str::from_utf8(s).is_err() {
                        return Err(Box::new(DecodeError::Data { at, reason: "not UTF-8".into() }));
                    }
                    // The first character, if it is one byte (see `op.values` below).
                    op = s.first().copied().filter(u8::is_ascii);
                }
            }
        }
        if op == Some(b'd') {
            if after_decoded {
                // A delete that carries an `after` image (not Debezium's shape): its row is `before`.
                batch.void_row(self.row.len());
                *filled = 0;
            }
            let mut br = Reader { buf: &body[..before.1], at: before.0 };
            if !self.image(&mut br, &self.envelope[self.before].1, batch, filled)? {
                return Ok(false);
            }
        } else if !after_decoded {
            if op != Some(b't') {
                return Ok(false); // no row image, and not a truncate: nothing to keep
            }
            // A truncate: a row of nulls, kept so that current.* drops every earlier row.
            for c in &mut batch.columns {
                c.append_null();
            }
        }
        // One byte at most (see above): pushed, not copied.
        batch.op.values.extend(op);
        batch.op.end_value();
        batch.source_ts.append_option(ts_ms);
        match (file, pos) {
            (Some((len, window)), Some(p)) => {
                let pos = &mut batch.pos;
                pos.extend_from(window, len);
                pos.values.push(b':');
                push_decimal(&mut pos.values, p);
                pos.values.push(b':');
                push_decimal(&mut pos.values, row.unwrap_or(0));
                pos.end_value();
            }
            _ => batch.pos.push_null(),
        }
        match batch.topics.last_mut() {
            Some((t, n)) if t.as_str() == topic => *n += 1,
            _ => batch.topics.push((topic.to_string(), 1)),
        }
        batch.partition.push(partition);
        batch.offset.push(offset);
        batch.date.push(ts_ms.unwrap_or(0).div_euclid(86_400_000) as i32);
        batch.rows += 1;
        *filled = 0;
        Ok(true)
    }

    /// Decodes a row image (a `[null, record]` union) into the row columns: `Ok(false)` for null.
    /// `filled` counts the columns appended so far, for [`BatchBuilder::void_row`].
    fn image(&self, r: &mut Reader<'_>, avro: &Avro, batch: &mut BatchBuilder, filled: &mut usize) -> Read<bool> {
        let branch = r.long()?;
        let is_record = match avro {
            Avro::Union(branches) => match branches.get(branch as usize) {
                Some(Avro::Record(_)) => true,
                Some(_) => false,
                None => return Err(r.error(format!("union branch {branch} of {}", branches.len()))),
            },
            other => branch == 0 && matches!(other, Avro::Record(_)),
        };
        if !is_record {
            return Ok(false);
        }
        for ((_, avro, _), column) in self.row.iter().zip(batch.columns.iter_mut()) {
            column.append(r, avro)?;
            *filled += 1;
        }
        Ok(true)
    }
}

/// What the writer takes from a `source` field.
#[derive(Debug, Clone, Copy)]
enum SourceRole {
    TsMs,
    File,
    Pos,
    Row,
}

/// The envelope as a flat program, built once per schema: what [`Layout::append`] does with each
/// field in turn. Fields the writer does not keep are skipped by [`Skip`] steps instead of by
/// walking their schema tree (measured: the walk was a sixth of the decoding time).
#[derive(Debug, Clone, Default)]
struct Program {
    parts: Vec<Part>,
    steps: Vec<Skip>,
    /// Schemas skipped by walking them ([`Skip::Nested`]).
    nested: Vec<Avro>,
}

/// One part of the envelope.
#[derive(Debug, Clone, Copy)]
enum Part {
    /// Fields skipped: `steps[from..to]`.
    Skip(u32, u32),
    /// `before`, skipped by `steps[from..to]` (where it lies is noted: it is decoded for deletes).
    Before(u32, u32),
    After,
    Op,
    /// A field of `source` the writer keeps, by its index in `source_fields`.
    Source(SourceRole, u32),
}

/// How to step over one value without decoding it.
#[derive(Debug, Clone, Copy)]
enum Skip {
    /// A varint: int, long, enum.
    Varint,
    /// A length and that many bytes: string, bytes.
    Sized,
    /// A fixed number of bytes: boolean, float, double, fixed.
    Fixed(u32),
    /// A union of null and one other type: the null branch's index, then the steps of the other
    /// type, which follow this one (`len` of them, stepped over when the value is null).
    Nullable { null: u8, len: u32 },
    /// Anything else (other unions, arrays, maps): walked, by its index in [`Program::nested`].
    Nested(u32),
}

impl Program {
    /// Adds steps that skip a value of `avro`, merged into the part before if that skips too.
    fn skip(&mut self, avro: &Avro) {
        let from = self.steps.len() as u32;
        self.flatten(avro);
        let to = self.steps.len() as u32;
        match self.parts.last_mut() {
            Some(Part::Skip(_, end)) if *end == from => *end = to,
            _ if from == to => {}
            _ => self.parts.push(Part::Skip(from, to)),
        }
    }

    fn flatten(&mut self, avro: &Avro) {
        match avro {
            Avro::Null => {}
            Avro::Boolean => self.steps.push(Skip::Fixed(1)),
            Avro::Int | Avro::Long | Avro::Enum(_) => self.steps.push(Skip::Varint),
            Avro::Float => self.steps.push(Skip::Fixed(4)),
            Avro::Double => self.steps.push(Skip::Fixed(8)),
            Avro::Bytes | Avro::String => self.steps.push(Skip::Sized),
            Avro::Fixed(n) => self.steps.push(Skip::Fixed(*n as u32)),
            Avro::Record(fields) => fields.iter().for_each(|(_, f)| self.flatten(f)),
            Avro::Union(b) if b.len() == 2 && b.iter().any(|x| matches!(x, Avro::Null)) => {
                let null = b.iter().position(|x| matches!(x, Avro::Null)).expect("checked above");
                let at = self.steps.len();
                self.steps.push(Skip::Nullable { null: null as u8, len: 0 });
                self.flatten(&b[1 - null]);
                let len = (self.steps.len() - at - 1) as u32;
                self.steps[at] = Skip::Nullable { null: null as u8, len };
            }
            other => {
                self.steps.push(Skip::Nested(self.nested.len() as u32));
                self.nested.push(other.clone());
            }
        }
    }
}

/// "00", "01", … "99": two digits at a time for [`push_decimal`].
const DIGIT_PAIRS: [u8; 200] = {
    let mut t = [0u8; 200];
    let mut i = 0;
    while i < 100 {
        t[2 * i] = b'0' + (i / 10) as u8;
        t[2 * i + 1] = b'0' + (i % 10) as u8;
        i += 1;
    }
    t
};

/// Appends `n` in decimal, two digits per division (written into a fixed 20 bytes, then cut: no
/// `memcpy` call).
fn push_decimal(out: &mut Vec<u8>, n: i64) {
    if n < 0 {
        out.push(b'-');
    }
    let mut v = n.unsigned_abs();
    let digits = v.checked_ilog10().map_or(1, |d| d as usize + 1);
    let at = out.len();
    out.extend_from_slice(&[b'0'; 20]);
    let text = &mut out[at..at + digits];
    let mut end = digits;
    while end >= 2 {
        let pair = (v % 100) as usize * 2;
        text[end - 2..end].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
        end -= 2;
        v /= 100;
    }
    // An odd count leaves one digit.
    if end == 1 {
        text[0] = b'0' + v as u8;
    }
    out.truncate(at + digits);
}

/// Bytes moved at once when a short value is copied ([`ByteColumn::extend_from`]).
const WINDOW: usize = 32;

/// Variable-length values of one column (text or bytes) as offsets and bytes. A value of up to
/// [`WINDOW`] bytes is copied as one fixed-size move and then cut to its length, instead of a
/// `memcpy` call per value: most change-event text is short, and those calls were a tenth of the
/// decoding time.
struct ByteColumn {
    offsets: Vec<i32>,
    values: Vec<u8>,
    nulls: NullBufferBuilder,
}

impl ByteColumn {
    fn with_capacity(n: usize, bytes: usize) -> ByteColumn {
        let mut offsets = Vec::with_capacity(n + 1);
        offsets.push(0);
        ByteColumn { offsets, values: Vec::with_capacity(bytes), nulls: NullBufferBuilder::new(n) }
    }

    /// Adds the first `len` bytes of `window` to the value being written. `window` may run on
    /// past them (to the end of the record): then they are copied as one [`WINDOW`]-byte move.
    #[inline]
    fn extend_from(&mut self, window: &[u8], len: usize) {
        match window.first_chunk::<WINDOW>() {
            Some(w) if len <= WINDOW => {
                let end = self.values.len() + len;
                self.values.extend_from_slice(w);
                self.values.truncate(end);
            }
            _ => self.values.extend_from_slice(&window[..len]),
        }
    }

    /// Ends the value being written.
    #[inline]
    fn end_value(&mut self) {
        let end = i32::try_from(self.values.len()).expect("a batch's values of one column stay under 2 GiB");
        self.offsets.push(end);
        self.nulls.append_non_null();
    }

    /// Appends a value: the first `len` bytes of `window` (see [`ByteColumn::extend_from`]).
    #[inline]
    fn push_from(&mut self, window: &[u8], len: usize) {
        self.extend_from(window, len);
        self.end_value();
    }

    fn push_null(&mut self) {
        self.offsets.push(*self.offsets.last().expect("starts with 0"));
        self.nulls.append_null();
    }

    /// The values as a binary array (the column is emptied).
    fn finish(&mut self) -> BinaryArray {
        let offsets = OffsetBuffer::new(std::mem::replace(&mut self.offsets, vec![0]).into());
        let values = Buffer::from_vec(std::mem::take(&mut self.values));
        BinaryArray::new(offsets, values, self.nulls.finish())
    }
}

/// Column builders of one batch.
pub struct BatchBuilder {
    columns: Vec<Column>,
    /// `_op` and `_pos` as bytes: made UTF-8 text in one pass by [`utf8`].
    op: ByteColumn,
    source_ts: Int64Builder,
    pos: ByteColumn,
    /// `_topic` in runs of one topic (usually one run): written out by `finish`.
    topics: Vec<(String, usize)>,
    /// `_partition`, `_offset` and `_date` are never null: plain vectors, taken as they are.
    partition: Vec<i32>,
    offset: Vec<i64>,
    date: Vec<i32>,
    rows: usize,
    /// Rows left by records that failed part-way: dropped by `finish`.
    void: Vec<usize>,
}

impl BatchBuilder {
    /// Rows appended so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Completes the row a bad record left part-way (its first `filled` columns appended) so
    /// that every builder has the same length, and marks it to be dropped.
    fn void_row(&mut self, filled: usize) {
        for c in &mut self.columns[filled..] {
            c.append_null();
        }
        self.op.end_value();
        self.source_ts.append_null();
        self.pos.push_null();
        match self.topics.last_mut() {
            Some((_, n)) => *n += 1,
            None => self.topics.push((String::new(), 1)),
        }
        self.partition.push(0);
        self.offset.push(0);
        self.date.push(0);
        self.void.push(self.rows + self.void.len());
    }

    /// `_topic`, written out from its runs (the runs are emptied).
    fn topic_column(&mut self) -> StringArray {
        let runs = std::mem::take(&mut self.topics);
        let values = runs.iter().map(|(t, n)| t.as_bytes().repeat(*n)).collect::<Vec<_>>().concat();
        let offsets = OffsetBuffer::from_lengths(runs.iter().flat_map(|(t, n)| std::iter::repeat_n(t.len(), *n)));
        StringArray::new(offsets, Buffer::from_vec(values), None)
    }

    /// The finished batch (the builders are reset).
    pub fn finish(&mut self, schema: SchemaRef) -> RecordBatch {
        let mut arrays: Vec<ArrayRef> = self.columns.iter_mut().map(Column::finish).collect();
        arrays.push(Arc::new(utf8(self.op.finish())));
        arrays.push(Arc::new(self.source_ts.finish()));
        arrays.push(Arc::new(utf8(self.pos.finish())));
        arrays.push(Arc::new(self.topic_column()));
        arrays.push(Arc::new(Int32Array::from(std::mem::take(&mut self.partition))));
        arrays.push(Arc::new(Int64Array::from(std::mem::take(&mut self.offset))));
        arrays.push(Arc::new(Date32Array::from(std::mem::take(&mut self.date))));
        self.rows = 0;
        let batch = RecordBatch::try_new(schema, arrays).expect("builders match the layout's schema");
        if self.void.is_empty() {
            return batch;
        }
        let keep: BooleanArray = (0..batch.num_rows()).map(|i| Some(!self.void.contains(&i))).collect();
        self.void.clear();
        deltalake::arrow::compute::filter_record_batch(&batch, &keep).expect("a mask of the batch's length")
    }
}

enum Column {
    Boolean(BooleanBuilder),
    Int8(Int8Builder),
    Int16(Int16Builder),
    Int32(Int32Builder),
    Int64(Int64Builder),
    Float32(Float32Builder),
    Float64(Float64Builder),
    /// Text as bytes, checked to be UTF-8 all at once when the column is finished ([`utf8`]):
    /// one pass over the column instead of a check per value.
    Utf8(ByteColumn),
    Binary(ByteColumn),
    Date32(Date32Builder),
    TimestampMs(TimestampMillisecondBuilder),
    TimestampUs(TimestampMicrosecondBuilder),
    TimestampNs(TimestampNanosecondBuilder),
    Decimal(Decimal128Builder, u8, i8),
    Json(StringBuilder),
}

impl Column {
    fn new(kind: Kind, n: usize) -> Column {
        match kind {
            Kind::Boolean => Column::Boolean(BooleanBuilder::with_capacity(n)),
            Kind::Int8 => Column::Int8(Int8Builder::with_capacity(n)),
            Kind::Int16 => Column::Int16(Int16Builder::with_capacity(n)),
            Kind::Int32 => Column::Int32(Int32Builder::with_capacity(n)),
            Kind::Int64 => Column::Int64(Int64Builder::with_capacity(n)),
            Kind::Float32 => Column::Float32(Float32Builder::with_capacity(n)),
            Kind::Float64 => Column::Float64(Float64Builder::with_capacity(n)),
            Kind::Utf8 => Column::Utf8(ByteColumn::with_capacity(n, n * 16)),
            Kind::Binary => Column::Binary(ByteColumn::with_capacity(n, n * 16)),
            Kind::Date32 => Column::Date32(Date32Builder::with_capacity(n)),
            Kind::TimestampMs => {
                Column::TimestampMs(TimestampMillisecondBuilder::with_capacity(n).with_timezone("UTC"))
            }
            Kind::TimestampUs => {
                Column::TimestampUs(TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC"))
            }
            Kind::TimestampNs => Column::TimestampNs(TimestampNanosecondBuilder::with_capacity(n).with_timezone("UTC")),
            Kind::Decimal(p, s) => Column::Decimal(Decimal128Builder::with_capacity(n), p, s),
            Kind::Json => Column::Json(StringBuilder::with_capacity(n, n * 32)),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Column::Boolean(b) => Arc::new(b.finish()),
            Column::Int8(b) => Arc::new(b.finish()),
            Column::Int16(b) => Arc::new(b.finish()),
            Column::Int32(b) => Arc::new(b.finish()),
            Column::Int64(b) => Arc::new(b.finish()),
            Column::Float32(b) => Arc::new(b.finish()),
            Column::Float64(b) => Arc::new(b.finish()),
            Column::Utf8(b) => Arc::new(utf8(b.finish())),
            Column::Json(b) => Arc::new(b.finish()),
            Column::Binary(b) => Arc::new(b.finish()),
            Column::Date32(b) => Arc::new(b.finish()),
            Column::TimestampMs(b) => Arc::new(b.finish().with_timezone("UTC")),
            Column::TimestampUs(b) => Arc::new(b.finish().with_timezone("UTC")),
            Column::TimestampNs(b) => Arc::new(b.finish().with_timezone("UTC")),
            Column::Decimal(b, p, s) => Arc::new(
                b.finish().with_precision_and_scale(*p, *s).expect("precision ≤ 38 checked when the layout was built"),
            ),
        }
    }

    fn append_null(&mut self) {
        match self {
            Column::Boolean(b) => b.append_null(),
            Column::Int8(b) => b.append_null(),
            Column::Int16(b) => b.append_null(),
            Column::Int32(b) => b.append_null(),
            Column::Int64(b) => b.append_null(),
            Column::Float32(b) => b.append_null(),
            Column::Float64(b) => b.append_null(),
            Column::Utf8(b) | Column::Binary(b) => b.push_null(),
            Column::Json(b) => b.append_null(),
            Column::Date32(b) => b.append_null(),
            Column::TimestampMs(b) => b.append_null(),
            Column::TimestampUs(b) => b.append_null(),
            Column::TimestampNs(b) => b.append_null(),
            Column::Decimal(b, ..) => b.append_null(),
        }
    }

    fn append(&mut self, r: &mut Reader<'_>, avro: &Avro) -> Read<()> {
        let avro = match avro {
            Avro::Union(branches) => {
                let i = r.long()?;
                match branches.get(i as usize) {
                    Some(Avro::Null) => {
                        self.append_null();
                        return Ok(());
                    }
                    Some(b) => b,
                    None => return Err(r.error(format!("union branch {i} of {}", branches.len()))),
                }
            }
            other => other,
        };
        match self {
            Column::Boolean(b) => b.append_value(r.byte()? != 0),
            Column::Int8(b) => b.append_value(r.long()? as i8),
            Column::Int16(b) => b.append_value(r.long()? as i16),
            Column::Int32(b) => b.append_value(r.long()? as i32),
            Column::Int64(b) => b.append_value(r.long()?),
            Column::Float32(b) => b.append_value(f32::from_le_bytes(r.take(4)?.try_into().unwrap())),
            Column::Float64(b) => b.append_value(f64::from_le_bytes(r.take(8)?.try_into().unwrap())),
            Column::Utf8(b) | Column::Binary(b) => {
                let value = r.bytes()?;
                b.push_from(r.window(value), value.len())
            }
            Column::Date32(b) => b.append_value(r.long()? as i32),
            Column::TimestampMs(b) => b.append_value(r.long()?),
            Column::TimestampUs(b) => b.append_value(r.long()?),
            Column::TimestampNs(b) => b.append_value(r.long()?),
            Column::Decimal(b, ..) => {
                let bytes = r.bytes()?;
                if bytes.len() > 16 {
                    // Precision ≤ 38 never needs more; a writer that sent more broke its schema.
                    b.append_null();
                    return Ok(());
                }
                let fill = if bytes.first().is_some_and(|x| x & 0x80 != 0) { 0xff } else { 0 };
                let mut be = [fill; 16];
                be[16 - bytes.len()..].copy_from_slice(bytes);
                b.append_value(i128::from_be_bytes(be))
            }
            Column::Json(b) => {
                let json = r.json(avro)?;
                b.append_value(json.to_string())
            }
        }
        Ok(())
    }
}

/// Reads Avro binary.
struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn error(&self, reason: String) -> Box<DecodeError> {
        Box::new(DecodeError::Data { at: self.at, reason })
    }

    #[inline]
    fn take(&mut self, n: usize) -> Read<&'a [u8]> {
        match self.buf.get(self.at..).and_then(|rest| rest.get(..n)) {
            Some(s) => {
                self.at += n;
                Ok(s)
            }
            None => Err(self.short(n)),
        }
    }

    #[cold]
    fn short(&self, n: usize) -> Box<DecodeError> {
        self.error(format!("{n} bytes wanted, {} left", self.buf.len().saturating_sub(self.at)))
    }

    #[inline]
    fn byte(&mut self) -> Read<u8> {
        Ok(self.take(1)?[0])
    }

    #[inline]
    fn long(&mut self) -> Read<i64> {
        // Most values (lengths, union branches, small numbers) fit in one byte.
        if let Some(&b) = self.buf.get(self.at)
            && b < 0x80
        {
            self.at += 1;
            return Ok(zigzag(u64::from(b)));
        }
        self.long_multi_byte()
    }

    /// [`Reader::long`] past its one-byte case, kept out of line so that case inlines small.
    #[inline(never)]
    fn long_multi_byte(&mut self) -> Read<i64> {
        let rest = self.buf.get(self.at..).unwrap_or_default();
        if let Some((word, len)) = short_varint(rest) {
            self.at += len;
            return Ok(zigzag(pack(word, len)));
        }
        // Nanosecond timestamps take 9 bytes: every Debezium envelope has two.
        if let Some((v, len)) = long_varint(rest) {
            self.at += len;
            return Ok(zigzag(v));
        }
        // Within 8 bytes of the end of the buffer, or broken.
        let mut v = 0u64;
        for (i, &b) in rest.iter().take(10).enumerate() {
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                self.at += i + 1;
                return Ok(zigzag(v));
            }
        }
        Err(self.error(if rest.len() >= 10 { "varint longer than 10 bytes".into() } else { "varint cut short".into() }))
    }

    /// `value` (just read) and the rest of the buffer after it, for [`ByteColumn::extend_from`].
    #[inline]
    fn window(&self, value: &[u8]) -> &'a [u8] {
        &self.buf[self.at - value.len()..]
    }

    /// A length and that many bytes. Always inlined: a call per string and decimal cost more
    /// than the code it saves.
    #[inline(always)]
    fn bytes(&mut self) -> Read<&'a [u8]> {
        let n = self.long()?;
        match usize::try_from(n) {
            Ok(n) => self.take(n),
            Err(_) => Err(self.negative(n)),
        }
    }

    #[cold]
    fn negative(&self, n: i64) -> Box<DecodeError> {
        self.error(format!("negative length {n}"))
    }

    /// A long, possibly inside a `[null, long]` union.
    fn long_in(&mut self, avro: &Avro) -> Read<Option<i64>> {
        match avro {
            Avro::Long | Avro::Int => Ok(Some(self.long()?)),
            Avro::Union(b) => match b.get(self.long()? as usize) {
                Some(Avro::Null) => Ok(None),
                Some(inner) => self.long_in(inner),
                None => Err(self.error("bad union branch".into())),
            },
            other => {
                self.skip(other)?;
                Ok(None)
            }
        }
    }

    /// The bytes of a string, possibly inside a `[null, string]` union, not checked to be UTF-8.
    fn text_in(&mut self, avro: &Avro) -> Read<Option<&'a [u8]>> {
        match avro {
            Avro::String => self.bytes().map(Some),
            Avro::Union(b) => match b.get(self.long()? as usize) {
                Some(Avro::Null) => Ok(None),
                Some(inner) => self.text_in(inner),
                None => Err(self.error("bad union branch".into())),
            },
            other => {
                self.skip(other)?;
                Ok(None)
            }
        }
    }

    /// Steps over a varint without decoding it.
    #[inline]
    fn skip_varint(&mut self) -> Read<()> {
        let rest = self.buf.get(self.at..).unwrap_or_default();
        if let Some((_, len)) = short_varint(rest).or_else(|| long_varint(rest)) {
            self.at += len;
            return Ok(());
        }
        self.long_multi_byte().map(drop)
    }

    /// Steps over the values that `steps` (of a [`Program`]) describe.
    fn skip_steps(&mut self, steps: &[Skip], nested: &[Avro]) -> Read<()> {
        let mut i = 0;
        while let Some(&step) = steps.get(i) {
            match step {
                Skip::Varint => self.skip_varint()?,
                Skip::Sized => {
                    self.bytes()?;
                }
                Skip::Fixed(n) => {
                    self.take(n as usize)?;
                }
                Skip::Nullable { null, len } => {
                    let branch = self.long()?;
                    if branch == i64::from(null) {
                        i += len as usize;
                    } else if branch != i64::from(1 - null) {
                        return Err(self.error(format!("union branch {branch}")));
                    }
                }
                Skip::Nested(n) => self.skip(&nested[n as usize])?,
            }
            i += 1;
        }
        Ok(())
    }

    fn skip(&mut self, avro: &Avro) -> Read<()> {
        match avro {
            Avro::Null => {}
            Avro::Boolean => {
                self.byte()?;
            }
            Avro::Int | Avro::Long | Avro::Enum(_) => {
                self.long()?;
            }
            Avro::Float => {
                self.take(4)?;
            }
            Avro::Double => {
                self.take(8)?;
            }
            Avro::Bytes | Avro::String => {
                self.bytes()?;
            }
            Avro::Fixed(n) => {
                self.take(*n)?;
            }
            Avro::Record(fields) => {
                for (_, f) in fields {
                    self.skip(f)?;
                }
            }
            Avro::Union(b) => {
                let i = self.long()?;
                let inner = b.get(i as usize).ok_or_else(|| self.error(format!("union branch {i}")))?;
                self.skip(inner)?;
            }
            Avro::Array(item) | Avro::Map(item) => loop {
                let mut n = self.long()?;
                if n == 0 {
                    break;
                }
                if n < 0 {
                    n = -n;
                    self.long()?; // block size in bytes
                }
                for _ in 0..n {
                    if matches!(avro, Avro::Map(_)) {
                        self.bytes()?;
                    }
                    self.skip(item)?;
                }
            },
        }
        Ok(())
    }

    /// A nested value as JSON (bytes as arrays of numbers would be unreadable: base64-free hex).
    fn json(&mut self, avro: &Avro) -> Read<Json> {
        Ok(match avro {
            Avro::Null => Json::Null,
            Avro::Boolean => Json::Bool(self.byte()? != 0),
            Avro::Int | Avro::Long => Json::from(self.long()?),
            Avro::Float => Json::from(f64::from(f32::from_le_bytes(self.take(4)?.try_into().unwrap()))),
            Avro::Double => Json::from(f64::from_le_bytes(self.take(8)?.try_into().unwrap())),
            Avro::String => Json::String(String::from_utf8_lossy(self.bytes()?).into_owned()),
            Avro::Bytes => Json::String(hex(self.bytes()?)),
            Avro::Fixed(n) => Json::String(hex(self.take(*n)?)),
            Avro::Enum(symbols) => {
                let i = self.long()?;
                Json::String(symbols.get(i as usize).cloned().unwrap_or_default())
            }
            Avro::Record(fields) => {
                let mut obj = Map::new();
                for (name, f) in fields {
                    obj.insert(name.clone(), self.json(f)?);
                }
                Json::Object(obj)
            }
            Avro::Union(b) => {
                let i = self.long()?;
                let inner = b.get(i as usize).ok_or_else(|| self.error(format!("union branch {i}")))?.clone();
                self.json(&inner)?
            }
            Avro::Array(item) | Avro::Map(item) => {
                let is_map = matches!(avro, Avro::Map(_));
                let (mut arr, mut obj) = (Vec::new(), Map::new());
                loop {
                    let mut n = self.long()?;
                    if n == 0 {
                        break;
                    }
                    if n < 0 {
                        n = -n;
                        self.long()?;
                    }
                    for _ in 0..n {
                        if is_map {
                            let k = String::from_utf8_lossy(self.bytes()?).into_owned();
                            obj.insert(k, self.json(item)?);
                        } else {
                            arr.push(self.json(item)?);
                        }
                    }
                }
                if is_map { Json::Object(obj) } else { Json::Array(arr) }
            }
        })
    }
}

/// A column of text collected as bytes, as a string column: one UTF-8 check over all of it. Only
/// if that fails is each value checked, and a value that is not UTF-8 gets U+FFFD for its bad
/// bytes (the row is kept: one odd byte in a note is no reason to lose the change).
fn utf8(bytes: BinaryArray) -> StringArray {
    StringArray::try_from_binary(bytes.clone())
        .unwrap_or_else(|_| bytes.iter().map(|v| v.map(String::from_utf8_lossy)).collect())
}

/// The first 8 bytes of `rest` as a little-endian word and the length of the varint they start
/// with, if it ends within them (its last byte is the first without the high bit).
#[inline]
fn short_varint(rest: &[u8]) -> Option<(u64, usize)> {
    let word = u64::from_le_bytes(*rest.first_chunk::<8>()?);
    let ends = !word & 0x8080_8080_8080_8080;
    (ends != 0).then(|| (word, ends.trailing_zeros() as usize / 8 + 1))
}

/// The 7-bit groups of the first `len` (at most 8) bytes of `word` packed together, in three
/// steps instead of a step per byte.
#[inline]
fn pack(word: u64, len: usize) -> u64 {
    let mut x = word & 0x7f7f_7f7f_7f7f_7f7f;
    if len < 8 {
        x &= (1u64 << (8 * len)) - 1;
    }
    x = (x & 0x007f_007f_007f_007f) | ((x & 0x7f00_7f00_7f00_7f00) >> 1);
    x = (x & 0x0000_3fff_0000_3fff) | ((x & 0x3fff_0000_3fff_0000) >> 2);
    (x & 0x0000_0000_0fff_ffff) | ((x & 0x0fff_ffff_0000_0000) >> 4)
}

/// The value and length of a varint of 9 or 10 bytes at the start of `rest`, whose first 8
/// bytes all have the high bit (see [`short_varint`]). A tenth byte gives the top bit only, as
/// Avro's Java decoder reads it.
#[inline]
fn long_varint(rest: &[u8]) -> Option<(u64, usize)> {
    let (first, tail) = rest.split_first_chunk::<8>()?;
    let low = pack(u64::from_le_bytes(*first), 8);
    match *tail {
        [b8, ..] if b8 < 0x80 => Some((low | u64::from(b8) << 56, 9)),
        [b8, b9, ..] if b9 < 0x80 => Some((low | u64::from(b8 & 0x7f) << 56 | u64::from(b9) << 63, 10)),
        _ => None,
    }
}

/// Avro's zig-zag encoding of a signed long, undone.
fn zigzag(v: u64) -> i64 {
    (v >> 1) as i64 ^ -((v & 1) as i64)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use deltalake::arrow::array::{AsArray as _, Int64Array};
    use weir_schemas::{
        avro::AvroSchema,
        connect::{Field as CField, Value as V, schema},
        envelope::{BinlogFlavor, BinlogSource, Op, SnapshotMarker, TableSchemas, binlog_source_schema},
    };

    use super::*;

    /// Avro bodies of `orders(id, note)` change events, and the envelope schema's JSON.
    struct Events {
        t: TableSchemas,
        avro: AvroSchema,
        source: weir_schemas::connect::ConnectSchema,
    }

    impl Events {
        fn new() -> Events {
            let source = binlog_source_schema(BinlogFlavor::Mariadb);
            let columns = vec![CField::new("id", schema::int64()), CField::new("note", schema::string().optional())];
            let t = TableSchemas::new("s.db.orders", columns, vec![CField::new("id", schema::int64())], source.clone());
            let avro = AvroSchema::new(t.envelope.clone()).unwrap();
            Events { t, avro, source }
        }

        fn body(&self, op: Op, id: i64, note: &str, pos: i64) -> Vec<u8> {
            let row = V::Struct(vec![V::Int64(id), V::String(note.into())]);
            let (before, after) = match op {
                Op::Delete => (row, V::Null),
                Op::Update => (V::Struct(vec![V::Int64(id), V::Null]), row),
                _ => (V::Null, row),
            };
            let src = BinlogSource {
                flavor: BinlogFlavor::Mariadb,
                name: "s".into(),
                ts_us: 1_795_428_000_000_000,
                snapshot: SnapshotMarker::False,
                db: "db".into(),
                table: Some("orders".into()),
                server_id: 1,
                gtid: None,
                file: "mysql-bin.000007".into(),
                pos,
                row: 2,
                thread: None,
                query: None,
            };
            let envelope = self.t.envelope_value(op, before, after, src.to_value(&self.source), None, 0);
            self.avro.encode(&envelope).unwrap()
        }
    }

    #[test]
    fn creates_updates_and_deletes_become_rows() {
        let e = Events::new();
        let layout = Layout::new(&e.avro.json).unwrap();
        let mut b = layout.batch(16);
        assert!(layout.append(&e.body(Op::Create, 1, "new", 4), "t", 0, 10, &mut b).unwrap());
        assert!(layout.append(&e.body(Op::Update, 1, "changed", 120), "t", 0, 11, &mut b).unwrap());
        assert!(layout.append(&e.body(Op::Delete, 1, "changed", -1), "t", 1, 12, &mut b).unwrap());
        let batch = b.finish(layout.schema());
        assert_eq!(batch.num_rows(), 3);
        let notes: Vec<_> = batch.column(1).as_string::<i32>().iter().map(|s| s.unwrap()).collect();
        assert_eq!(notes, ["new", "changed", "changed"], "a delete's row is its before image");
        let ops: Vec<_> = batch.column_by_name("_op").unwrap().as_string::<i32>().iter().map(|s| s.unwrap()).collect();
        assert_eq!(ops, ["c", "u", "d"]);
        let pos: Vec<_> = batch.column_by_name("_pos").unwrap().as_string::<i32>().iter().map(|s| s.unwrap()).collect();
        assert_eq!(pos, ["mysql-bin.000007:4:2", "mysql-bin.000007:120:2", "mysql-bin.000007:-1:2"]);
    }

    #[test]
    fn a_record_bad_part_way_leaves_nothing_behind() {
        let e = Events::new();
        let layout = Layout::new(&e.avro.json).unwrap();
        let mut b = layout.batch(16);
        layout.append(&e.body(Op::Create, 1, "one", 4), "t", 0, 0, &mut b).unwrap();
        // Cut inside the `after` image (after its id, inside the note) and inside `source`.
        let full = e.body(Op::Create, 2, "a longer note that gets cut", 8);
        for cut in [full.len() / 4, full.len() / 2, full.len() - 3] {
            assert!(layout.append(&full[..cut], "t", 0, 1, &mut b).is_err(), "cut at {cut}");
        }
        layout.append(&e.body(Op::Create, 3, "three", 12), "t", 0, 2, &mut b).unwrap();
        assert_eq!(b.rows(), 2);
        let batch = b.finish(layout.schema());
        assert_eq!(batch.num_rows(), 2);
        let ids = batch.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(ids.values().to_vec(), vec![1, 3]);
        let offsets = batch.column_by_name("_offset").unwrap().as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(offsets.values().to_vec(), vec![0, 2]);
        // The builder is clean for the next batch.
        layout.append(&e.body(Op::Create, 4, "four", 16), "t", 0, 3, &mut b).unwrap();
        assert_eq!(b.finish(layout.schema()).num_rows(), 1);
    }

    #[test]
    fn text_that_is_not_utf8_keeps_its_row_with_replacement_characters() {
        let e = Events::new();
        let layout = Layout::new(&e.avro.json).unwrap();
        let mut b = layout.batch(16);
        let mut bad = e.body(Op::Create, 1, "~caf~", 4);
        for at in [bad.iter().position(|&c| c == b'~').unwrap(), bad.iter().rposition(|&c| c == b'~').unwrap()] {
            bad[at] = 0xff;
        }
        assert!(layout.append(&e.body(Op::Create, 0, "before", 0), "t", 0, 0, &mut b).unwrap());
        assert!(layout.append(&bad, "t", 0, 1, &mut b).unwrap());
        assert!(layout.append(&e.body(Op::Create, 2, "after", 8), "t", 0, 2, &mut b).unwrap());
        let batch = b.finish(layout.schema());
        let notes: Vec<_> = batch.column(1).as_string::<i32>().iter().map(|s| s.unwrap()).collect();
        assert_eq!(notes, ["before", "\u{fffd}caf\u{fffd}", "after"]);
    }

    /// Avro's encoding of `n`: zig-zag, then 7 bits a byte, low bits first.
    fn varint(n: i64) -> Vec<u8> {
        let mut v = ((n << 1) ^ (n >> 63)) as u64;
        let mut out = Vec::new();
        while v >= 0x80 {
            out.push(v as u8 | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
        out
    }

    #[test]
    fn byte_columns_keep_each_value_whole_whatever_follows_it() {
        let text: Vec<u8> = (0..100u8).collect();
        let mut c = ByteColumn::with_capacity(2, 4);
        let mut want: Vec<Option<&[u8]>> = Vec::new();
        for (at, len, end) in
            [(0, 3, 100), (5, 0, 100), (10, WINDOW, 100), (1, WINDOW + 1, 100), (90, 10, 100), (2, 7, 9)]
        {
            // The window runs to `end`: past the value (a fixed move), or just to its end.
            c.push_from(&text[at..end], len);
            want.push(Some(&text[at..at + len]));
            if len == 3 {
                c.push_null();
                want.push(None);
            }
        }
        c.extend_from(b"file", 4);
        c.values.push(b':');
        push_decimal(&mut c.values, -42);
        c.end_value();
        want.push(Some(b"file:-42"));
        let got = c.finish();
        assert_eq!(got.iter().collect::<Vec<_>>(), want);
        assert_eq!(c.finish().iter().count(), 0, "finish empties the column");
    }

    #[test]
    fn decimals_print_as_rust_prints_them() {
        let mut values = vec![0, 1, 9, 10, 99, 100, i64::MAX, i64::MIN, -1, -10];
        values.extend((0..19).map(|e| 10i64.pow(e)).flat_map(|p| [p - 1, p, p + 1, -p]));
        for n in values {
            let mut out = b"x".to_vec();
            push_decimal(&mut out, n);
            assert_eq!(String::from_utf8(out).unwrap(), format!("x{n}"));
        }
    }

    #[test]
    fn each_row_keeps_its_topic() {
        let e = Events::new();
        let layout = Layout::new(&e.avro.json).unwrap();
        let mut b = layout.batch(4);
        let full = e.body(Op::Create, 1, "note", 4);
        for (topic, body) in [("a", &full[..]), ("a", &full[..full.len() / 2]), ("b.c", &full[..]), ("a", &full[..])] {
            let _ = layout.append(body, topic, 0, 0, &mut b);
        }
        let batch = b.finish(layout.schema());
        let topics: Vec<_> = batch.column_by_name("_topic").unwrap().as_string::<i32>().iter().flatten().collect();
        assert_eq!(topics, ["a", "b.c", "a"], "the record cut short left no row");
    }

    #[test]
    fn steps_skip_exactly_what_the_schema_walk_skips() {
        let nullable = |a: Avro| Avro::Union(vec![Avro::Null, a]);
        let inner = Avro::Record(vec![("n".into(), Avro::Long), ("s".into(), nullable(Avro::String))]);
        let schema = Avro::Record(vec![
            ("b".into(), Avro::Boolean),
            ("i".into(), Avro::Int),
            ("f".into(), Avro::Float),
            ("d".into(), Avro::Double),
            ("x".into(), Avro::Bytes),
            ("fx".into(), Avro::Fixed(3)),
            ("e".into(), Avro::Enum(vec!["A".into(), "B".into()])),
            ("nl".into(), nullable(Avro::Long)),
            ("sn".into(), Avro::Union(vec![Avro::String, Avro::Null])),
            ("rec".into(), nullable(inner)),
            ("arr".into(), Avro::Array(Box::new(Avro::Long))),
            ("map".into(), Avro::Map(Box::new(Avro::String))),
            ("either".into(), Avro::Union(vec![Avro::Int, Avro::String])),
            ("last".into(), Avro::Long),
        ]);
        let text = |s: &str| [varint(s.len() as i64), s.as_bytes().to_vec()].concat();
        // Every optional value present, then every one absent.
        let present = [
            vec![1],
            varint(-300),
            vec![0; 4],
            vec![0; 8],
            text("xyz"),
            vec![7; 3],
            varint(1),
            [varint(1), varint(1 << 40)].concat(),
            [varint(0), text("s")].concat(),
            [varint(1), varint(5), varint(1), text("inner")].concat(),
            // Blocks: two items, then one item with its size in bytes (a negative count), then the end.
            [varint(2), varint(1), varint(2), varint(-1), varint(1), varint(9), varint(0)].concat(),
            [varint(1), text("k"), text("v"), varint(0)].concat(),
            [varint(1), text("either")].concat(),
            varint(i64::MIN),
        ]
        .concat();
        let absent = [
            vec![0],
            varint(0),
            vec![0; 4],
            vec![0; 8],
            varint(0),
            vec![0; 3],
            varint(0),
            varint(0),
            varint(1),
            varint(0),
            varint(0),
            varint(0),
            [varint(0), varint(42)].concat(),
            varint(-2),
        ]
        .concat();
        let mut program = Program::default();
        program.skip(&schema);
        assert_eq!(program.nested.len(), 3, "arrays, maps and other unions are walked: {:?}", program.steps);
        for body in [present, absent] {
            let mut padded = body.clone();
            padded.extend_from_slice(&[0xff; 9]);
            for buf in [&body[..], &padded[..]] {
                let mut walked = Reader { buf, at: 0 };
                walked.skip(&schema).unwrap();
                assert_eq!(walked.at, body.len());
                let mut stepped = Reader { buf, at: 0 };
                stepped.skip_steps(&program.steps, &program.nested).unwrap();
                assert_eq!(stepped.at, body.len(), "{buf:02x?}");
            }
            for cut in 0..body.len() {
                let mut stepped = Reader { buf: &body[..cut], at: 0 };
                assert!(stepped.skip_steps(&program.steps, &program.nested).is_err(), "cut at {cut}");
            }
        }
        let mut r = Reader { buf: &[4, 0], at: 0 };
        let err = r.skip_steps(&[Skip::Nullable { null: 0, len: 1 }, Skip::Varint], &[]).unwrap_err();
        assert!(err.to_string().contains("union branch 2"), "{err}");
    }

    #[test]
    fn longs_of_every_length_decode_with_or_without_bytes_after_them() {
        let mut values = vec![0, -1, 1, 63, -64, 64, i64::MAX, i64::MIN, 1_795_428_000_000_000];
        for shift in 0..63 {
            values.extend([1i64 << shift, (1i64 << shift) - 1, -(1i64 << shift), -(1i64 << shift) - 1]);
        }
        for n in values {
            let bytes = varint(n);
            let mut padded = bytes.clone();
            padded.extend_from_slice(&[0xff; 9]);
            for buf in [&bytes[..], &padded[..]] {
                let mut r = Reader { buf, at: 0 };
                assert_eq!(r.long().unwrap(), n, "{n} from {buf:02x?}");
                assert_eq!(r.at, bytes.len(), "{n}: bytes taken");
                let mut r = Reader { buf, at: 0 };
                r.skip_varint().unwrap();
                assert_eq!(r.at, bytes.len(), "{n}: bytes skipped");
            }
        }
        let mut r = Reader { buf: &[0x80, 0x80], at: 0 };
        assert!(r.long().unwrap_err().to_string().contains("varint cut short"));
        let mut r = Reader { buf: &[0xff; 12], at: 0 };
        assert!(r.long().unwrap_err().to_string().contains("longer than 10 bytes"));
    }
}
