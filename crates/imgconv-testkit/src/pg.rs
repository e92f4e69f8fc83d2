//! Databases on the throwaway PostgreSQL cluster that the test command starts
//! (`scripts/pg-cluster.sh`, its URL in `IMGCONV_TEST_PG`).

/// The variable that holds the cluster's URL.
pub const PG_URL_VAR: &str = "IMGCONV_TEST_PG";

/// A new, empty database on the test cluster, named after `name` and this process (any
/// earlier one of that name is dropped); its URL. Panics when no cluster is configured: the
/// PostgreSQL tests fail rather than pass without a database.
pub fn pg_database(name: &str) -> String {
    let base = std::env::var(PG_URL_VAR).unwrap_or_else(|_| {
        panic!(
            "{PG_URL_VAR} is not set: run the tests with scripts/test.sh, or start a cluster \
             with `scripts/pg-cluster.sh start-tls DIR` and set {PG_URL_VAR} to the URL it prints"
        )
    });
    let db: String = format!("t_{name}_{}", std::process::id())
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(60)
        .collect();
    let mut client =
        admin_client(&base).unwrap_or_else(|e| panic!("test cluster at {PG_URL_VAR}: {e}"));
    client
        .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .and_then(|()| client.batch_execute(&format!("CREATE DATABASE {db}")))
        .unwrap_or_else(|e| panic!("creating database {db}: {e}"));
    let mut url = url::Url::parse(&base).unwrap_or_else(|e| panic!("{PG_URL_VAR}: {e}"));
    url.set_path(&format!("/{db}"));
    url.to_string()
}

/// A connection to the cluster at `url` for setting up databases: over TLS (unverified: the
/// code under test does the verifying) when the URL asks for it with `sslmode`, which the
/// driver itself cannot read in libpq's `verify-*` spellings.
fn admin_client(url: &str) -> Result<postgres::Client, String> {
    let mut u = url::Url::parse(url).map_err(|e| e.to_string())?;
    let tls = u
        .query_pairs()
        .any(|(k, v)| k == "sslmode" && v != "disable");
    u.set_query(None);
    if !tls {
        return postgres::Client::connect(u.as_str(), postgres::NoTls).map_err(|e| e.to_string());
    }
    let mut b = openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls_client())
        .map_err(|e| e.to_string())?;
    b.set_verify(openssl::ssl::SslVerifyMode::NONE);
    let mut connector = postgres_openssl::MakeTlsConnector::new(b.build());
    connector.set_callback(|c, _| {
        c.set_verify_hostname(false);
        Ok(())
    });
    let mut config: postgres::Config = u.as_str().parse().map_err(|e| format!("{e}"))?;
    config.ssl_mode(postgres::config::SslMode::Require);
    config.connect(connector).map_err(|e| e.to_string())
}
