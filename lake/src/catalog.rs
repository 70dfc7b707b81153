//! The lake as a set of named Delta tables: `raw.*` change logs, `current.*` latest rows,
//! `views.*` batch outputs, each at `<lake>/<namespace>/<name>/`. Lists, opens (at a version for
//! time travel), shows history, compacts and vacuums them.

use std::{collections::HashMap, time::Duration};

use deltalake::{
    DeltaTable, DeltaTableError,
    kernel::CommitInfo,
    logstore::{
        object_store::{ObjectStoreExt as _, path::Path},
        store_for,
    },
};
use futures::TryStreamExt;

use crate::config::{LakeConfig, LakeUrl};

/// The namespaces a lake holds, in listing order.
pub const NAMESPACES: [&str; 3] = ["raw", "current", "views"];

/// Tables kept open between catalogue refreshes: [`OpenTables::refresh`] lists the lake and
/// brings each kept table up to date with only the commits since its last refresh (a table seen
/// for the first time is opened from its last checkpoint), so a refresh reads what changed, not
/// every log again.
#[derive(Default)]
pub struct OpenTables {
    kept: tokio::sync::Mutex<std::collections::BTreeMap<String, DeltaTable>>,
}

impl OpenTables {
    /// Every table of `lake` at its latest version, in listing order (as [`Lake::open_all`]).
    pub async fn refresh(&self, lake: &Lake) -> Result<Vec<(String, DeltaTable)>, LakeError> {
        let names = lake.table_names().await?;
        let mut kept = self.kept.lock().await;
        kept.retain(|name, _| names.contains(name));
        let mut out = Vec::new();
        for name in derived_first(names) {
            let updated = match kept.get_mut(&name) {
                Some(table) => table.update_incremental(None).await.is_ok(),
                None => false,
            };
            if !updated {
                // New, or its log no longer continues the kept state (the table was recreated).
                match lake.try_open(&name, None).await? {
                    Some(table) => kept.insert(name.clone(), table),
                    None => kept.remove(&name),
                };
            }
            if let Some(table) = kept.get(&name) {
                out.push((name, table.clone()));
            }
        }
        out.sort_by_key(|(name, _)| listing_key(name));
        Ok(out)
    }
}

/// `names` in the order to load them: `views.*`, then `current.*`, then `raw.*`. Data flows the
/// other way (raw → current → views), so a table loaded later is at least as new as the tables
/// derived from it that were loaded before: a query never sees a view holding rows its source
/// does not have yet.
fn derived_first(mut names: Vec<String>) -> Vec<String> {
    names.sort_by_key(|name| std::cmp::Reverse(namespace_rank(name)));
    names
}

/// The namespace's place in [`NAMESPACES`].
fn namespace_rank(name: &str) -> usize {
    let ns = name.split_once('.').map_or(name, |(ns, _)| ns);
    NAMESPACES.iter().position(|n| *n == ns).unwrap_or(NAMESPACES.len())
}

/// Listing order: by namespace as in [`NAMESPACES`], then by name.
fn listing_key(name: &str) -> (usize, String) {
    (namespace_rank(name), name.to_string())
}

/// Why a lake operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LakeError {
    /// Not `<namespace>.<name>` with a known namespace.
    #[error("{0:?} is not a lake table name: expected raw.<name>, current.<name> or views.<name>")]
    BadName(String),
    /// There is no Delta table of that name.
    #[error("no table {name} in the lake at {lake}")]
    NoTable {
        /// The table.
        name: String,
        /// The lake.
        lake: String,
    },
    /// The storage or the Delta log failed.
    #[error("{table}: {source}")]
    Delta {
        /// The table (or the lake, for listings).
        table: String,
        /// Cause.
        source: Box<DeltaTableError>,
    },
    /// Something else about the table, explained.
    #[error("{table}: {reason}")]
    Table {
        /// The table.
        table: String,
        /// What is wrong.
        reason: String,
    },
    /// A query failed.
    #[error("query: {0}")]
    Query(#[from] Box<deltalake::datafusion::error::DataFusionError>),
}

impl LakeError {
    /// A Delta error about `table`.
    pub fn delta(table: &str, source: DeltaTableError) -> LakeError {
        LakeError::Delta { table: table.to_string(), source: Box::new(source) }
    }
}

/// One entry of [`Lake::tables`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableInfo {
    /// `raw.shop_inv_orders`.
    pub name: String,
    /// The latest version.
    pub version: u64,
    /// Data files in that version.
    pub files: usize,
    /// Bytes of those files.
    pub bytes: u64,
}

