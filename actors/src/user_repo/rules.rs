//! The session and email rules both stores apply, once: each store reads rows with its
//! own SQL, asks these functions what the rows mean, and writes the answer
//! with its own SQL. Nothing here touches a database or a clock.

use crate::error::Error;
use crate::model::{AdminChange, LinkPurpose, MailOutcome, Revoke};

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

/// Whether a write may be made for a caller whose session is `session`
/// (with its last password check, Unix ms): it must be active, and for a
/// privileged write (`fresh_since`) that check no older than `fresh_since`
/// (no leeway).
pub fn may_write_as(
    session: Option<(SessionState, i64)>,
    fresh_since: Option<i64>,
    now: i64,
) -> Result<(), Error> {
    let auth_time = match session {
        Some((s, auth_time)) if session_active(Some(s), now) => auth_time,
        _ => return Err(Error::SessionRevoked),
    };
    match fresh_since {
        Some(since) if auth_time < since => Err(Error::ReauthRequired),
        _ => Ok(()),
    }
}

/// Wrong codes a login challenge survives; the one after kills it.
pub const CHALLENGE_TRIES: i64 = 5;

/// A login challenge as stored, for [`challenge_usable`].
#[derive(Debug, Clone, Copy)]
pub struct ChallengeState {
    pub expires_at: i64,
    pub failures: i64,
    pub used: bool,
}

/// Whether a code may still be tried against a login challenge at `now`.
pub fn challenge_usable(challenge: Option<ChallengeState>, now: i64) -> bool {
    challenge.is_some_and(|c| !c.used && c.expires_at > now && c.failures < CHALLENGE_TRIES)
}

/// Whether a wrong code kills a challenge that was `before` it at `now`.
pub fn killed_by_wrong_code(before: ChallengeState, now: i64) -> bool {
    let after = ChallengeState {
        failures: before.failures.saturating_add(1),
        ..before
    };
    !challenge_usable(Some(after), now)
}

/// Whether the TOTP key `presented` may confirm the enrolment: no second
/// factor is on yet, and it is still the pending key (not one a newer
/// enrolment replaced).
pub fn may_confirm_totp(
    enabled: bool,
    pending: Option<&[u8]>,
    presented: &[u8],
) -> Result<(), Error> {
    if enabled {
        return Err(Error::MfaState { enabled: true });
    }
    match pending == Some(presented) {
        true => Ok(()),
        false => Err(Error::SecondFactorRefused),
    }
}

/// Whether a change that needs the second factor and a code may be made:
/// the factor is on, and the code was spent (a spend never succeeds while it
/// is off).
pub fn may_change_with_code(enabled: bool, spent: bool) -> Result<(), Error> {
    match (enabled, spent) {
        (false, _) => Err(Error::MfaState { enabled: false }),
        (true, false) => Err(Error::SecondFactorRefused),
        (true, true) => Ok(()),
    }
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

/// Whether an operator's change revokes every session of the user (else it
/// only makes cached views of them stale).
pub fn ends_sessions(change: &AdminChange) -> bool {
    match change {
        AdminChange::Deactivate | AdminChange::Logout | AdminChange::Erase => true,
        AdminChange::Reactivate | AdminChange::SetRoles(_) | AdminChange::RemoveMfa { .. } => false,
    }
}

/// What a purge at `now` deletes: sessions expired by then, sessions revoked
/// (and log entries written) before `revoked_before`, mail records before
/// `mail_before`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    pub expired_before: i64,
    pub revoked_before: i64,
    /// Email links expired or used, and messages sent or given up, before then.
    pub mail_before: i64,
}

pub fn retention(now: i64) -> Retention {
    Retention {
        expired_before: now,
        revoked_before: now.saturating_sub(KEEP_REVOKED_MS),
        mail_before: now.saturating_sub(KEEP_MAIL_MS),
    }
}

/// How long used and expired email links, and the metadata of sent and
/// given-up messages, are kept before purging.
pub const KEEP_MAIL_MS: i64 = 7 * 86_400_000;

/// A link row as the rules need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    pub used_at: Option<i64>,
    pub expires_at: i64,
    /// The link's user is active.
    pub user_active: bool,
    /// The link was sent to the address the account has now.
    pub to_current_email: bool,
}

/// Whether a link of `purpose` may be followed at `now`: never used, not
/// expired, its user active; a reset link only while the account still has
/// the address it was sent to (an old mailbox opens nothing once the email
/// changed). A verify link may be for the pending address.
pub fn link_usable(link: &LinkState, purpose: LinkPurpose, now: i64) -> bool {
    link.used_at.is_none()
        && link.expires_at > now
        && link.user_active
        && (purpose != LinkPurpose::Reset || link.to_current_email)
}

/// How long a verification link stands before a refused login sends
/// another (each new link voids the one the user may be about to click).
pub const RESEND_AFTER_MS: i64 = 10 * 60 * 1_000;

