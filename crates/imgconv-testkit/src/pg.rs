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
             with `scripts/pg-cluster.sh start DIR` and set {PG_URL_VAR} to the URL it prints"
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
    let mut client = postgres::Client::connect(&base, postgres::NoTls)
        .unwrap_or_else(|e| panic!("test cluster at {PG_URL_VAR}: {e}"));
    client
        .batch_execute(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
        .and_then(|()| client.batch_execute(&format!("CREATE DATABASE {db}")))
        .unwrap_or_else(|e| panic!("creating database {db}: {e}"));
    let mut url = url::Url::parse(&base).unwrap_or_else(|e| panic!("{PG_URL_VAR}: {e}"));
    url.set_path(&format!("/{db}"));
    url.to_string()
}
