//! PostgreSQL-specific behaviour, whichever store the rest of the suite runs on:
//! a database that is unreachable at start-up, then comes back. Skipped,
//! with a printed reason, when PostgreSQL is not reachable.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

use crate::harness::{PASSWORD, PgDatabase, Server, eventually};

/// Forwards connections to the machine's PostgreSQL once opened; until then
/// nothing listens on its port and connections are refused.
struct Gate {
    port: u16,
    forwarding: Option<tokio::task::JoinHandle<()>>,
}

impl Gate {
    fn closed() -> Self {
        Self {
            port: gatehouse_testkit::free_port(),
            forwarding: None,
        }
    }

    async fn open(&mut self) {
        let listener = TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        self.forwarding = Some(tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let postgres = gatehouse_testkit::postgres_address();
                    if let Ok(mut server) = TcpStream::connect(postgres).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        }));
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        if let Some(task) = self.forwarding.take() {
            task.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_at_start_up_then_recovers_without_a_restart() {
    gatehouse_testkit::require_postgres!();
    let db = Arc::new(PgDatabase::create());
    let mut gate = Gate::closed();
    let s = Server::builder()
        .env(
            "GATEHOUSE__DATABASE__URL",
            format!("postgres://postgres@127.0.0.1:{}/{}", gate.port, db.name),
        )
        .env("GATEHOUSE__CIRCUIT_BREAKER__DATABASE__FAILURE_THRESHOLD", 2)
        .env(
            "GATEHOUSE__CIRCUIT_BREAKER__DATABASE__RESET_TIMEOUT_MS",
            500,
        )
        .start();

    // It started, and says what is wrong.
    let degraded = eventually(Duration::from_secs(5), || async {
        s.get("/api/v1/monitoring/health", None).await.body["status"] == "degraded"
    })
    .await;
    assert!(degraded);
    s.register("early").await.expect(503, "SVC003");
    s.register("early").await.expect(503, "SVC003");
    s.register("early").await.expect(503, "SVC001");

    gate.open().await;
    let recovered = eventually(Duration::from_secs(10), || async {
        s.register("late").await.status.as_u16() == 201
    })
    .await;
    assert!(recovered, "no recovery once PostgreSQL was reachable");
    s.login("late", PASSWORD).await.ok(200);
    let healthy = eventually(Duration::from_secs(5), || async {
        s.get("/api/v1/monitoring/health", None).await.body["status"] == "healthy"
    })
    .await;
    assert!(healthy);
}
