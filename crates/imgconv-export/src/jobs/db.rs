//! The job store's two backends behind one small interface: SQLite (a file, one host) and
//! PostgreSQL (a server that a fleet shares). Statements are written once, with `?N`
//! parameters, in the SQL both understand; the few places where the dialects differ ask
//! [`Db::dialect`].

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::time::Duration;

use imgconv::{Error, ErrorKind, Result};

/// Where a job store lives: a SQLite file, or a PostgreSQL database named by its URL
/// (`postgres://USER:PASSWORD@HOST:PORT/DBNAME`).
#[derive(Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// A SQLite database file.
    Sqlite(PathBuf),
    /// A PostgreSQL connection URL.
    Postgres(String),
}

impl StoreLocation {
    /// A `postgres://` or `postgresql://` URL names PostgreSQL; anything else is a path.
    pub fn parse(text: &str) -> StoreLocation {
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            StoreLocation::Postgres(text.to_string())
        } else {
            StoreLocation::Sqlite(PathBuf::from(text))
        }
    }

    /// Whether this is a PostgreSQL URL.
    pub fn is_postgres(&self) -> bool {
        matches!(self, StoreLocation::Postgres(_))
    }
}

/// The location with any password hidden.
impl std::fmt::Debug for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreLocation::Sqlite(p) => write!(f, "Sqlite({})", p.display()),
            StoreLocation::Postgres(u) => write!(f, "Postgres({})", redact(u)),
        }
    }
}

impl From<&Path> for StoreLocation {
    fn from(p: &Path) -> StoreLocation {
        match p.to_str() {
            Some(s) => StoreLocation::parse(s),
            None => StoreLocation::Sqlite(p.to_path_buf()),
        }
    }
}

impl From<&PathBuf> for StoreLocation {
    fn from(p: &PathBuf) -> StoreLocation {
        StoreLocation::from(p.as_path())
    }
}

impl From<PathBuf> for StoreLocation {
    fn from(p: PathBuf) -> StoreLocation {
        StoreLocation::from(p.as_path())
    }
}

impl From<&str> for StoreLocation {
    fn from(s: &str) -> StoreLocation {
        StoreLocation::parse(s)
    }
}

impl From<&StoreLocation> for StoreLocation {
    fn from(l: &StoreLocation) -> StoreLocation {
        l.clone()
    }
}

/// A URL with its password replaced by `***`.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "(not a URL)".into(),
    }
}

/// Which SQL a statement is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// The column that orders jobs submitted in the same second (insertion order).
    pub(super) fn fifo(self) -> &'static str {
        match self {
            Dialect::Sqlite => "rowid",
            Dialect::Postgres => "seq",
        }
    }

    /// What a `SELECT` that picks a job to claim ends with: PostgreSQL locks the row and
    /// skips rows other workers hold; SQLite serialises writers anyway.
    pub(super) fn skip_locked(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE SKIP LOCKED",
        }
    }
}

/// A parameter or a column value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Val {
    Null,
    Int(i64),
    Text(String),
}

macro_rules! int_val {
    ($($t:ty),*) => {$(
        impl From<$t> for Val {
            fn from(v: $t) -> Val {
                Val::Int(v as i64)
            }
        }
    )*};
}
int_val!(i64, i32, u32, u8);

impl From<u64> for Val {
    fn from(v: u64) -> Val {
        Val::Int(i64::try_from(v).unwrap_or(i64::MAX))
    }
}

impl From<&str> for Val {
    fn from(v: &str) -> Val {
        Val::Text(v.to_string())
    }
}

impl From<String> for Val {
    fn from(v: String) -> Val {
        Val::Text(v)
    }
}

impl From<&String> for Val {
    fn from(v: &String) -> Val {
        Val::Text(v.clone())
    }
}

impl<T: Into<Val>> From<Option<T>> for Val {
    fn from(v: Option<T>) -> Val {
        v.map(Into::into).unwrap_or(Val::Null)
    }
}

/// Parameters from a list of values of any convertible types.
macro_rules! vals {
    ($($v:expr),* $(,)?) => { &[$($crate::jobs::db::Val::from($v)),*][..] };
}
pub(super) use vals;

