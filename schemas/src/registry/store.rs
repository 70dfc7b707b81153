//! The embedded registry's storage: two tables in the metadata database (SQLite or PostgreSQL),
//! reached through sqlx's `Any` driver so one set of portable queries serves both.
//!
//! Ids are allocated as `MAX(id) + 1` inside the registering transaction, so ids stay unique and
//! dense. On PostgreSQL registrations take a transaction-scoped advisory lock first, so that
//! concurrent ones (a CDC start registering every table at once, from several processes) queue
//! instead of colliding; on SQLite the database's write lock does that, and a registration that
//! still collides (on the primary key, or "database is locked") is retried.

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use sqlx::{AnyPool, Row, any::AnyRow};

use super::{RegisteredSchema, RegistryError, SchemaRegistry, Version, canonical_schema};

/// How often a registration that lost a race for an id or version is retried.
const REGISTER_ATTEMPTS: usize = 8;

/// A schema registry stored in the metadata database.
#[derive(Clone)]
pub struct SqlRegistry {
    pool: AnyPool,
    postgres: bool,
}

/// The PostgreSQL advisory lock that registrations hold (any fixed number: "weirreg\0").
const REGISTER_LOCK: i64 = 0x7765_6972_7265_6700;

impl SqlRegistry {
    /// Uses `pool`, creating the registry's tables if they are missing.
    pub async fn open(pool: AnyPool) -> Result<Self, RegistryError> {
        // Other components keep their own migrations in the same database.
        crate::metadata::migrate(sqlx::migrate!("./migrations"), &pool)
            .await
            .map_err(|e| RegistryError::Store(e.into()))?;
        let postgres = pool.connect_options().database_url.scheme().starts_with("postgres");
        Ok(SqlRegistry { pool, postgres })
    }

    async fn subject_exists(&self, subject: &str) -> Result<bool, RegistryError> {
        let row = sqlx::query("SELECT 1 FROM registry_versions WHERE subject = $1 LIMIT 1")
            .bind(subject)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    async fn try_register(&self, subject: &str, canonical: &str, fingerprint: &str) -> Result<u32, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        if self.postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(REGISTER_LOCK).execute(&mut *tx).await?;
        }
        let existing = sqlx::query(
            "SELECT v.schema_id FROM registry_versions v JOIN registry_schemas s ON s.id = v.schema_id \
             WHERE v.subject = $1 AND s.fingerprint = $2",
        )
        .bind(subject)
        .bind(fingerprint)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = existing {
            return Ok(row.try_get::<i64, _>(0)? as u32);
        }
        let known = sqlx::query("SELECT id FROM registry_schemas WHERE fingerprint = $1")
            .bind(fingerprint)
            .fetch_optional(&mut *tx)
            .await?;
        let id = match known {
            Some(row) => row.try_get::<i64, _>(0)?,
            None => {
                let id: i64 = sqlx::query("SELECT COALESCE(MAX(id), 0) + 1 FROM registry_schemas")
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get(0)?;
                sqlx::query("INSERT INTO registry_schemas (id, fingerprint, schema_text) VALUES ($1, $2, $3)")
                    .bind(id)
                    .bind(fingerprint)
                    .bind(canonical)
                    .execute(&mut *tx)
                    .await?;
                id
            }
        };
        let version: i64 =
            sqlx::query("SELECT COALESCE(MAX(version), 0) + 1 FROM registry_versions WHERE subject = $1")
                .bind(subject)
                .fetch_one(&mut *tx)
                .await?
                .try_get(0)?;
        sqlx::query("INSERT INTO registry_versions (subject, version, schema_id) VALUES ($1, $2, $3)")
            .bind(subject)
            .bind(version)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(subject, id, version, "registered schema");
        metrics::counter!("weir_registry_schemas_registered_total").increment(1);
        Ok(id as u32)
    }
}

