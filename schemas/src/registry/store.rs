//! The embedded registry's storage: two tables in the metadata database (SQLite or PostgreSQL),
//! reached through sqlx's `Any` driver so one set of portable queries serves both.
//!
//! Ids are allocated as `MAX(id) + 1` inside the registering transaction, so ids stay unique and
//! dense. On PostgreSQL registrations take a transaction-scoped advisory lock first, so that
//! concurrent ones (a CDC start registering every table at once, from several processes) queue
//! instead of colliding; on SQLite the database's write lock does that, and a registration that
//! still collides (on the primary key, or "database is locked") is retried.
//!
//! A registration checks the new schema against the subject's live versions at the subject's
//! compatibility level (else the global one, else BACKWARD) in the same transaction. Deletes are
//! Confluent's: soft (the version is hidden but keeps its number) and then permanent.

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use sqlx::{AnyPool, Row, any::AnyRow};

use super::{RegisteredSchema, RegistryError, SchemaRegistry, Version, canonical_schema, compat::Compatibility};

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
        let row = sqlx::query("SELECT 1 FROM registry_versions WHERE subject = $1 AND deleted = 0 LIMIT 1")
            .bind(subject)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    async fn try_register(&self, subject: &str, canonical: &str, fingerprint: &str) -> Result<u32, RegistryError> {
        let mut tx = self.pool.begin().await?;
        if self.postgres {
            sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(REGISTER_LOCK).execute(&mut *tx).await?;
        }
        let existing = sqlx::query(
            "SELECT v.schema_id FROM registry_versions v JOIN registry_schemas s ON s.id = v.schema_id \
             WHERE v.subject = $1 AND s.fingerprint = $2 AND v.deleted = 0",
        )
        .bind(subject)
        .bind(fingerprint)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = existing {
            return Ok(row.try_get::<i64, _>(0)? as u32);
        }
        let level = level_in(&mut tx, subject).await?;
        let earlier = live_versions(&mut tx, subject).await?;
        let reasons = level.violations(canonical, &earlier)?;
        if !reasons.is_empty() {
            return Err(RegistryError::Incompatible { subject: subject.into(), level: level.as_str().into(), reasons });
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
        // Soft-deleted versions keep their numbers.
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

    /// The compatibility level set for `subject` (the global one for `None`), if one is set.
    pub async fn compatibility(&self, subject: Option<&str>) -> Result<Option<Compatibility>, RegistryError> {
        let row = sqlx::query("SELECT compatibility FROM registry_config WHERE subject = $1")
            .bind(subject.unwrap_or(""))
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Compatibility::parse(&r.try_get::<String, _>(0)?)).transpose()
    }

    /// The level a registration under `subject` is checked at: its own, else the global one, else
    /// BACKWARD.
    pub async fn effective_compatibility(&self, subject: &str) -> Result<Compatibility, RegistryError> {
        let mut conn = self.pool.acquire().await?;
        level_in(&mut conn, subject).await
    }

    /// Sets the level of `subject` (the global one for `None`).
    pub async fn set_compatibility(&self, subject: Option<&str>, level: Compatibility) -> Result<(), RegistryError> {
        sqlx::query(
            "INSERT INTO registry_config (subject, compatibility) VALUES ($1, $2) \
             ON CONFLICT (subject) DO UPDATE SET compatibility = excluded.compatibility",
        )
        .bind(subject.unwrap_or(""))
        .bind(level.as_str())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Removes `subject`'s own level (it falls back to the global one); returns the level it had.
    pub async fn delete_compatibility(&self, subject: &str) -> Result<Compatibility, RegistryError> {
        let had = self.compatibility(Some(subject)).await?;
        let Some(had) = had.filter(|_| !subject.is_empty()) else {
            return Err(RegistryError::NoSubjectCompatibility(subject.into()));
        };
        sqlx::query("DELETE FROM registry_config WHERE subject = $1").bind(subject).execute(&self.pool).await?;
        Ok(had)
    }

    /// Why `schema` could not be registered under `subject` next: checked against `version`
    /// only, or against what the subject's level asks for (`None`); empty when it could.
    pub async fn test_compatibility(
        &self,
        subject: &str,
        schema: &str,
        version: Option<Version>,
    ) -> Result<Vec<String>, RegistryError> {
        let canonical = canonical_schema(schema)?;
        let level = self.effective_compatibility(subject).await?;
        match version {
            Some(v) => {
                let found = self.version(subject, v).await?;
                // One version given: the level's direction, against that version alone.
                let single = match level {
                    Compatibility::BackwardTransitive => Compatibility::Backward,
                    Compatibility::ForwardTransitive => Compatibility::Forward,
                    Compatibility::FullTransitive => Compatibility::Full,
                    other => other,
                };
                single.violations(&canonical, &[(found.version, found.schema)])
            }
            None => {
                let mut conn = self.pool.acquire().await?;
                let earlier = live_versions(&mut conn, subject).await?;
                if earlier.is_empty() {
                    return Err(RegistryError::SubjectNotFound(subject.into()));
                }
                level.violations(&canonical, &earlier)
            }
        }
    }

    /// Deletes every version of `subject`: soft (hidden, numbers kept) or, once soft-deleted,
    /// permanently. Returns the versions deleted.
    pub async fn delete_subject(&self, subject: &str, permanent: bool) -> Result<Vec<u32>, RegistryError> {
        let rows = sqlx::query("SELECT version, deleted FROM registry_versions WHERE subject = $1 ORDER BY version")
            .bind(subject)
            .fetch_all(&self.pool)
            .await?;
        if rows.is_empty() {
            return Err(RegistryError::SubjectNotFound(subject.into()));
        }
        let versions: Vec<(u32, bool)> = rows
            .iter()
            .map(|r| Ok::<_, sqlx::Error>((r.try_get::<i64, _>(0)? as u32, r.try_get::<i64, _>(1)? != 0)))
            .collect::<Result<_, _>>()?;
        let live: Vec<u32> = versions.iter().filter(|(_, d)| !d).map(|(v, _)| *v).collect();
        if permanent {
            if !live.is_empty() {
                return Err(RegistryError::SubjectNotSoftDeleted(subject.into()));
            }
            sqlx::query("DELETE FROM registry_versions WHERE subject = $1").bind(subject).execute(&self.pool).await?;
            sqlx::query("DELETE FROM registry_config WHERE subject = $1").bind(subject).execute(&self.pool).await?;
            tracing::info!(subject, "schema subject deleted permanently");
            return Ok(versions.into_iter().map(|(v, _)| v).collect());
        }
        if live.is_empty() {
            return Err(RegistryError::SubjectSoftDeleted(subject.into()));
        }
        sqlx::query("UPDATE registry_versions SET deleted = 1 WHERE subject = $1")
            .bind(subject)
            .execute(&self.pool)
            .await?;
        tracing::info!(subject, "schema subject soft-deleted");
        Ok(live)
    }

    /// Deletes one version of `subject`, soft or (once soft-deleted) permanently.
    pub async fn delete_version(&self, subject: &str, version: Version, permanent: bool) -> Result<u32, RegistryError> {
        let select = "SELECT version, deleted FROM registry_versions WHERE subject = $1";
        let row = match version {
            // "latest" is the newest live version, as Confluent reads it.
            Version::Latest => {
                sqlx::query(&format!("{select} AND deleted = 0 ORDER BY version DESC LIMIT 1"))
                    .bind(subject)
                    .fetch_optional(&self.pool)
                    .await?
            }
            Version::Number(n) => {
                sqlx::query(&format!("{select} AND version = $2"))
                    .bind(subject)
                    .bind(i64::from(n))
                    .fetch_optional(&self.pool)
                    .await?
            }
        };
        let Some(row) = row else {
            let any = sqlx::query("SELECT 1 FROM registry_versions WHERE subject = $1 LIMIT 1")
                .bind(subject)
                .fetch_optional(&self.pool)
                .await?;
            return Err(match any {
                Some(_) => RegistryError::VersionNotFound { subject: subject.into(), version: version.to_string() },
                None => RegistryError::SubjectNotFound(subject.into()),
            });
        };
        let (n, deleted) = (row.try_get::<i64, _>(0)? as u32, row.try_get::<i64, _>(1)? != 0);
        match (permanent, deleted) {
            (false, true) => Err(RegistryError::VersionSoftDeleted { subject: subject.into(), version: n }),
            (true, false) => Err(RegistryError::VersionNotSoftDeleted { subject: subject.into(), version: n }),
            (false, false) => {
                sqlx::query("UPDATE registry_versions SET deleted = 1 WHERE subject = $1 AND version = $2")
                    .bind(subject)
                    .bind(i64::from(n))
                    .execute(&self.pool)
                    .await?;
                Ok(n)
            }
            (true, true) => {
                sqlx::query("DELETE FROM registry_versions WHERE subject = $1 AND version = $2")
                    .bind(subject)
                    .bind(i64::from(n))
                    .execute(&self.pool)
                    .await?;
                Ok(n)
            }
        }
    }

    /// The (subject, version) pairs that use schema `id`, live ones only.
    pub async fn id_versions(&self, id: u32) -> Result<Vec<(String, u32)>, RegistryError> {
        self.schema_by_id(id).await?;
        let rows = sqlx::query(
            "SELECT subject, version FROM registry_versions WHERE schema_id = $1 AND deleted = 0 ORDER BY subject, version",
        )
        .bind(i64::from(id))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get::<i64, _>(1)? as u32))).collect()
    }
}

