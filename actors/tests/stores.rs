//! Both stores, SQLite and PostgreSQL, against the same scenarios: the
//! `UserRepo` and every route rely on them meaning the same thing.
//! PostgreSQL is the machine's (the testkit's, 127.0.0.1:5432 by default),
//! one fresh database per test; without it, only the SQLite half runs.

use std::sync::Arc;

use gatehouse_actors::model::{NewSession, NewUser, Principal, ProfileChange, Revoke, Rotation};
use gatehouse_actors::user_repo::pg::PgStore;
use gatehouse_actors::user_repo::sqlite::SqliteStore;
use gatehouse_actors::user_repo::{DatabaseSettings, Store};
use gatehouse_actors::{Error, Taken};
use gatehouse_testkit::{PgDatabase, Service};

/// Runs `scenario` against a fresh SQLite file and a fresh PostgreSQL database
/// (skipping the PostgreSQL half, with a printed reason, when it is absent).
async fn on_both<F, Fut>(scenario: F)
where
    F: Fn(Arc<dyn Store>) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    let sqlite = SqliteStore::open(&DatabaseSettings {
        path: dir.path().join("store.db"),
        ..DatabaseSettings::default()
    })
    .unwrap();
    scenario(Arc::new(sqlite)).await;

    if !gatehouse_testkit::require(Service::Postgres) {
        return;
    }
    let db = PgDatabase::create();
    let pg = PgStore::connect(&DatabaseSettings {
        url: db.url(),
        ..DatabaseSettings::default()
    })
    .unwrap();
    let pg: Arc<dyn Store> = Arc::new(pg);
    scenario(Arc::clone(&pg)).await;
    pg.close().await.unwrap();
    drop(pg);
    drop(db);
}

fn new_user(id: &str, email: &str, username: &str) -> NewUser {
    NewUser {
        id: id.into(),
        email: email.into(),
        username: username.into(),
        password_hash: "$scrypt$x".into(),
        now: 1_000,
    }
}

fn by(user: &str, session: &str) -> Principal {
    Principal {
        user_id: user.into(),
        session_id: session.into(),
    }
}

fn new_session(id: &str, user: &str, digest: &str, now: i64) -> NewSession {
    NewSession {
        id: id.into(),
        user_id: user.into(),
        refresh_digest: digest.into(),
        ip: Some("192.0.2.1".into()),
        user_agent: None,
        now,
        expires_at: now + 10_000,
        absolute_expires_at: now + 20_000,
        auth_time: now,
        amr: vec!["pwd".into()],
    }
}

#[tokio::test]
async fn unique_ignoring_case_and_lookup_by_either_name() {
    on_both(|s| async move {
        s.create_user(new_user("u1", "a@example.com", "Alice"))
            .await
            .unwrap();
        assert!(matches!(
            s.create_user(new_user("u2", "a@example.com", "bob")).await,
            Err(Error::Conflict(Taken::Email))
        ));
        assert!(matches!(
            s.create_user(new_user("u3", "b@example.com", "ALICE"))
                .await,
            Err(Error::Conflict(Taken::Username))
        ));
        for login in ["alice", "ALICE", "A@Example.com"] {
            assert_eq!(
                s.credentials(login.into()).await.unwrap().unwrap().user.id,
                "u1"
            );
        }
        assert!(s.credentials("nobody".into()).await.unwrap().is_none());
        assert_eq!(
            s.user("u1".into()).await.unwrap().unwrap().username,
            "Alice"
        );
        assert!(s.credentials_by_id("u1".into()).await.unwrap().is_some());
    })
    .await;
}