/// Whether a refused login sends a new verification link, when the newest
/// usable one was made at `newest` (`None`: there is none).
pub fn resend_due(newest: Option<i64>, now: i64) -> bool {
    newest.is_none_or(|made| now.saturating_sub(made) >= RESEND_AFTER_MS)
}

/// Whether one more capped message may go to an address that had `sent`
/// capped messages in the last hour.
pub fn under_cap(sent: u64, cap: Option<u32>) -> bool {
    cap.is_none_or(|cap| sent < u64::from(cap))
}

/// What following a verify link for `address` does to an account whose
/// email is `email`, with `pending` waiting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confirm {
    /// The pending address becomes the email, verified.
    ApplyPending,
    /// The current email is now verified.
    VerifyCurrent,
    /// The link is for an address the account no longer has or waits for.
    Stale,
}

pub fn confirm(address: &str, email: &str, pending: Option<&str>) -> Confirm {
    if pending.is_some_and(|p| p.eq_ignore_ascii_case(address)) {
        Confirm::ApplyPending
    } else if email.eq_ignore_ascii_case(address) {
        Confirm::VerifyCurrent
    } else {
        Confirm::Stale
    }
}

/// What an email change does to an account whose email is `current`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmailChange<'a> {
    /// No new address (none asked, or the same one in another case).
    Unchanged,
    /// The address waits as `pending_email` for its link.
    Pending(&'a str),
    /// The address replaces the email at once (verification off), unverified.
    Replace(&'a str),
}

pub fn email_change<'a>(
    current: &str,
    requested: Option<&'a str>,
    verifies: bool,
) -> EmailChange<'a> {
    match requested.filter(|e| !e.eq_ignore_ascii_case(current)) {
        None => EmailChange::Unchanged,
        Some(address) if verifies => EmailChange::Pending(address),
        Some(address) => EmailChange::Replace(address),
    }
}

/// An outbox row after a try, as both stores write it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finished<'a> {
    pub state: &'static str,
    /// A message to try again keeps its body; a sent or given-up one loses it.
    pub keeps_body: bool,
    pub next_attempt_at: Option<i64>,
    pub error: Option<&'a str>,
}

pub fn finished(outcome: &MailOutcome) -> Finished<'_> {
    match outcome {
        MailOutcome::Sent => Finished {
            state: "sent",
            keeps_body: false,
            next_attempt_at: None,
            error: None,
        },
        MailOutcome::Retry { at, error } => Finished {
            state: "pending",
            keeps_body: true,
            next_attempt_at: Some(*at),
            error: Some(error),
        },
        MailOutcome::Dead { error } => Finished {
            state: "dead",
            keeps_body: false,
            next_attempt_at: None,
            error: Some(error),
        },
    }
}