/// The level registrations under `subject` are checked at (see
/// [`SqlRegistry::effective_compatibility`]), read on `conn`.
async fn level_in(conn: &mut sqlx::AnyConnection, subject: &str) -> Result<Compatibility, RegistryError> {
    let rows = sqlx::query("SELECT subject, compatibility FROM registry_config WHERE subject IN ($1, '')")
        .bind(subject)
        .fetch_all(&mut *conn)
        .await?;
    let of = |s: &str| rows.iter().find(|r| r.try_get::<String, _>(0).is_ok_and(|x| x == s));
    match of(subject).filter(|_| !subject.is_empty()).or_else(|| of("")) {
        Some(r) => Compatibility::parse(&r.try_get::<String, _>(1)?),
        None => Ok(Compatibility::default()),
    }
}

/// The live versions of `subject` as (version, schema), oldest first.
async fn live_versions(conn: &mut sqlx::AnyConnection, subject: &str) -> Result<Vec<(u32, String)>, RegistryError> {
    let rows = sqlx::query(
        "SELECT v.version, s.schema_text FROM registry_versions v JOIN registry_schemas s ON s.id = v.schema_id \
         WHERE v.subject = $1 AND v.deleted = 0 ORDER BY v.version",
    )
    .bind(subject)
    .fetch_all(&mut *conn)
    .await?;
    rows.iter().map(|r| Ok((r.try_get::<i64, _>(0)? as u32, r.try_get(1)?))).collect()
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
                Err(RegistryError::Store(e)) if is_conflict(&e) && attempt < REGISTER_ATTEMPTS => {
                    tracing::debug!(subject, attempt, error = %e, "schema registration raced; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(5 * attempt as u64)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn lookup(&self, subject: &str, schema: &str) -> Result<RegisteredSchema, RegistryError> {
        let fp = fingerprint(&canonical_schema(schema)?);
        let row = sqlx::query(
            "SELECT v.version, v.schema_id, s.schema_text FROM registry_versions v \
             JOIN registry_schemas s ON s.id = v.schema_id WHERE v.subject = $1 AND s.fingerprint = $2 \
             AND v.deleted = 0 ORDER BY v.version LIMIT 1",
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
        let rows = sqlx::query("SELECT DISTINCT subject FROM registry_versions WHERE deleted = 0 ORDER BY subject")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| r.try_get(0).map_err(Into::into)).collect()
    }

    async fn versions(&self, subject: &str) -> Result<Vec<u32>, RegistryError> {
        let rows =
            sqlx::query("SELECT version FROM registry_versions WHERE subject = $1 AND deleted = 0 ORDER BY version")
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
                      JOIN registry_schemas s ON s.id = v.schema_id WHERE v.subject = $1 AND v.deleted = 0";
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
            None if self.subject_exists(subject).await? => {
                Err(RegistryError::VersionNotFound { subject: subject.to_string(), version: version.to_string() })
            }
            None => Err(RegistryError::SubjectNotFound(subject.to_string())),
        }
    }
}
