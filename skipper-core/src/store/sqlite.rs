//! [`SqliteStore`]: the embedded default [`Store`], one SQLite file shared by every process.
//!
//! # Layout
//! `<data_dir>/skipper.db`, in WAL mode with a busy timeout, so the CLI, the daemon and an
//! embedder's process can use one file at once. Records are whole values kept as JSON in a
//! `data` column, next to the indexed key columns that filters and ordering use (`project`,
//! `stage`, `created_at`, `started_at`). Timestamps are RFC 3339 text in UTC with nine fraction
//! digits, so text order is time order.
//!
//! # Migrations
//! [`MIGRATIONS`] is an ordered list of SQL scripts; `schema_version` records which ran. Opening
//! applies the missing ones in one `BEGIN IMMEDIATE` transaction (two processes starting at once
//! migrate once), and refuses a file written by a newer Skipper.
//!
//! # Credentials
//! Encrypted with AES-256-GCM under a [`SecretKey`] (from `SKIPPER_SECRET_KEY`): a random 96-bit
//! nonce per value, stored as base64 of `nonce || ciphertext+tag`, with the credential's name as
//! associated data so a value copied to another row does not decrypt. Without a key, everything but
//! `put_credential`/`get_credential` works.
//!
//! # Leases
//! The `locks` table, changed only inside `BEGIN IMMEDIATE` transactions by one conditional upsert:
//! a free, expired or own lease is taken or renewed, anything else is refused. `expires_at` is wall
//! clock milliseconds, so leases hold across processes on one host.
//!
//! # Toward PostgreSQL
//! The SQL is deliberately plain (upserts with `ON CONFLICT`, no SQLite-only functions), so a
//! PostgreSQL store can keep the same tables: `TEXT` for JSON (or `JSONB`), `BIGINT` for
//! `expires_at`, `$n` for `?n`, and `COLLATE "C"` where byte order is wanted.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{Connection, ErrorCode, OptionalExtension, TransactionBehavior, params};
use secrecy::zeroize::{Zeroize, Zeroizing};
use secrecy::{ExposeSecret, SecretBox, SecretString};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::backend::{DeploymentFilter, Fence, InstanceFilter, Store};
use crate::error::{Error, ErrorKind, Result};
use crate::model::{Deployment, Instance, Project, SeenTag, Timestamp};

/// The environment variable holding the credential encryption key (base64 of 32 bytes).
pub const SECRET_KEY_ENV: &str = "SKIPPER_SECRET_KEY";

const BACKEND: &str = "sqlite";
const DB_FILE: &str = "skipper.db";
/// How long a statement waits for another process's write lock before failing as `Transient`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
const KEY_LEN: usize = 32;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const CREATE_KEY_HINT: &str = "create one with `openssl rand -base64 32`";

/// The schema, as an ordered list of migrations: entry `n` (0-based) brings the schema to version
/// `n + 1`. Append only; never edit a released entry.
const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    "CREATE TABLE projects (
         name TEXT PRIMARY KEY NOT NULL,
         data TEXT NOT NULL
     );
     CREATE TABLE instances (
         id TEXT PRIMARY KEY NOT NULL,
         project TEXT NOT NULL,
         stage TEXT NOT NULL,
         created_at TEXT NOT NULL,
         data TEXT NOT NULL
     );
     CREATE INDEX instances_by_stage ON instances (project, stage, created_at);
     CREATE INDEX instances_by_age ON instances (created_at);
     CREATE TABLE deployments (
         id TEXT PRIMARY KEY NOT NULL,
         project TEXT NOT NULL,
         stage TEXT NOT NULL,
         started_at TEXT NOT NULL,
         data TEXT NOT NULL
     );
     CREATE INDEX deployments_by_stage ON deployments (project, stage, started_at);
     CREATE INDEX deployments_by_age ON deployments (started_at);
     CREATE TABLE settings (
         key TEXT PRIMARY KEY NOT NULL,
         value TEXT NOT NULL
     );
     CREATE TABLE credentials (
         name TEXT PRIMARY KEY NOT NULL,
         value TEXT NOT NULL
     );
     CREATE TABLE seen_tags (
         repository TEXT NOT NULL,
         tag TEXT NOT NULL,
         digest TEXT,
         first_seen TEXT NOT NULL,
         updated_at TEXT NOT NULL,
         PRIMARY KEY (repository, tag)
     );
     CREATE TABLE locks (
         key TEXT PRIMARY KEY NOT NULL,
         holder TEXT NOT NULL,
         expires_at INTEGER NOT NULL
     );",
    // 2: the store's identity, made once (a store created by this migration, or an older store
    // upgraded, gets a new random id; an emptied file is a new store with a new id).
    "CREATE TABLE store_identity (
         id TEXT PRIMARY KEY NOT NULL,
         created_at TEXT NOT NULL
     );
     INSERT INTO store_identity (id, created_at)
         VALUES (lower(hex(randomblob(8))), strftime('%Y-%m-%dT%H:%M:%fZ', 'now'));",
];

/// The 256-bit key that encrypts credentials at rest. `Debug` never shows it; it is zeroed on drop.
pub struct SecretKey(SecretBox<[u8; KEY_LEN]>);

impl SecretKey {
    /// The key in `SKIPPER_SECRET_KEY`: `Ok(None)` when the variable is unset or empty, an
    /// `Invalid` error when it is not base64 of 32 bytes.
    pub fn from_env() -> Result<Option<Self>> {
        match std::env::var(SECRET_KEY_ENV) {
            Ok(value) => {
                let value = SecretString::from(value);
                if value.expose_secret().trim().is_empty() {
                    Ok(None)
                } else {
                    Self::from_base64(&value).map(Some)
                }
            }
            Err(std::env::VarError::NotPresent) => Ok(None),
            Err(std::env::VarError::NotUnicode(_)) => Err(key_error("it is not valid UTF-8")),
        }
    }

    /// Decode a key from base64 (standard alphabet, padded; surrounding whitespace is ignored).
    /// The error never quotes the input.
    pub fn from_base64(encoded: &SecretString) -> Result<Self> {
        let mut buf = Zeroizing::new([0u8; 2 * KEY_LEN]);
        let len = BASE64
            .decode_slice(encoded.expose_secret().trim(), &mut buf[..])
            .map_err(|e| match e {
                base64::DecodeSliceError::OutputSliceTooSmall => {
                    key_error(format!("it is longer than {KEY_LEN} bytes"))
                }
                base64::DecodeSliceError::DecodeError(_) => key_error("it is not valid base64"),
            })?;
        if len != KEY_LEN {
            return Err(key_error(format!(
                "it decodes to {len} bytes, not {KEY_LEN}"
            )));
        }
        Ok(Self(SecretBox::init_with_mut(|key: &mut [u8; KEY_LEN]| {
            key.copy_from_slice(&buf[..KEY_LEN]);
        })))
    }

