//! The embedded SQLite store: one write connection, a pool of readers.
//!
//! The database runs in WAL mode with `synchronous = FULL`, so every
//! committed write survives a crash of the process or the machine, and readers
//! never wait for the writer. Every call runs on a blocking thread. The
//! `UserRepo` actor makes sure only one write is in flight at a time (the
//! mutex only hands the write connection to that blocking thread), and
//! writes take the lock up front (`BEGIN IMMEDIATE`) so that a busy database
//! waits `busy_timeout_ms` and then fails cleanly instead of deadlocking.
//! What the rows mean is decided by [`super::rules`], as for PostgreSQL.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::{Connection, ErrorCode, OptionalExtension, Row, TransactionBehavior, params};
use rusqlite_migration::{M, Migrations};

use super::protocol::Store;
use super::rules::{
    self, ChallengeState, Confirm, EmailChange, Exchange, LinkState, Presented, SessionState,
};
use super::store::{
    AFTER_USER, DatabaseSettings, HOUR_MS, USER_COLUMNS, cap_allows, json_list, roles_from,
};
use crate::audit::{Entry, Event, Query, details_from, details_text};
use crate::error::{Error, Result, Taken};
use crate::model::{
    ActiveSession, AdminChange, AdminKey, Challenge, ChallengeOutcome, Claimed, Credentials,
    Invalidation, LinkMail, LinkPurpose, MailOutcome, NewAdminKey, NewSession, NewUser, Outgoing,
    Principal, ProfileChange, Proof, RefreshOwner, Revoke, Rotation, SecondFactor, Session, User,
    UserRecord, UserSelect,
};
use crate::token_issuer::keys::{NewKey, StoredKey};
use crate::token_issuer::ring::{Change, KeyInfo, KeyOp, KeyState, RingPolicy};
use crate::token_issuer::token_digest;

/// The schema, one entry per version; never edit a released entry, append.
const MIGRATIONS: &[M<'static>] = &[
    M::up(include_str!("migrations/sqlite/001_initial.sql")),
    M::up(include_str!("migrations/sqlite/002_signing_keys.sql")),
    M::up(include_str!("migrations/sqlite/003_email.sql")),
    M::up(include_str!("migrations/sqlite/004_mfa.sql")),
    M::up(include_str!("migrations/sqlite/005_admin_keys.sql")),
    M::up(include_str!("migrations/sqlite/006_users_admin.sql")),
    M::up(include_str!("migrations/sqlite/007_audit.sql")),
];

pub struct SqliteStore {
    writer: Arc<Mutex<Connection>>,
    readers: r2d2::Pool<SqliteConnectionManager>,
}

fn pragmas(conn: &Connection, busy_timeout_ms: u64) -> rusqlite::Result<()> {
    conn.busy_timeout(Duration::from_millis(busy_timeout_ms))?;
    // secure_delete: what is deleted (an erased user) is overwritten, not
    // left in free pages of the file.
    conn.execute_batch(
        "PRAGMA foreign_keys = ON; PRAGMA synchronous = FULL; PRAGMA secure_delete = ON;",
    )
}

impl SqliteStore {
    /// Opens (creating if needed) the file, migrates it to the latest schema
    /// and opens the reader pool. Blocking: call it from a blocking thread.
    pub fn open(settings: &DatabaseSettings) -> Result<Self> {
        let path = &settings.path;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                Error::Unavailable(format!("cannot create {}: {e}", parent.display()))
            })?;
        }
        let busy = settings.busy_timeout_ms;
        let mut writer = Connection::open(path).map_err(classify)?;
        writer
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(classify)?;
        pragmas(&writer, busy).map_err(classify)?;
        migrate(&mut writer)?;

        let manager = SqliteConnectionManager::file(path).with_init(move |c| pragmas(c, busy));
        let readers = r2d2::Pool::builder()
            .max_size(settings.pool_size.max(1))
            .connection_timeout(Duration::from_millis(busy.max(250)))
            .build(manager)
            .map_err(|e| Error::Unavailable(format!("sqlite reader pool: {e}")))?;
        Ok(Self {
            writer: Arc::new(Mutex::new(writer)),
            readers,
        })
    }

    async fn read<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T> {
        let pool = self.readers.clone();
        blocking(move || {
            let conn = pool
                .get()
                .map_err(|e| Error::Unavailable(format!("sqlite reader pool: {e}")))?;
            work(&conn).map_err(classify)
        })
        .await
    }

    /// Runs `work` in an immediate transaction on the write connection.
    async fn write<T: Send + 'static>(
        &self,
        work: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T> {
        let writer = Arc::clone(&self.writer);
        blocking(move || {
            let mut conn = writer.lock();
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(classify)?;
            let out = work(&tx).map_err(classify)?;
            tx.commit().map_err(classify)?;
            Ok(out)
        })
        .await
    }

    /// Runs `work` in an immediate transaction, if `by`'s session is active
    /// (and, for a privileged write, fresh) inside it; `SessionRevoked` (or
    /// `ReauthRequired`), writing nothing, if not. `work` may refuse
    /// with a domain error of its own, and then writes nothing either.
    async fn write_as<T: Send + 'static>(
        &self,
        by: Principal,
        now: i64,
        work: impl FnOnce(&rusqlite::Transaction<'_>, &Principal) -> rusqlite::Result<Result<T>>
        + Send
        + 'static,
    ) -> Result<T> {
        self.write(move |tx| {
            let state = session_state(tx, &by.session_id, &by.user_id)?;
            if let Err(refused) = rules::may_write_as(state, by.fresh_since, now) {
                return Ok(Err(refused));
            }
            work(tx, &by)
        })
        .await?
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::Internal(format!("sqlite task failed: {e}")))?
}

/// Applies pending migrations. Two processes starting on one new file at the
/// same moment race here; the loser sees the winner's schema on its next try.
fn migrate(conn: &mut Connection) -> Result<()> {
    let migrations = Migrations::from_slice(MIGRATIONS);
    let mut last = None;
    for _ in 0..20 {
        match migrations.to_latest(conn) {
            Ok(()) => return Ok(()),
            Err(e) => last = Some(e),
        }
        // Start-up code on a blocking thread, before anything is served:
        // waiting for the other process to finish its migration is the point.
        std::thread::park_timeout(Duration::from_millis(50));
    }
    Err(Error::Unavailable(format!(
        "sqlite migration failed: {}",
        last.map(|e| e.to_string()).unwrap_or_default()
    )))
}

/// Maps SQLite's errors onto ours: constraint violations on the unique
/// indexes are domain outcomes, lock and I/O trouble is unavailability,
/// anything else is a bug.
fn classify(e: rusqlite::Error) -> Error {
    if let rusqlite::Error::SqliteFailure(failure, message) = &e {
        let message = message.as_deref().unwrap_or_default();
        match failure.code {
            ErrorCode::ConstraintViolation if message.contains("users_email_key") => {
                return Error::Conflict(Taken::Email);
            }
            ErrorCode::ConstraintViolation if message.contains("users_username_key") => {
                return Error::Conflict(Taken::Username);
            }
            ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::SystemIoFailure
            | ErrorCode::DiskFull
            | ErrorCode::CannotOpen
            | ErrorCode::OutOfMemory
            | ErrorCode::FileLockingProtocolFailed => {
                return Error::Unavailable(format!("sqlite: {e}"));
            }
            _ => {}
        }
    }
    Error::Internal(format!("sqlite: {e}"))
}

