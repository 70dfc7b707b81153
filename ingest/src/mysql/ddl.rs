//! What a DDL statement from the binlog names: the databases and tables it creates, alters,
//! drops or renames, so a source skips the DDL of databases and tables it does not capture (as
//! Debezium's schema change topic does) instead of reading `information_schema` for it.
//!
//! Only the statement's head is read (up to the first column list); a statement whose head is
//! not one of the forms below names `None`, and the source treats it as possibly its own.

use std::sync::LazyLock;

use regex::Regex;

/// An object a DDL statement names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Named {
    /// `CREATE|ALTER|DROP DATABASE|SCHEMA <db>`.
    Database(String),
    /// A table, with its database (the statement's, or the session's default).
    Table(String, String),
}

/// One identifier, back-quoted or bare, optionally qualified.
const NAME: &str = r"(?:`(?:[^`]|``)+`|[\w$]+)(?:\s*\.\s*(?:`(?:[^`]|``)+`|[\w$]+))?";

static DATABASE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(&format!(
        r"(?is)^\s*(?:CREATE|ALTER|DROP)\s+(?:DATABASE|SCHEMA)\s+(?:IF\s+(?:NOT\s+)?EXISTS\s+)?({NAME})"
    ))
    .expect("database DDL pattern")
});

/// `CREATE [OR REPLACE] [TEMPORARY] TABLE`, `ALTER [ONLINE] [IGNORE] TABLE`, `DROP [TEMPORARY]
/// TABLE`, then the table names (several for `DROP`).
static TABLE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(&format!(
        r"(?is)^\s*(?:CREATE(?:\s+OR\s+REPLACE)?(?:\s+TEMPORARY)?|ALTER(?:\s+ONLINE)?(?:\s+IGNORE)?|DROP(?:\s+TEMPORARY)?)\s+TABLE\s+(?:IF\s+(?:NOT\s+)?EXISTS\s+)?((?:{NAME})(?:\s*,\s*(?:{NAME}))*)"
    ))
    .expect("table DDL pattern")
});

/// `RENAME TABLE a TO b[, c TO d]`.
static RENAME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(&format!(
        r"(?is)^\s*RENAME\s+TABLES?\s+((?:{NAME})\s+TO\s+(?:{NAME})(?:\s*,\s*(?:{NAME})\s+TO\s+(?:{NAME}))*)"
    ))
    .expect("rename pattern")
});

/// `CREATE [UNIQUE|FULLTEXT|SPATIAL] INDEX i ON t`, `DROP INDEX i ON t`.
static INDEX: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(&format!(
        r"(?is)^\s*(?:CREATE(?:\s+OR\s+REPLACE)?(?:\s+(?:UNIQUE|FULLTEXT|SPATIAL))?|DROP)\s+INDEX\s+(?:IF\s+(?:NOT\s+)?EXISTS\s+)?(?:{NAME})\s+ON\s+({NAME})"
    ))
    .expect("index pattern")
});

static ONE: LazyLock<Regex> = LazyLock::new(|| Regex::new(NAME).expect("name pattern"));

/// What `sql`, run with `default_db` as the session's database, names; `None` when its form is
/// not one of those above.
pub fn named(default_db: &str, sql: &str) -> Option<Vec<Named>> {
    if let Some(c) = DATABASE.captures(sql) {
        return Some(vec![Named::Database(unquote(&c[1]))]);
    }
    let list = [&*TABLE, &*RENAME, &*INDEX].into_iter().find_map(|re| re.captures(sql))?;
    let tables = ONE
        .find_iter(&list[1])
        .map(|m| m.as_str())
        .filter(|name| !name.eq_ignore_ascii_case("TO"))
        .map(|name| table(default_db, name))
        .collect();
    Some(tables)
}

fn table(default_db: &str, name: &str) -> Named {
    // A dot inside back quotes is part of the name.
    let mut parts = Vec::new();
    let (mut part, mut quoted) = (String::new(), false);
    let mut chars = name.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '`' if quoted && chars.peek() == Some(&'`') => {
                chars.next();
                part.push('`');
            }
            '`' => quoted = !quoted,
            '.' if !quoted => parts.push(std::mem::take(&mut part)),
            c if c.is_whitespace() && !quoted => {}
            c => part.push(c),
        }
    }
    parts.push(part);
    match <[String; 2]>::try_from(parts) {
        Ok([db, t]) => Named::Table(db, t),
        Err(mut one) => Named::Table(default_db.to_string(), one.pop().unwrap_or_default()),
    }
}

fn unquote(name: &str) -> String {
    let name = name.trim();
    match name.strip_prefix('`').and_then(|n| n.strip_suffix('`')) {
        Some(inner) => inner.replace("``", "`"),
        None => name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::{Named, named};

    fn t(db: &str, table: &str) -> Named {
        Named::Table(db.into(), table.into())
    }

    #[test]
    fn databases_and_tables_are_named_with_the_default_database_where_unqualified() {
        assert_eq!(named("x", "DROP DATABASE IF EXISTS weir_cli"), Some(vec![Named::Database("weir_cli".into())]));
        assert_eq!(named("x", "create schema `my db`"), Some(vec![Named::Database("my db".into())]));
        assert_eq!(named("shop", "ALTER TABLE orders ADD COLUMN n INT"), Some(vec![t("shop", "orders")]));
        assert_eq!(
            named("", "CREATE TABLE IF NOT EXISTS `weir_cfk`.`t` (id INT PRIMARY KEY)"),
            Some(vec![t("weir_cfk", "t")])
        );
        assert_eq!(named("", "create or replace table a.b(id int)"), Some(vec![t("a", "b")]));
        assert_eq!(named("d", "DROP TABLE a.b, c , `e.f`.g"), Some(vec![t("a", "b"), t("d", "c"), t("e.f", "g")]));
        assert_eq!(
            named("d", "RENAME TABLE a TO b.c, x.y TO z"),
            Some(vec![t("d", "a"), t("b", "c"), t("x", "y"), t("d", "z")])
        );
        assert_eq!(named("d", "CREATE UNIQUE INDEX i ON shop.t (v)"), Some(vec![t("shop", "t")]));
        assert_eq!(named("d", "DROP INDEX i ON t"), Some(vec![t("d", "t")]));
        assert_eq!(named("d", "ALTER ONLINE TABLE `a``b` ADD c INT"), Some(vec![t("d", "a`b")]));
    }

    #[test]
    fn other_statements_name_nothing_known() {
        assert_eq!(named("d", "CREATE VIEW v AS SELECT 1"), None);
        assert_eq!(named("d", "GRANT ALL ON d.* TO u"), None);
    }
}