    /// A new random key (from the operating system's generator).
    pub fn generate() -> Self {
        Self(SecretBox::init_with_mut(|key: &mut [u8; KEY_LEN]| {
            rand::fill(key);
        }))
    }

    /// The key as base64, the form [`from_base64`](Self::from_base64) and `SKIPPER_SECRET_KEY`
    /// take.
    pub fn to_base64(&self) -> SecretString {
        SecretString::from(BASE64.encode(self.0.expose_secret()))
    }

    fn cipher(&self) -> Aes256Gcm {
        Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(self.0.expose_secret()))
    }

    /// base64(`nonce || ciphertext+tag`), bound to `name`.
    fn encrypt(&self, name: &str, secret: &SecretString) -> Result<String> {
        let nonce: [u8; NONCE_LEN] = rand::random();
        let sealed = self
            .cipher()
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: secret.expose_secret().as_bytes(),
                    aad: name.as_bytes(),
                },
            )
            .map_err(|_| {
                Error::backend(
                    BACKEND,
                    ErrorKind::Internal,
                    format!("cannot encrypt credential {name:?}"),
                )
            })?;
        let mut stored = Vec::with_capacity(NONCE_LEN + sealed.len());
        stored.extend_from_slice(&nonce);
        stored.extend_from_slice(&sealed);
        Ok(BASE64.encode(stored))
    }

    fn decrypt(&self, name: &str, stored: &str) -> Result<SecretString> {
        let unreadable = || {
            Error::backend(
                BACKEND,
                ErrorKind::Internal,
                format!("stored credential {name:?} is damaged; store it again"),
            )
        };
        let raw = BASE64.decode(stored).map_err(|_| unreadable())?;
        if raw.len() < NONCE_LEN + TAG_LEN {
            return Err(unreadable());
        }
        let (nonce, sealed) = raw.split_at(NONCE_LEN);
        let plain = self
            .cipher()
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: name.as_bytes(),
                },
            )
            .map_err(|_| wrong_key(name))?;
        match String::from_utf8(plain) {
            Ok(text) => Ok(SecretString::from(text)),
            Err(e) => {
                e.into_bytes().zeroize();
                Err(unreadable())
            }
        }
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey([REDACTED])")
    }
}

fn key_error(reason: impl fmt::Display) -> Error {
    Error::Config {
        field: SECRET_KEY_ENV.into(),
        line: None,
        message: format!(
            "the credential encryption key must be the base64 of 32 random bytes, but {reason}; \
             {CREATE_KEY_HINT}"
        ),
    }
}

fn missing_key() -> Error {
    Error::rejected(format!(
        "credentials are stored encrypted and no encryption key is set: set {SECRET_KEY_ENV} to \
         the base64 of 32 random bytes ({CREATE_KEY_HINT}) and keep it; credentials stored under \
         a key can only be read with that key"
    ))
}

fn wrong_key(name: &str) -> Error {
    Error::rejected(format!(
        "cannot decrypt credential {name:?}: {SECRET_KEY_ENV} is not the key it was stored with \
         (or the stored value was altered); set {SECRET_KEY_ENV} to the original key, or delete \
         the credential and store it again"
    ))
}

/// The SQLite [`Store`]: `<data_dir>/skipper.db`, safe to share between processes.
///
/// Every call runs on tokio's blocking pool around one connection per handle. Clones share the
/// connection; separate [`open`](Self::open)s (in one process or several) share the file.
/// `Debug` shows the path and whether a key is set, never credentials.
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
    id: String,
    key: Option<Arc<SecretKey>>,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .field("encryption_key", &self.key.as_ref().map(|_| "[REDACTED]"))
            .finish()
    }
}

impl SqliteStore {
    /// Open (creating the directory and the database on first start) `<data_dir>/skipper.db` and
    /// bring its schema up to date. Without `key`, credentials cannot be stored or read; see
    /// [`SecretKey::from_env`].
    ///
    /// This blocks (file I/O, and up to the busy timeout if another process is migrating); call it
    /// at start-up or from `spawn_blocking`.
    pub fn open(data_dir: &Path, key: Option<SecretKey>) -> Result<Self> {
        create_data_dir(data_dir)?;
        let path = data_dir.join(DB_FILE);
        let existed = path.exists();
        let mut conn =
            Connection::open(&path).or_db(|| format!("cannot open database {}", path.display()))?;
        if !existed {
            restrict_permissions(&path);
        }
        configure(&conn).or_db(|| format!("cannot configure database {}", path.display()))?;
        let version = migrate(&mut conn, &path)?;
        let id = read_store_id(&conn, &path)?;
        tracing::debug!(path = %path.display(), schema_version = version, store = %id, "opened sqlite store");
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            path,
            id,
            key: key.map(Arc::new),
        })
    }

    /// [`open`](Self::open) with the key from `SKIPPER_SECRET_KEY`, if set.
    pub fn open_with_env_key(data_dir: &Path) -> Result<Self> {
        Self::open(data_dir, SecretKey::from_env()?)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Run `f` on the connection in tokio's blocking pool.
    async fn call<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            // A panic inside `f` drops its transaction, which rolls back: the connection is
            // sound even if the lock is poisoned.
            let mut conn = conn.lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut conn)
        })
        .await
        .map_err(|e| {
            Error::backend_with(BACKEND, ErrorKind::Internal, "a database task failed", e)
        })?
    }

    fn key(&self) -> Result<Arc<SecretKey>> {
        self.key.clone().ok_or_else(missing_key)
    }
}