/// The address a verification link is for now: the pending one if any,
/// else the current one unless it is verified already (then: nothing to do).
pub fn to_verify<'a>(email: &'a str, verified: bool, pending: Option<&'a str>) -> Option<&'a str> {
    pending.or((!verified).then_some(email))
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
    fn privileged_writes_need_a_password_check_no_older_than_the_window() {
        let checked_at = 4_000;
        let session = Some((LIVE, checked_at));
        assert!(may_write_as(session, None, 9_000).is_ok(), "not privileged");
        assert!(
            may_write_as(session, Some(4_000), 9_000).is_ok(),
            "just fresh"
        );
        assert!(matches!(
            may_write_as(session, Some(4_001), 9_000),
            Err(Error::ReauthRequired)
        ));
        // A dead session is refused as such, however fresh.
        assert!(matches!(
            may_write_as(session, Some(0), 10_000),
            Err(Error::SessionRevoked)
        ));
        assert!(matches!(
            may_write_as(None, None, 0),
            Err(Error::SessionRevoked)
        ));
    }

    #[test]
    fn a_challenge_takes_five_wrong_codes_and_one_right_one() {
        let fresh = ChallengeState {
            expires_at: 300_000,
            failures: 0,
            used: false,
        };
        assert!(challenge_usable(Some(fresh), 299_999));
        assert!(!challenge_usable(Some(fresh), 300_000), "expired");
        let tried = ChallengeState {
            failures: CHALLENGE_TRIES - 1,
            ..fresh
        };
        assert!(challenge_usable(Some(tried), 0), "a fifth try");
        let dead = ChallengeState {
            failures: CHALLENGE_TRIES,
            ..fresh
        };
        assert!(!challenge_usable(Some(dead), 0));
        let used = ChallengeState {
            used: true,
            ..fresh
        };
        assert!(!challenge_usable(Some(used), 0));
        assert!(!challenge_usable(None, 0));
        assert!(!killed_by_wrong_code(fresh, 0));
        assert!(killed_by_wrong_code(tried, 0), "the fifth kills it");
    }

    #[test]
    fn second_factor_changes_need_it_on_and_a_spent_code() {
        assert!(may_confirm_totp(false, Some(b"k"), b"k").is_ok());
        assert!(matches!(
            may_confirm_totp(true, Some(b"k"), b"k"),
            Err(Error::MfaState { enabled: true })
        ));
        for pending in [None, Some(&b"newer"[..])] {
            assert!(matches!(
                may_confirm_totp(false, pending, b"k"),
                Err(Error::SecondFactorRefused)
            ));
        }
        assert!(may_change_with_code(true, true).is_ok());
        assert!(matches!(
            may_change_with_code(true, false),
            Err(Error::SecondFactorRefused)
        ));
        assert!(matches!(
            may_change_with_code(false, false),
            Err(Error::MfaState { enabled: false })
        ));
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
    fn purges_keep_revoked_sessions_an_hour_and_mail_records_a_week() {
        let now = KEEP_MAIL_MS + 5;
        assert_eq!(
            retention(now),
            Retention {
                expired_before: now,
                revoked_before: now - KEEP_REVOKED_MS,
                mail_before: 5,
            }
        );
    }

    #[test]
    fn links_are_usable_once_before_expiry_for_active_users() {
        let fresh = LinkState {
            used_at: None,
            expires_at: 10,
            user_active: true,
            to_current_email: true,
        };
        for purpose in [LinkPurpose::Verify, LinkPurpose::Reset] {
            assert!(link_usable(&fresh, purpose, 9));
            assert!(!link_usable(&fresh, purpose, 10), "expired");
            let used = LinkState {
                used_at: Some(1),
                ..fresh.clone()
            };
            assert!(!link_usable(&used, purpose, 2));
            let gone = LinkState {
                user_active: false,
                ..fresh.clone()
            };
            assert!(!link_usable(&gone, purpose, 2));
        }
        let elsewhere = LinkState {
            to_current_email: false,
            ..fresh
        };
        assert!(
            !link_usable(&elsewhere, LinkPurpose::Reset, 2),
            "sent to an old address"
        );
        assert!(
            link_usable(&elsewhere, LinkPurpose::Verify, 2),
            "a pending address"
        );
    }

    #[test]
    fn a_refused_login_resends_only_when_no_recent_link_stands() {
        assert!(resend_due(None, 5));
        assert!(!resend_due(Some(1_000), 1_000 + RESEND_AFTER_MS - 1));
        assert!(resend_due(Some(1_000), 1_000 + RESEND_AFTER_MS));
    }

    #[test]
    fn the_cap_counts_capped_messages_and_notices_are_exempt() {
        assert!(under_cap(4, Some(5)));
        assert!(!under_cap(5, Some(5)));
        assert!(under_cap(1_000, None));
    }

    #[test]
    fn an_email_change_waits_replaces_or_does_nothing() {
        assert_eq!(email_change("a@x.io", None, true), EmailChange::Unchanged);
        assert_eq!(
            email_change("a@x.io", Some("A@x.io"), true),
            EmailChange::Unchanged
        );
        assert_eq!(
            email_change("a@x.io", Some("b@x.io"), true),
            EmailChange::Pending("b@x.io")
        );
        assert_eq!(
            email_change("a@x.io", Some("b@x.io"), false),
            EmailChange::Replace("b@x.io")
        );
    }

    #[test]
    fn only_a_retry_keeps_the_body_and_its_due_time() {
        let retry = MailOutcome::Retry {
            at: 7,
            error: "down".into(),
        };
        assert_eq!(
            finished(&retry),
            Finished {
                state: "pending",
                keeps_body: true,
                next_attempt_at: Some(7),
                error: Some("down")
            }
        );
        assert!(!finished(&MailOutcome::Sent).keeps_body);
        let dead = MailOutcome::Dead { error: "no".into() };
        let dead = finished(&dead);
        assert_eq!(
            (dead.state, dead.keeps_body, dead.error),
            ("dead", false, Some("no"))
        );
    }

    #[test]
    fn a_verify_link_applies_the_pending_address_or_verifies_the_current_one() {
        assert_eq!(
            confirm("new@x.io", "old@x.io", Some("new@x.io")),
            Confirm::ApplyPending
        );
        assert_eq!(
            confirm("old@x.io", "old@x.io", Some("new@x.io")),
            Confirm::VerifyCurrent
        );
        assert_eq!(
            confirm("old@x.io", "old@x.io", None),
            Confirm::VerifyCurrent
        );
        assert_eq!(
            confirm("gone@x.io", "old@x.io", Some("new@x.io")),
            Confirm::Stale
        );
        assert_eq!(to_verify("a@x.io", false, None), Some("a@x.io"));
        assert_eq!(to_verify("a@x.io", true, None), None);
        assert_eq!(to_verify("a@x.io", true, Some("b@x.io")), Some("b@x.io"));
    }
}
