//! Concurrent writes and shutdown: no 500s, no duplicate winners, no lost
//! acknowledged write.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::json;

use crate::harness::{DataDir, PASSWORD, Server, eventually};

async fn register_all(s: &Server, names: Vec<String>, emails: Vec<String>) -> Vec<u16> {
    let requests = names.into_iter().zip(emails).map(|(username, email)| {
        let request = s
            .http()
            .post(s.url("/api/v1/auth/register"))
            .json(&json!({"email": email, "username": username, "password": PASSWORD}));
        async move {
            request
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }
    });
    futures::future::join_all(requests).await
}

#[tokio::test]
async fn forty_concurrent_registrations_all_succeed() {
    let s = Server::start();
    let names: Vec<String> = (0..40).map(|i| format!("concurrent{i}")).collect();
    let emails = names.iter().map(|n| format!("{n}@example.com")).collect();
    let statuses = register_all(&s, names.clone(), emails).await;
    assert!(statuses.iter().all(|&c| c == 201), "{statuses:?}");
    for name in names.iter().step_by(7) {
        s.login(name, PASSWORD).await.ok(200);
    }
}

#[tokio::test]
async fn twenty_racing_for_one_username_exactly_one_wins() {
    let s = Server::start();
    let names = vec!["contested".to_owned(); 20];
    let emails = (0..20).map(|i| format!("racer{i}@example.com")).collect();
    let statuses = register_all(&s, names, emails).await;
    assert_eq!(
        statuses.iter().filter(|&&c| c == 201).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|&&c| c == 409).count(),
        19,
        "{statuses:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_during_a_burst_of_writes_loses_no_acknowledged_write() {
    let dir = DataDir::new();
    let mut s = Server::builder().dir(&dir).start();
    let done = Arc::new(AtomicUsize::new(0));
    let mut burst = Vec::new();
    for i in 0..80 {
        let request = s.http().post(s.url("/api/v1/auth/register")).json(&json!({
            "email": format!("burst{i}@example.com"),
            "username": format!("burst{i}"),
            "password": PASSWORD,
        }));
        let done = Arc::clone(&done);
        burst.push(tokio::spawn(async move {
            let status = request.send().await.map(|r| r.status().as_u16()).ok();
            done.fetch_add(1, Ordering::SeqCst);
            (i, status)
        }));
    }
    assert!(
        eventually(Duration::from_secs(30), || async {
            done.load(Ordering::SeqCst) >= 10
        })
        .await
    );
    let status = tokio::task::block_in_place(|| s.terminate());
    assert!(status.success(), "exit status {status:?}");

    let mut acknowledged = Vec::new();
    for handle in burst {
        let (i, status) = handle.await.unwrap();
        match status {
            Some(201) => acknowledged.push(i),
            // Refused or cut off by the shutdown: never acknowledged, never an error.
            None | Some(503) => {}
            Some(other) => panic!("burst{i} got {other}"),
        }
    }
    assert!(acknowledged.len() >= 10, "{acknowledged:?}");

    let again = Server::builder().dir(&dir).start();
    for i in acknowledged {
        again.login(&format!("burst{i}"), PASSWORD).await.ok(200);
    }
}

#[tokio::test]
async fn a_hash_with_old_parameters_is_upgraded_at_the_next_login() {
    let dir = DataDir::new();
    let stored_hash =
        |dir: &DataDir| dir.query("SELECT password_hash FROM users WHERE username = 'upgrade'");
    {
        let s = Server::builder().dir(&dir).start();
        s.register("upgrade").await.ok(201);
    }
    assert!(
        stored_hash(&dir).starts_with("$scrypt$ln=10,"),
        "{}",
        stored_hash(&dir)
    );
    let s = Server::builder()
        .dir(&dir)
        .env("GATEHOUSE__PASSWORD__SCRYPT_LOG_N", "11")
        .start();
    s.login("upgrade", PASSWORD).await.ok(200);
    assert!(
        stored_hash(&dir).starts_with("$scrypt$ln=11,"),
        "{}",
        stored_hash(&dir)
    );
    s.login("upgrade", PASSWORD).await.ok(200);
}