fn registered(subject: &str, row: &AnyRow) -> Result<RegisteredSchema, RegistryError> {
    Ok(RegisteredSchema {
        subject: subject.to_string(),
        version: row.try_get::<i64, _>(0)? as u32,
        id: row.try_get::<i64, _>(1)? as u32,
        schema: row.try_get(2)?,
    })
}

fn fingerprint(canonical: &str) -> String {
    Sha256::digest(canonical.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

fn is_conflict(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            db.is_unique_violation()
                || db.message().contains("database is locked")
                || db.code().as_deref() == Some("40001")
        }
        _ => false,
    }
}

#[async_trait]
impl SchemaRegistry for SqlRegistry {
    async fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        let canonical = canonical_schema(schema)?;
        let fp = fingerprint(&canonical);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_register(subject, &canonical, &fp).await {
                Ok(id) => return Ok(id),
                Err(e) if is_conflict(&e) && attempt < REGISTER_ATTEMPTS => {
                    tracing::debug!(subject, attempt, error = %e, "schema registration raced; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(5 * attempt as u64)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn lookup(&self, subject: &str, schema: &str) -> Result<RegisteredSchema, RegistryError> {
        let fp = fingerprint(&canonical_schema(schema)?);
        let row = sqlx::query(
            "SELECT v.version, v.schema_id, s.schema_text FROM registry_versions v \
             JOIN registry_schemas s ON s.id = v.schema_id WHERE v.subject = $1 AND s.fingerprint = $2 \
             ORDER BY v.version LIMIT 1",
        )
        .bind(subject)
        .bind(&fp)
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(row) => registered(subject, &row),
            None if self.subject_exists(subject).await? => {
                Err(RegistryError::SchemaNotFound(format!("under subject '{subject}'")))
            }
            None => Err(RegistryError::SubjectNotFound(subject.to_string())),
        }
    }

    async fn schema_by_id(&self, id: u32) -> Result<String, RegistryError> {
        let row = sqlx::query("SELECT schema_text FROM registry_schemas WHERE id = $1")
            .bind(i64::from(id))
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(row) => Ok(row.try_get(0)?),
            None => Err(RegistryError::SchemaNotFound(id.to_string())),
        }
    }

    async fn subjects(&self) -> Result<Vec<String>, RegistryError> {
        let rows = sqlx::query("SELECT DISTINCT subject FROM registry_versions ORDER BY subject")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| r.try_get(0).map_err(Into::into)).collect()
    }

    async fn versions(&self, subject: &str) -> Result<Vec<u32>, RegistryError> {
        let rows = sqlx::query("SELECT version FROM registry_versions WHERE subject = $1 ORDER BY version")
            .bind(subject)
            .fetch_all(&self.pool)
            .await?;
        if rows.is_empty() {
            return Err(RegistryError::SubjectNotFound(subject.to_string()));
        }
        rows.iter().map(|r| Ok(r.try_get::<i64, _>(0)? as u32)).collect()
    }

    async fn version(&self, subject: &str, version: Version) -> Result<RegisteredSchema, RegistryError> {
        let select = "SELECT v.version, v.schema_id, s.schema_text FROM registry_versions v \
                      JOIN registry_schemas s ON s.id = v.schema_id WHERE v.subject = $1";
        let row = match version {
            Version::Latest => {
                sqlx::query(&format!("{select} ORDER BY v.version DESC LIMIT 1"))
                    .bind(subject)
                    .fetch_optional(&self.pool)
                    .await?
            }
            Version::Number(n) => {
                sqlx::query(&format!("{select} AND v.version = $2"))
                    .bind(subject)
                    .bind(i64::from(n))
                    .fetch_optional(&self.pool)
                    .await?
            }
        };
        match row {
            Some(row) => registered(subject, &row),
            None if self.subject_exists(subject).await? => Err(RegistryError::VersionNotFound {
                subject: subject.to_string(),
                version: match version {
                    Version::Latest => "latest".into(),
                    Version::Number(n) => n.to_string(),
                },
            }),
            None => Err(RegistryError::SubjectNotFound(subject.to_string())),
        }
    }
}