/// A store this process may only read: a read-only data directory (a read-only mount, another
/// user's files) still lets a caller list what is there.
impl SqliteStore {
    /// Open the database in `data_dir` for reading only: nothing is created, migrated or
    /// written, and every write fails. `NotFound` if there is no database; `Rejected` if its
    /// schema is not this Skipper's (a migration needs write access).
    ///
    /// A WAL database needs its `-shm` file, which a read-only directory may not hold: then
    /// the file is opened `immutable` (no locks; what another process writes meanwhile may not
    /// be seen, and on a read-only mount nothing is written).
    pub fn open_read_only(data_dir: &Path, key: Option<SecretKey>) -> Result<Self> {
        let path = data_dir.join(DB_FILE);
        if !path.is_file() {
            return Err(Error::not_found(format!("database {}", path.display())));
        }
        let conn = match open_read_only_conn(&path, false) {
            Ok(conn) => conn,
            Err(e) => {
                tracing::debug!(error = %e.chain(), "opening read-only failed; trying immutable");
                open_read_only_conn(&path, true)?
            }
        };
        let version: i64 = conn
            .query_row(
                "SELECT COALESCE(MAX(version), 0) FROM schema_version",
                [],
                |row| row.get(0),
            )
            .or_db(|| format!("cannot read the schema version of {}", path.display()))?;
        if usize::try_from(version).ok() != Some(MIGRATIONS.len()) {
            return Err(Error::rejected(format!(
                "{} has schema version {version} and this Skipper needs {}; it can only be \
                 migrated with write access to {}",
                path.display(),
                MIGRATIONS.len(),
                data_dir.display()
            )));
        }
        let id = read_store_id(&conn, &path)?;
        tracing::debug!(path = %path.display(), store = %id, "opened sqlite store read-only");
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            path,
            id,
            key: key.map(Arc::new),
        })
    }
}

/// A read-only connection to `path` (a `file:` URI, `immutable` on request), checked with a
/// first read: SQLite opens lazily.
fn open_read_only_conn(path: &Path, immutable: bool) -> Result<Connection> {
    use rusqlite::OpenFlags;
    let what = || format!("cannot open database {} read-only", path.display());
    let mut uri = String::from("file:");
    for c in path.to_string_lossy().chars() {
        match c {
            '%' => uri.push_str("%25"),
            '?' => uri.push_str("%3f"),
            '#' => uri.push_str("%23"),
            c => uri.push(c),
        }
    }
    uri.push_str(if immutable {
        "?mode=ro&immutable=1"
    } else {
        "?mode=ro"
    });
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
        | OpenFlags::SQLITE_OPEN_URI
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(&uri, flags).or_db(what)?;
    conn.busy_timeout(BUSY_TIMEOUT).or_db(what)?;
    conn.query_row("SELECT count(*) FROM sqlite_master", [], |row| {
        row.get::<_, i64>(0)
    })
    .or_db(what)?;
    Ok(conn)
}

fn create_data_dir(dir: &Path) -> Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|e| {
        Error::backend_with(
            BACKEND,
            ErrorKind::Internal,
            format!("cannot create data directory {}", dir.display()),
            e,
        )
    })
}

/// A new database file is readable by its owner only (it holds environment variables, and
/// SQLite gives its `-wal` and `-shm` files the same mode).
fn restrict_permissions(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
            tracing::warn!(path = %path.display(), error = %e, "cannot make the database private");
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    // First, so that statements wait for other processes instead of failing.
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // Switching a new database to WAL does not wait on the busy handler when another process
    // is doing the same: retry with backoff, up to the busy timeout.
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    let mut delay = std::time::Duration::from_millis(5);
    let mode: String = loop {
        match conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0)) {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if matches!(
                    e.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                ) && std::time::Instant::now() < deadline =>
            {
                #[allow(
                    clippy::disallowed_methods,
                    reason = "SqliteStore::open blocks by contract (start-up or spawn_blocking)"
                )]
                std::thread::sleep(delay);
                delay = (delay * 2).min(std::time::Duration::from_millis(200));
            }
            other => break other?,
        }
    };
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(journal_mode = %mode, "sqlite could not switch to WAL mode");
    }
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", true)?;
    Ok(())
}

/// The store's identity (migration 2 made it).
fn read_store_id(conn: &Connection, path: &Path) -> Result<String> {
    conn.query_row("SELECT id FROM store_identity LIMIT 1", [], |row| {
        row.get(0)
    })
    .or_db(|| format!("cannot read the store identity of {}", path.display()))
}

/// Whether `holder` holds lease `key` (expired or not: nobody else took it).
fn holds(conn: &Connection, key: &str, holder: &str) -> rusqlite::Result<bool> {
    let current: Option<String> = conn
        .query_row(
            "SELECT holder FROM locks WHERE key = ?1",
            params![key],
            |row| row.get(0),
        )
        .optional()?;
    Ok(current.as_deref() == Some(holder))
}

/// Apply the missing [`MIGRATIONS`]; the schema version afterwards.
fn migrate(conn: &mut Connection, path: &Path) -> Result<usize> {
    let what = || format!("cannot migrate the schema of {}", path.display());
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .or_db(what)?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_version (
             version INTEGER PRIMARY KEY NOT NULL,
             applied_at TEXT NOT NULL
         )",
    )
    .or_db(what)?;
    let current: i64 = tx
        .query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_version",
            [],
            |row| row.get(0),
        )
        .or_db(what)?;
    let current = usize::try_from(current).unwrap_or(0);
    if current > MIGRATIONS.len() {
        return Err(Error::backend(
            BACKEND,
            ErrorKind::Rejected,
            format!(
                "{} has schema version {current}, written by a newer Skipper (this one knows up \
                 to {}); upgrade Skipper",
                path.display(),
                MIGRATIONS.len()
            ),
        ));
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let version = index + 1;
        tx.execute_batch(sql)
            .or_db(|| format!("{}: migration {version} failed", what()))?;
        tx.execute(
            "INSERT INTO schema_version (version, applied_at) VALUES (?1, ?2)",
            params![i64::try_from(version).unwrap_or(i64::MAX), ts(&Utc::now())],
        )
        .or_db(what)?;
        tracing::info!(path = %path.display(), version, "applied sqlite migration");
    }
    tx.commit().or_db(what)?;
    Ok(MIGRATIONS.len())
}

/// Attach what failed to a rusqlite error, classified: busy/locked → `Transient`, constraint →
/// `Conflict`, anything else → `Internal`.
trait OrDb<T> {
    fn or_db(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> OrDb<T> for rusqlite::Result<T> {
    fn or_db(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| db_error(what(), e))
    }
}

fn db_error(what: String, e: rusqlite::Error) -> Error {
    let kind = match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => ErrorKind::Transient,
        Some(ErrorCode::ConstraintViolation) => ErrorKind::Conflict,
        _ => ErrorKind::Internal,
    };
    Error::backend_with(BACKEND, kind, what, e)
}