/// A value read from a column.
pub(super) trait FromVal: Sized {
    fn from_val(v: &Val) -> Option<Self>;
}

impl FromVal for i64 {
    fn from_val(v: &Val) -> Option<i64> {
        match v {
            Val::Int(i) => Some(*i),
            _ => None,
        }
    }
}

macro_rules! int_from_val {
    ($($t:ty),*) => {$(
        impl FromVal for $t {
            fn from_val(v: &Val) -> Option<$t> {
                i64::from_val(v).and_then(|i| <$t>::try_from(i).ok())
            }
        }
    )*};
}
int_from_val!(u64, u32, u8);

impl FromVal for String {
    fn from_val(v: &Val) -> Option<String> {
        match v {
            Val::Text(s) => Some(s.clone()),
            _ => None,
        }
    }
}

impl<T: FromVal> FromVal for Option<T> {
    fn from_val(v: &Val) -> Option<Option<T>> {
        match v {
            Val::Null => Some(None),
            other => T::from_val(other).map(Some),
        }
    }
}

/// One row of a result.
#[derive(Debug)]
pub(super) struct Row(Vec<Val>);

impl Row {
    /// Column `i` as a `T`; an error when it is missing or of another type.
    pub(super) fn get<T: FromVal>(&self, i: usize) -> Result<T> {
        self.0.get(i).and_then(T::from_val).ok_or_else(|| {
            Error::new(
                ErrorKind::Io,
                format!("job database: column {i} has an unexpected value"),
            )
        })
    }
}

/// A PostgreSQL connection that reconnects when the server dropped it.
pub(super) struct Pg {
    url: String,
    client: Option<postgres::Client>,
    /// The count of [`DROPS`] this connection was last checked at.
    checked: u64,
}

/// How many times a connection of this process found that the server had dropped it (a
/// restart, a failover). Every other connection is checked before its next use after one
/// did: a pool's idle connections were very likely dropped too, and a write must not be the
/// statement that finds out.
static DROPS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Pg {
    /// Tell every connection that this one was found dropped.
    fn dropped(&mut self) {
        self.checked = DROPS.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
    }

    fn client(&mut self) -> Result<&mut postgres::Client> {
        let drops = DROPS.load(std::sync::atomic::Ordering::SeqCst);
        if self.checked != drops {
            self.checked = drops;
            if let Some(c) = &mut self.client {
                if c.is_valid(Duration::from_secs(5)).is_err() {
                    self.client = None;
                }
            }
        }
        if self.client.as_ref().is_some_and(|c| c.is_closed()) {
            self.client = None;
        }
        if self.client.is_none() {
            self.client = Some(connect(&self.url)?);
        }
        self.client
            .as_mut()
            .ok_or_else(|| Error::new(ErrorKind::Io, "job database: no connection"))
    }
}

/// How a connection to PostgreSQL is secured: libpq's `sslmode` (and `sslrootcert`), which
/// the URL may carry as query parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tls {
    /// Plain TCP (no `sslmode`, or `disable`).
    Off,
    /// TLS if the server offers it, unverified (`prefer`).
    Prefer,
    /// TLS, the server's certificate unverified (`require` without `sslrootcert`).
    Unverified,
    /// TLS, the server's certificate signed by the CA in the file (`verify-ca`, or `require`
    /// with `sslrootcert`); with `host`, its name (or address) checked too (`verify-full`).
    Verified {
        /// The CA certificates (PEM).
        root: std::path::PathBuf,
        /// Check the server's name against its certificate.
        host: bool,
    },
}

