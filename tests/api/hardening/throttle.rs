//! Finding 5: the account throttle counts per account (username and email
//! share one count). Finding 6: a locked name stays locked however many other
//! names are tracked.

use futures::StreamExt;

use crate::harness::{PASSWORD, Server};

const WRONG: &str = "definitely not the password";

#[tokio::test]
async fn failures_by_username_and_by_email_share_one_count() {
    let s = super::server()
        .env("GATEHOUSE__AUTH__MAX_FAILED_LOGINS", 3)
        .start();
    s.post(
        "/api/v1/auth/register",
        serde_json::json!({"email": "alice3@example.com", "username": "alice3", "password": PASSWORD}),
        None,
    )
    .await
    .ok(201);
    s.register("bob3").await.ok(201);

    s.login("alice3", WRONG).await.expect(401, "AUTH001");
    s.login("alice3", WRONG).await.expect(401, "AUTH001");
    s.login("ALICE3@EXAMPLE.COM", WRONG)
        .await
        .expect(401, "AUTH001");
    let locked = s.login("alice3", PASSWORD).await;
    locked.expect(429, "AUTH006");
    assert!(
        locked.header("retry-after").is_some(),
        "{:?}",
        locked.headers
    );
    s.login("alice3@example.com", PASSWORD)
        .await
        .expect(429, "AUTH006");

    // Unknown names are counted by the name typed.
    for _ in 0..3 {
        s.login("ghost-name", WRONG).await.expect(401, "AUTH001");
    }
    let ghost = s.login("ghost-name", WRONG).await;
    ghost.expect(429, "AUTH006");
    assert!(ghost.header("retry-after").is_some());

    // Nobody else is affected.
    s.login("bob3", PASSWORD).await.ok(200);
}

async fn flood(s: &Server, round: u32) {
    let statuses: Vec<u16> = futures::stream::iter(0..300)
        .map(|i| async move {
            s.login(&format!("flood{round}-{i}"), WRONG)
                .await
                .status
                .as_u16()
        })
        .buffer_unordered(8)
        .collect()
        .await;
    assert!(statuses.iter().all(|s| *s == 401), "{statuses:?}");
}

#[tokio::test]
async fn a_lock_survives_a_flood_of_other_names() {
    let s = super::server()
        .env("GATEHOUSE__AUTH__MAX_FAILED_LOGINS", 3)
        .env("GATEHOUSE__RATE_LIMIT__MAX_TRACKED_KEYS", 50)
        .env("GATEHOUSE__AUTH__LOCKOUT_S", 300)
        .start();
    s.register("locked_one").await.ok(201);
    for _ in 0..3 {
        s.login("locked_one", WRONG).await.expect(401, "AUTH001");
    }
    s.login("locked_one", PASSWORD).await.expect(429, "AUTH006");

    for round in 0..2 {
        flood(&s, round).await;
        let r = s.login("locked_one", PASSWORD).await;
        assert_eq!(
            (r.status.as_u16(), r.code()),
            (429, "AUTH006"),
            "after flood {round} the locked account logged in: {}",
            r.text
        );
    }
}