#[tokio::test]
async fn sessions_rotate_spend_and_reveal_reuse() {
    on_both(|s| async move {
        s.create_user(new_user("u1", "a@example.com", "alice"))
            .await
            .unwrap();
        let stale = s
            .create_session(
                new_session("s0", "u1", "d0", 1_000),
                "$scrypt$old".into(),
                None,
            )
            .await
            .unwrap();
        assert!(
            stale.is_none(),
            "the password changed since it was verified"
        );
        s.create_session(
            new_session("s1", "u1", "d1", 1_000),
            "$scrypt$x".into(),
            Some("$scrypt$new".into()),
        )
        .await
        .unwrap()
        .unwrap();
        let hash = s
            .credentials("alice".into())
            .await
            .unwrap()
            .unwrap()
            .password_hash;
        assert_eq!(hash, "$scrypt$new", "a re-hash is stored with the session");
        assert!(
            s.active_session("s1".into(), 1_500)
                .await
                .unwrap()
                .is_some()
        );

        let rotated = s
            .rotate_refresh("d1".into(), "d2".into(), 2_000, 50_000, 0)
            .await
            .unwrap();
        assert_eq!(
            rotated,
            Rotation::Rotated {
                session_id: "s1".into(),
                user_id: "u1".into()
            }
        );
        let listed = s.sessions("u1".into(), 2_000).await.unwrap();
        assert_eq!(
            listed[0].expires_at, 21_000,
            "slides, but never past the absolute end"
        );
        assert_eq!(listed[0].last_used_at, 2_000);
        assert_eq!(listed[0].ip.as_deref(), Some("192.0.2.1"));

        match s
            .rotate_refresh("d1".into(), "d3".into(), 3_000, 50_000, 0)
            .await
            .unwrap()
        {
            Rotation::Reused {
                session_id,
                changes,
                ..
            } => {
                assert_eq!(session_id, "s1");
                assert_eq!(changes.len(), 1);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            s.rotate_refresh("d2".into(), "d4".into(), 3_000, 50_000, 0)
                .await
                .unwrap(),
            Rotation::Invalid
        );
        assert_eq!(
            s.rotate_refresh("nope".into(), "d5".into(), 3_000, 50_000, 0)
                .await
                .unwrap(),
            Rotation::Invalid
        );
        assert!(
            s.active_session("s1".into(), 3_000)
                .await
                .unwrap()
                .is_none()
        );
    })
    .await;
}

#[tokio::test]
async fn the_invalidation_log_starts_at_its_head_then_reports_each_change_once() {
    on_both(|s| async move {
        s.create_user(new_user("u1", "a@example.com", "alice"))
            .await
            .unwrap();
        s.create_session(
            new_session("s1", "u1", "d1", 1_000),
            "$scrypt$x".into(),
            None,
        )
        .await
        .unwrap();
        s.revoke(by("u1", "s1"), Revoke::Session("s1".into()), 1_100)
            .await
            .unwrap();
        let (nothing, head) = s.invalidations_since(-1).await.unwrap();
        assert!(
            nothing.is_empty(),
            "history before start-up is not replayed"
        );

        s.create_session(
            new_session("s2", "u1", "d2", 1_000),
            "$scrypt$x".into(),
            None,
        )
        .await
        .unwrap();
        s.create_session(
            new_session("s3", "u1", "d3", 1_000),
            "$scrypt$x".into(),
            None,
        )
        .await
        .unwrap();
        let mut expected = s
            .revoke(by("u1", "s3"), Revoke::Session("s2".into()), 1_200)
            .await
            .unwrap();
        let (_, profile) = s
            .update_profile(
                by("u1", "s3"),
                ProfileChange {
                    username: Some("alicia".into()),
                    ..Default::default()
                },
                1_300,
            )
            .await
            .unwrap();
        expected.extend(profile);
        expected.extend(
            s.set_password(
                by("u1", "s3"),
                "$scrypt$x".into(),
                "$scrypt$2".into(),
                1_400,
            )
            .await
            .unwrap(),
        );
        let (seen, next) = s.invalidations_since(head).await.unwrap();
        assert_eq!(seen, expected);
        assert!(next > head);
        assert!(s.invalidations_since(next).await.unwrap().0.is_empty());
        assert!(
            s.active_session("s3".into(), 1_500)
                .await
                .unwrap()
                .is_some(),
            "kept by the password change"
        );

        // Revoking what is already revoked, or someone else's, changes nothing.
        assert!(
            s.revoke(by("u1", "s3"), Revoke::Session("s2".into()), 1_500)
                .await
                .unwrap()
                .is_empty()
        );
        assert!(matches!(
            s.revoke(by("u2", "s3"), Revoke::Session("s3".into()), 1_500)
                .await,
            Err(Error::SessionRevoked)
        ));

        let all = s.deactivate(by("u1", "s3"), 1_600).await.unwrap();
        assert_eq!(all.len(), 1);
        assert!(
            all[0].session_id.is_none(),
            "one entry covers every session"
        );
        assert!(
            s.active_session("s3".into(), 1_700)
                .await
                .unwrap()
                .is_none()
        );
        assert!(!s.user("u1".into()).await.unwrap().unwrap().is_active);
    })
    .await;
}

#[tokio::test]
async fn profile_changes_keep_uniqueness_and_purge_drops_expired_sessions() {
    on_both(|s| async move {
        s.create_user(new_user("u1", "a@example.com", "alice"))
            .await
            .unwrap();
        s.create_user(new_user("u2", "b@example.com", "bob"))
            .await
            .unwrap();
        for (id, user, digest) in [("s1", "u1", "d1"), ("s2", "u2", "d2")] {
            s.create_session(
                new_session(id, user, digest, 1_000),
                "$scrypt$x".into(),
                None,
            )
            .await
            .unwrap();
        }
        let taken = s
            .update_profile(
                by("u2", "s2"),
                ProfileChange {
                    email: Some("a@example.com".into()),
                    ..Default::default()
                },
                2_000,
            )
            .await;
        assert!(matches!(taken, Err(Error::Conflict(Taken::Email))));
        let (user, _) = s
            .update_profile(
                by("u2", "s2"),
                ProfileChange {
                    email: Some("c@example.com".into()),
                    ..Default::default()
                },
                2_000,
            )
            .await
            .unwrap();
        assert_eq!(
            (user.email.as_str(), user.username.as_str(), user.updated_at),
            ("c@example.com", "bob", 2_000)
        );

        s.create_session(new_session("old", "u1", "d0", 0), "$scrypt$x".into(), None)
            .await
            .unwrap();
        s.create_session(
            new_session("live", "u1", "d3", 100_000),
            "$scrypt$x".into(),
            None,
        )
        .await
        .unwrap();
        s.touch_session("live".into(), 100_500).await.unwrap();
        assert_eq!(s.purge(50_000).await.unwrap(), 3);
        let left = s.sessions("u1".into(), 100_001).await.unwrap();
        assert_eq!(
            left.iter().map(|x| x.id.as_str()).collect::<Vec<_>>(),
            ["live"]
        );
        assert_eq!(left[0].last_used_at, 100_500);
    })
    .await;
}

/// A write made for a session happens only while that session is active, and
/// a password changes only from the hash that was verified.
#[tokio::test]
async fn writes_for_a_session_check_it_inside_the_transaction() {
    on_both(|s| async move {
        s.create_user(new_user("u1", "a@example.com", "alice"))
            .await
            .unwrap();
        for (id, digest) in [("s1", "d1"), ("s2", "d2")] {
            s.create_session(
                new_session(id, "u1", digest, 1_000),
                "$scrypt$x".into(),
                None,
            )
            .await
            .unwrap();
        }
        s.revoke(by("u1", "s2"), Revoke::All, 1_100).await.unwrap();
        let email = ProfileChange {
            email: Some("evil@example.com".into()),
            ..Default::default()
        };
        assert!(matches!(
            s.update_profile(by("u1", "s1"), email, 1_200).await,
            Err(Error::SessionRevoked)
        ));
        assert!(matches!(
            s.set_password(
                by("u1", "s1"),
                "$scrypt$x".into(),
                "$scrypt$y".into(),
                1_200
            )
            .await,
            Err(Error::SessionRevoked)
        ));
        assert!(matches!(
            s.deactivate(by("u1", "s1"), 1_200).await,
            Err(Error::SessionRevoked)
        ));
        assert!(matches!(
            s.revoke(by("u1", "s1"), Revoke::Session("s1".into()), 1_200)
                .await,
            Err(Error::SessionRevoked)
        ));
        let user = s.credentials_by_id("u1".into()).await.unwrap().unwrap();
        assert_eq!(
            (
                user.user.email.as_str(),
                user.password_hash.as_str(),
                user.user.is_active
            ),
            ("a@example.com", "$scrypt$x", true)
        );

        // Expired sessions cannot write either.
        s.create_session(
            new_session("s3", "u1", "d3", 2_000),
            "$scrypt$x".into(),
            None,
        )
        .await
        .unwrap();
        assert!(matches!(
            s.deactivate(by("u1", "s3"), 2_000 + 10_000).await,
            Err(Error::SessionRevoked)
        ));

        // Two changes from the same verified hash: the second finds it gone.
        s.set_password(
            by("u1", "s3"),
            "$scrypt$x".into(),
            "$scrypt$first".into(),
            2_100,
        )
        .await
        .unwrap();
        assert!(matches!(
            s.set_password(
                by("u1", "s3"),
                "$scrypt$x".into(),
                "$scrypt$second".into(),
                2_200
            )
            .await,
            Err(Error::WrongCurrentPassword)
        ));
        let hash = s
            .credentials_by_id("u1".into())
            .await
            .unwrap()
            .unwrap()
            .password_hash;
        assert_eq!(hash, "$scrypt$first");
    })
    .await;
}

#[tokio::test]
async fn a_token_spent_within_the_grace_is_refused_without_revoking_and_after_it_revokes() {
    on_both(|s| async move {
        s.create_user(new_user("u1", "a@example.com", "alice"))
            .await
            .unwrap();
        s.create_session(
            new_session("s1", "u1", "d1", 1_000),
            "$scrypt$x".into(),
            None,
        )
        .await
        .unwrap()
        .unwrap();
        let owner = s.refresh_owner("d1".into()).await.unwrap().unwrap();
        assert_eq!(
            (
                owner.session_id.as_str(),
                owner.auth_time,
                owner.amr,
                owner.roles
            ),
            ("s1", 1_000, vec!["pwd".to_owned()], Vec::<String>::new())
        );
        let grace = 10_000;
        let rotated = s.rotate_refresh("d1".into(), "d2".into(), 2_000, 50_000, grace);
        assert!(matches!(rotated.await.unwrap(), Rotation::Rotated { .. }));
        // The other tab, a moment later and at the last moment of the grace.
        for at in [2_001, 2_000 + grace - 1] {
            let again = s.rotate_refresh("d1".into(), format!("x{at}"), at, 50_000, grace);
            assert_eq!(again.await.unwrap(), Rotation::Invalid, "at {at}");
            assert!(s.active_session("s1".into(), at).await.unwrap().is_some());
        }
        let late = s.rotate_refresh("d1".into(), "d3".into(), 2_000 + grace, 50_000, grace);
        assert!(matches!(late.await.unwrap(), Rotation::Reused { .. }));
        assert!(
            s.active_session("s1".into(), 12_000)
                .await
                .unwrap()
                .is_none()
        );
    })
    .await;
}

mod key_ring {
    use super::*;
    use gatehouse_actors::sealing::Sealer;
    use gatehouse_actors::token_issuer::keys::{self, SigningAlgorithm};
    use gatehouse_actors::token_issuer::ring::{KeyOp, KeyState, RingPolicy};
    use secrecy::SecretString;

    const POLICY: RingPolicy = RingPolicy {
        rotate_every_ms: None,
        keep_retired_ms: 1_000_000,
    };

    fn fresh() -> keys::NewKey {
        let sealer = Sealer::new(&SecretString::from("k".repeat(32)), "signing-keys").unwrap();
        keys::generate(SigningAlgorithm::EdDSA, &sealer).unwrap()
    }

    async fn states(s: &Arc<dyn Store>) -> Vec<(String, KeyState)> {
        let mut ring: Vec<_> = s
            .key_ring()
            .await
            .unwrap()
            .into_iter()
            .map(|k| (k.info.kid, k.info.state))
            .collect();
        ring.sort_by(|a, b| a.0.cmp(&b.0));
        ring
    }

    /// Two stores on one database (two instances), each asked twice at once
    /// to look after an empty ring: exactly one key is made, every time.
    async fn race_first_key(a: &Arc<dyn Store>, b: &Arc<dyn Store>) {
        let racers = [a, b, a, b].map(|s| {
            let s = Arc::clone(s);
            tokio::spawn(async move { s.change_keys(KeyOp::Upkeep, POLICY, fresh(), 1_000).await })
        });
        let mut made = 0;
        for racer in racers {
            made += racer.await.unwrap().unwrap().len();
        }
        assert_eq!(made, 1, "one racer makes the first key, the others nothing");
        let ring = states(a).await;
        assert_eq!(ring.len(), 1);
        assert_eq!(ring[0].1, KeyState::Active);
        assert_eq!(states(b).await, ring);
    }

    #[tokio::test]
    async fn concurrent_upkeep_makes_the_first_key_once_on_sqlite() {
        for _ in 0..10 {
            let dir = tempfile::tempdir().unwrap();
            let open = || -> Arc<dyn Store> {
                Arc::new(
                    SqliteStore::open(&DatabaseSettings {
                        path: dir.path().join("store.db"),
                        ..DatabaseSettings::default()
                    })
                    .unwrap(),
                )
            };
            let (a, b) = (open(), open());
            race_first_key(&a, &b).await;
        }
    }

    #[tokio::test]
    async fn concurrent_upkeep_makes_the_first_key_once_on_postgres() {
        gatehouse_testkit::require_postgres!();
        let db = PgDatabase::create();
        let open = || -> Arc<dyn Store> {
            Arc::new(
                PgStore::connect(&DatabaseSettings {
                    url: db.url(),
                    ..DatabaseSettings::default()
                })
                .unwrap(),
            )
        };
        let (a, b) = (open(), open());
        // Both connected and migrated before the races.
        a.key_ring().await.unwrap();
        b.key_ring().await.unwrap();
        for _ in 0..10 {
            db.query("DELETE FROM signing_keys");
            race_first_key(&a, &b).await;
        }
        a.close().await.unwrap();
        b.close().await.unwrap();
    }

    #[tokio::test]
    async fn rotate_promote_revoke_and_forget() {
        on_both(|s| async move {
            s.change_keys(KeyOp::Upkeep, POLICY, fresh(), 1_000)
                .await
                .unwrap();
            let first = states(&s).await[0].0.clone();
            let next = fresh();
            let next_kid = next.kid.clone();
            s.change_keys(KeyOp::Rotate { now: false }, POLICY, next, 2_000)
                .await
                .unwrap();
            let ring = s.key_ring().await.unwrap();
            let waiting = ring.iter().find(|k| k.info.kid == next_kid).unwrap();
            assert_eq!(waiting.info.state, KeyState::Next);
            assert_eq!(waiting.info.activates_at, 2_000 + 600_000);
            assert!(
                !waiting.public_jwk.contains("\"d\""),
                "only the public half in the JWK"
            );

            // Upkeep before its time changes nothing; at its time it signs.
            let early = s.change_keys(KeyOp::Upkeep, POLICY, fresh(), 601_999);
            assert!(early.await.unwrap().is_empty());
            s.change_keys(KeyOp::Upkeep, POLICY, fresh(), 602_000)
                .await
                .unwrap();
            let mut expected = vec![
                (first.clone(), KeyState::Retired),
                (next_kid.clone(), KeyState::Active),
            ];
            expected.sort_by(|a, b| a.0.cmp(&b.0));
            assert_eq!(states(&s).await, expected);

            // The retired key is forgotten once its tokens have expired.
            let kept = s.change_keys(KeyOp::Upkeep, POLICY, fresh(), 602_000 + 999_999);
            assert!(kept.await.unwrap().is_empty());
            s.change_keys(KeyOp::Upkeep, POLICY, fresh(), 602_000 + 1_000_000)
                .await
                .unwrap();
            assert_eq!(states(&s).await, [(next_kid.clone(), KeyState::Active)]);

            // Revoking the signing key makes another sign first.
            let successor = fresh();
            let successor_kid = successor.kid.clone();
            s.change_keys(
                KeyOp::Revoke { kid: next_kid },
                POLICY,
                successor,
                1_700_000,
            )
            .await
            .unwrap();
            assert_eq!(states(&s).await, [(successor_kid, KeyState::Active)]);
            let unknown = KeyOp::Revoke { kid: first };
            assert!(matches!(
                s.change_keys(unknown, POLICY, fresh(), 1_700_000).await,
                Err(Error::NotFound)
            ));
        })
        .await;
    }
}