/// The URL without `sslmode` and `sslrootcert`, and the TLS they ask for.
fn tls_of(url: &str) -> Result<(String, Tls)> {
    let bad = |m: String| Error::invalid_argument(format!("job database URL {}: {m}", redact(url)));
    let Ok(mut u) = url::Url::parse(url) else {
        // Not a URL (libpq's `key=value` form): the driver reads it, plain TCP.
        return Ok((url.to_string(), Tls::Off));
    };
    let (mut mode, mut root) = (None, None);
    let kept: Vec<(String, String)> = u
        .query_pairs()
        .filter_map(|(k, v)| match k.as_ref() {
            "sslmode" => {
                mode = Some(v.into_owned());
                None
            }
            "sslrootcert" => {
                root = Some(std::path::PathBuf::from(v.as_ref()));
                None
            }
            _ => Some((k.into_owned(), v.into_owned())),
        })
        .collect();
    if kept.is_empty() {
        u.set_query(None);
    } else {
        u.query_pairs_mut().clear().extend_pairs(kept);
    }
    let needs_root = |m: &str| {
        root.clone().ok_or_else(|| {
            bad(format!(
                "sslmode={m} needs sslrootcert=FILE (the CA's certificate)"
            ))
        })
    };
    let tls = match mode.as_deref() {
        None | Some("disable") => Tls::Off,
        Some("prefer" | "allow") => Tls::Prefer,
        Some("require") => match &root {
            Some(r) => Tls::Verified {
                root: r.clone(),
                host: false,
            },
            None => Tls::Unverified,
        },
        Some("verify-ca") => Tls::Verified {
            root: needs_root("verify-ca")?,
            host: false,
        },
        Some("verify-full") => Tls::Verified {
            root: needs_root("verify-full")?,
            host: true,
        },
        Some(other) => {
            return Err(bad(format!(
            "sslmode={other} is not one of disable, allow, prefer, require, verify-ca, verify-full"
        )))
        }
    };
    Ok((u.to_string(), tls))
}

/// The TLS connector for `tls`.
fn tls_connector(tls: &Tls, url: &str) -> Result<postgres_openssl::MakeTlsConnector> {
    use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
    let failed = |m: String, e: openssl::error::ErrorStack| {
        Error::invalid_argument(format!("job database {}: {m}", redact(url))).with_source(e)
    };
    let mut b = SslConnector::builder(SslMethod::tls_client())
        .map_err(|e| failed("cannot set up TLS".into(), e))?;
    let check_host = match tls {
        Tls::Verified { root, host } => {
            b.set_ca_file(root)
                .map_err(|e| failed(format!("cannot read sslrootcert {}", root.display()), e))?;
            *host
        }
        _ => {
            b.set_verify(SslVerifyMode::NONE);
            false
        }
    };
    let mut connector = postgres_openssl::MakeTlsConnector::new(b.build());
    if !check_host {
        connector.set_callback(|config, _| {
            config.set_verify_hostname(false);
            Ok(())
        });
    }
    Ok(connector)
}

fn connect(url: &str) -> Result<postgres::Client> {
    let (plain_url, tls) = tls_of(url)?;
    let mut config: postgres::Config = plain_url.parse().map_err(|e| {
        Error::invalid_argument(format!("job database URL {}", redact(url))).with_source(e)
    })?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    config.application_name("imgconv");
    let reached = match &tls {
        Tls::Off => config.connect(postgres::NoTls),
        other => {
            config.ssl_mode(match other {
                Tls::Prefer => postgres::config::SslMode::Prefer,
                _ => postgres::config::SslMode::Require,
            });
            config.connect(tls_connector(other, url)?)
        }
    };
    reached.map_err(|e| {
        Error::new(
            ErrorKind::Io,
            format!("cannot reach the job database {}", redact(url)),
        )
        .with_source(e)
    })
}

/// A connection to the job database.
pub(super) enum Db {
    Sqlite(rusqlite::Connection),
    Postgres(Box<RefCell<Pg>>),
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Db::Sqlite(_) => "Db::Sqlite",
            Db::Postgres(_) => "Db::Postgres",
        })
    }
}

pub(super) fn sqlite_err(e: rusqlite::Error) -> Error {
    Error::new(ErrorKind::Io, "job database").with_source(e)
}

fn pg_err(e: postgres::Error) -> Error {
    Error::new(ErrorKind::Io, "job database").with_source(e)
}

/// Whether `sql` only reads (a `SELECT`), so that running it again changes nothing.
fn is_read(sql: &str) -> bool {
    let head = sql.trim_start();
    head.len() >= 6 && head[..6].eq_ignore_ascii_case("select")
}

