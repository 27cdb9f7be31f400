//! Where a server under test keeps its data: a SQLite file in a temporary
//! directory, or (`GATEHOUSE_TEST_STORE=postgres`) a PostgreSQL database of
//! its own as well.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, mpsc};
use std::time::{Duration, Instant};

use crate::postgres::{self, PgDatabase};

/// Which store servers run against: SQLite unless `GATEHOUSE_TEST_STORE=postgres`.
pub fn on_postgres() -> bool {
    std::env::var("GATEHOUSE_TEST_STORE").is_ok_and(|v| v == "postgres")
}

/// With `GATEHOUSE_TEST_STORE=postgres`, every server needs PostgreSQL: when
/// it is absent, the first [`DataDir`] ends the test process, passing (or,
/// under `GATEHOUSE_TEST_REQUIRE_SERVICES=1`, every [`DataDir`] panics).
fn postgres_store_ready() {
    static UNAVAILABLE: OnceLock<Option<String>> = OnceLock::new();
    let Some(reason) = UNAVAILABLE.get_or_init(|| crate::Service::Postgres.unavailable()) else {
        return;
    };
    if crate::services_required() {
        panic!(
            "GATEHOUSE_TEST_STORE=postgres, but {reason}, and {}=1 requires it",
            crate::REQUIRE_SERVICES
        );
    }
    crate::skip_process(&format!("GATEHOUSE_TEST_STORE=postgres, but {reason}"));
}

/// Where a server keeps its data; shared by the servers of a restart or
/// several-instances test. A SQLite file in a temporary directory, or a
/// PostgreSQL database of its own.
#[derive(Clone)]
pub struct DataDir {
    dir: Arc<tempfile::TempDir>,
    pg: Option<Arc<PgDatabase>>,
}

impl Default for DataDir {
    fn default() -> Self {
        Self::new()
    }
}

impl DataDir {
    pub fn new() -> Self {
        let pg = on_postgres().then(|| {
            postgres_store_ready();
            Arc::new(PgDatabase::create())
        });
        Self {
            dir: Arc::new(tempfile::tempdir().expect("temp dir")),
            pg,
        }
    }

    /// The SQLite file (used by the server only on the SQLite store).
    pub fn db(&self) -> PathBuf {
        self.dir.path().join("data/gatehouse.db")
    }

    /// Where the `file` mail transport writes its `.eml` files.
    pub fn mail_dir(&self) -> PathBuf {
        self.dir.path().join("mail")
    }

    /// The PostgreSQL database, on the PostgreSQL store.
    pub fn postgres(&self) -> Option<&PgDatabase> {
        self.pg.as_deref()
    }

    /// The configuration that points a server at this data.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            (
                "GATEHOUSE__DATABASE__PATH".to_owned(),
                self.db().display().to_string(),
            ),
            (
                "GATEHOUSE__EMAIL__FILE_DIR".to_owned(),
                self.mail_dir().display().to_string(),
            ),
        ];
        if let Some(pg) = &self.pg {
            env.push(("GATEHOUSE__DATABASE__URL".to_owned(), pg.url()));
        }
        env
    }

    /// The first column of the first row `sql` returns, as text.
    pub fn query(&self, sql: &str) -> String {
        match &self.pg {
            Some(pg) => pg.query(sql),
            None => rusqlite::Connection::open(self.db())
                .unwrap()
                .query_row(sql, [], |r| r.get::<_, String>(0))
                .unwrap(),
        }
    }

    /// Takes the lock writers need from a second connection, as an operator's
    /// stray transaction would: SQLite's write lock, or an exclusive lock on
    /// PostgreSQL's users table. Released when the guard is dropped.
    pub fn hold_write_lock(&self) -> WriteLock {
        match &self.pg {
            None => WriteLock::sqlite(&self.db()),
            Some(pg) => {
                // The schema appears when the server first reaches the database.
                let deadline = Instant::now() + Duration::from_secs(10);
                while pg.query("SELECT to_regclass('users') IS NOT NULL") != "t" {
                    assert!(
                        Instant::now() < deadline,
                        "the server never created its schema"
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
                WriteLock::postgres(pg.url())
            }
        }
    }
}

/// A write lock held from a second connection; see [`DataDir::hold_write_lock`].
pub enum WriteLock {
    Sqlite(rusqlite::Connection),
    /// A connection, on a thread of its own, inside a transaction that holds
    /// the lock until told to roll back.
    Postgres {
        release: Option<mpsc::Sender<()>>,
        holder: Option<std::thread::JoinHandle<()>>,
    },
}

impl WriteLock {
    /// SQLite's write lock on the database at `path` (`BEGIN IMMEDIATE`).
    pub fn sqlite(path: &Path) -> Self {
        let lock = rusqlite::Connection::open(path)
            .unwrap_or_else(|e| panic!("open {} for the lock: {e}", path.display()));
        lock.execute_batch("BEGIN IMMEDIATE")
            .unwrap_or_else(|e| panic!("take SQLite's write lock on {}: {e}", path.display()));
        Self::Sqlite(lock)
    }

    fn postgres(url: String) -> Self {
        let (locked_tx, locked_rx) = mpsc::channel();
        let (release, release_rx) = mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime for the lock");
            let client = runtime.block_on(async {
                let client = postgres::connect(&url).await?;
                client
                    .batch_execute("BEGIN; LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
                    .await
                    .map_err(|e| format!("lock the users table: {e}"))?;
                Ok::<_, String>(client)
            });
            let client = match client {
                Ok(client) => {
                    let _ = locked_tx.send(Ok(()));
                    client
                }
                Err(e) => {
                    let _ = locked_tx.send(Err(e));
                    return;
                }
            };
            // Sent, or the sender dropped: either way, let go.
            let _ = release_rx.recv();
            runtime.block_on(async {
                let _ = client.batch_execute("ROLLBACK").await;
            });
        });
        match locked_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("{e}"),
            Err(_) => panic!("the lock holder died"),
        }
        Self::Postgres {
            release: Some(release),
            holder: Some(holder),
        }
    }
}

impl Drop for WriteLock {
    fn drop(&mut self) {
        match self {
            Self::Sqlite(lock) => {
                let _ = lock.execute_batch("ROLLBACK");
            }
            Self::Postgres { release, holder } => {
                drop(release.take());
                if let Some(holder) = holder.take() {
                    let _ = holder.join();
                }
            }
        }
    }
}
