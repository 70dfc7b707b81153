//! Object storage behind the lake's URLs. `file://` works out of the box; `s3://` is registered
//! here with object_store's S3 client. Delta commits need an atomic "create if absent" for each
//! `_delta_log/<version>.json`: S3 offers it as a conditional PUT (`If-None-Match: *`), so two
//! writers racing for one version get one winner and one retry, without an external lock table.

use std::sync::{Arc, Mutex};

use deltalake::{
    DeltaResult, DeltaTableError,
    logstore::{
        LogStore, LogStoreFactory, ObjectStoreFactory, ObjectStoreRef, StorageConfig, default_logstore,
        logstore_factories,
        object_store::{
            aws::{AmazonS3Builder, S3ConditionalPut},
            path::Path,
        },
        object_store_factories,
    },
};
use url::Url;

use crate::config::{LakeConfig, LakeUrl, S3Options};

/// The options the `s3://` factory builds stores with (the last [`register`] wins).
static S3: Mutex<Option<S3Options>> = Mutex::new(None);

/// Makes `s3://` URLs usable by every Delta table of this process, with `options`.
pub fn register(options: &S3Options) {
    *S3.lock().expect("S3 options lock") = Some(options.clone());
    let scheme = Url::parse("s3://").expect("static URL");
    object_store_factories().insert(scheme.clone(), Arc::new(S3Factory));
    logstore_factories().insert(scheme, Arc::new(S3Factory));
}

struct S3Factory;

impl ObjectStoreFactory for S3Factory {
    fn parse_url_opts(&self, url: &Url, _config: &StorageConfig) -> DeltaResult<(ObjectStoreRef, Path)> {
        let options = S3.lock().expect("S3 options lock").clone().unwrap_or_default();
        let bucket =
            url.host_str().ok_or_else(|| DeltaTableError::Generic(format!("{url}: an s3:// URL needs a bucket")))?;
        let store =
            s3_store(&options, bucket).map_err(|e| DeltaTableError::Generic(format!("S3 store for {url}: {e}")))?;
        Ok((store, Path::from(url.path())))
    }
}

/// The S3 client of `bucket` with `options` (credentials from the environment).
fn s3_store(options: &S3Options, bucket: &str) -> Result<ObjectStoreRef, String> {
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_region(&options.region)
        .with_allow_http(options.allow_http)
        .with_conditional_put(S3ConditionalPut::ETagMatch);
    if let Some(endpoint) = &options.endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    Ok(Arc::new(builder.build().map_err(|e| e.to_string())?))
}

/// The object store behind a lake on S3, with the URL (`s3://<bucket>`) to register it under in
/// a DataFusion runtime (engines that read the lake's files without Delta); `None` for a lake on
/// local disk, which every runtime reads already.
pub fn lake_store(config: &LakeConfig) -> Result<Option<(Url, ObjectStoreRef)>, String> {
    match &config.url {
        LakeUrl::File(_) => Ok(None),
        LakeUrl::S3 { bucket, .. } => {
            let url = Url::parse(&format!("s3://{bucket}")).map_err(|e| format!("s3://{bucket}: {e}"))?;
            Ok(Some((url, s3_store(&config.s3, bucket)?)))
        }
    }
}

impl LogStoreFactory for S3Factory {
    fn with_options(
        &self,
        prefixed_store: ObjectStoreRef,
        root_store: ObjectStoreRef,
        location: &Url,
        options: &StorageConfig,
    ) -> DeltaResult<Arc<dyn LogStore>> {
        Ok(default_logstore(prefixed_store, root_store, location, options))
    }
}