/// A timestamp as sortable text: RFC 3339, UTC, nine fraction digits, `Z`.
fn ts(t: &Timestamp) -> String {
    t.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

fn parse_ts(text: &str, what: impl FnOnce() -> String) -> Result<Timestamp> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            Error::backend_with(
                BACKEND,
                ErrorKind::Internal,
                format!("{} has an unreadable timestamp {text:?}", what()),
                e,
            )
        })
}

fn to_json<T: Serialize>(value: &T, what: impl FnOnce() -> String) -> Result<String> {
    serde_json::to_string(value).map_err(|e| {
        Error::backend_with(
            BACKEND,
            ErrorKind::Internal,
            format!("cannot encode {}", what()),
            e,
        )
    })
}

fn from_json<T: DeserializeOwned>(text: &str, what: impl FnOnce() -> String) -> Result<T> {
    serde_json::from_str(text).map_err(|e| {
        Error::backend_with(
            BACKEND,
            ErrorKind::Internal,
            format!(
                "stored {} cannot be read (written by another Skipper version?)",
                what()
            ),
            e,
        )
    })
}

/// Milliseconds since the Unix epoch, the unit of `locks.expires_at`.
fn now_millis() -> i64 {
    Utc::now().timestamp_millis()
}

/// A lease ttl in whole milliseconds, rounded up (so a ttl is never cut to nothing).
fn ttl_millis(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_micros().div_ceil(1000)).unwrap_or(i64::MAX)
}

/// `SELECT data FROM <table> [WHERE project = ? [AND stage = ?]] <tail>`, decoded.
fn select_filtered<T: DeserializeOwned>(
    conn: &Connection,
    table: &'static str,
    project: Option<String>,
    stage: Option<String>,
    tail: &str,
    limit: Option<usize>,
) -> Result<Vec<T>> {
    let what = || format!("cannot list {table}");
    let mut sql = format!("SELECT data FROM {table}");
    let mut args: Vec<rusqlite::types::Value> = Vec::new();
    for (column, value) in [("project", project), ("stage", stage)] {
        if let Some(value) = value {
            sql.push_str(if args.is_empty() { " WHERE " } else { " AND " });
            args.push(value.into());
            sql.push_str(&format!("{column} = ?{}", args.len()));
        }
    }
    sql.push(' ');
    sql.push_str(tail);
    if let Some(limit) = limit {
        args.push(i64::try_from(limit).unwrap_or(i64::MAX).into());
        sql.push_str(&format!(" LIMIT ?{}", args.len()));
    }
    let mut stmt = conn.prepare(&sql).or_db(what)?;
    let rows = stmt
        .query_map(rusqlite::params_from_iter(args), |row| {
            row.get::<_, String>(0)
        })
        .or_db(what)?
        .collect::<rusqlite::Result<Vec<String>>>()
        .or_db(what)?;
    rows.iter()
        .map(|data| from_json(data, || format!("record in {table}")))
        .collect()
}

/// An instance as its table row.
struct InstanceRow {
    id: String,
    project: String,
    stage: String,
    created_at: String,
    data: String,
}

impl InstanceRow {
    fn new(i: &Instance) -> Result<Self> {
        Ok(Self {
            data: to_json(i, || format!("instance {}", i.id))?,
            id: i.id.clone(),
            project: i.project.clone(),
            stage: i.stage.clone(),
            created_at: ts(&i.created_at),
        })
    }

    fn upsert(&self, conn: &Connection) -> Result<()> {
        conn.execute(
            "INSERT INTO instances (id, project, stage, created_at, data)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (id) DO UPDATE SET project = excluded.project,
                 stage = excluded.stage, created_at = excluded.created_at,
                 data = excluded.data",
            params![
                self.id,
                self.project,
                self.stage,
                self.created_at,
                self.data
            ],
        )
        .or_db(|| format!("cannot save instance {}", self.id))?;
        Ok(())
    }
}

/// A deployment as its table row.
struct DeploymentRow {
    id: String,
    project: String,
    stage: String,
    started_at: String,
    data: String,
}

impl DeploymentRow {
    fn new(d: &Deployment) -> Result<Self> {
        Ok(Self {
            data: to_json(d, || format!("deployment {}", d.id))?,
            id: d.id.clone(),
            project: d.project.clone(),
            stage: d.stage.clone(),
            started_at: ts(&d.started_at),
        })
    }

    fn upsert(&self, conn: &Connection) -> Result<()> {
        conn.execute(
            "INSERT INTO deployments (id, project, stage, started_at, data)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (id) DO UPDATE SET project = excluded.project,
                 stage = excluded.stage, started_at = excluded.started_at,
                 data = excluded.data",
            params![
                self.id,
                self.project,
                self.stage,
                self.started_at,
                self.data
            ],
        )
        .or_db(|| format!("cannot save deployment {}", self.id))?;
        Ok(())
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn store_id(&self) -> Result<String> {
        Ok(self.id.clone())
    }

    async fn put_project(&self, project: &Project) -> Result<()> {
        let name = project.name.clone();
        let data = to_json(project, || format!("project {name:?}"))?;
        self.call(move |conn| {
            conn.execute(
                "INSERT INTO projects (name, data) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET data = excluded.data",
                params![name, data],
            )
            .or_db(|| format!("cannot save project {name:?}"))?;
            Ok(())
        })
        .await
    }

    async fn get_project(&self, name: &str) -> Result<Option<Project>> {
        let name = name.to_owned();
        self.call(move |conn| {
            let data: Option<String> = conn
                .query_row(
                    "SELECT data FROM projects WHERE name = ?1",
                    params![name],
                    |row| row.get(0),
                )
                .optional()
                .or_db(|| format!("cannot read project {name:?}"))?;
            data.map(|d| from_json(&d, || format!("project {name:?}")))
                .transpose()
        })
        .await
    }

    async fn list_projects(&self) -> Result<Vec<Project>> {
        self.call(|conn| {
            let what = || "cannot list projects".to_owned();
            let mut stmt = conn
                .prepare("SELECT name, data FROM projects ORDER BY name")
                .or_db(what)?;
            let rows = stmt
                .query_map([], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
                })
                .or_db(what)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .or_db(what)?;
            rows.iter()
                .map(|(name, data)| from_json(data, || format!("project {name:?}")))
                .collect()
        })
        .await
    }