/// What [`Lake::optimize`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptimizeStats {
    /// Files written.
    pub files_added: u64,
    /// Files no longer referenced by the new version (still on storage until vacuumed).
    pub files_removed: u64,
    /// The version it committed (`None` when there was nothing to compact).
    pub version: Option<u64>,
}

/// A lake: where its tables are and how to reach them.
#[derive(Debug, Clone)]
pub struct Lake {
    url: LakeUrl,
    /// Where commits made through this lake are announced (none: nowhere).
    signals: Option<crate::signal::Signals>,
}

impl Lake {
    /// The lake `config` describes; registers S3 access when it is on S3.
    pub fn new(config: &LakeConfig) -> Lake {
        if matches!(config.url, LakeUrl::S3 { .. }) {
            crate::storage::register(&config.s3);
        }
        Lake { url: config.url.clone(), signals: None }
    }

    /// This lake, announcing the commits made through it on `signals`.
    pub fn with_signals(mut self, signals: crate::signal::Signals) -> Lake {
        self.signals = Some(signals);
        self
    }

    /// Where commits are announced, if anywhere.
    pub fn signals(&self) -> Option<&crate::signal::Signals> {
        self.signals.as_ref()
    }

    /// Announces that `table` reached `version` (nothing without signals; see [`crate::signal`]).
    pub async fn announce(&self, table: &str, version: u64, operation: &str) {
        if let Some(s) = &self.signals {
            s.committed(table, version, operation).await;
        }
    }

    /// The lake's URL.
    pub fn url(&self) -> &LakeUrl {
        &self.url
    }

    /// The storage location of table `name`, checking the name.
    pub fn table_url(&self, name: &str) -> Result<url::Url, LakeError> {
        check_name(name)?;
        self.url.table_url(name).map_err(|reason| LakeError::Table { table: name.into(), reason })
    }

    /// Stores `bytes` as the object `rel` (a `/`-separated path below the lake's root, outside
    /// the table namespaces: task logs under `logs/`, say); returns its URL.
    pub async fn put_object(&self, rel: &str, bytes: Vec<u8>) -> Result<url::Url, LakeError> {
        let root = self.url.root_url().map_err(|reason| LakeError::Table { table: self.url.to_string(), reason })?;
        let lake = self.url.to_string();
        let store = store_for(&root, HashMap::<String, String>::new()).map_err(|e| LakeError::delta(&lake, e))?;
        store.put(&Path::from(rel), bytes.into()).await.map_err(|e| LakeError::delta(&lake, e.into()))?;
        root.join(rel).map_err(|e| LakeError::Table { table: lake, reason: e.to_string() })
    }

    /// The bytes of the object at `url`, one of this lake's (see [`Self::put_object`]).
    pub async fn get_object(&self, url: &url::Url) -> Result<Vec<u8>, LakeError> {
        let root = self.url.root_url().map_err(|reason| LakeError::Table { table: self.url.to_string(), reason })?;
        let lake = self.url.to_string();
        let rel = url
            .as_str()
            .strip_prefix(root.as_str())
            .ok_or_else(|| LakeError::Table { table: lake.clone(), reason: format!("{url} is not in this lake") })?;
        self.read_object(rel)
            .await?
            .ok_or_else(|| LakeError::Table { table: lake, reason: format!("{url} does not exist") })
    }

