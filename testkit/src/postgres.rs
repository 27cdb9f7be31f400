//! A PostgreSQL database of the test's own, and SQL run through
//! `tokio-postgres` (no `psql` needed), callable from sync code and from
//! inside a tokio runtime alike.

use std::future::Future;

use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

/// The PostgreSQL server tests make their databases on:
/// `GATEHOUSE_TEST_POSTGRES_URL`, default `postgres://postgres@127.0.0.1:5432`.
/// A server URL, without a database name.
pub fn postgres_url() -> String {
    std::env::var("GATEHOUSE_TEST_POSTGRES_URL")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .map_or_else(
            || "postgres://postgres@127.0.0.1:5432".to_owned(),
            |v| v.trim().trim_end_matches('/').to_owned(),
        )
}

/// `host:port` of [`postgres_url`].
pub(crate) fn address() -> String {
    crate::host_port(&postgres_url(), 5432)
}

/// Runs `future` to completion on a runtime of its own, on a thread of its
/// own, so that sync code and async tests (whose runtime must not be
/// blocked from inside) can both wait for it.
pub(crate) fn block_on<F>(future: F) -> F::Output
where
    F: Future + Send,
    F::Output: Send,
{
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a tokio runtime for SQL")
                    .block_on(future)
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

/// A connection to `url`, its driver running on the current runtime.
pub(crate) async fn connect(url: &str) -> Result<Client, String> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .map_err(|e| format!("cannot connect to {url}: {e}"))?;
    tokio::spawn(connection);
    Ok(client)
}

/// Runs `sql` (one or more statements) against `url`; returns the first
/// column of the first row any of them returned, as text (`""` if none or NULL).
async fn run(url: &str, sql: &str) -> Result<String, String> {
    let client = connect(url).await?;
    let messages = client
        .simple_query(sql)
        .await
        .map_err(|e| format!("{sql}: {e}"))?;
    Ok(messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(row.get(0).unwrap_or("").to_owned()),
            _ => None,
        })
        .unwrap_or_default())
}

/// [`run`], from sync code or async.
fn run_blocking(url: &str, sql: &str) -> Result<String, String> {
    block_on(run(url, sql))
}

/// A PostgreSQL database of the test's own, on [`postgres_url`]; dropped
/// (`WITH (FORCE)`, whoever is still connected) when this is.
#[derive(Debug)]
pub struct PgDatabase {
    pub name: String,
}

impl PgDatabase {
    /// A fresh database named `gatehouse_test_<uuid>`. Panics if PostgreSQL
    /// cannot make it (check [`crate::require_postgres!`] first).
    pub fn create() -> Self {
        Self::try_create("gatehouse_test").unwrap_or_else(|e| panic!("{e}"))
    }

    /// A fresh database named `<prefix>_<uuid>`, or why not.
    pub fn try_create(prefix: &str) -> Result<Self, String> {
        let name = format!("{prefix}_{}", uuid::Uuid::new_v4().simple());
        run_blocking(
            &format!("{}/postgres", postgres_url()),
            &format!("CREATE DATABASE {name}"),
        )
        .map_err(|e| format!("cannot create a test database on {}: {e}", address()))?;
        Ok(Self { name })
    }

    /// The URL a client (the server under test) connects with.
    pub fn url(&self) -> String {
        format!("{}/{}", postgres_url(), self.name)
    }

    /// Runs `sql` (one or more statements; not in a transaction unless it
    /// says so) and returns the first column of the first row, as text
    /// (`""` when there is none or it is NULL). Panics on an SQL error.
    pub fn query(&self, sql: &str) -> String {
        run_blocking(&self.url(), sql).unwrap_or_else(|e| panic!("{e}"))
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let _ = run_blocking(
            &format!("{}/postgres", postgres_url()),
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}