/// A session of `user_id` as the rules need it, with its last password
/// check, read inside `conn`.
fn session_state(
    conn: &Connection,
    session_id: &str,
    user_id: &str,
) -> rusqlite::Result<Option<(SessionState, i64)>> {
    conn.prepare_cached(
        "SELECT s.revoked_at, s.expires_at, u.is_active, s.auth_time
         FROM sessions s JOIN users u ON u.id = s.user_id
         WHERE s.id = ?1 AND s.user_id = ?2",
    )?
    .query_row(params![session_id, user_id], |r| {
        let state = SessionState {
            revoked_at: r.get(0)?,
            expires_at: r.get(1)?,
            user_active: r.get(2)?,
        };
        Ok((state, r.get(3)?))
    })
    .optional()
}

/// Spends a second-factor proof of `user_id` inside `tx`: a TOTP step
/// later than the last accepted one becomes the last, a recovery code is
/// used up. `false`, changing nothing, when it does not spend (no proof: a
/// code that was plainly wrong; a replay, a code used meanwhile, MFA off).
fn spend_proof(
    tx: &rusqlite::Transaction<'_>,
    user_id: &str,
    proof: Option<&Proof>,
    now: i64,
) -> rusqlite::Result<bool> {
    let spent = match proof {
        None => 0,
        Some(Proof::Totp { step }) => tx.execute(
            "UPDATE users SET totp_last_step = ?2, updated_at = ?3
             WHERE id = ?1 AND mfa_enabled = 1 AND coalesce(totp_last_step < ?2, 1)",
            params![user_id, step, now],
        )?,
        Some(Proof::Recovery { digest }) => tx.execute(
            "DELETE FROM recovery_codes WHERE user_id = ?1 AND digest = ?2
             AND EXISTS (SELECT 1 FROM users WHERE id = ?1 AND mfa_enabled = 1)",
            params![user_id, digest],
        )?,
    };
    Ok(spent == 1)
}

/// Replaces `user_id`'s recovery codes by `digests` inside `tx`.
fn store_recovery_codes(
    tx: &rusqlite::Transaction<'_>,
    user_id: &str,
    digests: &[String],
) -> rusqlite::Result<()> {
    tx.execute("DELETE FROM recovery_codes WHERE user_id = ?1", [user_id])?;
    let mut insert =
        tx.prepare_cached("INSERT INTO recovery_codes (user_id, digest) VALUES (?1, ?2)")?;
    for digest in digests {
        insert.execute(params![user_id, digest])?;
    }
    Ok(())
}

/// Inserts a session inside `tx`, if a login checked against `verified_hash`
/// may open it (the rule of [`rules::may_open_session`]).
fn insert_session(
    tx: &rusqlite::Transaction<'_>,
    s: NewSession,
    verified_hash: &str,
    rehash: Option<String>,
) -> rusqlite::Result<Option<Session>> {
    let current: Option<(String, bool)> = tx
        .query_row(
            "SELECT password_hash, is_active FROM users WHERE id = ?1",
            [&s.user_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let current = current
        .as_ref()
        .map(|(hash, active)| (hash.as_str(), *active));
    if !rules::may_open_session(current, verified_hash) {
        return Ok(None);
    }
    // A rehash (parameters were upgraded) replaces the hash in the same write.
    tx.execute(
        "UPDATE users SET last_login_at = ?2, password_hash = coalesce(?3, password_hash)
         WHERE id = ?1",
        params![s.user_id, s.now, rehash],
    )?;
    tx.execute(
        "INSERT INTO sessions (id, user_id, refresh_digest, created_at, last_used_at,
                               expires_at, absolute_expires_at, ip, user_agent,
                               auth_time, amr)
         VALUES (?1, ?2, ?3, ?4, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        params![
            s.id,
            s.user_id,
            s.refresh_digest,
            s.now,
            s.expires_at,
            s.absolute_expires_at,
            s.ip,
            s.user_agent,
            s.auth_time,
            json_list(&s.amr)
        ],
    )?;
    Ok(Some(s.opened()))
}

/// Revokes the sessions in `scope` inside `tx` and logs what caches must drop.
fn revoke_in(
    tx: &rusqlite::Transaction<'_>,
    user_id: &str,
    scope: &Revoke,
    now: i64,
) -> rusqlite::Result<Vec<Invalidation>> {
    let revoked_ids = |sql: &str, params: &[&dyn rusqlite::ToSql]| {
        tx.prepare_cached(sql)?
            .query_map(params, |r| r.get::<_, String>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()
    };
    let revoked = match scope {
        Revoke::Session(id) => revoked_ids(
            "UPDATE sessions SET revoked_at = ?2
             WHERE user_id = ?1 AND id = ?3 AND revoked_at IS NULL AND expires_at > ?2 RETURNING id",
            &[&user_id, &now, id],
        )?,
        Revoke::All => revoked_ids(
            "UPDATE sessions SET revoked_at = ?2
             WHERE user_id = ?1 AND revoked_at IS NULL RETURNING id",
            &[&user_id, &now],
        )?,
        Revoke::AllBut(keep) => revoked_ids(
            "UPDATE sessions SET revoked_at = ?2
             WHERE user_id = ?1 AND id <> ?3 AND revoked_at IS NULL RETURNING id",
            &[&user_id, &now, keep],
        )?,
    };
    log_invalidations(tx, user_id, rules::invalidations(scope, revoked), now)
}

/// Appends to the invalidation log.
fn log_invalidations(
    tx: &rusqlite::Transaction<'_>,
    user_id: &str,
    sessions: Vec<Option<String>>,
    now: i64,
) -> rusqlite::Result<Vec<Invalidation>> {
    let mut log = tx.prepare_cached(
        "INSERT INTO invalidations (at, user_id, session_id) VALUES (?1, ?2, ?3)",
    )?;
    sessions
        .into_iter()
        .map(|session_id| {
            log.execute(params![now, user_id, session_id])?;
            Ok(Invalidation {
                user_id: user_id.to_owned(),
                session_id,
            })
        })
        .collect()
}

fn session_from(row: &Row<'_>) -> rusqlite::Result<Session> {
    Ok(Session {
        id: row.get(0)?,
        user_id: row.get(1)?,
        created_at: row.get(2)?,
        last_used_at: row.get(3)?,
        expires_at: row.get(4)?,
        ip: row.get(5)?,
        user_agent: row.get(6)?,
    })
}

fn admin_key_from(row: &Row<'_>) -> rusqlite::Result<AdminKey> {
    Ok(AdminKey {
        id: row.get(0)?,
        name: row.get(1)?,
        scopes: roles_from(&row.get::<_, String>(2)?),
        created_at: row.get(3)?,
    })
}

fn user_from(row: &Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        id: row.get(0)?,
        email: row.get(1)?,
        username: row.get(2)?,
        is_active: row.get(3)?,
        created_at: row.get(4)?,
        updated_at: row.get(5)?,
        roles: roles_from(&row.get::<_, String>(6)?),
        email_verified: row.get(7)?,
        pending_email: row.get(8)?,
        mfa_enabled: row.get(9)?,
    })
}

/// The user inside `conn`.
fn user_in(conn: &Connection, user_id: &str) -> rusqlite::Result<User> {
    conn.prepare_cached(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?1"))?
        .query_row([user_id], user_from)
}

/// Turns the user's second factor off inside `tx`: the secret, the
/// recovery codes and every open login challenge go.
fn mfa_off(tx: &rusqlite::Transaction<'_>, user_id: &str, now: i64) -> rusqlite::Result<()> {
    tx.execute(
        "UPDATE users SET mfa_enabled = 0, totp_secret = NULL, totp_last_step = NULL,
                          updated_at = ?2
         WHERE id = ?1",
        params![user_id, now],
    )?;
    tx.execute("DELETE FROM recovery_codes WHERE user_id = ?1", [user_id])?;
    tx.execute("DELETE FROM mfa_challenges WHERE user_id = ?1", [user_id])?;
    Ok(())
}

/// Writes `mail` to the outbox inside `tx`, to `about` unless it names its
/// own recipient; `false`, writing nothing, when that address had its hourly
/// cap of capped messages already.
fn enqueue(
    tx: &rusqlite::Transaction<'_>,
    mail: &Outgoing,
    about: &str,
    now: i64,
) -> rusqlite::Result<bool> {
    let to = mail.to.as_deref().unwrap_or(about);
    if mail.cap.is_some() {
        let sent: i64 = tx
            .prepare_cached(
                "SELECT count(*) FROM outbox
                 WHERE capped AND lower(recipient) = lower(?1) AND created_at > ?2",
            )?
            .query_row(params![to, now - HOUR_MS], |r| r.get(0))?;
        if !cap_allows(sent, mail) {
            return Ok(false);
        }
    }
    tx.prepare_cached(
        "INSERT INTO outbox (id, kind, recipient, capped, body, state, created_at, next_attempt_at)
         VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?6, ?6)",
    )?
    .execute(params![
        mail.id,
        mail.kind,
        to,
        mail.cap.is_some(),
        mail.body,
        now
    ])?;
    Ok(true)
}

/// Stores `link` for `address` (voiding the user's older links of its
/// purpose) with its message; `false`, writing nothing, when over the cap.
fn issue_link(
    tx: &rusqlite::Transaction<'_>,
    user_id: &str,
    address: &str,
    link: &LinkMail,
    now: i64,
) -> rusqlite::Result<bool> {
    if !enqueue(tx, &link.mail, address, now)? {
        return Ok(false);
    }
    tx.prepare_cached(
        "UPDATE email_links SET used_at = ?3 WHERE user_id = ?1 AND purpose = ?2 AND used_at IS NULL",
    )?
    .execute(params![user_id, link.purpose.name(), now])?;
    tx.prepare_cached(
        "INSERT INTO email_links (digest, user_id, purpose, address, created_at, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        link.digest,
        user_id,
        link.purpose.name(),
        address,
        now,
        link.expires_at
    ])?;
    Ok(true)
}