    /// The bytes of the object `rel` below the lake's root, `None` when there is none.
    pub async fn read_object(&self, rel: &str) -> Result<Option<Vec<u8>>, LakeError> {
        let root = self.url.root_url().map_err(|reason| LakeError::Table { table: self.url.to_string(), reason })?;
        let lake = self.url.to_string();
        let store = store_for(&root, HashMap::<String, String>::new()).map_err(|e| LakeError::delta(&lake, e))?;
        let got = match store.get(&Path::from(rel)).await {
            Ok(got) => got,
            Err(deltalake::ObjectStoreError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(LakeError::delta(&lake, e.into())),
        };
        let bytes = got.bytes().await.map_err(|e| LakeError::delta(&lake, e.into()))?;
        Ok(Some(bytes.to_vec()))
    }

    /// The objects directly below the folder `rel` (outside the table namespaces, like
    /// [`Self::put_object`]'s), as paths relative to the lake's root, sorted.
    pub async fn list_objects(&self, rel: &str) -> Result<Vec<String>, LakeError> {
        Ok(self.list(rel).await?.0)
    }

    /// The folders directly below the folder `rel`, as paths relative to the lake's root, sorted.
    pub async fn list_folders(&self, rel: &str) -> Result<Vec<String>, LakeError> {
        Ok(self.list(rel).await?.1)
    }

    /// The objects and the folders directly below `rel`, each sorted.
    async fn list(&self, rel: &str) -> Result<(Vec<String>, Vec<String>), LakeError> {
        let root = self.url.root_url().map_err(|reason| LakeError::Table { table: self.url.to_string(), reason })?;
        let lake = self.url.to_string();
        let store = store_for(&root, HashMap::<String, String>::new()).map_err(|e| LakeError::delta(&lake, e))?;
        let listing =
            store.list_with_delimiter(Some(&Path::from(rel))).await.map_err(|e| LakeError::delta(&lake, e.into()))?;
        let mut objects: Vec<String> = listing.objects.iter().map(|o| o.location.to_string()).collect();
        let mut folders: Vec<String> = listing.common_prefixes.iter().map(|p| p.to_string()).collect();
        objects.sort();
        folders.sort();
        Ok((objects, folders))
    }

    /// The latest version of table `name`, from its Delta log's file names alone (no table state
    /// is read), listing only the entries after version `after`: `after` when none is newer,
    /// `None` when the table has no commit.
    pub async fn latest_version(&self, name: &str, after: Option<u64>) -> Result<Option<u64>, LakeError> {
        let table = self.table_url(name)?;
        let root = self.url.root_url().map_err(|reason| LakeError::Table { table: self.url.to_string(), reason })?;
        let rel = table.as_str().strip_prefix(root.as_str()).unwrap_or_default().trim_end_matches('/');
        let store = store_for(&root, HashMap::<String, String>::new()).map_err(|e| LakeError::delta(name, e))?;
        let log = Path::from(format!("{rel}/_delta_log"));
        let mut listing = match after {
            Some(v) => store.list_with_offset(Some(&log), &Path::from(format!("{rel}/_delta_log/{v:020}.json"))),
            None => store.list(Some(&log)),
        };
        let mut latest = after;
        while let Some(meta) = listing.try_next().await.map_err(|e| LakeError::delta(name, e.into()))? {
            let version = meta.location.filename().and_then(|f| f.strip_suffix(".json")).and_then(|v| v.parse().ok());
            latest = latest.max(version);
        }
        Ok(latest)
    }

    /// Every table of the lake, with its latest version.
    pub async fn tables(&self) -> Result<Vec<TableInfo>, LakeError> {
        let mut out = Vec::new();
        for (name, table) in self.open_all().await? {
            let snapshot = table.snapshot().map_err(|e| LakeError::delta(&name, e))?;
            let (files, bytes) = snapshot.log_data().iter().fold((0, 0u64), |(n, b), f| (n + 1, b + f.size() as u64));
            out.push(TableInfo { name, version: snapshot.version(), files, bytes });
        }
        Ok(out)
    }

    /// Every table of the lake, opened at its latest version, in listing order.
    pub async fn open_all(&self) -> Result<Vec<(String, DeltaTable)>, LakeError> {
        let mut out = Vec::new();
        for name in derived_first(self.table_names().await?) {
            // A directory without a first commit yet is not a table.
            if let Some(table) = self.try_open(&name, None).await? {
                out.push((name, table));
            }
        }
        out.sort_by_key(|(name, _)| listing_key(name));
        Ok(out)
    }

    /// The names of the lake's table directories (some may have no first commit yet), by
    /// namespace, sorted.
    pub async fn table_names(&self) -> Result<Vec<String>, LakeError> {
        let root = self.url.root_url().map_err(|reason| LakeError::Table { table: self.url.to_string(), reason })?;
        let lake = self.url.to_string();
        // The store is rooted at the lake's root.
        let store = store_for(&root, HashMap::<String, String>::new()).map_err(|e| LakeError::delta(&lake, e))?;
        let mut out = Vec::new();
        for ns in NAMESPACES {
            let listing = store
                .list_with_delimiter(Some(&Path::from(ns)))
                .await
                .map_err(|e| LakeError::delta(&lake, e.into()))?;
            let mut names: Vec<String> =
                listing.common_prefixes.iter().filter_map(|p| p.filename().map(|n| format!("{ns}.{n}"))).collect();
            names.sort();
            out.extend(names);
        }
        Ok(out)
    }

    /// Table `name` at its latest version, or at `version`.
    pub async fn open(&self, name: &str, version: Option<u64>) -> Result<DeltaTable, LakeError> {
        self.try_open(name, version)
            .await?
            .ok_or_else(|| LakeError::NoTable { name: name.into(), lake: self.url.to_string() })
    }

    /// Like [`Lake::open`], `None` when the table does not exist (yet).
    pub async fn try_open(&self, name: &str, version: Option<u64>) -> Result<Option<DeltaTable>, LakeError> {
        let url = self.table_url(name)?;
        let mut table = deltalake::DeltaTableBuilder::from_url(url)
            .and_then(|b| b.build())
            .map_err(|e| LakeError::delta(name, e))?;
        let loaded = match version {
            Some(v) => table.load_version(v).await,
            None => table.load().await,
        };
        match loaded {
            Ok(()) => Ok(Some(table)),
            Err(DeltaTableError::NotATable(_)) => Ok(None),
            Err(e) => Err(LakeError::delta(name, e)),
        }
    }

    /// The commits of table `name`, newest first.
    pub async fn history(&self, name: &str, limit: Option<usize>) -> Result<Vec<CommitInfo>, LakeError> {
        let table = self.open(name, None).await?;
        table.history(limit).try_collect().await.map_err(|e| LakeError::delta(name, e))
    }

    /// Rewrites table `name`'s small files into files of about `target_size` bytes, as a new
    /// version. The old files stay on storage (older versions still read them) until vacuumed.
    pub async fn optimize(&self, name: &str, target_size: u64) -> Result<OptimizeStats, LakeError> {
        let table = self.open(name, None).await?;
        let before = table.version();
        let (table, metrics) = table
            .optimize()
            .with_target_size(std::num::NonZeroU64::new(target_size.max(1)).expect("at least 1"))
            .await
            .map_err(|e| LakeError::delta(name, e))?;
        let version = table.version().filter(|v| Some(*v) != before);
        Ok(OptimizeStats { files_added: metrics.num_files_added, files_removed: metrics.num_files_removed, version })
    }

    /// Deletes table `name`'s files that no version newer than `retention` references. Returns
    /// the deleted (or, with `dry_run`, the deletable) files.
    pub async fn vacuum(
        &self,
        name: &str,
        retention: Duration,
        dry_run: bool,
        force: bool,
    ) -> Result<Vec<String>, LakeError> {
        use deltalake::table::config::TablePropertiesExt as _;
        let table = self.open(name, None).await?;
        // Delta's guard: files removed more recently than the table's
        // `delta.deletedFileRetentionDuration` (7 days unless set) may still be read by a reader
        // at an older version or a commit in flight. Shorter only when the caller insists.
        let minimum =
            table.snapshot().map_err(|e| LakeError::delta(name, e))?.table_config().deleted_file_retention_duration();
        if !force && retention < minimum {
            return Err(LakeError::Table {
                table: name.to_string(),
                reason: format!(
                    "a retention of {} is shorter than the table's delta.deletedFileRetentionDuration ({}): \
                     readers of older versions could lose files; pass --force to vacuum anyway",
                    humantime::format_duration(retention),
                    humantime::format_duration(minimum)
                ),
            });
        }
        let retention = chrono::Duration::seconds(i64::try_from(retention.as_secs()).unwrap_or(i64::MAX / 1000));
        let (_, metrics) = table
            .vacuum()
            .with_retention_period(retention)
            .with_enforce_retention_duration(false)
            .with_dry_run(dry_run)
            .await
            .map_err(|e| LakeError::delta(name, e))?;
        Ok(metrics.files_deleted)
    }
}

/// Checks `<namespace>.<name>`.
pub fn check_name(name: &str) -> Result<(), LakeError> {
    let ok = name.split_once('.').is_some_and(|(ns, rest)| {
        NAMESPACES.contains(&ns)
            && !rest.is_empty()
            && rest.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    });
    if ok { Ok(()) } else { Err(LakeError::BadName(name.into())) }
}

#[cfg(test)]
mod tests {
    #[test]
    fn derived_tables_load_before_their_sources() {
        let names = ["raw.a", "raw.b", "current.a", "views.v"].map(String::from).to_vec();
        assert_eq!(super::derived_first(names.clone()), ["views.v", "current.a", "raw.a", "raw.b"]);
        let mut listed = super::derived_first(names.clone());
        listed.sort_by_key(|n| super::listing_key(n));
        assert_eq!(listed, names, "listing order comes back");
    }
}