    async fn delete_project(&self, name: &str) -> Result<()> {
        let name = name.to_owned();
        self.call(move |conn| {
            conn.execute("DELETE FROM projects WHERE name = ?1", params![name])
                .or_db(|| format!("cannot delete project {name:?}"))?;
            Ok(())
        })
        .await
    }

    async fn put_instance(&self, instance: &Instance) -> Result<()> {
        let row = InstanceRow::new(instance)?;
        self.call(move |conn| row.upsert(conn)).await
    }

    async fn get_instance(&self, id: &str) -> Result<Option<Instance>> {
        let id = id.to_owned();
        self.call(move |conn| {
            let data: Option<String> = conn
                .query_row(
                    "SELECT data FROM instances WHERE id = ?1",
                    params![id],
                    |row| row.get(0),
                )
                .optional()
                .or_db(|| format!("cannot read instance {id}"))?;
            data.map(|d| from_json(&d, || format!("instance {id}")))
                .transpose()
        })
        .await
    }

    async fn list_instances(&self, filter: &InstanceFilter) -> Result<Vec<Instance>> {
        let filter = filter.clone();
        self.call(move |conn| {
            select_filtered(
                conn,
                "instances",
                filter.project,
                filter.stage,
                "ORDER BY created_at, id",
                None,
            )
        })
        .await
    }

    async fn delete_instance(&self, id: &str) -> Result<()> {
        let id = id.to_owned();
        self.call(move |conn| {
            conn.execute("DELETE FROM instances WHERE id = ?1", params![id])
                .or_db(|| format!("cannot delete instance {id}"))?;
            Ok(())
        })
        .await
    }

    async fn put_deployment(&self, deployment: &Deployment) -> Result<()> {
        let row = DeploymentRow::new(deployment)?;
        self.call(move |conn| row.upsert(conn)).await
    }

    async fn get_deployment(&self, id: &str) -> Result<Option<Deployment>> {
        let id = id.to_owned();
        self.call(move |conn| {
            let data: Option<String> = conn
                .query_row(
                    "SELECT data FROM deployments WHERE id = ?1",
                    params![id],
                    |row| row.get(0),
                )
                .optional()
                .or_db(|| format!("cannot read deployment {id}"))?;
            data.map(|d| from_json(&d, || format!("deployment {id}")))
                .transpose()
        })
        .await
    }

    async fn list_deployments(&self, filter: &DeploymentFilter) -> Result<Vec<Deployment>> {
        let filter = filter.clone();
        self.call(move |conn| {
            select_filtered(
                conn,
                "deployments",
                filter.project,
                filter.stage,
                "ORDER BY started_at DESC, id DESC",
                filter.limit,
            )
        })
        .await
    }

    async fn get_setting(&self, key: &str) -> Result<Option<String>> {
        let key = key.to_owned();
        self.call(move |conn| {
            conn.query_row(
                "SELECT value FROM settings WHERE key = ?1",
                params![key],
                |row| row.get(0),
            )
            .optional()
            .or_db(|| format!("cannot read setting {key:?}"))
        })
        .await
    }