/// A new verification link for what the active user has to verify, if
/// anything (see [`rules::to_verify`]).
fn verification_in(
    tx: &rusqlite::Transaction<'_>,
    user_id: &str,
    link: &LinkMail,
    now: i64,
) -> rusqlite::Result<bool> {
    let user = user_in(tx, user_id)?;
    match rules::to_verify(
        &user.email,
        user.email_verified,
        user.pending_email.as_deref(),
    ) {
        Some(address) if user.is_active => issue_link(tx, &user.id, address, link, now),
        _ => Ok(false),
    }
}

/// A link by digest and purpose: its user, its address, its state.
fn link_in(
    conn: &Connection,
    digest: &str,
    purpose: LinkPurpose,
) -> rusqlite::Result<Option<(String, String, LinkState)>> {
    conn.prepare_cached(
        "SELECT l.user_id, l.address, l.used_at, l.expires_at, u.is_active,
                lower(l.address) = lower(u.email)
         FROM email_links l JOIN users u ON u.id = l.user_id
         WHERE l.digest = ?1 AND l.purpose = ?2",
    )?
    .query_row(params![digest, purpose.name()], |r| {
        Ok((
            r.get(0)?,
            r.get(1)?,
            LinkState {
                used_at: r.get(2)?,
                expires_at: r.get(3)?,
                user_active: r.get(4)?,
                to_current_email: r.get(5)?,
            },
        ))
    })
    .optional()
}

/// The user and address of a usable link.
fn usable_link(
    conn: &Connection,
    digest: &str,
    purpose: LinkPurpose,
    now: i64,
) -> rusqlite::Result<Option<(String, String)>> {
    Ok(link_in(conn, digest, purpose)?
        .filter(|(_, _, state)| rules::link_usable(state, purpose, now))
        .map(|(user_id, address, _)| (user_id, address)))
}

/// The ring's keys, without their material.
fn key_infos(conn: &Connection) -> rusqlite::Result<Vec<KeyInfo>> {
    conn.prepare_cached(
        "SELECT kid, alg, state, created_at, activates_at, retired_at FROM signing_keys",
    )?
    .query_map([], key_info)?
    .collect()
}

fn key_info(r: &Row<'_>) -> rusqlite::Result<KeyInfo> {
    let state: String = r.get(2)?;
    Ok(KeyInfo {
        kid: r.get(0)?,
        alg: r.get(1)?,
        state: KeyState::parse(&state).ok_or(rusqlite::Error::InvalidColumnType(
            2,
            "state".into(),
            rusqlite::types::Type::Text,
        ))?,
        created_at: r.get(3)?,
        activates_at: r.get(4)?,
        retired_at: r.get(5)?,
    })
}

/// Applies one planned change to the ring inside `tx`.
fn change_key(
    tx: &rusqlite::Transaction<'_>,
    change: &Change,
    fresh: &NewKey,
    now: i64,
) -> rusqlite::Result<()> {
    let retire_active = || {
        tx.execute(
            "UPDATE signing_keys SET state = 'retired', retired_at = ?1 WHERE state = 'active'",
            [now],
        )
    };
    match change {
        Change::Create {
            kid,
            state,
            activates_at,
        } => {
            if *state == KeyState::Active {
                retire_active()?;
            }
            tx.execute(
                "INSERT INTO signing_keys (kid, alg, state, created_at, activates_at, public_jwk, private_key)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![kid, fresh.alg.name(), state.name(), now, activates_at, fresh.public_jwk, fresh.sealed_private],
            )?;
        }
        Change::Promote { kid } => {
            retire_active()?;
            tx.execute(
                "UPDATE signing_keys SET state = 'active', activates_at = ?2 WHERE kid = ?1",
                params![kid, now],
            )?;
        }
        Change::Delete { kid } => {
            tx.execute("DELETE FROM signing_keys WHERE kid = ?1", [kid])?;
        }
    }
    Ok(())
}

/// Stores `events`, for `user_id` where they name no user.
fn record(
    tx: &rusqlite::Transaction<'_>,
    events: &[Event],
    user_id: Option<&str>,
) -> rusqlite::Result<()> {
    let mut insert = tx.prepare_cached(
        "INSERT INTO audit_events (at, event, user_id, login, ip, request_id, details)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    for e in events {
        insert.execute(params![
            e.at,
            e.event,
            e.user_id.as_deref().or(user_id),
            e.login,
            e.ip,
            e.request_id,
            details_text(&e.details)
        ])?;
    }
    Ok(())
}

fn entry_from(r: &Row<'_>) -> rusqlite::Result<Entry> {
    Ok(Entry {
        id: r.get(0)?,
        event: Event {
            at: r.get(1)?,
            event: r.get(2)?,
            user_id: r.get(3)?,
            login: r.get(4)?,
            ip: r.get(5)?,
            request_id: r.get(6)?,
            details: details_from(&r.get::<_, String>(7)?),
        },
    })
}

