//! Both stores, SQLite and PostgreSQL, against the same scenarios: the
//! `UserRepo` and every route rely on them meaning the same thing.
//! PostgreSQL is the machine's (the testkit's, 127.0.0.1:5432 by default),
//! one fresh database per test; without it, only the SQLite half runs.

use std::sync::Arc;

use gatehouse_actors::audit::{Event, Query};
use gatehouse_actors::model::{
    AdminChange, Challenge, ChallengeOutcome, EmailChangeMail, Invalidation, LinkMail, LinkPurpose,
    MailOutcome, NewSession, NewUser, Outgoing, Principal, ProfileChange, Proof, Revoke, Rotation,
};
use gatehouse_actors::token_issuer::token_digest;
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
        verify: None,
    }
}

fn by(user: &str, session: &str) -> Principal {
    Principal {
        fresh_since: None,
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

/// Registers `user` and opens `session` for it at 1_000 (refresh digest
/// `digest`, password as registered): who the user's writes are made by.
async fn user_with_session(s: &dyn Store, user: NewUser, session: &str, digest: &str) -> Principal {
    let id = user.id.clone();
    s.create_user(user, vec![]).await.unwrap();
    open_session(s, session, &id, digest).await;
    by(&id, session)
}

/// A session of `user` opened at 1 000, its refresh token's digest `digest`.
async fn open_session(s: &dyn Store, session: &str, user: &str, digest: &str) {
    s.create_session(
        new_session(session, user, digest, 1_000),
        "$scrypt$x".into(),
        None,
        vec![],
    )
    .await
    .unwrap()
    .expect("the user's hash is the one verified");
}

/// A sealed message for the outbox; `cap` makes it count against (and
/// respect) its address's hourly cap, `None` makes it a notice.
fn outgoing(id: &str, kind: &'static str, cap: Option<u32>) -> Outgoing {
    Outgoing {
        id: id.into(),
        kind,
        to: None,
        body: b"sealed".to_vec(),
        cap,
    }
}

/// A link of `purpose` with its message (id `m-<digest>`, capped at 5 an hour).
fn link(digest: &str, purpose: LinkPurpose, expires_at: i64) -> LinkMail {
    let kind = match purpose {
        LinkPurpose::Verify => "verify_address",
        LinkPurpose::Reset => "reset_password",
    };
    LinkMail {
        digest: digest.into(),
        purpose,
        expires_at,
        mail: outgoing(&format!("m-{digest}"), kind, Some(5)),
    }
}

/// A notice (exempt from the cap), as a password change sends.
fn notice(id: &str) -> Outgoing {
    outgoing(id, "password_changed", None)
}

/// The whole-user invalidation a write for `user` reports.
fn whole(user: &str) -> Vec<Invalidation> {
    vec![Invalidation {
        user_id: user.into(),
        session_id: None,
    }]
}

#[tokio::test]
async fn unique_ignoring_case_and_lookup_by_either_name() {
    on_both(|s| async move {
        s.create_user(new_user("u1", "a@example.com", "Alice"), vec![])
            .await
            .unwrap();
        assert!(matches!(
            s.create_user(new_user("u2", "a@example.com", "bob"), vec![])
                .await,
            Err(Error::Conflict(Taken::Email))
        ));
        assert!(matches!(
            s.create_user(new_user("u3", "b@example.com", "ALICE"), vec![])
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
        s.create_user(new_user("u1", "a@example.com", "alice"), vec![])
            .await
            .unwrap();
        let stale = s
            .create_session(
                new_session("s0", "u1", "d0", 1_000),
                "$scrypt$old".into(),
                None,
                vec![],
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
            vec![],
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
        let u1 = user_with_session(&*s, new_user("u1", "a@example.com", "alice"), "s1", "d1").await;
        s.revoke(u1, Revoke::Session("s1".into()), 1_100, vec![])
            .await
            .unwrap();
        let (nothing, head) = s.invalidations_since(-1).await.unwrap();
        assert!(
            nothing.is_empty(),
            "history before start-up is not replayed"
        );

        open_session(&*s, "s2", "u1", "d2").await;
        open_session(&*s, "s3", "u1", "d3").await;
        let mut expected = s
            .revoke(by("u1", "s3"), Revoke::Session("s2".into()), 1_200, vec![])
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
                vec![],
            )
            .await
            .unwrap();
        expected.extend(profile);
        expected.extend(
            s.set_password(
                by("u1", "s3"),
                "$scrypt$x".into(),
                "$scrypt$2".into(),
                None,
                1_400,
                vec![],
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
            s.revoke(by("u1", "s3"), Revoke::Session("s2".into()), 1_500, vec![])
                .await
                .unwrap()
                .is_empty()
        );
        assert!(matches!(
            s.revoke(by("u2", "s3"), Revoke::Session("s3".into()), 1_500, vec![])
                .await,
            Err(Error::SessionRevoked)
        ));

        let all = s.deactivate(by("u1", "s3"), 1_600, vec![]).await.unwrap();
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
        user_with_session(&*s, new_user("u1", "a@example.com", "alice"), "s1", "d1").await;
        let u2 = user_with_session(&*s, new_user("u2", "b@example.com", "bob"), "s2", "d2").await;
        let taken = s
            .update_profile(
                u2.clone(),
                ProfileChange {
                    email: Some("a@example.com".into()),
                    ..Default::default()
                },
                2_000,
                vec![],
            )
            .await;
        assert!(matches!(taken, Err(Error::Conflict(Taken::Email))));
        let (user, _) = s
            .update_profile(
                u2,
                ProfileChange {
                    email: Some("c@example.com".into()),
                    ..Default::default()
                },
                2_000,
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(
            (user.email.as_str(), user.username.as_str(), user.updated_at),
            ("c@example.com", "bob", 2_000)
        );

        s.create_session(
            new_session("old", "u1", "d0", 0),
            "$scrypt$x".into(),
            None,
            vec![],
        )
        .await
        .unwrap();
        s.create_session(
            new_session("live", "u1", "d3", 100_000),
            "$scrypt$x".into(),
            None,
            vec![],
        )
        .await
        .unwrap();
        s.touch_sessions(vec![("live".into(), 100_500)])
            .await
            .unwrap();
        assert_eq!(s.purge(50_000, 0).await.unwrap(), 3);
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
        user_with_session(&*s, new_user("u1", "a@example.com", "alice"), "s1", "d1").await;
        open_session(&*s, "s2", "u1", "d2").await;
        s.revoke(by("u1", "s2"), Revoke::All, 1_100, vec![])
            .await
            .unwrap();
        let email = ProfileChange {
            email: Some("evil@example.com".into()),
            ..Default::default()
        };
        assert!(matches!(
            s.update_profile(by("u1", "s1"), email, 1_200, vec![]).await,
            Err(Error::SessionRevoked)
        ));
        assert!(matches!(
            s.set_password(
                by("u1", "s1"),
                "$scrypt$x".into(),
                "$scrypt$y".into(),
                None,
                1_200,
                vec![]
            )
            .await,
            Err(Error::SessionRevoked)
        ));
        assert!(matches!(
            s.deactivate(by("u1", "s1"), 1_200, vec![]).await,
            Err(Error::SessionRevoked)
        ));
        assert!(matches!(
            s.revoke(by("u1", "s1"), Revoke::Session("s1".into()), 1_200, vec![])
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
            vec![],
        )
        .await
        .unwrap();
        assert!(matches!(
            s.deactivate(by("u1", "s3"), 2_000 + 10_000, vec![]).await,
            Err(Error::SessionRevoked)
        ));

        // Two changes from the same verified hash: the second finds it gone.
        s.set_password(
            by("u1", "s3"),
            "$scrypt$x".into(),
            "$scrypt$first".into(),
            None,
            2_100,
            vec![],
        )
        .await
        .unwrap();
        assert!(matches!(
            s.set_password(
                by("u1", "s3"),
                "$scrypt$x".into(),
                "$scrypt$second".into(),
                None,
                2_200,
                vec![]
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
        user_with_session(&*s, new_user("u1", "a@example.com", "alice"), "s1", "d1").await;
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

/// The per-recipient cap's window, as the stores count it.
const HOUR_MS: i64 = 3_600_000;

#[tokio::test]
async fn verify_links_are_single_use_expire_and_are_voided_by_newer_ones() {
    on_both(|s| async move {
        let registered = s
            .create_user(
                NewUser {
                    verify: Some(link("v1", LinkPurpose::Verify, 10_000)),
                    ..new_user("u1", "a@example.com", "alice")
                },
                vec![],
            )
            .await
            .unwrap();
        assert!(!registered.email_verified);
        assert_eq!(s.outbox_pending().await.unwrap(), 1, "the link's message");
        let owner = s.link_owner("v1".into(), LinkPurpose::Verify, 2_000);
        assert_eq!(owner.await.unwrap().map(|u| u.id).as_deref(), Some("u1"));
        let wrong_purpose = s.link_owner("v1".into(), LinkPurpose::Reset, 2_000);
        assert!(wrong_purpose.await.unwrap().is_none());

        let (user, changes) = s
            .confirm_email("v1".into(), 2_000, vec![])
            .await
            .unwrap()
            .unwrap();
        assert!(user.email_verified);
        assert_eq!(user.email, "a@example.com");
        assert_eq!(changes, whole("u1"));
        assert!(s.user("u1".into()).await.unwrap().unwrap().email_verified);
        assert!(
            s.confirm_email("v1".into(), 2_100, vec![])
                .await
                .unwrap()
                .is_none(),
            "used once"
        );
        let used = s.link_owner("v1".into(), LinkPurpose::Verify, 2_100);
        assert!(used.await.unwrap().is_none());

        // Expired at its `expires_at`.
        let u2 = user_with_session(
            &*s,
            NewUser {
                verify: Some(link("v2", LinkPurpose::Verify, 5_000)),
                ..new_user("u2", "b@example.com", "bob")
            },
            "s2",
            "d2",
        )
        .await;
        let live = s.link_owner("v2".into(), LinkPurpose::Verify, 4_999);
        assert!(live.await.unwrap().is_some());
        let late = s.link_owner("v2".into(), LinkPurpose::Verify, 5_000);
        assert!(late.await.unwrap().is_none());
        assert!(
            s.confirm_email("v2".into(), 5_000, vec![])
                .await
                .unwrap()
                .is_none()
        );
        assert!(!s.user("u2".into()).await.unwrap().unwrap().email_verified);

        // A newer link of the same purpose voids the older one.
        for (digest, at) in [("v3", 6_000), ("v4", 6_100)] {
            let issued =
                s.request_verification(u2.clone(), link(digest, LinkPurpose::Verify, 20_000), at);
            assert!(issued.await.unwrap(), "{digest}");
        }
        let voided = s.link_owner("v3".into(), LinkPurpose::Verify, 6_200);
        assert!(voided.await.unwrap().is_none());
        assert!(
            s.confirm_email("v3".into(), 6_200, vec![])
                .await
                .unwrap()
                .is_none()
        );
        let (user, _) = s
            .confirm_email("v4".into(), 6_200, vec![])
            .await
            .unwrap()
            .unwrap();
        assert!(user.email_verified);

        // Nothing left to verify: nothing written.
        let queued = s.outbox_pending().await.unwrap();
        let again = s.request_verification(u2, link("v5", LinkPurpose::Verify, 20_000), 6_300);
        assert!(!again.await.unwrap());
        assert_eq!(s.outbox_pending().await.unwrap(), queued);
        let none = s.link_owner("v5".into(), LinkPurpose::Verify, 6_300);
        assert!(none.await.unwrap().is_none());
    })
    .await;
}

#[tokio::test]
async fn an_email_change_waits_for_its_link_and_a_pending_address_taken_meanwhile_conflicts() {
    on_both(|s| async move {
        let u1 = user_with_session(&*s, new_user("u1", "a@example.com", "alice"), "s1", "d1").await;
        let u2 = user_with_session(&*s, new_user("u2", "b@example.com", "bob"), "s2", "d2").await;
        let change = |email: &str, digest: &str| ProfileChange {
            email: Some(email.into()),
            mail: Some(EmailChangeMail {
                notice: notice(&format!("n-{digest}")),
                verify: Some(link(digest, LinkPurpose::Verify, 100_000)),
            }),
            ..Default::default()
        };

        let (user, changes) = s
            .update_profile(u1.clone(), change("new@example.com", "c1"), 2_000, vec![])
            .await
            .unwrap();
        assert_eq!(user.email, "a@example.com", "unchanged until confirmed");
        assert_eq!(user.pending_email.as_deref(), Some("new@example.com"));
        assert_eq!(user.updated_at, 2_000);
        assert_eq!(changes, whole("u1"));
        let mut queued: Vec<_> = s
            .claim_mail("t".into(), 2_000, 1, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|m| (m.kind, m.recipient))
            .collect();
        queued.sort();
        assert_eq!(
            queued,
            [
                ("password_changed".to_owned(), "a@example.com".to_owned()),
                ("verify_address".to_owned(), "new@example.com".to_owned()),
            ],
            "a notice to the old address, the link to the new one"
        );
        let owner = s.link_owner("c1".into(), LinkPurpose::Verify, 2_100);
        assert_eq!(owner.await.unwrap().map(|u| u.id).as_deref(), Some("u1"));

        let (user, changes) = s
            .confirm_email("c1".into(), 3_000, vec![])
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (
                user.email.as_str(),
                user.pending_email.as_deref(),
                user.email_verified
            ),
            ("new@example.com", None, true)
        );
        assert_eq!(changes, whole("u1"));

        // An address taken already is refused at once…
        let taken = s
            .update_profile(u1.clone(), change("B@example.com", "c0"), 3_500, vec![])
            .await;
        assert!(
            matches!(taken, Err(Error::Conflict(Taken::Email))),
            "{taken:?}"
        );

        // …and one taken while its link travels, when the link is followed.
        s.update_profile(u1, change("later@example.com", "c2"), 4_000, vec![])
            .await
            .unwrap();
        let direct = ProfileChange {
            email: Some("later@example.com".into()),
            ..Default::default()
        };
        let (bob, _) = s.update_profile(u2, direct, 4_500, vec![]).await.unwrap();
        assert_eq!(bob.email, "later@example.com");
        let late = s.confirm_email("c2".into(), 5_000, vec![]).await;
        assert!(
            matches!(late, Err(Error::Conflict(Taken::Email))),
            "{late:?}"
        );
        let kept = s.link_owner("c2".into(), LinkPurpose::Verify, 5_100);
        assert!(kept.await.unwrap().is_some(), "the link stays usable");
        let user = s.user("u1".into()).await.unwrap().unwrap();
        assert_eq!(
            (user.email.as_str(), user.pending_email.as_deref()),
            ("new@example.com", Some("later@example.com"))
        );
    })
    .await;
}

#[tokio::test]
async fn password_resets_go_to_active_accounts_only_and_revoke_every_session_once() {
    on_both(|s| async move {
        user_with_session(&*s, new_user("u1", "a@example.com", "alice"), "s1", "d1").await;
        open_session(&*s, "s2", "u1", "d2").await;
        let gone = user_with_session(&*s, new_user("u2", "b@example.com", "bob"), "s3", "d3").await;
        s.deactivate(gone, 1_500, vec![]).await.unwrap();
        let (_, head) = s.invalidations_since(-1).await.unwrap();

        let before = s.outbox_pending().await.unwrap();
        for (email, digest) in [("nobody@example.com", "r0"), ("b@example.com", "r1")] {
            let refused = s.request_reset(
                email.into(),
                link(digest, LinkPurpose::Reset, 100_000),
                2_000,
                vec![],
            );
            assert!(!refused.await.unwrap(), "{email}");
            let no_link = s.link_owner(digest.into(), LinkPurpose::Reset, 2_000);
            assert!(no_link.await.unwrap().is_none());
        }
        assert_eq!(s.outbox_pending().await.unwrap(), before, "nothing queued");

        for (email, digest, at) in [
            ("A@Example.com", "r2", 2_000),
            ("a@example.com", "r3", 2_100),
        ] {
            let issued = s.request_reset(
                email.into(),
                link(digest, LinkPurpose::Reset, 100_000),
                at,
                vec![],
            );
            assert!(issued.await.unwrap(), "{email}");
        }
        assert_eq!(s.outbox_pending().await.unwrap(), before + 2);
        let owner = s.link_owner("r3".into(), LinkPurpose::Reset, 2_200);
        assert_eq!(owner.await.unwrap().map(|u| u.id).as_deref(), Some("u1"));
        let as_verify = s.link_owner("r3".into(), LinkPurpose::Verify, 2_200);
        assert!(
            as_verify.await.unwrap().is_none(),
            "a reset link verifies nothing"
        );
        assert!(
            s.confirm_email("r3".into(), 2_200, vec![])
                .await
                .unwrap()
                .is_none()
        );

        let (user_id, changes) = s
            .reset_password(
                "r3".into(),
                "$scrypt$reset".into(),
                notice("n1"),
                3_000,
                vec![],
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(user_id, "u1");
        assert_eq!(changes, whole("u1"), "every session at once");
        let hash = s
            .credentials("alice".into())
            .await
            .unwrap()
            .unwrap()
            .password_hash;
        assert_eq!(hash, "$scrypt$reset");
        for session in ["s1", "s2"] {
            assert!(
                s.active_session(session.into(), 3_100)
                    .await
                    .unwrap()
                    .is_none(),
                "{session}"
            );
        }
        assert!(s.sessions("u1".into(), 3_100).await.unwrap().is_empty());
        assert_eq!(s.invalidations_since(head).await.unwrap().0, changes);
        assert_eq!(s.outbox_pending().await.unwrap(), before + 3, "the notice");

        for digest in ["r3", "r2"] {
            let again = s.reset_password(
                digest.into(),
                "$scrypt$again".into(),
                notice("n2"),
                3_200,
                vec![],
            );
            assert!(again.await.unwrap().is_none(), "{digest}");
            let used = s.link_owner(digest.into(), LinkPurpose::Reset, 3_200);
            assert!(used.await.unwrap().is_none());
        }
        let hash = s
            .credentials("alice".into())
            .await
            .unwrap()
            .unwrap()
            .password_hash;
        assert_eq!(hash, "$scrypt$reset");
        assert_eq!(s.outbox_pending().await.unwrap(), before + 3);

        // Used links go with the purge, a week on; sessions long gone with them.
        assert!(s.purge(3_000 + 8 * 86_400_000, 0).await.unwrap() >= 1);
        assert_eq!(
            s.outbox_pending().await.unwrap(),
            before + 3,
            "unsent mail stays"
        );
    })
    .await;
}

#[tokio::test]
async fn the_hourly_cap_drops_capped_mail_to_one_address_but_never_notices() {
    on_both(|s| async move {
        let u1 = user_with_session(&*s, new_user("u1", "a@example.com", "alice"), "s1", "d1").await;
        let capped = |digest: &str, purpose: LinkPurpose, to: Option<&str>| {
            let mut link = link(digest, purpose, 100_000_000);
            link.mail.cap = Some(2);
            link.mail.to = to.map(Into::into);
            link
        };
        let now = 10_000;
        // One written to the address in other letters: the count ignores case.
        let first = capped("k1", LinkPurpose::Reset, Some("A@EXAMPLE.com"));
        assert!(
            s.request_reset("a@example.com".into(), first, now, vec![])
                .await
                .unwrap()
        );
        let second = capped("k2", LinkPurpose::Reset, None);
        assert!(
            s.request_reset("a@example.com".into(), second, now, vec![])
                .await
                .unwrap()
        );
        assert_eq!(s.outbox_pending().await.unwrap(), 2);

        let third = capped("k3", LinkPurpose::Reset, None);
        assert!(
            !s.request_reset("a@example.com".into(), third, now, vec![])
                .await
                .unwrap()
        );
        let verify = capped("k4", LinkPurpose::Verify, None);
        assert!(
            !s.request_verification(u1.clone(), verify, now)
                .await
                .unwrap(),
            "every capped kind counts"
        );
        assert_eq!(s.outbox_pending().await.unwrap(), 2, "dropped, not queued");
        for (digest, purpose) in [("k3", LinkPurpose::Reset), ("k4", LinkPurpose::Verify)] {
            let stored = s.link_owner(digest.into(), purpose, now);
            assert!(
                stored.await.unwrap().is_none(),
                "{digest}: the link went with its message"
            );
        }
        let older = s.link_owner("k2".into(), LinkPurpose::Reset, now);
        assert!(
            older.await.unwrap().is_some(),
            "a dropped link voids nothing"
        );

        s.set_password(
            u1,
            "$scrypt$x".into(),
            "$scrypt$y".into(),
            Some(notice("n1")),
            now,
            vec![],
        )
        .await
        .unwrap();
        assert_eq!(s.outbox_pending().await.unwrap(), 3, "notices are exempt");

        let still = capped("k5", LinkPurpose::Reset, None);
        assert!(
            !s.request_reset("a@example.com".into(), still, now + HOUR_MS - 1, vec![])
                .await
                .unwrap()
        );
        let later = capped("k6", LinkPurpose::Reset, None);
        assert!(
            s.request_reset("a@example.com".into(), later, now + HOUR_MS, vec![])
                .await
                .unwrap()
        );
        assert_eq!(s.outbox_pending().await.unwrap(), 4, "an hour later");
    })
    .await;
}

/// Queues `n` reset messages (ids `<prefix>0…`) to a@example.com at `now`.
async fn queue(s: &dyn Store, prefix: &str, n: usize, now: i64) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("{prefix}{i}");
        let mail = LinkMail {
            mail: outgoing(&id, "reset_password", None),
            ..link(&format!("link-{id}"), LinkPurpose::Reset, now + 100_000)
        };
        assert!(
            s.request_reset("a@example.com".into(), mail, now, vec![])
                .await
                .unwrap()
        );
        ids.push(id);
    }
    ids
}

#[tokio::test]
async fn the_outbox_leases_each_message_to_one_sender_until_it_reports_or_the_lease_ends() {
    on_both(|s| async move {
        s.create_user(new_user("u1", "a@example.com", "alice"), vec![])
            .await
            .unwrap();
        let ids = queue(&*s, "m", 3, 1_000).await;
        let claimed = s.claim_mail("A".into(), 1_000, 500, 10).await.unwrap();
        let mut got: Vec<_> = claimed.iter().map(|m| m.id.clone()).collect();
        got.sort();
        assert_eq!(got, ids);
        let m = &claimed[0];
        assert_eq!(
            (
                m.kind.as_str(),
                m.recipient.as_str(),
                m.body.as_slice(),
                m.attempts
            ),
            ("reset_password", "a@example.com", b"sealed".as_slice(), 0)
        );
        assert!(
            s.claim_mail("B".into(), 1_499, 500, 10)
                .await
                .unwrap()
                .is_empty(),
            "leased to A"
        );

        let (m0, m1, m2) = (&ids[0], &ids[1], &ids[2]);
        let finish = |id: &str, owner: &str, outcome: MailOutcome, at: i64| {
            s.finish_mail(id.into(), owner.into(), outcome, at)
        };
        assert!(
            !finish(m0, "B", MailOutcome::Sent, 1_200).await.unwrap(),
            "not B's"
        );
        assert!(finish(m0, "A", MailOutcome::Sent, 1_200).await.unwrap());
        assert!(
            !finish(m0, "A", MailOutcome::Sent, 1_300).await.unwrap(),
            "done already"
        );
        let retry = MailOutcome::Retry {
            at: 5_000,
            error: "421 try later".into(),
        };
        assert!(finish(m1, "A", retry, 1_200).await.unwrap());
        let dead = MailOutcome::Dead {
            error: "550 no such user".into(),
        };
        assert!(finish(m2, "A", dead, 1_200).await.unwrap());
        assert_eq!(
            s.outbox_pending().await.unwrap(),
            1,
            "sent and dead are done"
        );

        assert!(
            s.claim_mail("B".into(), 4_999, 500, 10)
                .await
                .unwrap()
                .is_empty(),
            "not due yet"
        );
        let due = s.claim_mail("B".into(), 5_000, 500, 10).await.unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!((&due[0].id, due[0].attempts), (m1, 1));
        assert_eq!(due[0].body, b"sealed", "kept for the retry");

        // B's lease runs out unreported: A may take it, and B's report is refused.
        assert!(
            s.claim_mail("A".into(), 5_499, 500, 10)
                .await
                .unwrap()
                .is_empty()
        );
        let taken = s.claim_mail("A".into(), 5_500, 500, 10).await.unwrap();
        assert_eq!((&taken[0].id, taken[0].attempts), (m1, 1));
        assert!(
            !finish(m1, "B", MailOutcome::Sent, 5_600).await.unwrap(),
            "lease lost"
        );
        assert!(finish(m1, "A", MailOutcome::Sent, 5_600).await.unwrap());
        assert_eq!(s.outbox_pending().await.unwrap(), 0);

        queue(&*s, "n", 3, 6_000).await;
        assert_eq!(
            s.claim_mail("A".into(), 6_000, 500, 2).await.unwrap().len(),
            2,
            "the limit"
        );
        assert_eq!(
            s.claim_mail("B".into(), 6_000, 500, 2).await.unwrap().len(),
            1
        );
        s.purge(6_000 + 8 * 86_400_000, 0).await.unwrap();
        assert_eq!(
            s.outbox_pending().await.unwrap(),
            3,
            "pending mail is never purged"
        );
    })
    .await;
}

#[tokio::test]
async fn concurrent_claimers_never_lease_the_same_message() {
    on_both(|s| async move {
        s.create_user(new_user("u1", "a@example.com", "alice"), vec![])
            .await
            .unwrap();
        for round in 0..20_i64 {
            let now = 1_000 + round * 10_000;
            let mut ids = queue(&*s, &format!("r{round}-"), 6, now).await;
            let (a, b) = tokio::join!(
                s.claim_mail("A".into(), now, 60_000, 10),
                s.claim_mail("B".into(), now, 60_000, 10),
            );
            let (a, b) = (a.unwrap(), b.unwrap());
            let mut got: Vec<_> = a.iter().chain(&b).map(|m| m.id.clone()).collect();
            got.sort();
            ids.sort();
            assert_eq!(got, ids, "round {round}: each row once, to one claimer");
            for (owner, claimed) in [("A", &a), ("B", &b)] {
                for m in claimed {
                    assert!(
                        s.finish_mail(m.id.clone(), owner.into(), MailOutcome::Sent, now)
                            .await
                            .unwrap()
                    );
                }
            }
        }
        assert_eq!(s.outbox_pending().await.unwrap(), 0);
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

#[tokio::test]
async fn a_reset_link_opens_nothing_once_the_email_changed() {
    on_both(|s| async move {
        let alice =
            user_with_session(&*s, new_user("u1", "a@example.com", "alice"), "s1", "d1").await;
        assert!(
            s.request_reset(
                "a@example.com".into(),
                link("r1", LinkPurpose::Reset, 9_000),
                1_100,
                vec![]
            )
            .await
            .unwrap()
        );
        // Verification off: the new address replaces the old one at once.
        let change = ProfileChange {
            email: Some("b@example.com".into()),
            mail: Some(EmailChangeMail {
                notice: outgoing("n1", "email_change_requested", None),
                verify: None,
            }),
            ..Default::default()
        };
        s.update_profile(alice, change, 1_200, vec![])
            .await
            .unwrap();
        assert!(
            s.link_owner("r1".into(), LinkPurpose::Reset, 1_300)
                .await
                .unwrap()
                .is_none()
        );
        assert!(
            s.reset_password(
                "r1".into(),
                "$scrypt$new".into(),
                notice("n2"),
                1_300,
                vec![]
            )
            .await
            .unwrap()
            .is_none(),
            "the old mailbox's link is dead"
        );
        let kept = s.credentials("alice".into()).await.unwrap().unwrap();
        assert_eq!(kept.password_hash, "$scrypt$x");
    })
    .await;
}

/// The second factor's rules as both stores keep them: a TOTP step spends
/// once and never before the last, a recovery code once; privileged writes
/// need a fresh password check; a challenge takes five wrong codes, and
/// opens a session only for the password it was opened with.
#[tokio::test]
async fn second_factor_codes_spend_once_and_challenges_die_after_five_wrong_ones() {
    on_both(|s| async move {
        let s = s.as_ref();
        let who = user_with_session(s, new_user("u1", "m@example.com", "m"), "s1", "r1").await;
        // Privileged: the session's password check (at 1 000) must be no older than asked.
        let stale = Principal {
            fresh_since: Some(1_001),
            ..who.clone()
        };
        assert!(matches!(
            s.begin_totp(stale, b"sealed".to_vec(), 2_000).await,
            Err(Error::ReauthRequired)
        ));
        let fresh = Principal {
            fresh_since: Some(1_000),
            ..who.clone()
        };
        s.begin_totp(fresh.clone(), b"sealed".to_vec(), 2_000)
            .await
            .unwrap();
        // Confirming needs the pending key itself.
        assert!(matches!(
            s.confirm_totp(who.clone(), b"other".to_vec(), 10, vec![], 2_000, vec![])
                .await,
            Err(Error::SecondFactorRefused)
        ));
        let codes = vec![token_digest("a"), token_digest("b")];
        let changes = s
            .confirm_totp(who.clone(), b"sealed".to_vec(), 10, codes, 2_000, vec![])
            .await
            .unwrap();
        assert_eq!(changes, whole("u1"));
        let factor = s.second_factor("u1".into()).await.unwrap().unwrap();
        assert!(factor.user.mfa_enabled);
        assert_eq!(factor.secret.as_deref(), Some(&b"sealed"[..]));
        assert_eq!(factor.last_step, Some(10));
        assert!(matches!(
            s.begin_totp(fresh.clone(), b"again".to_vec(), 2_000).await,
            Err(Error::MfaState { enabled: true })
        ));

        // A challenge: replayed and older steps are wrong codes, the fifth kills it.
        let challenge = |digest: &str| Challenge {
            digest: digest.into(),
            user_id: "u1".into(),
            password_digest: token_digest("$scrypt$x"),
            auth_time: 3_000,
            expires_at: 300_000,
        };
        s.open_challenge(challenge("c1")).await.unwrap();
        assert!(s.challenge("c1".into(), 4_000).await.unwrap().is_some());
        assert!(s.challenge("c1".into(), 300_000).await.unwrap().is_none());
        let mut session = new_session("s2", "u1", "r2", 4_000);
        for (i, proof) in [
            Some(Proof::Totp { step: 10 }),
            Some(Proof::Totp { step: 9 }),
            Some(Proof::Recovery {
                digest: token_digest("nope"),
            }),
            None,
            Some(Proof::Totp { step: 10 }),
        ]
        .into_iter()
        .enumerate()
        {
            let outcome = s
                .complete_challenge("c1".into(), proof, session.clone(), vec![])
                .await
                .unwrap();
            assert_eq!(outcome, ChallengeOutcome::WrongCode { killed: i == 4 });
        }
        let outcome = s
            .complete_challenge(
                "c1".into(),
                Some(Proof::Totp { step: 11 }),
                session.clone(),
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(outcome, ChallengeOutcome::Unusable, "dead after five");

        // A right code completes a challenge once, and is then spent.
        s.open_challenge(challenge("c2")).await.unwrap();
        let outcome = s
            .complete_challenge(
                "c2".into(),
                Some(Proof::Totp { step: 11 }),
                session.clone(),
                vec![],
            )
            .await
            .unwrap();
        assert!(matches!(outcome, ChallengeOutcome::Completed(ref s) if s.id == "s2"));
        session.id = "s3".into();
        session.refresh_digest = "r3".into();
        let outcome = s
            .complete_challenge(
                "c2".into(),
                Some(Proof::Totp { step: 12 }),
                session.clone(),
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(outcome, ChallengeOutcome::Unusable, "used");
        s.open_challenge(challenge("c3")).await.unwrap();
        let recovery = Proof::Recovery {
            digest: token_digest("a"),
        };
        let outcome = s
            .complete_challenge("c3".into(), Some(recovery.clone()), session.clone(), vec![])
            .await
            .unwrap();
        assert!(matches!(outcome, ChallengeOutcome::Completed(_)));

        // A challenge opened for another password opens nothing.
        s.open_challenge(Challenge {
            password_digest: token_digest("$scrypt$old"),
            ..challenge("c4")
        })
        .await
        .unwrap();
        session.id = "s4".into();
        session.refresh_digest = "r4".into();
        let outcome = s
            .complete_challenge(
                "c4".into(),
                Some(Proof::Recovery {
                    digest: token_digest("b"),
                }),
                session.clone(),
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(outcome, ChallengeOutcome::Unusable);

        // Re-authentication spends a code too; a used one is refused.
        assert!(matches!(
            s.reauthenticate(who.clone(), "$scrypt$x".into(), Some(recovery), 5_000)
                .await,
            Err(Error::SecondFactorRefused)
        ));
        assert!(matches!(
            s.reauthenticate(who.clone(), "$scrypt$other".into(), None, 5_000)
                .await,
            Err(Error::WrongCurrentPassword)
        ));
        s.reauthenticate(
            who.clone(),
            "$scrypt$x".into(),
            Some(Proof::Totp { step: 13 }),
            5_000,
        )
        .await
        .unwrap();
        let renewed = Principal {
            fresh_since: Some(5_000),
            ..who.clone()
        };
        // Turning it off takes the key, the codes and open challenges with it.
        s.open_challenge(challenge("c5")).await.unwrap();
        assert!(matches!(
            s.disable_mfa(renewed.clone(), None, notice("n1"), 6_000, vec![])
                .await,
            Err(Error::SecondFactorRefused)
        ));
        s.disable_mfa(
            renewed.clone(),
            Some(Proof::Totp { step: 14 }),
            notice("n2"),
            6_000,
            vec![],
        )
        .await
        .unwrap();
        let factor = s.second_factor("u1".into()).await.unwrap().unwrap();
        assert!(!factor.user.mfa_enabled);
        assert_eq!(factor.secret, None);
        assert!(s.challenge("c5".into(), 6_000).await.unwrap().is_none());
        assert!(matches!(
            s.disable_mfa(
                renewed,
                Some(Proof::Totp { step: 15 }),
                notice("n3"),
                6_000,
                vec![]
            )
            .await,
            Err(Error::MfaState { enabled: false })
        ));
        assert_eq!(s.outbox_pending().await.unwrap(), 1, "one notice");
    })
    .await;
}

fn failure(login: &str, at: i64) -> Event {
    let mut event = Event::new("login.failure", at).detail("reason", "wrong_password");
    event.login = Some(login.into());
    event.ip = Some("192.0.2.9".into());
    event
}

async fn audit(s: &dyn Store, query: Query) -> Vec<(String, Option<String>)> {
    let entries = s.audit(Query { limit: 50, ..query }).await.unwrap();
    assert!(
        entries.windows(2).all(|w| w[0].id > w[1].id),
        "newest first"
    );
    entries
        .into_iter()
        .map(|e| (e.event.event, e.event.user_id))
        .collect()
}

/// Events stored by a write commit or roll back with it; the log reads
/// newest first by any filter, pages by id, is purged by age, and erasure
/// leaves only the event, its time and the user's id.
#[tokio::test]
async fn security_events_are_stored_with_their_write_read_newest_first_and_scrubbed_by_erasure() {
    on_both(|s| async move {
        let registered = |id: &str| vec![Event::new("user.registered", 1_000).user(id)];
        s.create_user(new_user("u1", "a@example.com", "alice"), registered("u1"))
            .await
            .unwrap();
        // A refused write stores none of its events.
        assert!(
            s.create_user(new_user("u2", "a@example.com", "bob"), registered("u2"))
                .await
                .is_err()
        );
        s.append_events(vec![
            failure("a@example.com", 2_000),
            failure("nobody", 3_000),
        ])
        .await
        .unwrap();
        let u1 = Some("u1".to_owned());
        assert_eq!(
            audit(&*s, Query::default()).await,
            [
                ("login.failure".into(), None),
                ("login.failure".into(), None),
                ("user.registered".into(), u1.clone()),
            ]
        );
        let by_user = Query {
            user_id: u1.clone(),
            ..Query::default()
        };
        assert_eq!(
            audit(&*s, by_user).await,
            [("user.registered".into(), u1.clone())]
        );
        let since = Query {
            event: Some("login.failure".into()),
            since: Some(2_500),
            ..Query::default()
        };
        assert_eq!(audit(&*s, since).await.len(), 1);

        // Pages by id: each event once, even with a newer one arriving between pages.
        let first = s
            .audit(Query {
                limit: 2,
                ..Query::default()
            })
            .await
            .unwrap();
        s.append_events(vec![failure("late", 4_000)]).await.unwrap();
        let rest = s
            .audit(Query {
                limit: 2,
                before: Some(first[1].id),
                ..Query::default()
            })
            .await
            .unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].event.event, "user.registered");

        let erased = vec![
            Event::new("admin.erase", 5_000)
                .user("u1")
                .detail("admin_name", "ops"),
        ];
        s.change_user("u1".into(), AdminChange::Erase, 5_000, erased)
            .await
            .unwrap()
            .unwrap();
        let all = s
            .audit(Query {
                limit: 50,
                ..Query::default()
            })
            .await
            .unwrap();
        assert!(
            all.iter()
                .all(|e| !format!("{e:?}").contains("a@example.com")
                    && !format!("{e:?}").contains("alice")),
            "{all:?}"
        );
        let about_them = all.iter().filter(|e| e.event.at <= 2_000).map(|e| &e.event);
        for event in about_them {
            assert_eq!(
                (&event.login, &event.ip, event.details.len()),
                (&None, &None, 0)
            );
        }
        assert_eq!(
            all[2].event.login.as_deref(),
            Some("nobody"),
            "others' events stay whole"
        );
        assert_eq!(all[0].event.event, "admin.erase");
        assert_eq!(all[0].event.details.get("admin_name"), Some(&"ops".into()));

        // Purge drops what is older than the retention, nothing else.
        s.purge(10_000, 2_500).await.unwrap();
        let kept: Vec<_> = audit(&*s, Query::default())
            .await
            .into_iter()
            .map(|e| e.0)
            .collect();
        assert_eq!(kept, ["admin.erase", "login.failure", "login.failure"]);
    })
    .await;
}
