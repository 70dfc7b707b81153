//! Compatibility levels and checks as Confluent's registry defines them: whether a new version of
//! a subject's schema may be registered, given the versions before it. BACKWARD (the default):
//! consumers using the new schema can read data written with the previous one; FORWARD: consumers
//! using the previous schema can read data written with the new one; FULL: both; the
//! `_TRANSITIVE` levels check against every earlier version, not just the latest; NONE checks
//! nothing. Reading rules (field defaults, promotions, unions, enum symbols) are Avro's, from the
//! `apache-avro` crate's schema-resolution checker.

use apache_avro::{Schema, schema_compatibility::SchemaCompatibility};

use super::RegistryError;

/// A compatibility level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compatibility {
    /// No check.
    None,
    /// The new schema reads data written with the latest version.
    #[default]
    Backward,
    /// … with every earlier version.
    BackwardTransitive,
    /// The latest version reads data written with the new schema.
    Forward,
    /// Every earlier version does.
    ForwardTransitive,
    /// Backward and forward against the latest version.
    Full,
    /// … against every earlier version.
    FullTransitive,
}

impl Compatibility {
    /// Every level, by its name.
    pub const ALL: [Compatibility; 7] = [
        Compatibility::None,
        Compatibility::Backward,
        Compatibility::BackwardTransitive,
        Compatibility::Forward,
        Compatibility::ForwardTransitive,
        Compatibility::Full,
        Compatibility::FullTransitive,
    ];

    /// The level named `s` (Confluent's names, any case).
    pub fn parse(s: &str) -> Result<Compatibility, RegistryError> {
        Self::ALL
            .into_iter()
            .find(|c| c.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| RegistryError::InvalidCompatibility(s.to_string()))
    }

    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Compatibility::None => "NONE",
            Compatibility::Backward => "BACKWARD",
            Compatibility::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Compatibility::Forward => "FORWARD",
            Compatibility::ForwardTransitive => "FORWARD_TRANSITIVE",
            Compatibility::Full => "FULL",
            Compatibility::FullTransitive => "FULL_TRANSITIVE",
        }
    }

    /// Why `new` may not follow `earlier` (the subject's versions as (version, schema), oldest
    /// first) at this level: one message per broken rule; empty when it may.
    pub fn violations(self, new: &str, earlier: &[(u32, String)]) -> Result<Vec<String>, RegistryError> {
        let (backward, forward, transitive) = match self {
            Compatibility::None => return Ok(Vec::new()),
            Compatibility::Backward => (true, false, false),
            Compatibility::BackwardTransitive => (true, false, true),
            Compatibility::Forward => (false, true, false),
            Compatibility::ForwardTransitive => (false, true, true),
            Compatibility::Full => (true, true, false),
            Compatibility::FullTransitive => (true, true, true),
        };
        let new = parse(new)?;
        let against: &[(u32, String)] =
            if transitive { earlier } else { earlier.last().map_or(&[], std::slice::from_ref) };
        let mut out = Vec::new();
        for (version, text) in against {
            let old = parse(text)?;
            if backward && let Err(e) = SchemaCompatibility::can_read(&old, &new) {
                out.push(format!("the new schema cannot read data written with version {version}: {e}"));
            }
            if forward && let Err(e) = SchemaCompatibility::can_read(&new, &old) {
                out.push(format!("version {version} cannot read data written with the new schema: {e}"));
            }
        }
        Ok(out)
    }
}

/// `text` parsed for a compatibility check, with its logical types taken off: Confluent's
/// registry checks with Avro Java's `SchemaCompatibility`, which resolves on the underlying types
/// and ignores logical types, while `apache-avro` 0.21's checker answers "inconclusive" for any
/// `decimal` (even two identical ones). Without the annotation both read the same bytes.
fn parse(text: &str) -> Result<Schema, RegistryError> {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(o) => {
                o.remove("logicalType");
                o.values_mut().for_each(strip);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut json: serde_json::Value =
        serde_json::from_str(text).map_err(|e| RegistryError::InvalidSchema(format!("not JSON: {e}")))?;
    strip(&mut json);
    Schema::parse(&json).map_err(|e| RegistryError::InvalidSchema(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(fields: &str) -> String {
        format!(r#"{{"type": "record", "name": "R", "fields": [{fields}]}}"#)
    }

    #[test]
    fn levels_follow_avro_resolution() {
        let v1 = record(r#"{"name": "a", "type": "int"}"#);
        let optional_added =
            record(r#"{"name": "a", "type": "int"}, {"name": "b", "type": ["null", "string"], "default": null}"#);
        let required_added = record(r#"{"name": "a", "type": "int"}, {"name": "b", "type": "string"}"#);
        let retyped = record(r#"{"name": "a", "type": "string"}"#);
        let promoted = record(r#"{"name": "a", "type": "long"}"#);
        let earlier = vec![(1, v1.clone())];
        let ok = |c: Compatibility, s: &str| c.violations(s, &earlier).unwrap().is_empty();
        assert!(ok(Compatibility::Backward, &optional_added));
        assert!(
            !ok(Compatibility::Backward, &required_added),
            "a field without a default cannot be read from old data"
        );
        assert!(ok(Compatibility::Forward, &required_added), "old readers ignore the new field");
        assert!(!ok(Compatibility::Full, &required_added));
        assert!(!ok(Compatibility::Backward, &retyped));
        assert!(ok(Compatibility::None, &retyped));
        assert!(ok(Compatibility::Backward, &promoted), "int promotes to long");
        assert!(!ok(Compatibility::Forward, &promoted), "long does not narrow to int");
        // Transitive levels look past the latest version.
        let history = vec![(1, retyped.clone()), (2, v1.clone())];
        assert!(Compatibility::Backward.violations(&v1, &history).unwrap().is_empty());
        let why = Compatibility::BackwardTransitive.violations(&v1, &history).unwrap();
        assert_eq!(why.len(), 1, "{why:?}");
        assert!(why[0].contains("version 1"), "{why:?}");
        // Logical types resolve on their underlying types, as in Confluent's (Java) check.
        let decimal = record(
            r#"{"name": "amount", "type": ["null", {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}], "default": null}"#,
        );
        assert!(Compatibility::Full.violations(&decimal, &[(1, decimal.clone())]).unwrap().is_empty());
        let date = record(r#"{"name": "a", "type": {"type": "int", "logicalType": "date"}}"#);
        assert!(Compatibility::Full.violations(&date, &earlier).unwrap().is_empty());
        assert_eq!(Compatibility::parse("full_transitive").unwrap(), Compatibility::FullTransitive);
        assert!(matches!(Compatibility::parse("SOMETIMES"), Err(RegistryError::InvalidCompatibility(_))));
    }
}