#[async_trait]
impl Store for SqliteStore {
    async fn create_user(&self, user: NewUser, events: Vec<Event>) -> Result<User> {
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO users (id, email, username, password_hash, is_active, created_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, 1, ?5, ?5)",
                params![user.id, user.email, user.username, user.password_hash, user.now],
            )?;
            if let Some(link) = &user.verify {
                issue_link(tx, &user.id, &user.email, link, user.now)?;
            }
            record(tx, &events, Some(&user.id))?;
            user_in(tx, &user.id)
        })
        .await
    }

    async fn credentials(&self, login: String) -> Result<Option<Credentials>> {
        self.read(move |conn| {
            conn.prepare_cached(&format!(
                "SELECT {USER_COLUMNS}, password_hash FROM users
                 WHERE lower(username) = ?1 OR lower(email) = ?1"
            ))?
            .query_row([login.to_lowercase()], |row| {
                Ok(Credentials {
                    user: user_from(row)?,
                    password_hash: row.get(AFTER_USER)?,
                })
            })
            .optional()
        })
        .await
    }

    async fn create_session(
        &self,
        s: NewSession,
        verified_hash: String,
        rehash: Option<String>,
        events: Vec<Event>,
    ) -> Result<Option<Session>> {
        self.write(move |tx| {
            let opened = insert_session(tx, s, &verified_hash, rehash)?;
            if let Some(session) = &opened {
                record(tx, &events, Some(&session.user_id))?;
            }
            Ok(opened)
        })
        .await
    }

    async fn active_session(&self, session_id: String, now: i64) -> Result<Option<ActiveSession>> {
        self.read(move |conn| {
            let found = conn
                .prepare_cached(
                    "SELECT s.user_id, s.revoked_at, s.expires_at, u.is_active
                     FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.id = ?1",
                )?
                .query_row([&session_id], |row| {
                    let state = SessionState {
                        revoked_at: row.get(1)?,
                        expires_at: row.get(2)?,
                        user_active: row.get(3)?,
                    };
                    Ok((row.get::<_, String>(0)?, state))
                })
                .optional()?;
            Ok(found
                .filter(|(_, state)| rules::session_active(Some(*state), now))
                .map(|(user_id, state)| ActiveSession {
                    session_id,
                    user_id,
                    expires_at: state.expires_at,
                }))
        })
        .await
    }

    async fn user(&self, user_id: String) -> Result<Option<User>> {
        self.read(move |conn| {
            conn.prepare_cached(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?1"))?
                .query_row([user_id], user_from)
                .optional()
        })
        .await
    }

    async fn invalidations_since(&self, cursor: i64) -> Result<(Vec<Invalidation>, i64)> {
        self.read(move |conn| {
            if cursor < 0 {
                let head: i64 =
                    conn.query_row("SELECT coalesce(max(seq), 0) FROM invalidations", [], |r| {
                        r.get(0)
                    })?;
                return Ok((Vec::new(), head));
            }
            let mut stmt = conn.prepare_cached(
                "SELECT seq, user_id, session_id FROM invalidations WHERE seq > ?1 ORDER BY seq",
            )?;
            let mut next = cursor;
            let rows = stmt
                .query_map([cursor], |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        Invalidation {
                            user_id: row.get(1)?,
                            session_id: row.get(2)?,
                        },
                    ))
                })?
                .map(|r| {
                    r.map(|(seq, inv)| {
                        next = next.max(seq);
                        inv
                    })
                })
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok((rows, next))
        })
        .await
    }

    async fn credentials_by_id(&self, user_id: String) -> Result<Option<Credentials>> {
        self.read(move |conn| {
            conn.prepare_cached(&format!(
                "SELECT {USER_COLUMNS}, password_hash FROM users WHERE id = ?1"
            ))?
            .query_row([user_id], |row| {
                Ok(Credentials {
                    user: user_from(row)?,
                    password_hash: row.get(AFTER_USER)?,
                })
            })
            .optional()
        })
        .await
    }

    async fn refresh_owner(&self, digest: String) -> Result<Option<RefreshOwner>> {
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT s.id, s.user_id, s.auth_time, s.amr, u.roles
                 FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.refresh_digest = ?1",
            )?
            .query_row([digest], |r| {
                Ok(RefreshOwner {
                    session_id: r.get(0)?,
                    user_id: r.get(1)?,
                    auth_time: r.get(2)?,
                    amr: roles_from(&r.get::<_, String>(3)?),
                    roles: roles_from(&r.get::<_, String>(4)?),
                })
            })
            .optional()
        })
        .await
    }

    async fn rotate_refresh(
        &self,
        old_digest: String,
        new_digest: String,
        now: i64,
        refresh_ttl_ms: i64,
        grace_ms: i64,
    ) -> Result<Rotation> {
        self.write(move |tx| {
            let current = tx
                .prepare_cached(
                    "SELECT s.id, s.user_id, s.absolute_expires_at, s.revoked_at, s.expires_at, u.is_active
                     FROM sessions s JOIN users u ON u.id = s.user_id
                     WHERE s.refresh_digest = ?1",
                )?
                .query_row([&old_digest], |r| {
                    Ok(Presented::Current {
                        session_id: r.get(0)?,
                        user_id: r.get(1)?,
                        absolute_expires_at: r.get(2)?,
                        state: SessionState {
                            revoked_at: r.get(3)?,
                            expires_at: r.get(4)?,
                            user_active: r.get(5)?,
                        },
                    })
                })
                .optional()?;
            let presented = match current {
                Some(current) => current,
                None => tx
                    .prepare_cached(
                        "SELECT s.id, s.user_id, t.spent_at FROM spent_refresh_tokens t
                         JOIN sessions s ON s.id = t.session_id WHERE t.digest = ?1",
                    )?
                    .query_row([&old_digest], |r| {
                        Ok(Presented::Spent {
                            session_id: r.get(0)?,
                            user_id: r.get(1)?,
                            spent_at: r.get(2)?,
                        })
                    })
                    .optional()?
                    .unwrap_or(Presented::Unknown),
            };
            match rules::exchange(presented, now, refresh_ttl_ms, grace_ms) {
                Exchange::Rotate {
                    session_id,
                    user_id,
                    expires_at,
                } => {
                    tx.execute(
                        "UPDATE sessions SET refresh_digest = ?2, last_used_at = ?3, expires_at = ?4
                         WHERE id = ?1",
                        params![session_id, new_digest, now, expires_at],
                    )?;
                    tx.execute(
                        "INSERT INTO spent_refresh_tokens (digest, session_id, spent_at) VALUES (?1, ?2, ?3)",
                        params![old_digest, session_id, now],
                    )?;
                    Ok(Rotation::Rotated {
                        session_id,
                        user_id,
                    })
                }
                Exchange::RevokeForReuse {
                    session_id,
                    user_id,
                } => {
                    let scope = Revoke::Session(session_id.clone());
                    let changes = revoke_in(tx, &user_id, &scope, now)?;
                    Ok(Rotation::Reused {
                        session_id,
                        user_id,
                        changes,
                    })
                }
                Exchange::Refuse => Ok(Rotation::Invalid),
            }
        })
        .await
    }

    async fn revoke(
        &self,
        by: Principal,
        scope: Revoke,
        now: i64,
        events: Vec<Event>,
    ) -> Result<Vec<Invalidation>> {
        self.write_as(by, now, move |tx, by| {
            let changes = revoke_in(tx, &by.user_id, &scope, now)?;
            if !changes.is_empty() {
                record(tx, &events, Some(&by.user_id))?;
            }
            Ok(Ok(changes))
        })
        .await
    }

    async fn sessions(&self, user_id: String, now: i64) -> Result<Vec<Session>> {
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT id, user_id, created_at, last_used_at, expires_at, ip, user_agent
                 FROM sessions WHERE user_id = ?1 AND revoked_at IS NULL AND expires_at > ?2
                 ORDER BY created_at DESC",
            )?
            .query_map(params![user_id, now], session_from)?
            .collect()
        })
        .await
    }

    async fn update_profile(
        &self,
        by: Principal,
        change: ProfileChange,
        now: i64,
        events: Vec<Event>,
    ) -> Result<(User, Vec<Invalidation>)> {
        self.write_as(by, now, move |tx, by| {
            let user_id = &by.user_id;
            let before = user_in(tx, user_id)?;
            let verifies = change.mail.as_ref().is_some_and(|m| m.verify.is_some());
            let decided = rules::email_change(&before.email, change.email.as_deref(), verifies);
            match decided {
                EmailChange::Pending(pending) => {
                    let taken: Option<i64> = tx
                        .prepare_cached(
                            "SELECT 1 FROM users WHERE lower(email) = lower(?1) AND id <> ?2",
                        )?
                        .query_row(params![pending, user_id], |r| r.get(0))
                        .optional()?;
                    if taken.is_some() {
                        return Ok(Err(Error::Conflict(Taken::Email)));
                    }
                    tx.execute(
                        "UPDATE users SET pending_email = ?2, username = coalesce(?3, username),
                                          updated_at = ?4
                         WHERE id = ?1",
                        params![user_id, pending, change.username, now],
                    )?;
                }
                EmailChange::Replace(email) => {
                    tx.execute(
                        "UPDATE users SET email = ?2, email_verified = 0, pending_email = NULL,
                                          username = coalesce(?3, username), updated_at = ?4
                         WHERE id = ?1",
                        params![user_id, email, change.username, now],
                    )?;
                }
                EmailChange::Unchanged => {
                    tx.execute(
                        "UPDATE users SET username = coalesce(?2, username), updated_at = ?3
                         WHERE id = ?1",
                        params![user_id, change.username, now],
                    )?;
                }
            }
            if let (EmailChange::Pending(address) | EmailChange::Replace(address), Some(mail)) =
                (decided, &change.mail)
            {
                enqueue(tx, &mail.notice, &before.email, now)?;
                if let Some(link) = &mail.verify {
                    issue_link(tx, user_id, address, link, now)?;
                }
            }
            record(tx, &events, Some(user_id))?;
            let user = user_in(tx, user_id)?;
            let changes = log_invalidations(tx, user_id, vec![None], now)?;
            Ok(Ok((user, changes)))
        })
        .await
    }

    async fn set_password(
        &self,
        by: Principal,
        verified_hash: String,
        new_hash: String,
        notice: Option<Outgoing>,
        now: i64,
        events: Vec<Event>,
    ) -> Result<Vec<Invalidation>> {
        self.write_as(by, now, move |tx, by| {
            let changed = tx.execute(
                "UPDATE users SET password_hash = ?3, updated_at = ?4
                 WHERE id = ?1 AND password_hash = ?2",
                params![by.user_id, verified_hash, new_hash, now],
            )?;
            if changed == 0 {
                return Ok(Err(Error::WrongCurrentPassword));
            }
            if let Some(notice) = &notice {
                enqueue(tx, notice, &user_in(tx, &by.user_id)?.email, now)?;
            }
            record(tx, &events, Some(&by.user_id))?;
            let keep = Revoke::AllBut(by.session_id.clone());
            revoke_in(tx, &by.user_id, &keep, now).map(Ok)
        })
        .await
    }

    async fn request_verification(&self, by: Principal, link: LinkMail, now: i64) -> Result<bool> {
        self.write_as(by, now, move |tx, by| {
            verification_in(tx, &by.user_id, &link, now).map(Ok)
        })
        .await
    }

    async fn resend_verification(&self, user_id: String, link: LinkMail, now: i64) -> Result<bool> {
        self.write(move |tx| {
            let newest: Option<i64> = tx
                .prepare_cached(
                    "SELECT max(created_at) FROM email_links
                     WHERE user_id = ?1 AND purpose = 'verify' AND used_at IS NULL
                       AND expires_at > ?2",
                )?
                .query_row(params![user_id, now], |r| r.get(0))?;
            if !rules::resend_due(newest, now) {
                return Ok(false);
            }
            verification_in(tx, &user_id, &link, now)
        })
        .await
    }

    async fn request_reset(
        &self,
        email: String,
        link: LinkMail,
        now: i64,
        events: Vec<Event>,
    ) -> Result<bool> {
        self.write(move |tx| {
            let user: Option<(String, String)> = tx
                .prepare_cached(
                    "SELECT id, email FROM users WHERE lower(email) = lower(?1) AND is_active = 1",
                )?
                .query_row([&email], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?;
            match user {
                Some((id, address)) => {
                    let queued = issue_link(tx, &id, &address, &link, now)?;
                    if queued {
                        record(tx, &events, Some(&id))?;
                    }
                    Ok(queued)
                }
                None => Ok(false),
            }
        })
        .await
    }

    async fn confirm_email(
        &self,
        digest: String,
        now: i64,
        events: Vec<Event>,
    ) -> Result<Option<(User, Vec<Invalidation>)>> {
        self.write(move |tx| {
            let Some((user_id, address)) = usable_link(tx, &digest, LinkPurpose::Verify, now)?
            else {
                return Ok(None);
            };
            let user = user_in(tx, &user_id)?;
            match rules::confirm(&address, &user.email, user.pending_email.as_deref()) {
                Confirm::ApplyPending => tx.execute(
                    "UPDATE users SET email = pending_email, pending_email = NULL,
                                      email_verified = 1, updated_at = ?2
                     WHERE id = ?1",
                    params![user_id, now],
                )?,
                Confirm::VerifyCurrent => tx.execute(
                    "UPDATE users SET email_verified = 1, updated_at = ?2 WHERE id = ?1",
                    params![user_id, now],
                )?,
                Confirm::Stale => return Ok(None),
            };
            tx.execute(
                "UPDATE email_links SET used_at = ?2 WHERE digest = ?1",
                params![digest, now],
            )?;
            record(tx, &events, Some(&user_id))?;
            let user = user_in(tx, &user_id)?;
            let changes = log_invalidations(tx, &user_id, vec![None], now)?;
            Ok(Some((user, changes)))
        })
        .await
    }

    async fn reset_password(
        &self,
        digest: String,
        new_hash: String,
        notice: Outgoing,
        now: i64,
        events: Vec<Event>,
    ) -> Result<Option<(String, Vec<Invalidation>)>> {
        self.write(move |tx| {
            let Some((user_id, _)) = usable_link(tx, &digest, LinkPurpose::Reset, now)? else {
                return Ok(None);
            };
            tx.execute(
                "UPDATE users SET password_hash = ?2, updated_at = ?3 WHERE id = ?1",
                params![user_id, new_hash, now],
            )?;
            tx.execute(
                "UPDATE email_links SET used_at = ?2
                 WHERE user_id = ?1 AND purpose = 'reset' AND used_at IS NULL",
                params![user_id, now],
            )?;
            enqueue(tx, &notice, &user_in(tx, &user_id)?.email, now)?;
            record(tx, &events, Some(&user_id))?;
            let changes = revoke_in(tx, &user_id, &Revoke::All, now)?;
            Ok(Some((user_id, changes)))
        })
        .await
    }

    async fn link_owner(
        &self,
        digest: String,
        purpose: LinkPurpose,
        now: i64,
    ) -> Result<Option<User>> {
        self.read(
            move |conn| match usable_link(conn, &digest, purpose, now)? {
                Some((user_id, _)) => user_in(conn, &user_id).map(Some),
                None => Ok(None),
            },
        )
        .await
    }

    async fn claim_mail(
        &self,
        owner: String,
        now: i64,
        lease_ms: i64,
        limit: u32,
    ) -> Result<Vec<Claimed>> {
        self.write(move |tx| {
            tx.prepare_cached(
                "UPDATE outbox SET lease_owner = ?1, lease_until = ?2
                 WHERE id IN (SELECT id FROM outbox
                              WHERE state = 'pending' AND next_attempt_at <= ?3
                                AND (lease_until IS NULL OR lease_until <= ?3)
                              ORDER BY next_attempt_at LIMIT ?4)
                 RETURNING id, kind, recipient, body, attempts",
            )?
            .query_map(params![owner, now + lease_ms, now, limit], |r| {
                Ok(Claimed {
                    id: r.get(0)?,
                    kind: r.get(1)?,
                    recipient: r.get(2)?,
                    body: r.get::<_, Option<Vec<u8>>>(3)?.unwrap_or_default(),
                    attempts: r.get(4)?,
                })
            })?
            .collect()
        })
        .await
    }

    async fn finish_mail(
        &self,
        id: String,
        owner: String,
        outcome: MailOutcome,
        now: i64,
    ) -> Result<bool> {
        self.write(move |tx| {
            let row = rules::finished(&outcome);
            let changed = tx
                .prepare_cached(
                    "UPDATE outbox SET state = ?3, attempts = attempts + 1,
                            body = CASE WHEN ?4 THEN body END,
                            next_attempt_at = coalesce(?5, next_attempt_at),
                            done_at = CASE WHEN ?3 = 'pending' THEN NULL ELSE ?6 END,
                            last_error = ?7, lease_owner = NULL, lease_until = NULL
                     WHERE id = ?1 AND lease_owner = ?2 AND state = 'pending'",
                )?
                .execute(params![
                    id,
                    owner,
                    row.state,
                    row.keeps_body,
                    row.next_attempt_at,
                    now,
                    row.error
                ])?;
            Ok(changed == 1)
        })
        .await
    }

    async fn second_factor(&self, user_id: String) -> Result<Option<SecondFactor>> {
        self.read(move |conn| {
            conn.prepare_cached(&format!(
                "SELECT {USER_COLUMNS}, totp_secret, totp_last_step FROM users WHERE id = ?1"
            ))?
            .query_row([user_id], |row| {
                Ok(SecondFactor {
                    user: user_from(row)?,
                    secret: row.get(AFTER_USER)?,
                    last_step: row.get(AFTER_USER + 1)?,
                })
            })
            .optional()
        })
        .await
    }

    async fn challenge(&self, digest: String, now: i64) -> Result<Option<Challenge>> {
        self.read(move |conn| {
            let found = conn
                .prepare_cached(
                    "SELECT user_id, password_digest, auth_time, expires_at, failures, used_at
                     FROM mfa_challenges WHERE digest = ?1",
                )?
                .query_row([&digest], |r| {
                    let state = ChallengeState {
                        expires_at: r.get(3)?,
                        failures: r.get(4)?,
                        used: r.get::<_, Option<i64>>(5)?.is_some(),
                    };
                    let challenge = Challenge {
                        digest: digest.clone(),
                        user_id: r.get(0)?,
                        password_digest: r.get(1)?,
                        auth_time: r.get(2)?,
                        expires_at: state.expires_at,
                    };
                    Ok((challenge, state))
                })
                .optional()?;
            Ok(found
                .filter(|(_, state)| rules::challenge_usable(Some(*state), now))
                .map(|(challenge, _)| challenge))
        })
        .await
    }

    async fn open_challenge(&self, c: Challenge) -> Result<()> {
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO mfa_challenges (digest, user_id, password_digest, auth_time, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![c.digest, c.user_id, c.password_digest, c.auth_time, c.expires_at],
            )
            .map(drop)
        })
        .await
    }

    async fn complete_challenge(
        &self,
        digest: String,
        proof: Option<Proof>,
        session: NewSession,
        events: Vec<Event>,
    ) -> Result<ChallengeOutcome> {
        self.write(move |tx| {
            let now = session.now;
            let found: Option<(String, String, ChallengeState)> = tx
                .prepare_cached(
                    "SELECT u.password_hash, c.password_digest, c.expires_at, c.failures, c.used_at
                     FROM mfa_challenges c JOIN users u ON u.id = c.user_id
                     WHERE c.digest = ?1 AND c.user_id = ?2 AND u.mfa_enabled = 1",
                )?
                .query_row(params![digest, session.user_id], |r| {
                    let state = ChallengeState {
                        expires_at: r.get(2)?,
                        failures: r.get(3)?,
                        used: r.get::<_, Option<i64>>(4)?.is_some(),
                    };
                    Ok((r.get(0)?, r.get(1)?, state))
                })
                .optional()?;
            let Some((hash, password_digest, state)) =
                found.filter(|(_, _, state)| rules::challenge_usable(Some(*state), now))
            else {
                return Ok(ChallengeOutcome::Unusable);
            };
            let spent = spend_proof(tx, &session.user_id, proof.as_ref(), now)?;
            if !spent {
                tx.execute(
                    "UPDATE mfa_challenges SET failures = failures + 1 WHERE digest = ?1",
                    [&digest],
                )?;
                let killed = rules::killed_by_wrong_code(state, now);
                return Ok(ChallengeOutcome::WrongCode { killed });
            }
            tx.execute(
                "UPDATE mfa_challenges SET used_at = ?2 WHERE digest = ?1",
                params![digest, now],
            )?;
            // The session opens only for the password the challenge was opened with.
            let verified = (token_digest(&hash) == password_digest).then_some(hash);
            let user_id = session.user_id.clone();
            let opened = match verified {
                Some(hash) => insert_session(tx, session, &hash, None)?,
                None => None,
            };
            if opened.is_some() {
                record(tx, &events, Some(&user_id))?;
            }
            Ok(opened.map_or(ChallengeOutcome::Unusable, ChallengeOutcome::Completed))
        })
        .await
    }

    async fn begin_totp(&self, by: Principal, sealed: Vec<u8>, now: i64) -> Result<()> {
        self.write_as(by, now, move |tx, by| {
            let changed = tx.execute(
                "UPDATE users SET totp_secret = ?2, totp_last_step = NULL, updated_at = ?3
                 WHERE id = ?1 AND mfa_enabled = 0",
                params![by.user_id, sealed, now],
            )?;
            Ok(if changed == 1 {
                Ok(())
            } else {
                Err(Error::MfaState { enabled: true })
            })
        })
        .await
    }

    async fn confirm_totp(
        &self,
        by: Principal,
        sealed: Vec<u8>,
        step: i64,
        codes: Vec<String>,
        now: i64,
        events: Vec<Event>,
    ) -> Result<Vec<Invalidation>> {
        self.write_as(by, now, move |tx, by| {
            let (pending, enabled): (Option<Vec<u8>>, bool) = tx.query_row(
                "SELECT totp_secret, mfa_enabled FROM users WHERE id = ?1",
                [&by.user_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            if let Err(refused) = rules::may_confirm_totp(enabled, pending.as_deref(), &sealed) {
                return Ok(Err(refused));
            }
            tx.execute(
                "UPDATE users SET mfa_enabled = 1, totp_last_step = ?2, updated_at = ?3
                 WHERE id = ?1",
                params![by.user_id, step, now],
            )?;
            store_recovery_codes(tx, &by.user_id, &codes)?;
            record(tx, &events, Some(&by.user_id))?;
            log_invalidations(tx, &by.user_id, vec![None], now).map(Ok)
        })
        .await
    }

    async fn disable_mfa(
        &self,
        by: Principal,
        proof: Option<Proof>,
        notice: Outgoing,
        now: i64,
        events: Vec<Event>,
    ) -> Result<Vec<Invalidation>> {
        self.write_as(by, now, move |tx, by| {
            let user = user_in(tx, &by.user_id)?;
            let spent = spend_proof(tx, &by.user_id, proof.as_ref(), now)?;
            if let Err(refused) = rules::may_change_with_code(user.mfa_enabled, spent) {
                return Ok(Err(refused));
            }
            mfa_off(tx, &by.user_id, now)?;
            enqueue(tx, &notice, &user.email, now)?;
            record(tx, &events, Some(&by.user_id))?;
            log_invalidations(tx, &by.user_id, vec![None], now).map(Ok)
        })
        .await
    }

    async fn replace_recovery_codes(
        &self,
        by: Principal,
        proof: Option<Proof>,
        codes: Vec<String>,
        now: i64,
    ) -> Result<()> {
        self.write_as(by, now, move |tx, by| {
            let enabled = user_in(tx, &by.user_id)?.mfa_enabled;
            let spent = spend_proof(tx, &by.user_id, proof.as_ref(), now)?;
            if let Err(refused) = rules::may_change_with_code(enabled, spent) {
                return Ok(Err(refused));
            }
            store_recovery_codes(tx, &by.user_id, &codes).map(Ok)
        })
        .await
    }

    async fn reauthenticate(
        &self,
        by: Principal,
        verified_hash: String,
        proof: Option<Proof>,
        now: i64,
    ) -> Result<()> {
        self.write_as(by, now, move |tx, by| {
            let (hash, mfa): (String, bool) = tx.query_row(
                "SELECT password_hash, mfa_enabled FROM users WHERE id = ?1",
                [&by.user_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            if hash != verified_hash {
                return Ok(Err(Error::WrongCurrentPassword));
            }
            if mfa {
                let spent = spend_proof(tx, &by.user_id, proof.as_ref(), now)?;
                if !spent {
                    return Ok(Err(Error::SecondFactorRefused));
                }
            }
            tx.execute(
                "UPDATE sessions SET auth_time = ?2 WHERE id = ?1",
                params![by.session_id, now],
            )?;
            Ok(Ok(()))
        })
        .await
    }

    async fn admin_keys(&self) -> Result<Vec<AdminKey>> {
        self.read(|conn| {
            conn.prepare_cached(
                "SELECT id, name, scopes, created_at FROM admin_keys
                 WHERE revoked_at IS NULL ORDER BY created_at, id",
            )?
            .query_map([], admin_key_from)?
            .collect()
        })
        .await
    }

    async fn admin_key(&self, id: String) -> Result<Option<(AdminKey, String)>> {
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT id, name, scopes, created_at, digest FROM admin_keys
                 WHERE id = ?1 AND revoked_at IS NULL",
            )?
            .query_row([id], |r| Ok((admin_key_from(r)?, r.get(4)?)))
            .optional()
        })
        .await
    }

    async fn users(&self, select: UserSelect, now: i64) -> Result<Vec<UserRecord>> {
        self.read(move |conn| {
            let columns = format!(
                "SELECT {USER_COLUMNS}, last_login_at,
                   (SELECT count(*) FROM sessions s
                    WHERE s.user_id = users.id AND s.revoked_at IS NULL AND s.expires_at > ?1)
                 FROM users"
            );
            let record = |r: &Row<'_>| {
                Ok(UserRecord {
                    user: user_from(r)?,
                    last_login_at: r.get(AFTER_USER)?,
                    active_sessions: u64::try_from(r.get::<_, i64>(AFTER_USER + 1)?).unwrap_or(0),
                })
            };
            match select {
                UserSelect::One(id) => conn
                    .prepare_cached(&format!("{columns} WHERE id = ?2"))?
                    .query_map(params![now, id], record)?
                    .collect(),
                UserSelect::Page {
                    prefix: None,
                    after,
                    limit,
                } => conn
                    .prepare_cached(&format!("{columns} WHERE id > ?2 ORDER BY id LIMIT ?3"))?
                    .query_map(params![now, after.unwrap_or_default(), limit], record)?
                    .collect(),
                // `+id`: the prefix ranges pick the rows (through the lower()
                // indexes), not a walk of every id in order.
                UserSelect::Page {
                    prefix: Some((from, to)),
                    after,
                    limit,
                } => conn
                    .prepare_cached(&format!(
                        "{columns} WHERE +id > ?2
                           AND ((lower(email) >= ?4 AND lower(email) < ?5)
                             OR (lower(username) >= ?4 AND lower(username) < ?5))
                         ORDER BY id LIMIT ?3"
                    ))?
                    .query_map(
                        params![now, after.unwrap_or_default(), limit, from, to],
                        record,
                    )?
                    .collect(),
            }
        })
        .await
    }

    async fn change_user(
        &self,
        user_id: String,
        change: AdminChange,
        now: i64,
        events: Vec<Event>,
    ) -> Result<Option<Vec<Invalidation>>> {
        self.write(move |tx| {
            let found = match &change {
                AdminChange::Deactivate | AdminChange::Reactivate => {
                    tx.execute(
                        "UPDATE users SET is_active = ?3, updated_at = ?2 WHERE id = ?1",
                        params![user_id, now, matches!(change, AdminChange::Reactivate)],
                    )? == 1
                }
                AdminChange::RemoveMfa { notice } => match user_in(tx, &user_id).optional()? {
                    Some(user) if user.mfa_enabled => {
                        mfa_off(tx, &user_id, now)?;
                        enqueue(tx, notice, &user.email, now)?;
                        true
                    }
                    found => found.is_some(),
                },
                AdminChange::Erase => match user_in(tx, &user_id).optional()? {
                    Some(user) => {
                        tx.execute(
                            "DELETE FROM outbox WHERE lower(recipient) IN (lower(?1), lower(?2))",
                            params![user.email, user.pending_email],
                        )?;
                        // Of its events, the id, what and when stay.
                        tx.execute(
                            "UPDATE audit_events SET login = NULL, ip = NULL, details = '{}'
                             WHERE user_id = ?1 OR login IN (lower(?2), lower(?3), lower(?4))",
                            params![user_id, user.username, user.email, user.pending_email],
                        )?;
                        // Sessions, links, codes and challenges go with it (ON DELETE CASCADE).
                        tx.execute("DELETE FROM users WHERE id = ?1", [&user_id])?;
                        true
                    }
                    None => false,
                },
                AdminChange::Logout => tx
                    .query_row("SELECT 1 FROM users WHERE id = ?1", [&user_id], |_| Ok(()))
                    .optional()?
                    .is_some(),
                AdminChange::SetRoles(roles) => {
                    tx.execute(
                        "UPDATE users SET roles = ?3, updated_at = ?2 WHERE id = ?1",
                        params![user_id, now, json_list(roles)],
                    )? == 1
                }
            };
            if !found {
                return Ok(None);
            }
            record(tx, &events, Some(&user_id))?;
            let logged = match rules::ends_sessions(&change) {
                true => revoke_in(tx, &user_id, &Revoke::All, now)?,
                false => log_invalidations(tx, &user_id, vec![None], now)?,
            };
            Ok(Some(logged))
        })
        .await
    }

    async fn create_admin_key(&self, new: NewAdminKey, events: Vec<Event>) -> Result<()> {
        self.write(move |tx| {
            let k = &new.key;
            tx.execute(
                "INSERT INTO admin_keys (id, name, scopes, digest, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![k.id, k.name, json_list(&k.scopes), new.digest, k.created_at],
            )?;
            record(tx, &events, None)
        })
        .await
    }

    async fn revoke_admin_key(&self, id: String, now: i64, events: Vec<Event>) -> Result<bool> {
        self.write(move |tx| {
            let changed = tx.execute(
                "UPDATE admin_keys SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                params![id, now],
            )? == 1;
            if changed {
                record(tx, &events, None)?;
            }
            Ok(changed)
        })
        .await
    }

    async fn outbox_pending(&self) -> Result<u64> {
        self.read(|conn| {
            conn.query_row(
                "SELECT count(*) FROM outbox WHERE state = 'pending'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| u64::try_from(n).unwrap_or(0))
        })
        .await
    }

    async fn deactivate(
        &self,
        by: Principal,
        now: i64,
        events: Vec<Event>,
    ) -> Result<Vec<Invalidation>> {
        self.write_as(by, now, move |tx, by| {
            tx.execute(
                "UPDATE users SET is_active = 0, updated_at = ?2 WHERE id = ?1",
                params![by.user_id, now],
            )?;
            record(tx, &events, Some(&by.user_id))?;
            revoke_in(tx, &by.user_id, &Revoke::All, now).map(Ok)
        })
        .await
    }

    async fn touch_sessions(&self, touches: Vec<(String, i64)>) -> Result<()> {
        self.write(move |tx| {
            let mut touch = tx.prepare_cached(
                "UPDATE sessions SET last_used_at = max(last_used_at, ?2) WHERE id = ?1",
            )?;
            for (session_id, at) in &touches {
                touch.execute(params![session_id, at])?;
            }
            Ok(())
        })
        .await
    }

    async fn append_events(&self, events: Vec<Event>) -> Result<()> {
        self.write(move |tx| record(tx, &events, None)).await
    }

    async fn audit(&self, query: Query) -> Result<Vec<Entry>> {
        self.read(move |conn| {
            // Only the filters asked for, so each picks its index.
            let mut sql = String::from(
                "SELECT id, at, event, user_id, login, ip, request_id, details
                 FROM audit_events WHERE 1 = 1",
            );
            let mut args: Vec<rusqlite::types::Value> = Vec::new();
            let mut filter = |column: &str, op: &str, value: rusqlite::types::Value| {
                args.push(value);
                sql.push_str(&format!(" AND {column} {op} ?{}", args.len()));
            };
            if let Some(user_id) = query.user_id {
                filter("user_id", "=", user_id.into());
            }
            if let Some(event) = query.event {
                filter("event", "=", event.into());
            }
            if let Some(since) = query.since {
                filter("at", ">=", since.into());
            }
            if let Some(before) = query.before {
                filter("id", "<", before.into());
            }
            args.push(i64::from(query.limit).into());
            sql.push_str(&format!(" ORDER BY id DESC LIMIT ?{}", args.len()));
            conn.prepare_cached(&sql)?
                .query_map(rusqlite::params_from_iter(args), entry_from)?
                .collect()
        })
        .await
    }

    async fn purge(&self, now: i64, events_before: i64) -> Result<u64> {
        let keep = rules::retention(now);
        self.write(move |tx| {
            let sessions = tx.execute(
                "DELETE FROM sessions WHERE expires_at <= ?1 OR revoked_at <= ?2",
                params![keep.expired_before, keep.revoked_before],
            )?;
            tx.execute(
                "DELETE FROM invalidations WHERE at <= ?1",
                [keep.revoked_before],
            )?;
            tx.execute(
                "DELETE FROM email_links WHERE expires_at <= ?1 OR used_at <= ?1",
                [keep.mail_before],
            )?;
            tx.execute(
                "DELETE FROM mfa_challenges WHERE expires_at <= ?1",
                [keep.expired_before],
            )?;
            tx.execute(
                "DELETE FROM outbox WHERE state <> 'pending' AND done_at <= ?1",
                [keep.mail_before],
            )?;
            tx.execute("DELETE FROM audit_events WHERE at < ?1", [events_before])?;
            Ok(sessions as u64)
        })
        .await
    }

    async fn key_ring(&self) -> Result<Vec<StoredKey>> {
        self.read(|conn| {
            conn.prepare_cached(
                "SELECT kid, alg, state, created_at, activates_at, retired_at, public_jwk, private_key
                 FROM signing_keys",
            )?
            .query_map([], |r| {
                Ok(StoredKey {
                    info: key_info(r)?,
                    public_jwk: r.get(6)?,
                    sealed_private: r.get(7)?,
                })
            })?
            .collect()
        })
        .await
    }

    async fn change_keys(
        &self,
        op: KeyOp,
        policy: RingPolicy,
        fresh: NewKey,
        now: i64,
    ) -> Result<Vec<Change>> {
        // The immediate transaction is the lock: one instance at a time plans and applies.
        self.write(move |tx| {
            let keys = key_infos(tx)?;
            let changes = match op.plan(&keys, now, policy, &fresh.kid, fresh.alg.name()) {
                Ok(changes) => changes,
                Err(e) => return Ok(Err(e)),
            };
            for change in &changes {
                change_key(tx, change, &fresh, now)?;
            }
            Ok(Ok(changes))
        })
        .await?
    }

    async fn close(&self) -> Result<()> {
        let writer = Arc::clone(&self.writer);
        blocking(move || {
            writer
                .lock()
                .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
                .map_err(classify)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(dir: &tempfile::TempDir) -> SqliteStore {
        SqliteStore::open(&DatabaseSettings {
            path: dir.path().join("nested/dir/test.db"),
            ..DatabaseSettings::default()
        })
        .unwrap()
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

    #[tokio::test]
    async fn reopening_keeps_data_and_schema() {
        let dir = tempfile::tempdir().unwrap();
        store(&dir)
            .create_user(new_user("u1", "a@example.com", "alice"), vec![])
            .await
            .unwrap();
        let again = store(&dir);
        assert_eq!(
            again.user("u1".into()).await.unwrap().unwrap().username,
            "alice"
        );
    }

    #[tokio::test]
    async fn a_held_write_lock_makes_writes_unavailable_not_internal() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&DatabaseSettings {
            path: dir.path().join("t.db"),
            busy_timeout_ms: 50,
            ..DatabaseSettings::default()
        })
        .unwrap();
        let blocker = Connection::open(dir.path().join("t.db")).unwrap();
        blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
        let err = s
            .create_user(new_user("u1", "a@example.com", "alice"), vec![])
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
        // Readers are not blocked by a writer in WAL mode.
        assert!(s.user("u1".into()).await.unwrap().is_none());
        blocker.execute_batch("COMMIT").unwrap();
        s.create_user(new_user("u1", "a@example.com", "alice"), vec![])
            .await
            .unwrap();
    }
}
