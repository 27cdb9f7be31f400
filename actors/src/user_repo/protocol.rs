//! The repository's operations, listed once: from this list come the
//! [`Store`] trait both stores implement, the typed [`Read`] and [`Write`]
//! messages the `UserRepo` accepts (each carrying its own reply port), their
//! dispatch onto the store, and the methods of [`Repo`], the callers'
//! handle. Adding an operation is one line here plus its SQL in each store.

use crate::audit::{Entry, Event, Query};
use crate::error::Result;
use crate::model::{
    ActiveSession, AdminChange, AdminKey, Challenge, ChallengeOutcome, Claimed, Credentials,
    Invalidation, LinkMail, LinkPurpose, MailOutcome, NewAdminKey, NewSession, NewUser, Outgoing,
    Principal, ProfileChange, Proof, RefreshOwner, Revoke, Rotation, SecondFactor, Session, User,
    UserRecord, UserSelect,
};
use crate::token_issuer::keys::{NewKey, StoredKey};
use crate::token_issuer::ring::{Change, KeyOp, RingPolicy};

/// Outcomes of writes that made cached views stale, so that the `UserRepo`
/// can drop them before the caller hears of the write.
pub trait Invalidates {
    fn invalidations(&self) -> &[Invalidation] {
        &[]
    }
}

impl Invalidates for () {}
impl Invalidates for bool {}
impl Invalidates for User {}
impl Invalidates for Vec<Claimed> {}
impl Invalidates for Option<Session> {}

impl Invalidates for Vec<Change> {}

impl Invalidates for ChallengeOutcome {}

impl Invalidates for Vec<Invalidation> {
    fn invalidations(&self) -> &[Invalidation] {
        self
    }
}

impl Invalidates for (User, Vec<Invalidation>) {
    fn invalidations(&self) -> &[Invalidation] {
        &self.1
    }
}

impl Invalidates for Option<Vec<Invalidation>> {
    fn invalidations(&self) -> &[Invalidation] {
        self.as_deref().unwrap_or_default()
    }
}

impl<T> Invalidates for Option<(T, Vec<Invalidation>)> {
    fn invalidations(&self) -> &[Invalidation] {
        self.as_ref().map_or(&[], |(_, changes)| changes)
    }
}

impl Invalidates for Rotation {
    fn invalidations(&self) -> &[Invalidation] {
        match self {
            Rotation::Reused { changes, .. } => changes,
            Rotation::Rotated { .. } | Rotation::Invalid => &[],
        }
    }
}