/// `?N` parameters as PostgreSQL's `$N`.
fn pg_sql(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

impl postgres::types::ToSql for Val {
    fn to_sql(
        &self,
        ty: &postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> std::result::Result<postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>>
    {
        use postgres::types::Type;
        match self {
            Val::Null => Ok(postgres::types::IsNull::Yes),
            Val::Int(i) => match *ty {
                Type::INT2 => i16::try_from(*i)?.to_sql(ty, out),
                Type::INT4 => i32::try_from(*i)?.to_sql(ty, out),
                _ => i.to_sql(ty, out),
            },
            Val::Text(s) => s.as_str().to_sql(ty, out),
        }
    }

    fn accepts(ty: &postgres::types::Type) -> bool {
        use postgres::types::Type;
        matches!(
            *ty,
            Type::INT2 | Type::INT4 | Type::INT8 | Type::TEXT | Type::VARCHAR | Type::BPCHAR
        )
    }

    postgres::types::to_sql_checked!();
}

fn pg_row(row: &postgres::Row) -> Result<Row> {
    use postgres::types::Type;
    let mut vals = Vec::with_capacity(row.len());
    for (i, col) in row.columns().iter().enumerate() {
        let v = match *col.type_() {
            Type::INT8 => row.try_get::<_, Option<i64>>(i).map(|v| v.map(Val::Int)),
            Type::INT4 => row
                .try_get::<_, Option<i32>>(i)
                .map(|v| v.map(|v| Val::Int(v.into()))),
            Type::INT2 => row
                .try_get::<_, Option<i16>>(i)
                .map(|v| v.map(|v| Val::Int(v.into()))),
            _ => row
                .try_get::<_, Option<String>>(i)
                .map(|v| v.map(Val::Text)),
        }
        .map_err(pg_err)?;
        vals.push(v.unwrap_or(Val::Null));
    }
    Ok(Row(vals))
}

fn sqlite_row(row: &rusqlite::Row<'_>, n: usize) -> rusqlite::Result<Row> {
    use rusqlite::types::ValueRef;
    let mut vals = Vec::with_capacity(n);
    for i in 0..n {
        vals.push(match row.get_ref(i)? {
            ValueRef::Null => Val::Null,
            ValueRef::Integer(v) => Val::Int(v),
            ValueRef::Real(v) => Val::Int(v as i64),
            ValueRef::Text(t) | ValueRef::Blob(t) => {
                Val::Text(String::from_utf8_lossy(t).into_owned())
            }
        });
    }
    Ok(Row(vals))
}

fn sqlite_params(params: &[Val]) -> Vec<rusqlite::types::Value> {
    params
        .iter()
        .map(|v| match v {
            Val::Null => rusqlite::types::Value::Null,
            Val::Int(i) => rusqlite::types::Value::Integer(*i),
            Val::Text(s) => rusqlite::types::Value::Text(s.clone()),
        })
        .collect()
}

impl Db {
    /// Connect to `location`.
    pub(super) fn open(location: &StoreLocation) -> Result<Db> {
        match location {
            StoreLocation::Sqlite(path) => {
                let conn = rusqlite::Connection::open(path).map_err(sqlite_err)?;
                conn.busy_timeout(Duration::from_secs(10))
                    .map_err(sqlite_err)?;
                // Write-ahead logging: readers never wait for a writer, so a status query
                // answers even while another process (stopped, say) is inside a commit.
                // Where the file system cannot share the log's index, the default journal
                // still works: best effort.
                let _ = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| {
                    r.get::<_, String>(0)
                });
                Ok(Db::Sqlite(conn))
            }
            StoreLocation::Postgres(url) => Ok(Db::Postgres(Box::new(RefCell::new(Pg {
                url: url.clone(),
                client: Some(connect(url)?),
                checked: DROPS.load(std::sync::atomic::Ordering::SeqCst),
            })))),
        }
    }

    /// Which SQL this connection speaks.
    pub(super) fn dialect(&self) -> Dialect {
        match self {
            Db::Sqlite(_) => Dialect::Sqlite,
            Db::Postgres(_) => Dialect::Postgres,
        }
    }

    /// Run a statement; how many rows it changed.
    pub(super) fn execute(&self, sql: &str, params: &[Val]) -> Result<usize> {
        match self {
            Db::Sqlite(c) => c
                .execute(sql, rusqlite::params_from_iter(sqlite_params(params)))
                .map_err(sqlite_err),
            Db::Postgres(pg) => {
                let mut pg = pg.borrow_mut();
                let refs: Vec<&(dyn postgres::types::ToSql + Sync)> =
                    params.iter().map(|v| v as _).collect();
                let n = match pg.client()?.execute(pg_sql(sql).as_str(), &refs) {
                    Ok(n) => n,
                    Err(e) => {
                        if e.is_closed() || pg.client.as_ref().is_some_and(|c| c.is_closed()) {
                            pg.dropped();
                        }
                        return Err(pg_err(e));
                    }
                };
                Ok(usize::try_from(n).unwrap_or(usize::MAX))
            }
        }
    }

    /// Run a query; its rows.
    pub(super) fn query(&self, sql: &str, params: &[Val]) -> Result<Vec<Row>> {
        match self {
            Db::Sqlite(c) => {
                let mut stmt = c.prepare(sql).map_err(sqlite_err)?;
                let n = stmt.column_count();
                let rows = stmt
                    .query_map(rusqlite::params_from_iter(sqlite_params(params)), |r| {
                        sqlite_row(r, n)
                    })
                    .map_err(sqlite_err)?
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .map_err(sqlite_err)?;
                Ok(rows)
            }
            Db::Postgres(pg) => {
                let mut pg = pg.borrow_mut();
                let refs: Vec<&(dyn postgres::types::ToSql + Sync)> =
                    params.iter().map(|v| v as _).collect();
                let text = pg_sql(sql);
                let first = pg.client()?.query(text.as_str(), &refs);
                let dropped = |e: &postgres::Error, pg: &Pg| {
                    e.is_closed() || pg.client.as_ref().is_some_and(|c| c.is_closed())
                };
                let rows = match first {
                    // A connection the server dropped (it restarted, or failed over) is
                    // found out by its first use: a read runs again on a new connection,
                    // so that the first request after an outage is answered. Writes are
                    // not repeated (whether the server applied one is unknown); their
                    // caller gets the error.
                    Err(e) if dropped(&e, &pg) => {
                        pg.dropped();
                        if !is_read(sql) {
                            return Err(pg_err(e));
                        }
                        pg.client()?.query(text.as_str(), &refs).map_err(pg_err)?
                    }
                    other => other.map_err(pg_err)?,
                };
                rows.iter().map(pg_row).collect()
            }
        }
    }

    /// The first row of a query, if any.
    pub(super) fn query_opt(&self, sql: &str, params: &[Val]) -> Result<Option<Row>> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    /// Run statements without parameters (a schema).
    pub(super) fn batch(&self, sql: &str) -> Result<()> {
        match self {
            Db::Sqlite(c) => c.execute_batch(sql).map_err(sqlite_err),
            Db::Postgres(pg) => pg.borrow_mut().client()?.batch_execute(sql).map_err(pg_err),
        }
    }

    /// Run `f` in one transaction that writers take in turn (SQLite: `BEGIN IMMEDIATE`);
    /// committed when `f` succeeds, rolled back when it fails.
    pub(super) fn transaction<T>(&self, f: impl FnOnce(&Db) -> Result<T>) -> Result<T> {
        self.batch(match self {
            Db::Sqlite(_) => "BEGIN IMMEDIATE",
            Db::Postgres(_) => "BEGIN",
        })?;
        match f(self) {
            Ok(v) => {
                if let Err(e) = self.batch("COMMIT") {
                    let _ = self.batch("ROLLBACK");
                    return Err(e);
                }
                Ok(v)
            }
            Err(e) => {
                let _ = self.batch("ROLLBACK");
                Err(e)
            }
        }
    }
}

/// The channel on which submissions are announced (PostgreSQL `NOTIFY`).
pub(super) const JOBS_CHANNEL: &str = "imgconv_jobs";

/// A connection that listens for submissions made through any connection to the same
/// PostgreSQL database.
pub struct SubmissionListener {
    pg: Pg,
}

impl std::fmt::Debug for SubmissionListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SubmissionListener")
    }
}

