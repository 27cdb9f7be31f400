//! The session rules both stores apply, once: each store reads rows with its
//! own SQL, asks these functions what the rows mean, and writes the answer
//! with its own SQL. Nothing here touches a database or a clock.

use crate::model::Revoke;

/// How long revoked sessions (and the invalidation log) are kept before purging.
pub const KEEP_REVOKED_MS: i64 = 3_600_000;

/// A session row as the rules need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionState {
    pub revoked_at: Option<i64>,
    pub expires_at: i64,
    /// The session's user is active.
    pub user_active: bool,
}

/// Whether a session may still be used (and written for) at `now`: not
/// revoked, not expired, its user active. A missing row may not.
pub fn session_active(session: Option<SessionState>, now: i64) -> bool {
    session.is_some_and(|s| s.revoked_at.is_none() && s.expires_at > now && s.user_active)
}

/// Whether a login whose password was checked against `verified_hash` may
/// open a session: the user's hash is still that one (no password change won
/// the race) and the user is still active.
pub fn may_open_session(current: Option<(&str, bool)>, verified_hash: &str) -> bool {
    current.is_some_and(|(hash, active)| hash == verified_hash && active)
}

/// What presenting a refresh token found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presented {
    /// It is the current token of this session.
    Current {
        session_id: String,
        user_id: String,
        state: SessionState,
        absolute_expires_at: i64,
    },
    /// It was exchanged already, for this session, at `spent_at`.
    Spent {
        session_id: String,
        user_id: String,
        spent_at: i64,
    },
    /// Nobody knows it.
    Unknown,
}

/// What to do about a presented refresh token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exchange {
    /// Replace it by the new token; the session now expires at `expires_at`.
    Rotate {
        session_id: String,
        user_id: String,
        expires_at: i64,
    },
    /// A spent token came back: someone holds a copy. Revoke the session.
    RevokeForReuse { session_id: String, user_id: String },
    /// Refuse, changing nothing.
    Refuse,
}

/// The rotation rule: a current token of an active session rotates, sliding
/// the session's expiry by `refresh_ttl_ms` but never past its absolute end;
/// a spent one revokes its session, unless it was spent within `grace_ms`
/// (two tabs refreshing at once: the slower one is refused, nobody is logged
/// out); anything else is refused.
pub fn exchange(presented: Presented, now: i64, refresh_ttl_ms: i64, grace_ms: i64) -> Exchange {
    match presented {
        Presented::Current {
            session_id,
            user_id,
            state,
            absolute_expires_at,
        } if session_active(Some(state), now) => Exchange::Rotate {
            session_id,
            user_id,
            expires_at: now.saturating_add(refresh_ttl_ms).min(absolute_expires_at),
        },
        Presented::Spent {
            session_id,
            user_id,
            spent_at,
        } if now.saturating_sub(spent_at) >= grace_ms => Exchange::RevokeForReuse {
            session_id,
            user_id,
        },
        Presented::Current { .. } | Presented::Spent { .. } | Presented::Unknown => {
            Exchange::Refuse
        }
    }
}

/// What a revocation writes to the invalidation log, given the sessions it
/// revoked: one entry per session, or one for the whole user (which also
/// drops the cached profile) when every session went.
pub fn invalidations(scope: &Revoke, revoked: Vec<String>) -> Vec<Option<String>> {
    match scope {
        Revoke::All => vec![None],
        Revoke::Session(_) | Revoke::AllBut(_) => revoked.into_iter().map(Some).collect(),
    }
}

/// What a purge at `now` deletes: sessions expired by then, sessions revoked
/// (and log entries written) before `revoked_before`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub expired_before: i64,
    pub revoked_before: i64,
}

pub fn retention(now: i64) -> Retention {
    Retention {
        expired_before: now,
        revoked_before: now.saturating_sub(KEEP_REVOKED_MS),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIVE: SessionState = SessionState {
        revoked_at: None,
        expires_at: 10_000,
        user_active: true,
    };

    #[test]
    fn a_session_is_active_only_unrevoked_unexpired_and_with_an_active_user() {
        assert!(session_active(Some(LIVE), 9_999));
        assert!(!session_active(Some(LIVE), 10_000), "expired");
        let revoked = SessionState {
            revoked_at: Some(5),
            ..LIVE
        };
        assert!(!session_active(Some(revoked), 0));
        let deactivated = SessionState {
            user_active: false,
            ..LIVE
        };
        assert!(!session_active(Some(deactivated), 0));
        assert!(!session_active(None, 0));
    }

    #[test]
    fn logins_open_sessions_only_against_the_hash_they_verified() {
        assert!(may_open_session(Some(("$h1", true)), "$h1"));
        assert!(
            !may_open_session(Some(("$h2", true)), "$h1"),
            "changed meanwhile"
        );
        assert!(
            !may_open_session(Some(("$h1", false)), "$h1"),
            "deactivated"
        );
        assert!(!may_open_session(None, "$h1"));
    }

    fn current(state: SessionState) -> Presented {
        Presented::Current {
            session_id: "s".into(),
            user_id: "u".into(),
            state,
            absolute_expires_at: 20_000,
        }
    }

    #[test]
    fn current_tokens_rotate_and_slide_but_never_past_the_absolute_end() {
        assert_eq!(
            exchange(current(LIVE), 1_000, 5_000, 0),
            Exchange::Rotate {
                session_id: "s".into(),
                user_id: "u".into(),
                expires_at: 6_000
            }
        );
        let late = exchange(current(LIVE), 9_000, 50_000, 0);
        assert!(matches!(
            late,
            Exchange::Rotate {
                expires_at: 20_000,
                ..
            }
        ));
        assert_eq!(exchange(current(LIVE), 10_000, 5_000, 0), Exchange::Refuse);
    }

    #[test]
    fn spent_tokens_revoke_after_the_grace_and_unknown_ones_are_refused() {
        let spent = || Presented::Spent {
            session_id: "s".into(),
            user_id: "u".into(),
            spent_at: 1_000,
        };
        let revoke = Exchange::RevokeForReuse {
            session_id: "s".into(),
            user_id: "u".into(),
        };
        assert_eq!(
            exchange(spent(), 10_999, 1, 10_000),
            Exchange::Refuse,
            "within the grace"
        );
        assert_eq!(exchange(spent(), 11_000, 1, 10_000), revoke, "after it");
        assert_eq!(exchange(spent(), 1_000, 1, 0), revoke, "no grace at all");
        assert_eq!(exchange(Presented::Unknown, 0, 1, 0), Exchange::Refuse);
    }

    #[test]
    fn revocations_log_one_entry_per_session_or_one_for_the_user() {
        let ids = || vec!["a".to_owned(), "b".to_owned()];
        assert_eq!(invalidations(&Revoke::All, ids()), vec![None]);
        assert_eq!(
            invalidations(&Revoke::AllBut("c".into()), ids()),
            vec![Some("a".into()), Some("b".into())]
        );
        assert!(invalidations(&Revoke::Session("a".into()), vec![]).is_empty());
    }

    #[test]
    fn purges_keep_revoked_sessions_an_hour() {
        assert_eq!(
            retention(KEEP_REVOKED_MS + 5),
            Retention {
                expired_before: KEEP_REVOKED_MS + 5,
                revoked_before: 5
            }
        );
    }
}