    async fn put_setting(&self, key: &str, value: &str) -> Result<()> {
        let (key, value) = (key.to_owned(), value.to_owned());
        self.call(move |conn| {
            conn.execute(
                "INSERT INTO settings (key, value) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )
            .or_db(|| format!("cannot save setting {key:?}"))?;
            Ok(())
        })
        .await
    }

    async fn put_credential(&self, name: &str, secret: &SecretString) -> Result<()> {
        let key = self.key()?;
        let name = name.to_owned();
        let stored = key.encrypt(&name, secret)?;
        self.call(move |conn| {
            let what = || format!("cannot save credential {name:?}");
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .or_db(what)?;
            // Refuse to mix keys in one file: another credential must open with this key.
            let other: Option<(String, String)> = tx
                .query_row(
                    "SELECT name, value FROM credentials WHERE name <> ?1 LIMIT 1",
                    params![name],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()
                .or_db(what)?;
            if let Some((other, value)) = other {
                key.decrypt(&other, &value)?;
            }
            tx.execute(
                "INSERT INTO credentials (name, value) VALUES (?1, ?2)
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                params![name, stored],
            )
            .or_db(what)?;
            tx.commit().or_db(what)
        })
        .await
    }

    async fn get_credential(&self, name: &str) -> Result<Option<SecretString>> {
        // Looking up a credential that was never stored needs no key: only decrypting does.
        let key = self.key.clone();
        let name = name.to_owned();
        self.call(move |conn| {
            let stored: Option<String> = conn
                .query_row(
                    "SELECT value FROM credentials WHERE name = ?1",
                    params![name],
                    |row| row.get(0),
                )
                .optional()
                .or_db(|| format!("cannot read credential {name:?}"))?;
            match (stored, key) {
                (None, _) => Ok(None),
                (Some(_), None) => Err(missing_key()),
                (Some(s), Some(key)) => key.decrypt(&name, &s).map(Some),
            }
        })
        .await
    }

    async fn list_credentials(&self) -> Result<Vec<String>> {
        self.call(|conn| {
            let what = || "cannot list credentials".to_owned();
            let mut stmt = conn
                .prepare("SELECT name FROM credentials ORDER BY name")
                .or_db(what)?;
            let names = stmt
                .query_map([], |row| row.get(0))
                .or_db(what)?
                .collect::<rusqlite::Result<Vec<String>>>()
                .or_db(what)?;
            Ok(names)
        })
        .await
    }

    async fn delete_credential(&self, name: &str) -> Result<()> {
        let name = name.to_owned();
        self.call(move |conn| {
            conn.execute("DELETE FROM credentials WHERE name = ?1", params![name])
                .or_db(|| format!("cannot delete credential {name:?}"))?;
            Ok(())
        })
        .await
    }

    async fn put_seen_tag(&self, seen: &SeenTag) -> Result<()> {
        let seen = seen.clone();
        self.call(move |conn| {
            conn.execute(
                "INSERT INTO seen_tags (repository, tag, digest, first_seen, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (repository, tag) DO UPDATE SET digest = excluded.digest,
                     updated_at = excluded.updated_at",
                params![
                    seen.repository,
                    seen.tag,
                    seen.digest,
                    ts(&seen.first_seen),
                    ts(&seen.updated_at)
                ],
            )
            .or_db(|| format!("cannot record tag {}:{}", seen.repository, seen.tag))?;
            Ok(())
        })
        .await
    }

    async fn list_seen_tags(&self, repository: &str) -> Result<Vec<SeenTag>> {
        let repository = repository.to_owned();
        self.call(move |conn| {
            let what = || format!("cannot list the tags seen for {repository}");
            let mut stmt = conn
                .prepare(
                    "SELECT tag, digest, first_seen, updated_at FROM seen_tags
                     WHERE repository = ?1 ORDER BY tag",
                )
                .or_db(what)?;
            let rows = stmt
                .query_map(params![repository], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, Option<String>>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, String>(3)?,
                    ))
                })
                .or_db(what)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .or_db(what)?;
            rows.into_iter()
                .map(|(tag, digest, first_seen, updated_at)| {
                    let record = || format!("seen tag {repository}:{tag}");
                    Ok(SeenTag {
                        first_seen: parse_ts(&first_seen, record)?,
                        updated_at: parse_ts(&updated_at, record)?,
                        repository: repository.clone(),
                        tag,
                        digest,
                    })
                })
                .collect()
        })
        .await
    }

    async fn try_lock(&self, key: &str, holder: &str, ttl: Duration) -> Result<bool> {
        let (key, holder) = (key.to_owned(), holder.to_owned());
        self.call(move |conn| {
            let what = || format!("cannot take lease {key:?} for {holder:?}");
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .or_db(what)?;
            let now = now_millis();
            // Take it if free (insert), expired or ours (update); otherwise change nothing.
            let changed = tx
                .execute(
                    "INSERT INTO locks (key, holder, expires_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT (key) DO UPDATE SET holder = excluded.holder,
                         expires_at = excluded.expires_at
                     WHERE locks.holder = excluded.holder OR locks.expires_at <= ?4",
                    params![key, holder, now.saturating_add(ttl_millis(ttl)), now],
                )
                .or_db(what)?;
            tx.commit().or_db(what)?;
            Ok(changed == 1)
        })
        .await
    }

    async fn lease_holder(&self, key: &str) -> Result<Option<String>> {
        let key = key.to_owned();
        self.call(move |conn| {
            conn.query_row(
                "SELECT holder FROM locks WHERE key = ?1",
                params![key],
                |row| row.get(0),
            )
            .optional()
            .or_db(|| format!("cannot read lease {key:?}"))
        })
        .await
    }

    async fn take_over_lock(
        &self,
        key: &str,
        previous: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool> {
        let (key, previous, holder) = (key.to_owned(), previous.to_owned(), holder.to_owned());
        self.call(move |conn| {
            let changed = conn
                .execute(
                    "UPDATE locks SET holder = ?3, expires_at = ?4 WHERE key = ?1 AND holder = ?2",
                    params![
                        key,
                        previous,
                        holder,
                        now_millis().saturating_add(ttl_millis(ttl))
                    ],
                )
                .or_db(|| format!("cannot take lease {key:?} over from {previous:?}"))?;
            Ok(changed == 1)
        })
        .await
    }

    async fn put_fenced(
        &self,
        fence: &Fence,
        instances: &[Instance],
        deployments: &[Deployment],
    ) -> Result<()> {
        let rows = instances
            .iter()
            .map(InstanceRow::new)
            .collect::<Result<Vec<_>>>()?;
        let deployments = deployments
            .iter()
            .map(DeploymentRow::new)
            .collect::<Result<Vec<_>>>()?;
        let fence = fence.clone();
        self.call(move |conn| {
            let what = || format!("cannot write under lease {:?}", fence.key);
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .or_db(what)?;
            if !holds(&tx, &fence.key, &fence.holder).or_db(what)? {
                return Err(super::lease_lost(&fence));
            }
            for row in &rows {
                row.upsert(&tx)?;
            }
            for d in &deployments {
                d.upsert(&tx)?;
            }
            tx.commit().or_db(what)
        })
        .await
    }

    async fn unlock(&self, key: &str, holder: &str) -> Result<()> {
        let (key, holder) = (key.to_owned(), holder.to_owned());
        self.call(move |conn| {
            conn.execute(
                "DELETE FROM locks WHERE key = ?1 AND holder = ?2",
                params![key, holder],
            )
            .or_db(|| format!("cannot release lease {key:?} of {holder:?}"))?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance;

    fn open(dir: &Path, key: Option<&SecretKey>) -> SqliteStore {
        let key = key.map(|k| SecretKey::from_base64(&k.to_base64()).expect("key round trip"));
        SqliteStore::open(dir, key).expect("open sqlite store")
    }

    /// Every file SQLite keeps for the database (`skipper.db`, `-wal`, `-shm`), concatenated.
    fn raw_files(dir: &Path) -> Vec<u8> {
        let mut all = Vec::new();
        for entry in std::fs::read_dir(dir).expect("read data dir") {
            let path = entry.expect("dir entry").path();
            all.extend(std::fs::read(&path).expect("read db file"));
        }
        all
    }

    fn contains(haystack: &[u8], needle: &str) -> bool {
        haystack
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
    }

    #[tokio::test]
    async fn conformance() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path(), Some(&SecretKey::generate()));
        conformance::run_all(&store).await;
        conformance::credentials_hidden_from_debug(&store).await;
    }

    #[tokio::test]
    async fn data_dir_is_created_on_first_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("var").join("skipper");
        assert!(!data.exists());
        let store = open(&data, None);
        assert!(data.is_dir());
        assert_eq!(store.path(), data.join("skipper.db"));
        assert!(store.path().is_file());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(store.path())
                .expect("stat")
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "the database is private to its owner");
        }
    }

    #[tokio::test]
    async fn reopen_keeps_data_and_migrations_are_idempotent() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = SecretKey::generate();
        let project = conformance::sample_project("web");
        {
            let store = open(dir.path(), Some(&key));
            store.put_project(&project).await.expect("put project");
            store.put_setting("poll", "30s").await.expect("put setting");
            store
                .put_credential("ghcr", &SecretString::from("tok".to_owned()))
                .await
                .expect("put credential");
        }
        for _ in 0..2 {
            let store = open(dir.path(), Some(&key));
            assert_eq!(
                store.get_project("web").await.expect("get"),
                Some(project.clone())
            );
            assert_eq!(
                store.get_setting("poll").await.expect("get").as_deref(),
                Some("30s")
            );
            let secret = store.get_credential("ghcr").await.expect("get credential");
            assert_eq!(secret.as_ref().map(|s| s.expose_secret()), Some("tok"));
        }
        let conn = Connection::open(dir.path().join(DB_FILE)).expect("open raw");
        let versions: Vec<i64> = conn
            .prepare("SELECT version FROM schema_version ORDER BY version")
            .expect("prepare")
            .query_map([], |row| row.get(0))
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("rows");
        let expected: Vec<i64> = (1..=MIGRATIONS.len() as i64).collect();
        assert_eq!(versions, expected, "each migration ran exactly once");
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |row| row.get(0))
            .expect("journal mode");
        assert_eq!(mode, "wal");
    }

    #[tokio::test]
    async fn a_database_from_a_newer_skipper_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(open(dir.path(), None));
        let conn = Connection::open(dir.path().join(DB_FILE)).expect("open raw");
        conn.execute(
            "INSERT INTO schema_version (version, applied_at) VALUES (999, 'later')",
            [],
        )
        .expect("insert");
        drop(conn);
        let err = SqliteStore::open(dir.path(), None).expect_err("newer schema");
        assert!(err.to_string().contains("newer Skipper"), "{err}");
    }

    #[tokio::test]
    async fn credentials_are_not_stored_in_clear() {
        let dir = tempfile::tempdir().expect("tempdir");
        let secret = "correct-horse-battery-staple-4711";
        let store = open(dir.path(), Some(&SecretKey::generate()));
        store
            .put_credential("registry-token", &SecretString::from(secret.to_owned()))
            .await
            .expect("put credential");
        // Same value twice: a fresh nonce each time, so no two ciphertexts match.
        store
            .put_credential("registry-token-2", &SecretString::from(secret.to_owned()))
            .await
            .expect("put credential");

        let raw = raw_files(dir.path());
        assert!(
            contains(&raw, "registry-token"),
            "sanity: the name is in the files"
        );
        assert!(
            !contains(&raw, secret),
            "the secret is in the database files in clear"
        );

        let conn = Connection::open(dir.path().join(DB_FILE)).expect("open raw");
        let values: Vec<String> = conn
            .prepare("SELECT value FROM credentials ORDER BY name")
            .expect("prepare")
            .query_map([], |row| row.get(0))
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("rows");
        assert_eq!(values.len(), 2);
        assert_ne!(values[0], values[1], "every value has its own nonce");
        for value in &values {
            assert!(!value.contains(secret));
            let bytes = BASE64.decode(value).expect("stored as base64");
            assert_eq!(bytes.len(), NONCE_LEN + secret.len() + TAG_LEN);
        }

        // A value moved to another name does not decrypt (the name is authenticated).
        conn.execute(
            "UPDATE credentials SET value = ?1 WHERE name = 'registry-token-2'",
            params![values[0]],
        )
        .expect("swap");
        drop(conn);
        let err = store
            .get_credential("registry-token-2")
            .await
            .expect_err("moved value");
        assert_eq!(err.kind(), ErrorKind::Rejected);
        drop(store);
        assert!(!contains(&raw_files(dir.path()), secret));
    }

    #[tokio::test]
    async fn a_wrong_key_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path(), Some(&SecretKey::generate()));
        store
            .put_credential("ghcr", &SecretString::from("tok".to_owned()))
            .await
            .expect("put credential");
        drop(store);

        let store = open(dir.path(), Some(&SecretKey::generate()));
        let err = store.get_credential("ghcr").await.expect_err("wrong key");
        assert_eq!(err.kind(), ErrorKind::Rejected);
        let msg = err.to_string();
        assert!(msg.contains("cannot decrypt credential \"ghcr\""), "{msg}");
        assert!(msg.contains(SECRET_KEY_ENV), "{msg}");
        let err = store
            .put_credential("other", &SecretString::from("x".to_owned()))
            .await
            .expect_err("mixing keys in one file");
        assert!(err.to_string().contains(SECRET_KEY_ENV), "{err}");
        // Names and everything else still work.
        assert_eq!(store.list_credentials().await.expect("list"), vec!["ghcr"]);
        conformance::settings(&store).await;
        // Replacing the only credential under the new key is allowed.
        store
            .put_credential("ghcr", &SecretString::from("new".to_owned()))
            .await
            .expect("re-store under the new key");
        let secret = store.get_credential("ghcr").await.expect("get");
        assert_eq!(secret.as_ref().map(|s| s.expose_secret()), Some("new"));
    }

    #[tokio::test]
    async fn a_missing_key_is_a_clear_error_and_nothing_else_needs_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path(), None);
        let err = store
            .put_credential("ghcr", &SecretString::from("tok".to_owned()))
            .await
            .expect_err("no key");
        assert_eq!(err.kind(), ErrorKind::Rejected);
        let msg = err.to_string();
        assert!(msg.contains(SECRET_KEY_ENV), "{msg}");
        assert!(msg.contains("openssl rand -base64 32"), "{msg}");
        // Looking up a credential that was never stored needs no key (a registry whose
        // credentials live in the Docker config).
        assert!(
            store
                .get_credential("ghcr")
                .await
                .expect("lookup")
                .is_none()
        );
        assert!(store.list_credentials().await.expect("list").is_empty());
        store.delete_credential("ghcr").await.expect("delete");

        conformance::projects(&store).await;
        conformance::instances(&store).await;
        conformance::instance_filters_and_order(&store).await;
        conformance::deployments(&store).await;
        conformance::deployment_filters_order_and_limit(&store).await;
        conformance::settings(&store).await;
        conformance::seen_tags(&store).await;
        conformance::leases(&store).await;
        assert!(!format!("{store:?}").contains("REDACTED"));
    }

    #[tokio::test]
    async fn a_stored_credential_needs_the_key_to_be_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path(), Some(&SecretKey::generate()));
        store
            .put_credential("ghcr", &SecretString::from("tok".to_owned()))
            .await
            .expect("put credential");
        drop(store);
        let store = open(dir.path(), None);
        let err = store.get_credential("ghcr").await.expect_err("no key");
        assert!(err.to_string().contains(SECRET_KEY_ENV), "{err}");
        assert!(
            store
                .get_credential("other")
                .await
                .expect("lookup")
                .is_none()
        );
    }

    #[tokio::test]
    async fn the_store_id_is_made_once_and_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = open(dir.path(), None).store_id().await.expect("id");
        assert_eq!(first.len(), 16, "{first}");
        let again = open(dir.path(), None).store_id().await.expect("id");
        assert_eq!(first, again, "reopening keeps the identity");
        let other = tempfile::tempdir().expect("tempdir");
        assert_ne!(
            first,
            open(other.path(), None).store_id().await.expect("id")
        );
        // An emptied file (a botched restore) is a new store with a new identity.
        std::fs::write(dir.path().join(DB_FILE), b"").expect("truncate");
        for f in ["skipper.db-wal", "skipper.db-shm"] {
            let _ = std::fs::remove_file(dir.path().join(f));
        }
        let fresh = open(dir.path(), None).store_id().await.expect("id");
        assert_ne!(first, fresh);
    }

    #[test]
    fn secret_keys_parse_and_stay_redacted() {
        let key = SecretKey::generate();
        let encoded = key.to_base64();
        let with_newline = SecretString::from(format!("{}\n", encoded.expose_secret()));
        let again = SecretKey::from_base64(&with_newline).expect("openssl output parses");
        assert_eq!(again.0.expose_secret(), key.0.expose_secret());
        assert_eq!(format!("{key:?}"), "SecretKey([REDACTED])");
        assert!(!format!("{key:?}").contains(encoded.expose_secret()));

        let store_debug = format!(
            "{:?}",
            SqliteStore {
                conn: Arc::new(Mutex::new(Connection::open_in_memory().expect("memory db"))),
                path: PathBuf::from("/x/skipper.db"),
                id: "0123456789abcdef".into(),
                key: Some(Arc::new(again)),
            }
        );
        assert!(
            !store_debug.contains(encoded.expose_secret()),
            "{store_debug}"
        );

        for bad in ["", "not base64!", "c2hvcnQ=", &BASE64.encode([7u8; 48])] {
            let err =
                SecretKey::from_base64(&SecretString::from(bad.to_owned())).expect_err("bad key");
            assert_eq!(err.kind(), ErrorKind::Invalid);
            let msg = err.to_string();
            assert!(
                msg.contains(SECRET_KEY_ENV) && msg.contains("openssl"),
                "{msg}"
            );
            assert!(
                bad.is_empty() || !msg.contains(bad),
                "the error quotes the key: {msg}"
            );
        }
    }

    #[test]
    fn sqlite_errors_map_to_kinds() {
        let code = |c| rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(c), None);
        let kind = |c| db_error("x".into(), code(c)).kind();
        assert_eq!(kind(rusqlite::ffi::SQLITE_BUSY), ErrorKind::Transient);
        assert_eq!(kind(rusqlite::ffi::SQLITE_LOCKED), ErrorKind::Transient);
        assert_eq!(kind(rusqlite::ffi::SQLITE_CONSTRAINT), ErrorKind::Conflict);
        assert_eq!(kind(rusqlite::ffi::SQLITE_CORRUPT), ErrorKind::Internal);
        let err = db_error(
            "cannot save project \"web\"".into(),
            code(rusqlite::ffi::SQLITE_BUSY),
        );
        assert!(
            err.to_string()
                .starts_with("sqlite: cannot save project \"web\""),
            "{err}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_handles_on_one_file_contend_for_a_lease() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Two opens: two connections, as two processes would have.
        let one = open(dir.path(), None);
        let two = open(dir.path(), None);
        let long = Duration::from_secs(60);

        assert!(one.try_lock("stage:web/dev", "a", long).await.expect("a"));
        assert!(!two.try_lock("stage:web/dev", "b", long).await.expect("b"));
        assert!(
            two.try_lock("stage:web/dev", "a", long)
                .await
                .expect("a renews via two")
        );
        one.unlock("stage:web/dev", "b").await.expect("not b's");
        assert!(!two.try_lock("stage:web/dev", "b", long).await.expect("b"));
        one.unlock("stage:web/dev", "a").await.expect("release");
        assert!(
            two.try_lock("stage:web/dev", "b", long)
                .await
                .expect("b after release")
        );
        assert!(!one.try_lock("stage:web/dev", "a", long).await.expect("a"));

        // Expiry is seen across handles.
        assert!(
            one.try_lock("stage:web/prod", "a", Duration::from_millis(50))
                .await
                .expect("a")
        );
        assert!(
            !two.try_lock("stage:web/prod", "b", long)
                .await
                .expect("b early")
        );
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert!(
            two.try_lock("stage:web/prod", "b", long)
                .await
                .expect("b after expiry")
        );

        // Many holders racing on both handles at once: exactly one wins.
        let mut tasks = Vec::new();
        for i in 0..16 {
            let store = if i % 2 == 0 { one.clone() } else { two.clone() };
            tasks.push(tokio::spawn(async move {
                store.try_lock("race", &format!("holder-{i}"), long).await
            }));
        }
        let mut winners = 0;
        for task in tasks {
            if task.await.expect("join").expect("try_lock") {
                winners += 1;
            }
        }
        assert_eq!(winners, 1);

        // The whole suite also passes with the two handles sharing one file.
        conformance::leases(&one).await;
        conformance::projects(&two).await;
    }
}