impl SubmissionListener {
    /// Listen on the store at `location`; `None` for SQLite, which has no notifications
    /// (its workers look for jobs on their own).
    pub fn open(location: &StoreLocation) -> Result<Option<SubmissionListener>> {
        let StoreLocation::Postgres(url) = location else {
            return Ok(None);
        };
        let mut pg = Pg {
            url: url.clone(),
            client: None,
            checked: DROPS.load(std::sync::atomic::Ordering::SeqCst),
        };
        pg.client()?
            .batch_execute(&format!("LISTEN {JOBS_CHANNEL}"))
            .map_err(pg_err)?;
        Ok(Some(SubmissionListener { pg }))
    }

    /// Wait up to `timeout` for a submission; whether one was announced. A lost connection
    /// is reopened (and listens again) on the next call.
    pub fn wait(&mut self, timeout: Duration) -> Result<bool> {
        use postgres::fallible_iterator::FallibleIterator;
        let fresh = self.pg.client.as_ref().is_none_or(|c| c.is_closed());
        let client = self.pg.client()?;
        if fresh {
            client
                .batch_execute(&format!("LISTEN {JOBS_CHANNEL}"))
                .map_err(pg_err)?;
        }
        let mut notifications = client.notifications();
        let mut got = false;
        let mut it = notifications.timeout_iter(timeout);
        while let Some(n) = it.next().map_err(pg_err)? {
            got |= n.channel() == JOBS_CHANNEL;
            // Take whatever else arrived at once, without waiting again.
            if got {
                break;
            }
        }
        drop(it);
        while let Some(n) = notifications.iter().next().map_err(pg_err)? {
            got |= n.channel() == JOBS_CHANNEL;
        }
        Ok(got)
    }
}

