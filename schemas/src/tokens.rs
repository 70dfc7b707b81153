//! API tokens and what each may do, for every Weir endpoint that takes a bearer token (the serving
//! API and its PostgreSQL wire, the orchestrator's routes, `weir ingest http`).
//!
//! A token has one [`Scope`]: `read` (SQL, the catalogue, the PostgreSQL wire, every `GET`),
//! `operate` (also trigger, clear, pause, backfill, silences: every other method), `ingest` (only
//! posting events to `weir ingest http`), `admin` (everything). Tokens are written `scope:token`,
//! separated by commas or line breaks (`#` starts a comment line); a bare token is `admin`, as
//! every token was before scopes. They come from an environment variable and/or a file; only
//! their SHA-256 digests are kept in memory. The file is read again when it changes
//! ([`Tokens::reload`]), so a token is rotated without a restart.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::RwLock,
    time::SystemTime,
};

use sha2::{Digest, Sha256};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Read: SQL, the catalogue, the PostgreSQL wire, every `GET`.
    Read,
    /// Read, and change what runs: trigger, clear, pause, backfill, silences.
    Operate,
    /// Post events to `weir ingest http`, nothing else.
    Ingest,
    /// Everything.
    Admin,
}

impl Scope {
    /// Whether a token of this scope may do what `needed` guards.
    pub fn allows(self, needed: Scope) -> bool {
        matches!(
            (self, needed),
            (Scope::Admin, _)
                | (Scope::Operate, Scope::Read | Scope::Operate)
                | (Scope::Read, Scope::Read)
                | (Scope::Ingest, Scope::Ingest)
        )
    }

    /// The scope's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Operate => "operate",
            Scope::Ingest => "ingest",
            Scope::Admin => "admin",
        }
    }

    fn parse(s: &str) -> Option<Scope> {
        match s {
            "read" => Some(Scope::Read),
            "operate" => Some(Scope::Operate),
            "ingest" => Some(Scope::Ingest),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// No token, or one that is not known: HTTP 401.
    #[error("{0}")]
    Unauthenticated(String),
    /// A known token whose scope does not allow it: HTTP 403.
    #[error("this token's scope is {has}; {what} needs {needed}")]
    Forbidden {
        /// The token's scope.
        has: &'static str,
        /// What was asked.
        what: String,
        /// The scope it needs.
        needed: &'static str,
    },
}

impl Refused {
    /// The HTTP status that says it: 401 or 403.
    pub fn status(&self) -> axum::http::StatusCode {
        match self {
            Refused::Unauthenticated(_) => axum::http::StatusCode::UNAUTHORIZED,
            Refused::Forbidden { .. } => axum::http::StatusCode::FORBIDDEN,
        }
    }
}

/// A token list that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("{origin}: {reason}")]
pub struct TokensError {
    /// The variable or file.
    pub origin: String,
    /// What is wrong.
    pub reason: String,
}

type Digests = HashMap<[u8; 32], Scope>;

/// The accepted tokens.
#[derive(Debug, Default)]
pub struct Tokens {
    from_env: Digests,
    file: Option<PathBuf>,
    /// The file's tokens, and the modification time of the version last read (good or not, so
    /// a broken file is reported once, not every second).
    from_file: RwLock<(Digests, Option<SystemTime>)>,
}

impl Tokens {
    /// Tokens from the environment variable `env` (if set) and `file` (if given; it must exist).
    pub fn load(env: Option<&str>, file: Option<&Path>) -> Result<Tokens, TokensError> {
        let from_env = match env.and_then(|var| std::env::var(var).ok().map(|v| (var, v))) {
            Some((var, text)) => parse(&text, &format!("environment variable {var}"))?,
            None => Digests::new(),
        };
        let tokens = Tokens { from_env, file: file.map(Path::to_path_buf), from_file: RwLock::default() };
        if tokens.file.is_some() {
            tokens.reload()?;
        }
        Ok(tokens)
    }

    /// Tokens given as text (`scope:token`, …), for tests and embedded use.
    pub fn from_text(text: &str) -> Result<Tokens, TokensError> {
        Ok(Tokens { from_env: parse(text, "tokens")?, ..Tokens::default() })
    }

    /// Reads the token file again if it changed since it was last read; `Ok(true)` when it did.
    /// A file that cannot be read or parsed keeps the tokens as they were.
    pub fn reload(&self) -> Result<bool, TokensError> {
        let Some(path) = &self.file else { return Ok(false) };
        let origin = || path.display().to_string();
        let meta = std::fs::metadata(path).map_err(|e| TokensError { origin: origin(), reason: e.to_string() })?;
        let modified = meta.modified().ok();
        if modified.is_some() && self.from_file.read().expect("tokens lock").1 == modified {
            return Ok(false);
        }
        let parsed = std::fs::read_to_string(path)
            .map_err(|e| TokensError { origin: origin(), reason: e.to_string() })
            .and_then(|text| parse(&text, &origin()));
        let mut from_file = self.from_file.write().expect("tokens lock");
        from_file.1 = modified;
        from_file.0 = parsed?;
        Ok(true)
    }

    /// [`Tokens::load`], then the file read again every second for as long as the tokens are
    /// in use (each change logged; a broken file keeps the tokens in force): a token rotates
    /// without a restart.
    pub fn load_watched(env: Option<&str>, file: Option<&Path>) -> Result<std::sync::Arc<Tokens>, TokensError> {
        let tokens = std::sync::Arc::new(Tokens::load(env, file)?);
        if tokens.file.is_none() {
            return Ok(tokens);
        }
        let weak = std::sync::Arc::downgrade(&tokens);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                let Some(tokens) = weak.upgrade() else { return };
                match tokens.reload() {
                    Ok(true) => {
                        tracing::info!(file = %tokens.file.as_ref().expect("a file").display(), "tokens reloaded")
                    }
                    Ok(false) => {}
                    Err(e) => tracing::error!(error = %e, "the token file is unreadable: keeping the tokens in force"),
                }
            }
        });
        Ok(tokens)
    }

    /// Whether no token at all is accepted.
    pub fn is_empty(&self) -> bool {
        self.from_env.is_empty() && self.from_file.read().expect("tokens lock").0.is_empty()
    }

    /// The scope of `token`, if it is one.
    pub fn scope(&self, token: &str) -> Option<Scope> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.from_env
            .get(&digest)
            .copied()
            .or_else(|| self.from_file.read().expect("tokens lock").0.get(&digest).copied())
    }

    /// Checks `Authorization: Bearer …` (`header`, if sent) for `what` (e.g. `POST /api/v1/…`),
    /// which needs `needed`.
    pub fn check(&self, header: Option<&str>, needed: Scope, what: &str) -> Result<Scope, Refused> {
        let given = header.and_then(|v| v.strip_prefix("Bearer ")).map(str::trim);
        let unauthenticated = |m: &str| Err(Refused::Unauthenticated(m.to_string()));
        match given.map(|t| self.scope(t)) {
            Some(Some(scope)) if scope.allows(needed) => Ok(scope),
            Some(Some(scope)) => {
                Err(Refused::Forbidden { has: scope.as_str(), what: what.to_string(), needed: needed.as_str() })
            }
            Some(None) => unauthenticated("the bearer token is not valid"),
            None if self.is_empty() => unauthenticated("no API tokens are configured: every request is refused"),
            None => unauthenticated("send Authorization: Bearer <token>"),
        }
    }
}