macro_rules! repository {
    (
        reads { $( $(#[$rdoc:meta])* $RV:ident => fn $rname:ident ( $($rarg:ident : $rty:ty),* $(,)? ) -> $rout:ty; )* }
        writes { $( $(#[$wdoc:meta])* $WV:ident => fn $wname:ident ( $($warg:ident : $wty:ty),* $(,)? ) -> $wout:ty; )* }
        internal { $( $(#[$idoc:meta])* fn $iname:ident ( $($iarg:ident : $ity:ty),* $(,)? ) -> $iout:ty; )* }
    ) => {
        /// Where users and sessions live. Each method is one statement or one
        /// transaction. Implementations map their driver's errors onto
        /// [`Error`](crate::Error): unique violations on email or username become
        /// `Conflict` (a domain outcome), busy or unreachable databases become
        /// `Unavailable` (what the breaker counts), and nothing of the driver's
        /// text ever leaves as more than a log line.
        #[async_trait::async_trait]
        pub trait Store: Send + Sync + 'static {
            $( $(#[$rdoc])* async fn $rname(&self, $($rarg: $rty),*) -> Result<$rout>; )*
            $( $(#[$wdoc])* async fn $wname(&self, $($warg: $wty),*) -> Result<$wout>; )*
            $( $(#[$idoc])* async fn $iname(&self, $($iarg: $ity),*) -> Result<$iout>; )*
        }

        /// A read, run concurrently with other reads.
        pub enum Read {
            $( $RV { $($rarg: $rty,)* reply: ractor::RpcReplyPort<Result<$rout>> }, )*
        }

        /// A write, run alone, after every write queued before it.
        pub enum Write {
            $( $WV { $($warg: $wty,)* reply: ractor::RpcReplyPort<Result<$wout>> }, )*
        }

        impl Read {
            pub(super) async fn run(self, store: &dyn Store) {
                match self {
                    $( Read::$RV { $($rarg,)* reply } => {
                        let _ = reply.send(store.$rname($($rarg),*).await);
                    } )*
                }
            }
        }

        impl Write {
            /// The caller gave up waiting: nobody would see this write.
            pub(super) fn abandoned(&self) -> bool {
                match self {
                    $( Write::$WV { reply, .. } => reply.is_closed(), )*
                }
            }

            /// Runs the write, drops what it made stale from `cache`, then answers.
            pub(super) async fn run(self, store: &dyn Store, cache: &super::cache::SessionCache) {
                match self {
                    $( Write::$WV { $($warg,)* reply } => {
                        let done = store.$wname($($warg),*).await;
                        if let Ok(outcome) = &done {
                            for change in outcome.invalidations() {
                                cache.invalidate(change);
                            }
                        }
                        let _ = reply.send(done);
                    } )*
                }
            }
        }

        impl super::Repo {
            $(
                $(#[$rdoc])*
                pub async fn $rname(&self, $($rarg: $rty),*) -> Result<$rout> {
                    self.ask(|reply| super::UserRepoMsg::Read(Read::$RV { $($rarg,)* reply })).await
                }
            )*
            $(
                $(#[$wdoc])*
                pub async fn $wname(&self, $($warg: $wty),*) -> Result<$wout> {
                    self.ask(|reply| super::UserRepoMsg::Write(Box::new(Write::$WV { $($warg,)* reply }))).await
                }
            )*
        }
    };
}

repository! {
    reads {
        /// The user whose username or email is `login` (ignoring case), with their hash.
        Credentials => fn credentials(login: String) -> Option<Credentials>;
        /// A user by id with their hash (for checking the current password).
        CredentialsById => fn credentials_by_id(user_id: String) -> Option<Credentials>;
        /// Whom a current refresh token belongs to, if anyone.
        RefreshOwner => fn refresh_owner(digest: String) -> Option<RefreshOwner>;
        /// The user's active sessions, newest first.
        Sessions => fn sessions(user_id: String, now: i64) -> Vec<Session>;
        /// Every signing key of the ring, with its sealed private half.
        KeyRing => fn key_ring() -> Vec<StoredKey>;
        /// The active user a usable link (by digest) of `purpose` belongs to.
        LinkOwner => fn link_owner(digest: String, purpose: LinkPurpose, now: i64) -> Option<User>;
        /// Messages waiting to be sent.
        OutboxPending => fn outbox_pending() -> u64;
        /// A user's second factor (the sealed TOTP secret, pending or on).
        SecondFactor => fn second_factor(user_id: String) -> Option<SecondFactor>;
        /// A login challenge (by digest) a code may still be tried against.
        Challenge => fn challenge(digest: String, now: i64) -> Option<Challenge>;
        /// The admin keys that are not revoked, oldest first.
        AdminKeys => fn admin_keys() -> Vec<AdminKey>;
        /// An admin key that is not revoked, with its digest.
        AdminKeyById => fn admin_key(id: String) -> Option<(AdminKey, String)>;
        /// Users as operators see them, by id; sessions count as active at `now`.
        Users => fn users(select: UserSelect, now: i64) -> Vec<UserRecord>;
        /// Stored security events as `query` asks, newest first.
        Audit => fn audit(query: Query) -> Vec<Entry>;
    }
    writes {
        /// Inserts a user, and its verification link and message when given;
        /// `Conflict` when the email or username is taken (ignoring case).
        ///
        /// Every write given `events` stores them in its transaction when it
        /// takes effect (for the user it changed, where they name none).
        CreateUser => fn create_user(user: NewUser, events: Vec<Event>) -> User;
        /// Creates a session for a login whose password was checked against
        /// `verified_hash`; `None`, and nothing written, when the user's hash is no
        /// longer that one or the user was deactivated meanwhile (a password
        /// change won the race). When `rehash` is given, it replaces the hash in
        /// the same transaction (parameters were upgraded).
        CreateSession => fn create_session(session: NewSession, verified_hash: String, rehash: Option<String>, events: Vec<Event>) -> Option<Session>;
        /// Exchanges a refresh token (by digest) for a new one, atomically, by
        /// the rotation rule: rotates a current token (sliding the session's
        /// expiry by `refresh_ttl_ms`), revokes the session of a spent one
        /// unless it was spent less than `grace_ms` ago.
        RotateRefresh => fn rotate_refresh(old_digest: String, new_digest: String, now: i64, refresh_ttl_ms: i64, grace_ms: i64) -> Rotation;
        /// Revokes `by`'s user's sessions in `scope`; what caches must drop, empty
        /// when nothing matched. Like every write made for a [`Principal`], it
        /// fails with `SessionRevoked`, writing nothing, unless `by`'s session is
        /// active inside the same transaction.
        Revoke => fn revoke(by: Principal, scope: Revoke, now: i64, events: Vec<Event>) -> Vec<Invalidation>;
        /// Changes email and/or username; `Conflict` when taken. A changed
        /// email sends `change.mail`: with a link, the new address waits as
        /// `pending_email` until it is followed.
        UpdateProfile => fn update_profile(by: Principal, change: ProfileChange, now: i64, events: Vec<Event>) -> (User, Vec<Invalidation>);
        /// Replaces the password hash, if it is still `verified_hash` (else
        /// `WrongCurrentPassword`: another change won), and revokes every session
        /// but `by`'s; `notice` goes to the account's address.
        SetPassword => fn set_password(by: Principal, verified_hash: String, new_hash: String, notice: Option<Outgoing>, now: i64, events: Vec<Event>) -> Vec<Invalidation>;
        /// A new verification link for `by`'s pending address, else its
        /// unverified one (voiding older ones); `false`, writing nothing, when
        /// there is nothing to verify or the address is over its hourly cap.
        RequestVerification => fn request_verification(by: Principal, link: LinkMail, now: i64) -> bool;
        /// As `RequestVerification`, for the active user `user_id` who has no
        /// session (a login refused for its unverified address), unless a
        /// usable link was made in the last [`RESEND_AFTER_MS`](super::rules::RESEND_AFTER_MS).
        ResendVerification => fn resend_verification(user_id: String, link: LinkMail, now: i64) -> bool;
        /// A reset link for the active account whose email is `email`
        /// (voiding older ones); `false`, writing nothing, when there is none
        /// or the address is over its hourly cap.
        RequestReset => fn request_reset(email: String, link: LinkMail, now: i64, events: Vec<Event>) -> bool;
        /// Follows a verify link: the pending address becomes the email, or the
        /// email is verified. `None` when the link is not usable or is for an
        /// address the account no longer has; `Conflict` when the pending
        /// address was taken meanwhile (the link stays usable).
        ConfirmEmail => fn confirm_email(digest: String, now: i64, events: Vec<Event>) -> Option<(User, Vec<Invalidation>)>;
        /// Follows a reset link: the password becomes `new_hash`, every session
        /// is revoked, every reset link of the user is used up, and `notice`
        /// goes out. `None`, writing nothing, when the link is not usable.
        ResetPassword => fn reset_password(digest: String, new_hash: String, notice: Outgoing, now: i64, events: Vec<Event>) -> Option<(String, Vec<Invalidation>)>;
        /// Leases up to `limit` due messages to `owner` until `now + lease_ms`.
        ClaimMail => fn claim_mail(owner: String, now: i64, lease_ms: i64, limit: u32) -> Vec<Claimed>;
        /// Records how a try of a message leased to `owner` ended; `false` when
        /// the lease was lost meanwhile (another sender has it).
        FinishMail => fn finish_mail(id: String, owner: String, outcome: MailOutcome, now: i64) -> bool;
        /// Soft-deletes the user and revokes all their sessions.
        Deactivate => fn deactivate(by: Principal, now: i64, events: Vec<Event>) -> Vec<Invalidation>;
        /// Records the second step of a login whose password was right.
        OpenChallenge => fn open_challenge(challenge: Challenge) -> ();
        /// Tries `proof` (`None`: a code that was plainly wrong) against a
        /// usable challenge: spends it and the code, and creates `session`,
        /// if both are good and the account is as it was when the challenge
        /// was opened; else counts a failure (the fifth kills it). `events`
        /// are stored only with a completed login.
        CompleteChallenge => fn complete_challenge(digest: String, proof: Option<Proof>, session: NewSession, events: Vec<Event>) -> ChallengeOutcome;
        /// Starts (or restarts) a TOTP enrolment with the sealed secret;
        /// `MfaState` when a second factor is on already.
        BeginTotp => fn begin_totp(by: Principal, sealed: Vec<u8>, now: i64) -> ();
        /// Turns the pending enrolment `sealed` on, with the first code's
        /// step and the recovery codes' digests; `SecondFactorRefused` when
        /// that enrolment is no longer the pending one, `MfaState` when on.
        ConfirmTotp => fn confirm_totp(by: Principal, sealed: Vec<u8>, step: i64, codes: Vec<String>, now: i64, events: Vec<Event>) -> Vec<Invalidation>;
        /// Turns the second factor off (secret and recovery codes go, open
        /// challenges die), spending `proof` and queueing `notice`. `MfaState`
        /// when off, `SecondFactorRefused` when the proof does not spend
        /// (`None`: the code was plainly wrong).
        DisableMfa => fn disable_mfa(by: Principal, proof: Option<Proof>, notice: Outgoing, now: i64, events: Vec<Event>) -> Vec<Invalidation>;
        /// Replaces the recovery codes with `codes` (digests), spending `proof`.
        ReplaceRecoveryCodes => fn replace_recovery_codes(by: Principal, proof: Option<Proof>, codes: Vec<String>, now: i64) -> ();
        /// Renews `by`'s session's password check to `now`, if the hash is
        /// still `verified_hash` (else `WrongCurrentPassword`) and, with a
        /// second factor on, `proof` spends (else `SecondFactorRefused`).
        Reauthenticate => fn reauthenticate(by: Principal, verified_hash: String, proof: Option<Proof>, now: i64) -> ();
        /// Changes `user_id` as an operator asked; `None`, writing nothing,
        /// when there is no such user. An erasure leaves of the user's
        /// stored events only the id, the event and its time.
        ChangeUser => fn change_user(user_id: String, change: AdminChange, now: i64, events: Vec<Event>) -> Option<Vec<Invalidation>>;
        /// Stores a new admin key.
        CreateAdminKey => fn create_admin_key(key: NewAdminKey, events: Vec<Event>) -> ();
        /// Revokes an admin key; `false` when there is no such key not yet revoked.
        RevokeAdminKey => fn revoke_admin_key(id: String, now: i64, events: Vec<Event>) -> bool;
        /// Changes the key ring as `op` plans it, under a lock that makes
        /// concurrent instances take turns; `fresh` is the key to add if the
        /// plan creates one. What was changed (nothing, often).
        ChangeKeys => fn change_keys(op: KeyOp, policy: RingPolicy, fresh: NewKey, now: i64) -> Vec<Change>;
    }
    internal {
        /// The session if it is neither revoked nor expired and its user is active.
        fn active_session(session_id: String, now: i64) -> Option<ActiveSession>;
        /// A user by id, active or not.
        fn user(user_id: String) -> Option<User>;
        /// Invalidations recorded after `cursor`, and the cursor to ask with next.
        /// A negative `cursor` means "from now on": nothing, and the current head.
        fn invalidations_since(cursor: i64) -> (Vec<Invalidation>, i64);
        /// Records when sessions were used (session id, Unix ms), in one transaction.
        fn touch_sessions(touches: Vec<(String, i64)>) -> ();
        /// Deletes expired sessions, long-revoked ones and old invalidations, by
        /// the retention rule, and stored events from before `events_before`.
        fn purge(now: i64, events_before: i64) -> u64;
        /// Stores security events that came with no write, in one transaction.
        fn append_events(events: Vec<Event>) -> ();
        /// Flushes everything to durable storage; called once when the repository stops.
        fn close() -> ();
    }
}