#[cfg(test)]
mod read_only_tests {
    use super::*;
    use crate::store::conformance::{sample_instance, sample_project};

    #[tokio::test]
    async fn a_read_only_store_lists_what_is_there_and_writes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let instance = sample_instance("web", "dev", Utc::now());
        {
            let store = SqliteStore::open(dir.path(), None).expect("open");
            store.put_instance(&instance).await.expect("put");
        }
        let store = SqliteStore::open_read_only(dir.path(), None).expect("open read-only");
        let listed = store
            .list_instances(&InstanceFilter::default())
            .await
            .expect("list");
        assert_eq!(listed, vec![instance.clone()]);
        assert!(store.put_project(&sample_project("web")).await.is_err());
        assert!(store.delete_instance(&instance.id).await.is_err());
        let again = SqliteStore::open_read_only(dir.path(), None).expect("reopen read-only");
        assert_eq!(
            again
                .list_instances(&InstanceFilter::default())
                .await
                .unwrap(),
            vec![instance],
            "the failed writes changed nothing"
        );
    }

    #[test]
    fn a_missing_database_is_not_created() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = SqliteStore::open_read_only(dir.path(), None).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn immutable_opens_a_database_in_a_path_that_needs_escaping() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("a ?#%b");
        drop(SqliteStore::open(&data, None).expect("open"));
        for immutable in [false, true] {
            open_read_only_conn(&data.join(DB_FILE), immutable).expect("read-only connection");
        }
    }
}