fn parse(text: &str, origin: &str) -> Result<Digests, TokensError> {
    let mut digests = Digests::new();
    let items = text.lines().filter(|l| !l.trim_start().starts_with('#')).flat_map(|l| l.split(','));
    for (n, item) in items.map(str::trim).filter(|i| !i.is_empty()).enumerate() {
        let (scope, token) = match item.split_once(':') {
            Some((scope, token)) => {
                let scope = Scope::parse(scope.trim()).ok_or_else(|| TokensError {
                    origin: origin.to_string(),
                    reason: format!("token {}: scope {:?} is not read, operate, ingest or admin", n + 1, scope.trim()),
                })?;
                (scope, token.trim())
            }
            None => (Scope::Admin, item),
        };
        if token.is_empty() {
            return Err(TokensError { origin: origin.into(), reason: format!("token {} is empty", n + 1) });
        }
        digests.insert(Sha256::digest(token.as_bytes()).into(), scope);
    }
    Ok(digests)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_allow_what_they_say() {
        let t = Tokens::from_text("read:r1, operate:o1\n# a comment\ningest:i1,legacy").unwrap();
        assert_eq!(t.scope("r1"), Some(Scope::Read));
        assert_eq!(t.scope("legacy"), Some(Scope::Admin), "a bare token keeps every right");
        assert_eq!(t.scope("r2"), None);
        let check = |token: &str, needed| t.check(Some(&format!("Bearer {token}")), needed, "POST /x");
        assert_eq!(check("o1", Scope::Read), Ok(Scope::Operate));
        assert_eq!(check("o1", Scope::Operate), Ok(Scope::Operate));
        assert_eq!(
            check("r1", Scope::Operate).unwrap_err().to_string(),
            "this token's scope is read; POST /x needs operate"
        );
        assert!(check("i1", Scope::Read).is_err(), "an ingest token reads nothing");
        assert!(check("legacy", Scope::Ingest).is_ok());
        assert!(matches!(check("nope", Scope::Read), Err(Refused::Unauthenticated(_))));
        assert!(matches!(t.check(None, Scope::Read, "x"), Err(Refused::Unauthenticated(m)) if m.contains("Bearer")));
        let err = Tokens::from_text("reader:x").unwrap_err().to_string();
        assert!(err.contains("\"reader\" is not read, operate"), "{err}");
        assert!(!format!("{t:?}").contains("r1"), "only digests are kept");
    }

    #[test]
    fn the_file_is_read_again_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens");
        std::fs::write(&file, "read:old\n").unwrap();
        let t = Tokens::load(None, Some(&file)).unwrap();
        assert_eq!(t.scope("old"), Some(Scope::Read));
        assert!(!t.reload().unwrap(), "unchanged");
        std::fs::write(&file, "read:new\n").unwrap();
        let later = SystemTime::now() + std::time::Duration::from_secs(2);
        std::fs::File::options().write(true).open(&file).unwrap().set_modified(later).unwrap();
        assert!(t.reload().unwrap());
        assert_eq!((t.scope("old"), t.scope("new")), (None, Some(Scope::Read)), "rotated without a restart");
        std::fs::write(&file, "bogus:x\n").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(later + std::time::Duration::from_secs(2))
            .unwrap();
        assert!(t.reload().is_err());
        assert!(!t.reload().unwrap(), "a broken file is reported once");
        assert_eq!(t.scope("new"), Some(Scope::Read), "a broken file keeps the tokens in force");
    }
}