#[cfg(test)]
mod tls_tests {
    use super::*;

    #[test]
    fn sslmode_and_sslrootcert_are_read_as_libpq_spells_them() -> Result<()> {
        let base = "postgres://u:p@db.example:5432/jobs";
        assert_eq!(tls_of(base)?, (base.to_string(), Tls::Off));
        let (u, t) = tls_of(&format!(
            "{base}?sslmode=verify-full&sslrootcert=/ca.pem&application_name=x"
        ))?;
        assert_eq!(u, format!("{base}?application_name=x"));
        assert_eq!(
            t,
            Tls::Verified {
                root: "/ca.pem".into(),
                host: true
            }
        );
        let (u, t) = tls_of(&format!("{base}?sslmode=verify-ca&sslrootcert=/ca.pem"))?;
        assert_eq!(u, base);
        assert!(matches!(t, Tls::Verified { host: false, .. }));
        assert_eq!(
            tls_of(&format!("{base}?sslmode=require"))?.1,
            Tls::Unverified
        );
        assert_eq!(tls_of(&format!("{base}?sslmode=prefer"))?.1, Tls::Prefer);
        assert_eq!(tls_of(&format!("{base}?sslmode=disable"))?.1, Tls::Off);
        let e = tls_of(&format!("{base}?sslmode=verify-full"))
            .err()
            .map(|e| e.to_string());
        assert!(
            e.as_deref()
                .is_some_and(|m| m.contains("needs sslrootcert") && !m.contains(":p@")),
            "{e:?}"
        );
        assert!(tls_of(&format!("{base}?sslmode=sometimes")).is_err());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_become_dollar_numbers_and_urls_hide_passwords() {
        assert_eq!(
            pg_sql("SELECT a FROM t WHERE b = ?1 AND c = ?12 AND d = '?'"),
            "SELECT a FROM t WHERE b = $1 AND c = $12 AND d = '?'"
        );
        let l = StoreLocation::parse("postgres://u:secret@h:5432/db");
        assert!(l.is_postgres());
        let shown = format!("{l:?}");
        assert!(
            !shown.contains("secret") && shown.contains("***"),
            "{shown}"
        );
        assert_eq!(
            StoreLocation::from(Path::new("jobs.sqlite")),
            StoreLocation::Sqlite(PathBuf::from("jobs.sqlite"))
        );
    }
}
