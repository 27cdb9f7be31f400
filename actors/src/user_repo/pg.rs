//! The PostgreSQL store, for instances spread over several hosts.
//!
//! A deadpool pool of tokio-postgres connections, every statement under
//! `database.statement_timeout_ms`. The schema is migrated on first use,
//! not at start-up, under an advisory lock so that instances starting
//! together take turns; a server whose database is unreachable at start-up
//! therefore starts, answers 503 while it cannot reach it (its breaker opens)
//! and recovers on its own once it can.
//!
//! What the rows mean is decided by [`super::rules`], as for SQLite.
//!
//! Errors are mapped as in SQLite: unique violations on the email or
//! username index are [`Error::Conflict`]; lost connections, timeouts,
//! serialization failures and deadlocks are [`Error::Unavailable`].

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
};
use tokio::sync::OnceCell;
use tokio_postgres::error::SqlState;
use tokio_postgres::{NoTls, Row, Transaction};

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
const MIGRATIONS: &[(&str, &str)] = &[
    (
        "V1__initial",
        include_str!("migrations/postgres/V1__initial.sql"),
    ),
    (
        "V2__signing_keys",
        include_str!("migrations/postgres/V2__signing_keys.sql"),
    ),
    (
        "V3__email",
        include_str!("migrations/postgres/V3__email.sql"),
    ),
    ("V4__mfa", include_str!("migrations/postgres/V4__mfa.sql")),
    (
        "V5__admin_keys",
        include_str!("migrations/postgres/V5__admin_keys.sql"),
    ),
    (
        "V6__users_admin",
        include_str!("migrations/postgres/V6__users_admin.sql"),
    ),
    (
        "V7__audit",
        include_str!("migrations/postgres/V7__audit.sql"),
    ),
];

/// Key of the advisory lock held while changing the key ring ("gh-keys\0").
const KEYS_LOCK: i64 = 0x6768_2d6b_6579_7300;

/// Key of the advisory lock held while migrating ("gatehouse" in ASCII).
const MIGRATION_LOCK: i64 = 0x6761_7465_686f_7573;

/// First half of the two-part advisory lock held, per recipient, while
/// counting and queueing a capped message ("mail"), so that concurrent
/// instances cannot both find an address under its cap. Two-part keys never
/// collide with the one-part keys above.
const MAIL_CAP_LOCK: i32 = 0x6d61_696c;

pub struct PgStore {
    pool: Pool,
    migrated: OnceCell<()>,
}

/// Maps PostgreSQL's errors onto ours.
fn classify(e: tokio_postgres::Error) -> Error {
    let Some(db) = e.as_db_error() else {
        // No server answer at all: the connection is gone or never was.
        return Error::Unavailable(format!("postgres: {e}"));
    };
    let code = db.code();
    if *code == SqlState::UNIQUE_VIOLATION {
        match db.constraint() {
            Some("users_email_key") => return Error::Conflict(Taken::Email),
            Some("users_username_key") => return Error::Conflict(Taken::Username),
            _ => {}
        }
    }
    let class = code.code();
    let transient = [
        "08", // connection exception
        "53", // insufficient resources
        "57", // operator intervention, including statement timeouts (57014)
        "58", // system error
    ]
    .iter()
    .any(|prefix| class.starts_with(prefix))
        || [
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::T_R_DEADLOCK_DETECTED,
            SqlState::LOCK_NOT_AVAILABLE,
        ]
        .contains(code);
    if transient {
        Error::Unavailable(format!("postgres: {e}"))
    } else {
        Error::Internal(format!("postgres: {e}"))
    }
}

fn pool_error(e: PoolError) -> Error {
    match e {
        PoolError::Backend(e) => classify(e),
        other => Error::Unavailable(format!("postgres pool: {other}")),
    }
}

impl PgStore {
    /// Prepares the pool; connects only when first used.
    pub fn connect(settings: &DatabaseSettings) -> Result<Self> {
        let mut config = tokio_postgres::Config::from_str(&settings.url)
            .map_err(|e| Error::Internal(format!("database.url: {e}")))?;
        let timeout = settings.statement_timeout_ms;
        let options = config.get_options().unwrap_or_default().to_owned();
        config.options(format!("{options} -c statement_timeout={timeout}").trim());
        config.connect_timeout(Duration::from_millis(timeout.max(500)));
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let wait = Some(Duration::from_millis(timeout.max(500)));
        let pool = Pool::builder(manager)
            // Readers, plus the one writer the UserRepo actor lets through at a time.
            .max_size(settings.pool_size.max(1) as usize + 1)
            .runtime(Runtime::Tokio1)
            .wait_timeout(wait)
            .create_timeout(wait)
            .recycle_timeout(wait)
            .build()
            .map_err(|e| Error::Internal(format!("postgres pool: {e}")))?;
        Ok(Self {
            pool,
            migrated: OnceCell::new(),
        })
    }

    /// A connection to a migrated database.
    async fn client(&self) -> Result<Object> {
        self.migrated.get_or_try_init(|| self.migrate()).await?;
        self.pool.get().await.map_err(pool_error)
    }

    async fn migrate(&self) -> Result<()> {
        let mut client = self.pool.get().await.map_err(pool_error)?;
        // Migrations may take longer than one request's statement timeout.
        client
            .batch_execute("SET statement_timeout = 0")
            .await
            .map_err(classify)?;
        client
            .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
            .await
            .map_err(classify)?;
        let migrations = MIGRATIONS
            .iter()
            .map(|(name, sql)| refinery::Migration::unapplied(name, sql))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::Internal(format!("migration definitions: {e}")))?;
        let applied = refinery::Runner::new(&migrations)
            .set_migration_table_name("gatehouse_schema_history")
            .run_async(&mut **client)
            .await;
        let unlocked = client
            .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
            .await;
        // The connection goes back to the pool: restore its statement timeout.
        let reset = client.batch_execute("RESET statement_timeout").await;
        applied.map_err(|e| Error::Unavailable(format!("postgres migration: {e}")))?;
        unlocked.map_err(classify)?;
        reset.map_err(classify)?;
        Ok(())
    }

    /// Runs `work` in a transaction.
    async fn write<T>(
        &self,
        work: impl AsyncFnOnce(&Transaction<'_>) -> std::result::Result<T, tokio_postgres::Error>,
    ) -> Result<T> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(classify)?;
        let out = work(&tx).await.map_err(classify)?;
        tx.commit().await.map_err(classify)?;
        Ok(out)
    }

    /// Runs `work` in a transaction, if `by`'s session is active (and, for a
    /// privileged write, fresh) inside it; `SessionRevoked` (or
    /// `ReauthRequired`), writing nothing, if not. The user's row is locked
    /// first and the session's second, the order every writer of both takes,
    /// so that a revocation waits for this write or this write sees it.
    async fn write_as<T>(
        &self,
        by: &Principal,
        now: i64,
        work: impl AsyncFnOnce(
            &Transaction<'_>,
        ) -> std::result::Result<Result<T>, tokio_postgres::Error>,
    ) -> Result<T> {
        self.write(async |tx| {
            let user = tx
                .query_opt(
                    "SELECT is_active FROM users WHERE id = $1 FOR UPDATE",
                    &[&by.user_id],
                )
                .await?;
            let session = tx
                .query_opt(
                    "SELECT revoked_at, expires_at, auth_time FROM sessions
                     WHERE id = $1 AND user_id = $2 FOR SHARE",
                    &[&by.session_id, &by.user_id],
                )
                .await?;
            let user_active = user.map(|row| row.try_get::<_, bool>(0)).transpose()?;
            let state = match (session, user_active) {
                (Some(row), Some(user_active)) => {
                    let state = SessionState {
                        revoked_at: row.try_get(0)?,
                        expires_at: row.try_get(1)?,
                        user_active,
                    };
                    Some((state, row.try_get(2)?))
                }
                _ => None,
            };
            if let Err(refused) = rules::may_write_as(state, by.fresh_since, now) {
                return Ok(Err(refused));
            }
            work(tx).await
        })
        .await?
    }
}

/// Stores `events`, for `user_id` where they name no user.
async fn record(
    tx: &Transaction<'_>,
    events: &[Event],
    user_id: Option<&str>,
) -> std::result::Result<(), tokio_postgres::Error> {
    if events.is_empty() {
        return Ok(());
    }
    let mut columns: [Vec<Option<String>>; 5] = Default::default();
    let (mut ats, mut names) = (Vec::new(), Vec::new());
    for e in events {
        ats.push(e.at);
        names.push(e.event.clone());
        let values = [
            e.user_id.as_deref().or(user_id).map(str::to_owned),
            e.login.clone(),
            e.ip.clone(),
            e.request_id.clone(),
            Some(details_text(&e.details)),
        ];
        for (column, value) in columns.iter_mut().zip(values) {
            column.push(value);
        }
    }
    let [users, logins, ips, requests, details] = &columns;
    tx.execute(
        "INSERT INTO audit_events (at, event, user_id, login, ip, request_id, details)
         SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[],
                              $6::text[], $7::text[])",
        &[&ats, &names, users, logins, ips, requests, details],
    )
    .await
    .map(drop)
}

fn entry_from(row: &Row) -> std::result::Result<Entry, tokio_postgres::Error> {
    Ok(Entry {
        id: row.try_get(0)?,
        event: Event {
            at: row.try_get(1)?,
            event: row.try_get(2)?,
            user_id: row.try_get(3)?,
            login: row.try_get(4)?,
            ip: row.try_get(5)?,
            request_id: row.try_get(6)?,
            details: details_from(row.try_get(7)?),
        },
    })
}

fn user_from(row: &Row) -> std::result::Result<User, tokio_postgres::Error> {
    Ok(User {
        id: row.try_get(0)?,
        email: row.try_get(1)?,
        username: row.try_get(2)?,
        is_active: row.try_get(3)?,
        created_at: row.try_get(4)?,
        updated_at: row.try_get(5)?,
        roles: roles_from(row.try_get(6)?),
        email_verified: row.try_get(7)?,
        pending_email: row.try_get(8)?,
        mfa_enabled: row.try_get(9)?,
    })
}

fn admin_key_from(row: &Row) -> std::result::Result<AdminKey, tokio_postgres::Error> {
    Ok(AdminKey {
        id: row.try_get(0)?,
        name: row.try_get(1)?,
        scopes: roles_from(row.try_get(2)?),
        created_at: row.try_get(3)?,
    })
}

fn credentials_from(row: &Row) -> std::result::Result<Credentials, tokio_postgres::Error> {
    Ok(Credentials {
        user: user_from(row)?,
        password_hash: row.try_get(AFTER_USER)?,
    })
}

/// Inserts a session inside `tx`, if a login checked against `verified_hash`
/// may open it (the rule of [`rules::may_open_session`]); whether it did.
async fn insert_session(
    tx: &Transaction<'_>,
    s: &NewSession,
    verified_hash: &str,
    rehash: Option<&str>,
) -> std::result::Result<bool, tokio_postgres::Error> {
    // The row lock orders this login after (or before) a password change.
    let current = tx
        .query_opt(
            "SELECT password_hash, is_active FROM users WHERE id = $1 FOR UPDATE",
            &[&s.user_id],
        )
        .await?
        .map(|row| {
            Ok::<_, tokio_postgres::Error>((
                row.try_get::<_, String>(0)?,
                row.try_get::<_, bool>(1)?,
            ))
        })
        .transpose()?;
    let current = current
        .as_ref()
        .map(|(hash, active)| (hash.as_str(), *active));
    if !rules::may_open_session(current, verified_hash) {
        return Ok(false);
    }
    // A rehash (parameters were upgraded) replaces the hash in the same write.
    tx.execute(
        "UPDATE users SET last_login_at = $2, password_hash = coalesce($3, password_hash)
         WHERE id = $1",
        &[&s.user_id, &s.now, &rehash],
    )
    .await?;
    tx.execute(
        "INSERT INTO sessions (id, user_id, refresh_digest, created_at, last_used_at,
                               expires_at, absolute_expires_at, ip, user_agent,
                               auth_time, amr)
         VALUES ($1, $2, $3, $4, $4, $5, $6, $7, $8, $9, $10)",
        &[
            &s.id,
            &s.user_id,
            &s.refresh_digest,
            &s.now,
            &s.expires_at,
            &s.absolute_expires_at,
            &s.ip,
            &s.user_agent,
            &s.auth_time,
            &json_list(&s.amr),
        ],
    )
    .await?;
    Ok(true)
}

/// Spends a second-factor proof of `user_id` inside `tx` (whose user row is
/// locked): a TOTP step later than the last accepted one becomes the last,
/// a recovery code is used up. `false`, changing nothing, when it does not
/// spend (no proof: a code that was plainly wrong; a replay, a code used
/// meanwhile, MFA off).
async fn spend_proof(
    tx: &Transaction<'_>,
    user_id: &str,
    proof: Option<&Proof>,
    now: i64,
) -> std::result::Result<bool, tokio_postgres::Error> {
    let spent = match proof {
        None => 0,
        Some(Proof::Totp { step }) => {
            tx.execute(
                "UPDATE users SET totp_last_step = $2, updated_at = $3
                 WHERE id = $1 AND mfa_enabled AND coalesce(totp_last_step < $2, TRUE)",
                &[&user_id, step, &now],
            )
            .await?
        }
        Some(Proof::Recovery { digest }) => {
            tx.execute(
                "DELETE FROM recovery_codes WHERE user_id = $1 AND digest = $2
                 AND EXISTS (SELECT 1 FROM users WHERE id = $1 AND mfa_enabled)",
                &[&user_id, digest],
            )
            .await?
        }
    };
    Ok(spent == 1)
}

/// Replaces `user_id`'s recovery codes by `digests` inside `tx`.
async fn store_recovery_codes(
    tx: &Transaction<'_>,
    user_id: &str,
    digests: &[String],
) -> std::result::Result<(), tokio_postgres::Error> {
    tx.execute("DELETE FROM recovery_codes WHERE user_id = $1", &[&user_id])
        .await?;
    tx.execute(
        "INSERT INTO recovery_codes (user_id, digest) SELECT $1, unnest($2::text[])",
        &[&user_id, &digests],
    )
    .await?;
    Ok(())
}

/// The user inside `tx` (whose row the caller knows exists).
async fn user_in(
    tx: &Transaction<'_>,
    user_id: &str,
) -> std::result::Result<User, tokio_postgres::Error> {
    let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1");
    user_from(&tx.query_one(&sql, &[&user_id]).await?)
}

/// Writes `mail` to the outbox inside `tx`, to `about` unless it names its
/// own recipient; `false`, writing nothing, when that address had its hourly
/// cap of capped messages already. The count runs under a per-address lock
/// held to the end of the transaction, so the cap holds across instances.
async fn enqueue(
    tx: &Transaction<'_>,
    mail: &Outgoing,
    about: &str,
    now: i64,
) -> std::result::Result<bool, tokio_postgres::Error> {
    let to = mail.to.as_deref().unwrap_or(about);
    if mail.cap.is_some() {
        tx.execute(
            "SELECT pg_advisory_xact_lock($1, hashtext(lower($2)))",
            &[&MAIL_CAP_LOCK, &to],
        )
        .await?;
        let sent: i64 = tx
            .query_one(
                "SELECT count(*) FROM outbox
                 WHERE capped AND lower(recipient) = lower($1) AND created_at > $2",
                &[&to, &now.saturating_sub(HOUR_MS)],
            )
            .await?
            .try_get(0)?;
        if !cap_allows(sent, mail) {
            return Ok(false);
        }
    }
    tx.execute(
        "INSERT INTO outbox (id, kind, recipient, capped, body, state, created_at, next_attempt_at)
         VALUES ($1, $2, $3, $4, $5, 'pending', $6, $6)",
        &[
            &mail.id,
            &mail.kind,
            &to,
            &mail.cap.is_some(),
            &mail.body,
            &now,
        ],
    )
    .await?;
    Ok(true)
}

/// A new verification link for what the active user has to verify, if
/// anything (see [`rules::to_verify`]). The caller holds the user's row
/// lock, which orders this after (or before) anything else writing the
/// user's links.
async fn verification_in(
    tx: &Transaction<'_>,
    user_id: &str,
    link: &LinkMail,
    now: i64,
) -> std::result::Result<bool, tokio_postgres::Error> {
    let user = user_in(tx, user_id).await?;
    match rules::to_verify(
        &user.email,
        user.email_verified,
        user.pending_email.as_deref(),
    ) {
        Some(address) if user.is_active => issue_link(tx, &user.id, address, link, now).await,
        _ => Ok(false),
    }
}

/// Stores `link` for `address` (voiding the user's older links of its
/// purpose) with its message; `false`, writing nothing, when over the cap.
async fn issue_link(
    tx: &Transaction<'_>,
    user_id: &str,
    address: &str,
    link: &LinkMail,
    now: i64,
) -> std::result::Result<bool, tokio_postgres::Error> {
    if !enqueue(tx, &link.mail, address, now).await? {
        return Ok(false);
    }
    let purpose = link.purpose.name();
    tx.execute(
        "UPDATE email_links SET used_at = $3 WHERE user_id = $1 AND purpose = $2 AND used_at IS NULL",
        &[&user_id, &purpose, &now],
    )
    .await?;
    tx.execute(
        "INSERT INTO email_links (digest, user_id, purpose, address, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6)",
        &[
            &link.digest,
            &user_id,
            &purpose,
            &address,
            &now,
            &link.expires_at,
        ],
    )
    .await?;
    Ok(true)
}

/// A link (by digest and purpose), its user and its address, with the columns
/// [`link_from`] reads.
const LINK_SQL: &str = "SELECT l.user_id, l.address, l.used_at, l.expires_at, u.is_active,
            lower(l.address) = lower(u.email)
     FROM email_links l JOIN users u ON u.id = l.user_id
     WHERE l.digest = $1 AND l.purpose = $2";

fn link_from(row: &Row) -> std::result::Result<(String, String, LinkState), tokio_postgres::Error> {
    Ok((
        row.try_get(0)?,
        row.try_get(1)?,
        LinkState {
            used_at: row.try_get(2)?,
            expires_at: row.try_get(3)?,
            user_active: row.try_get(4)?,
            to_current_email: row.try_get(5)?,
        },
    ))
}

/// The user and address of a usable link, read inside `tx` after locking the
/// user's row: every writer of a user's links holds that lock, so two
/// requests following one link take turns and the second finds it used.
async fn usable_link(
    tx: &Transaction<'_>,
    digest: &str,
    purpose: LinkPurpose,
    now: i64,
) -> std::result::Result<Option<(String, String)>, tokio_postgres::Error> {
    let owner = tx
        .query_opt(
            "SELECT user_id FROM email_links WHERE digest = $1",
            &[&digest],
        )
        .await?;
    let Some(owner) = owner else {
        return Ok(None);
    };
    let user_id: String = owner.try_get(0)?;
    tx.execute("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", &[&user_id])
        .await?;
    let link = tx.query_opt(LINK_SQL, &[&digest, &purpose.name()]).await?;
    Ok(link
        .as_ref()
        .map(link_from)
        .transpose()?
        .filter(|(_, _, state)| rules::link_usable(state, purpose, now))
        .map(|(user_id, address, _)| (user_id, address)))
}

fn key_info(row: &Row) -> std::result::Result<KeyInfo, tokio_postgres::Error> {
    let state: String = row.try_get(2)?;
    Ok(KeyInfo {
        kid: row.try_get(0)?,
        alg: row.try_get(1)?,
        // The column's CHECK constraint admits only the three states.
        state: KeyState::parse(&state).unwrap_or(KeyState::Retired),
        created_at: row.try_get(3)?,
        activates_at: row.try_get(4)?,
        retired_at: row.try_get(5)?,
    })
}

/// Applies one planned change to the ring inside `tx`.
async fn change_key(
    tx: &Transaction<'_>,
    change: &Change,
    fresh: &NewKey,
    now: i64,
) -> std::result::Result<(), tokio_postgres::Error> {
    let retire_active =
        "UPDATE signing_keys SET state = 'retired', retired_at = $1 WHERE state = 'active'";
    match change {
        Change::Create {
            kid,
            state,
            activates_at,
        } => {
            if *state == KeyState::Active {
                tx.execute(retire_active, &[&now]).await?;
            }
            tx.execute(
                "INSERT INTO signing_keys (kid, alg, state, created_at, activates_at, public_jwk, private_key)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[kid, &fresh.alg.name(), &state.name(), &now, activates_at, &fresh.public_jwk, &fresh.sealed_private],
            )
            .await?;
        }
        Change::Promote { kid } => {
            tx.execute(retire_active, &[&now]).await?;
            tx.execute(
                "UPDATE signing_keys SET state = 'active', activates_at = $2 WHERE kid = $1",
                &[kid, &now],
            )
            .await?;
        }
        Change::Delete { kid } => {
            tx.execute("DELETE FROM signing_keys WHERE kid = $1", &[kid])
                .await?;
        }
    }
    Ok(())
}

fn session_from(row: &Row) -> std::result::Result<Session, tokio_postgres::Error> {
    Ok(Session {
        id: row.try_get(0)?,
        user_id: row.try_get(1)?,
        created_at: row.try_get(2)?,
        last_used_at: row.try_get(3)?,
        expires_at: row.try_get(4)?,
        ip: row.try_get(5)?,
        user_agent: row.try_get(6)?,
    })
}

/// Appends to the invalidation log. The table lock makes entries commit in
/// sequence order (it is held to the end of the transaction).
async fn log_invalidations(
    tx: &Transaction<'_>,
    user_id: &str,
    sessions: Vec<Option<String>>,
    now: i64,
) -> std::result::Result<Vec<Invalidation>, tokio_postgres::Error> {
    if sessions.is_empty() {
        return Ok(Vec::new());
    }
    tx.batch_execute("LOCK TABLE invalidations IN SHARE ROW EXCLUSIVE MODE")
        .await?;
    let insert = tx
        .prepare("INSERT INTO invalidations (at, user_id, session_id) VALUES ($1, $2, $3)")
        .await?;
    let mut changes = Vec::with_capacity(sessions.len());
    for session_id in sessions {
        tx.execute(&insert, &[&now, &user_id, &session_id]).await?;
        changes.push(Invalidation {
            user_id: user_id.to_owned(),
            session_id,
        });
    }
    Ok(changes)
}

/// Turns the user's second factor off inside `tx`: the secret, the
/// recovery codes and every open login challenge go.
async fn mfa_off(
    tx: &Transaction<'_>,
    user_id: &str,
    now: i64,
) -> std::result::Result<(), tokio_postgres::Error> {
    tx.execute(
        "UPDATE users SET mfa_enabled = FALSE, totp_secret = NULL, totp_last_step = NULL,
                          updated_at = $2
         WHERE id = $1",
        &[&user_id, &now],
    )
    .await?;
    tx.execute("DELETE FROM recovery_codes WHERE user_id = $1", &[&user_id])
        .await?;
    tx.execute("DELETE FROM mfa_challenges WHERE user_id = $1", &[&user_id])
        .await?;
    Ok(())
}

/// Revokes the sessions in `scope` inside `tx` and logs what caches must drop.
async fn revoke_in(
    tx: &Transaction<'_>,
    user_id: &str,
    scope: &Revoke,
    now: i64,
) -> std::result::Result<Vec<Invalidation>, tokio_postgres::Error> {
    let rows = match scope {
        Revoke::Session(id) => {
            tx.query(
                "UPDATE sessions SET revoked_at = $2
                 WHERE user_id = $1 AND id = $3 AND revoked_at IS NULL AND expires_at > $2 RETURNING id",
                &[&user_id, &now, id],
            )
            .await?
        }
        Revoke::All => {
            tx.query(
                "UPDATE sessions SET revoked_at = $2
                 WHERE user_id = $1 AND revoked_at IS NULL RETURNING id",
                &[&user_id, &now],
            )
            .await?
        }
        Revoke::AllBut(keep) => {
            tx.query(
                "UPDATE sessions SET revoked_at = $2
                 WHERE user_id = $1 AND id <> $3 AND revoked_at IS NULL RETURNING id",
                &[&user_id, &now, keep],
            )
            .await?
        }
    };
    let revoked = rows
        .iter()
        .map(|row| row.try_get(0))
        .collect::<std::result::Result<Vec<String>, _>>()?;
    log_invalidations(tx, user_id, rules::invalidations(scope, revoked), now).await
}

#[async_trait]
impl Store for PgStore {
    async fn create_user(&self, user: NewUser, events: Vec<Event>) -> Result<User> {
        self.write(async |tx| {
            let sql = format!(
                "INSERT INTO users (id, email, username, password_hash, is_active, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, TRUE, $5, $5) RETURNING {USER_COLUMNS}"
            );
            let row = tx
                .query_one(&sql, &[&user.id, &user.email, &user.username, &user.password_hash, &user.now])
                .await?;
            if let Some(link) = &user.verify {
                issue_link(tx, &user.id, &user.email, link, user.now).await?;
            }
            record(tx, &events, Some(&user.id)).await?;
            user_from(&row)
        })
        .await
    }

    async fn credentials(&self, login: String) -> Result<Option<Credentials>> {
        let client = self.client().await?;
        let sql = format!(
            "SELECT {USER_COLUMNS}, password_hash FROM users
             WHERE lower(username) = $1 OR lower(email) = $1"
        );
        let row = client
            .query_opt(&sql, &[&login.to_lowercase()])
            .await
            .map_err(classify)?;
        row.as_ref()
            .map(credentials_from)
            .transpose()
            .map_err(classify)
    }

    async fn create_session(
        &self,
        s: NewSession,
        verified_hash: String,
        rehash: Option<String>,
        events: Vec<Event>,
    ) -> Result<Option<Session>> {
        let created = self
            .write(async |tx| {
                let created = insert_session(tx, &s, &verified_hash, rehash.as_deref()).await?;
                if created {
                    record(tx, &events, Some(&s.user_id)).await?;
                }
                Ok(created)
            })
            .await?;
        Ok(created.then(|| s.opened()))
    }

    async fn active_session(&self, session_id: String, now: i64) -> Result<Option<ActiveSession>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT s.user_id, s.revoked_at, s.expires_at, u.is_active
                 FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.id = $1",
                &[&session_id],
            )
            .await
            .map_err(classify)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let read = || -> std::result::Result<_, tokio_postgres::Error> {
            let state = SessionState {
                revoked_at: row.try_get(1)?,
                expires_at: row.try_get(2)?,
                user_active: row.try_get(3)?,
            };
            Ok((row.try_get::<_, String>(0)?, state))
        };
        let (user_id, state) = read().map_err(classify)?;
        Ok(
            rules::session_active(Some(state), now).then_some(ActiveSession {
                session_id,
                user_id,
                expires_at: state.expires_at,
            }),
        )
    }

    async fn user(&self, user_id: String) -> Result<Option<User>> {
        let client = self.client().await?;
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1");
        let row = client
            .query_opt(&sql, &[&user_id])
            .await
            .map_err(classify)?;
        row.as_ref().map(user_from).transpose().map_err(classify)
    }

    async fn invalidations_since(&self, cursor: i64) -> Result<(Vec<Invalidation>, i64)> {
        let client = self.client().await?;
        if cursor < 0 {
            let head: i64 = client
                .query_one("SELECT coalesce(max(seq), 0) FROM invalidations", &[])
                .await
                .and_then(|row| row.try_get(0))
                .map_err(classify)?;
            return Ok((Vec::new(), head));
        }
        let rows = client
            .query(
                "SELECT seq, user_id, session_id FROM invalidations WHERE seq > $1 ORDER BY seq",
                &[&cursor],
            )
            .await
            .map_err(classify)?;
        let mut next = cursor;
        let mut changes = Vec::with_capacity(rows.len());
        for row in rows {
            next = next.max(row.try_get(0).map_err(classify)?);
            changes.push(Invalidation {
                user_id: row.try_get(1).map_err(classify)?,
                session_id: row.try_get(2).map_err(classify)?,
            });
        }
        Ok((changes, next))
    }

    async fn credentials_by_id(&self, user_id: String) -> Result<Option<Credentials>> {
        let client = self.client().await?;
        let sql = format!("SELECT {USER_COLUMNS}, password_hash FROM users WHERE id = $1");
        let row = client
            .query_opt(&sql, &[&user_id])
            .await
            .map_err(classify)?;
        row.as_ref()
            .map(credentials_from)
            .transpose()
            .map_err(classify)
    }

    async fn refresh_owner(&self, digest: String) -> Result<Option<RefreshOwner>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT s.id, s.user_id, s.auth_time, s.amr, u.roles
                 FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.refresh_digest = $1",
                &[&digest],
            )
            .await
            .map_err(classify)?;
        row.map(|row| {
            Ok(RefreshOwner {
                session_id: row.try_get(0)?,
                user_id: row.try_get(1)?,
                auth_time: row.try_get(2)?,
                amr: roles_from(row.try_get(3)?),
                roles: roles_from(row.try_get(4)?),
            })
        })
        .transpose()
        .map_err(classify)
    }

    async fn rotate_refresh(
        &self,
        old_digest: String,
        new_digest: String,
        now: i64,
        refresh_ttl_ms: i64,
        grace_ms: i64,
    ) -> Result<Rotation> {
        self.write(async |tx| {
            // The row lock makes two instances exchanging the same token take
            // turns: the second then finds it spent.
            let current = tx
                .query_opt(
                    "SELECT s.id, s.user_id, s.absolute_expires_at, s.revoked_at, s.expires_at, u.is_active
                     FROM sessions s JOIN users u ON u.id = s.user_id
                     WHERE s.refresh_digest = $1
                     FOR UPDATE OF s",
                    &[&old_digest],
                )
                .await?;
            let presented = match current {
                Some(row) => Presented::Current {
                    session_id: row.try_get(0)?,
                    user_id: row.try_get(1)?,
                    absolute_expires_at: row.try_get(2)?,
                    state: SessionState {
                        revoked_at: row.try_get(3)?,
                        expires_at: row.try_get(4)?,
                        user_active: row.try_get(5)?,
                    },
                },
                None => match tx
                    .query_opt(
                        "SELECT s.id, s.user_id, t.spent_at FROM spent_refresh_tokens t
                         JOIN sessions s ON s.id = t.session_id WHERE t.digest = $1",
                        &[&old_digest],
                    )
                    .await?
                {
                    Some(row) => Presented::Spent {
                        session_id: row.try_get(0)?,
                        user_id: row.try_get(1)?,
                        spent_at: row.try_get(2)?,
                    },
                    None => Presented::Unknown,
                },
            };
            match rules::exchange(presented, now, refresh_ttl_ms, grace_ms) {
                Exchange::Rotate {
                    session_id,
                    user_id,
                    expires_at,
                } => {
                    tx.execute(
                        "UPDATE sessions SET refresh_digest = $2, last_used_at = $3, expires_at = $4
                         WHERE id = $1",
                        &[&session_id, &new_digest, &now, &expires_at],
                    )
                    .await?;
                    tx.execute(
                        "INSERT INTO spent_refresh_tokens (digest, session_id, spent_at) VALUES ($1, $2, $3)",
                        &[&old_digest, &session_id, &now],
                    )
                    .await?;
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
                    let changes = revoke_in(tx, &user_id, &scope, now).await?;
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
        self.write_as(&by, now, async |tx| {
            let changes = revoke_in(tx, &by.user_id, &scope, now).await?;
            if !changes.is_empty() {
                record(tx, &events, Some(&by.user_id)).await?;
            }
            Ok(Ok(changes))
        })
        .await
    }

    async fn sessions(&self, user_id: String, now: i64) -> Result<Vec<Session>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT id, user_id, created_at, last_used_at, expires_at, ip, user_agent
                 FROM sessions WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > $2
                 ORDER BY created_at DESC",
                &[&user_id, &now],
            )
            .await
            .map_err(classify)?;
        rows.iter()
            .map(session_from)
            .collect::<std::result::Result<_, _>>()
            .map_err(classify)
    }

    async fn update_profile(
        &self,
        by: Principal,
        change: ProfileChange,
        now: i64,
        events: Vec<Event>,
    ) -> Result<(User, Vec<Invalidation>)> {
        let user_id = &by.user_id;
        self.write_as(&by, now, async |tx| {
            let before = user_in(tx, user_id).await?;
            let verifies = change.mail.as_ref().is_some_and(|m| m.verify.is_some());
            let decided = rules::email_change(&before.email, change.email.as_deref(), verifies);
            match decided {
                EmailChange::Pending(pending) => {
                    let taken = tx
                        .query_opt(
                            "SELECT 1 FROM users WHERE lower(email) = lower($1) AND id <> $2",
                            &[&pending, user_id],
                        )
                        .await?;
                    if taken.is_some() {
                        return Ok(Err(Error::Conflict(Taken::Email)));
                    }
                    tx.execute(
                        "UPDATE users SET pending_email = $2, username = coalesce($3, username),
                                          updated_at = $4
                         WHERE id = $1",
                        &[user_id, &pending, &change.username, &now],
                    )
                    .await?;
                }
                EmailChange::Replace(email) => {
                    tx.execute(
                        "UPDATE users SET email = $2, email_verified = FALSE, pending_email = NULL,
                                          username = coalesce($3, username), updated_at = $4
                         WHERE id = $1",
                        &[user_id, &email, &change.username, &now],
                    )
                    .await?;
                }
                EmailChange::Unchanged => {
                    tx.execute(
                        "UPDATE users SET username = coalesce($2, username), updated_at = $3
                         WHERE id = $1",
                        &[user_id, &change.username, &now],
                    )
                    .await?;
                }
            }
            if let (EmailChange::Pending(address) | EmailChange::Replace(address), Some(mail)) =
                (decided, &change.mail)
            {
                enqueue(tx, &mail.notice, &before.email, now).await?;
                if let Some(link) = &mail.verify {
                    issue_link(tx, user_id, address, link, now).await?;
                }
            }
            record(tx, &events, Some(user_id)).await?;
            let user = user_in(tx, user_id).await?;
            let changes = log_invalidations(tx, user_id, vec![None], now).await?;
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
        self.write_as(&by, now, async |tx| {
            let changed = tx
                .query_opt(
                    "UPDATE users SET password_hash = $3, updated_at = $4
                     WHERE id = $1 AND password_hash = $2 RETURNING email",
                    &[&by.user_id, &verified_hash, &new_hash, &now],
                )
                .await?;
            let Some(changed) = changed else {
                return Ok(Err(Error::WrongCurrentPassword));
            };
            if let Some(notice) = &notice {
                let email: String = changed.try_get(0)?;
                enqueue(tx, notice, &email, now).await?;
            }
            record(tx, &events, Some(&by.user_id)).await?;
            let keep = Revoke::AllBut(by.session_id.clone());
            revoke_in(tx, &by.user_id, &keep, now).await.map(Ok)
        })
        .await
    }

    async fn request_verification(&self, by: Principal, link: LinkMail, now: i64) -> Result<bool> {
        self.write_as(&by, now, async |tx| {
            verification_in(tx, &by.user_id, &link, now).await.map(Ok)
        })
        .await
    }

    async fn resend_verification(&self, user_id: String, link: LinkMail, now: i64) -> Result<bool> {
        self.write(async |tx| {
            tx.execute("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", &[&user_id])
                .await?;
            let newest: Option<i64> = tx
                .query_one(
                    "SELECT max(created_at) FROM email_links
                     WHERE user_id = $1 AND purpose = 'verify' AND used_at IS NULL
                       AND expires_at > $2",
                    &[&user_id, &now],
                )
                .await?
                .try_get(0)?;
            if !rules::resend_due(newest, now) {
                return Ok(false);
            }
            verification_in(tx, &user_id, &link, now).await
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
        self.write(async |tx| {
            // The row lock orders this after (or before) anything else writing the user's links.
            let user = tx
                .query_opt(
                    "SELECT id, email FROM users WHERE lower(email) = lower($1) AND is_active
                     FOR UPDATE",
                    &[&email],
                )
                .await?;
            let Some(user) = user else {
                return Ok(false);
            };
            let (id, address): (String, String) = (user.try_get(0)?, user.try_get(1)?);
            let queued = issue_link(tx, &id, &address, &link, now).await?;
            if queued {
                record(tx, &events, Some(&id)).await?;
            }
            Ok(queued)
        })
        .await
    }

    async fn confirm_email(
        &self,
        digest: String,
        now: i64,
        events: Vec<Event>,
    ) -> Result<Option<(User, Vec<Invalidation>)>> {
        self.write(async |tx| {
            let Some((user_id, address)) =
                usable_link(tx, &digest, LinkPurpose::Verify, now).await?
            else {
                return Ok(None);
            };
            let user = user_in(tx, &user_id).await?;
            // A pending address taken meanwhile fails on the unique index:
            // `Conflict`, and the rollback leaves the link usable.
            match rules::confirm(&address, &user.email, user.pending_email.as_deref()) {
                Confirm::ApplyPending => {
                    tx.execute(
                        "UPDATE users SET email = pending_email, pending_email = NULL,
                                          email_verified = TRUE, updated_at = $2
                         WHERE id = $1",
                        &[&user_id, &now],
                    )
                    .await?
                }
                Confirm::VerifyCurrent => {
                    tx.execute(
                        "UPDATE users SET email_verified = TRUE, updated_at = $2 WHERE id = $1",
                        &[&user_id, &now],
                    )
                    .await?
                }
                Confirm::Stale => return Ok(None),
            };
            tx.execute(
                "UPDATE email_links SET used_at = $2 WHERE digest = $1",
                &[&digest, &now],
            )
            .await?;
            record(tx, &events, Some(&user_id)).await?;
            let user = user_in(tx, &user_id).await?;
            let changes = log_invalidations(tx, &user_id, vec![None], now).await?;
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
        self.write(async |tx| {
            let Some((user_id, _)) = usable_link(tx, &digest, LinkPurpose::Reset, now).await?
            else {
                return Ok(None);
            };
            let email: String = tx
                .query_one(
                    "UPDATE users SET password_hash = $2, updated_at = $3 WHERE id = $1
                     RETURNING email",
                    &[&user_id, &new_hash, &now],
                )
                .await?
                .try_get(0)?;
            tx.execute(
                "UPDATE email_links SET used_at = $3
                 WHERE user_id = $1 AND purpose = $2 AND used_at IS NULL",
                &[&user_id, &LinkPurpose::Reset.name(), &now],
            )
            .await?;
            enqueue(tx, &notice, &email, now).await?;
            record(tx, &events, Some(&user_id)).await?;
            let changes = revoke_in(tx, &user_id, &Revoke::All, now).await?;
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
        let client = self.client().await?;
        let link = client
            .query_opt(LINK_SQL, &[&digest, &purpose.name()])
            .await
            .map_err(classify)?;
        let usable = link
            .as_ref()
            .map(link_from)
            .transpose()
            .map_err(classify)?
            .filter(|(_, _, state)| rules::link_usable(state, purpose, now));
        let Some((user_id, _, _)) = usable else {
            return Ok(None);
        };
        let sql = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1");
        let row = client
            .query_opt(&sql, &[&user_id])
            .await
            .map_err(classify)?;
        row.as_ref().map(user_from).transpose().map_err(classify)
    }

    async fn claim_mail(
        &self,
        owner: String,
        now: i64,
        lease_ms: i64,
        limit: u32,
    ) -> Result<Vec<Claimed>> {
        let client = self.client().await?;
        // SKIP LOCKED: a row another instance is leasing right now is left to
        // it, and one it leased already fails the re-checked lease condition.
        // ARRAY(…) runs the locking subquery exactly once.
        let rows = client
            .query(
                "UPDATE outbox SET lease_owner = $1, lease_until = $2
                 WHERE id = ANY(ARRAY(
                     SELECT id FROM outbox
                     WHERE state = 'pending' AND next_attempt_at <= $3
                       AND (lease_until IS NULL OR lease_until <= $3)
                     ORDER BY next_attempt_at LIMIT $4
                     FOR UPDATE SKIP LOCKED))
                 RETURNING id, kind, recipient, body, attempts",
                &[
                    &owner,
                    &now.saturating_add(lease_ms),
                    &now,
                    &i64::from(limit),
                ],
            )
            .await
            .map_err(classify)?;
        rows.iter()
            .map(|row| {
                Ok(Claimed {
                    id: row.try_get(0)?,
                    kind: row.try_get(1)?,
                    recipient: row.try_get(2)?,
                    body: row.try_get::<_, Option<Vec<u8>>>(3)?.unwrap_or_default(),
                    attempts: u32::try_from(row.try_get::<_, i32>(4)?).unwrap_or(0),
                })
            })
            .collect::<std::result::Result<_, tokio_postgres::Error>>()
            .map_err(classify)
    }

    async fn finish_mail(
        &self,
        id: String,
        owner: String,
        outcome: MailOutcome,
        now: i64,
    ) -> Result<bool> {
        let row = rules::finished(&outcome);
        let client = self.client().await?;
        let changed = client
            .execute(
                "UPDATE outbox SET state = $3::text, attempts = attempts + 1,
                        body = CASE WHEN $4::boolean THEN body END,
                        next_attempt_at = coalesce($5::bigint, next_attempt_at),
                        done_at = CASE WHEN $3::text = 'pending' THEN NULL ELSE $6::bigint END,
                        last_error = $7::text, lease_owner = NULL, lease_until = NULL
                 WHERE id = $1 AND lease_owner = $2 AND state = 'pending'",
                &[
                    &id,
                    &owner,
                    &row.state,
                    &row.keeps_body,
                    &row.next_attempt_at,
                    &now,
                    &row.error,
                ],
            )
            .await
            .map_err(classify)?;
        Ok(changed == 1)
    }

    async fn second_factor(&self, user_id: String) -> Result<Option<SecondFactor>> {
        let client = self.client().await?;
        let sql =
            format!("SELECT {USER_COLUMNS}, totp_secret, totp_last_step FROM users WHERE id = $1");
        let row = client
            .query_opt(&sql, &[&user_id])
            .await
            .map_err(classify)?;
        row.map(|row| {
            Ok(SecondFactor {
                user: user_from(&row)?,
                secret: row.try_get(AFTER_USER)?,
                last_step: row.try_get(AFTER_USER + 1)?,
            })
        })
        .transpose()
        .map_err(classify)
    }

    async fn challenge(&self, digest: String, now: i64) -> Result<Option<Challenge>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT user_id, password_digest, auth_time, expires_at, failures, used_at
                 FROM mfa_challenges WHERE digest = $1",
                &[&digest],
            )
            .await
            .map_err(classify)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let read = || -> std::result::Result<_, tokio_postgres::Error> {
            let state = ChallengeState {
                expires_at: row.try_get(3)?,
                failures: i64::from(row.try_get::<_, i32>(4)?),
                used: row.try_get::<_, Option<i64>>(5)?.is_some(),
            };
            let challenge = Challenge {
                digest: digest.clone(),
                user_id: row.try_get(0)?,
                password_digest: row.try_get(1)?,
                auth_time: row.try_get(2)?,
                expires_at: state.expires_at,
            };
            Ok((challenge, state))
        };
        let (challenge, state) = read().map_err(classify)?;
        Ok(rules::challenge_usable(Some(state), now).then_some(challenge))
    }

    async fn open_challenge(&self, c: Challenge) -> Result<()> {
        self.write(async |tx| {
            tx.execute(
                "INSERT INTO mfa_challenges (digest, user_id, password_digest, auth_time, expires_at)
                 VALUES ($1, $2, $3, $4, $5)",
                &[&c.digest, &c.user_id, &c.password_digest, &c.auth_time, &c.expires_at],
            )
            .await
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
        let now = session.now;
        self.write(async |tx| {
            // The user's row first, as every writer of both takes them.
            let user = tx
                .query_opt(
                    "SELECT password_hash FROM users WHERE id = $1 AND mfa_enabled FOR UPDATE",
                    &[&session.user_id],
                )
                .await?;
            let found = tx
                .query_opt(
                    "SELECT password_digest, expires_at, failures, used_at FROM mfa_challenges
                     WHERE digest = $1 AND user_id = $2 FOR UPDATE",
                    &[&digest, &session.user_id],
                )
                .await?;
            let (Some(user), Some(found)) = (user, found) else {
                return Ok(ChallengeOutcome::Unusable);
            };
            let hash: String = user.try_get(0)?;
            let password_digest: String = found.try_get(0)?;
            let state = ChallengeState {
                expires_at: found.try_get(1)?,
                failures: i64::from(found.try_get::<_, i32>(2)?),
                used: found.try_get::<_, Option<i64>>(3)?.is_some(),
            };
            if !rules::challenge_usable(Some(state), now) {
                return Ok(ChallengeOutcome::Unusable);
            }
            let spent = spend_proof(tx, &session.user_id, proof.as_ref(), now).await?;
            if !spent {
                tx.execute(
                    "UPDATE mfa_challenges SET failures = failures + 1 WHERE digest = $1",
                    &[&digest],
                )
                .await?;
                let killed = rules::killed_by_wrong_code(state, now);
                return Ok(ChallengeOutcome::WrongCode { killed });
            }
            tx.execute(
                "UPDATE mfa_challenges SET used_at = $2 WHERE digest = $1",
                &[&digest, &now],
            )
            .await?;
            // The session opens only for the password the challenge was opened with.
            let opened = token_digest(&hash) == password_digest
                && insert_session(tx, &session, &hash, None).await?;
            if opened {
                record(tx, &events, Some(&session.user_id)).await?;
            }
            Ok(if opened {
                ChallengeOutcome::Completed(session.opened())
            } else {
                ChallengeOutcome::Unusable
            })
        })
        .await
    }

    async fn begin_totp(&self, by: Principal, sealed: Vec<u8>, now: i64) -> Result<()> {
        self.write_as(&by, now, async |tx| {
            let changed = tx
                .execute(
                    "UPDATE users SET totp_secret = $2, totp_last_step = NULL, updated_at = $3
                     WHERE id = $1 AND NOT mfa_enabled",
                    &[&by.user_id, &sealed, &now],
                )
                .await?;
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
        self.write_as(&by, now, async |tx| {
            let row = tx
                .query_one(
                    "SELECT totp_secret, mfa_enabled FROM users WHERE id = $1",
                    &[&by.user_id],
                )
                .await?;
            let pending: Option<Vec<u8>> = row.try_get(0)?;
            let enabled = row.try_get::<_, bool>(1)?;
            if let Err(refused) = rules::may_confirm_totp(enabled, pending.as_deref(), &sealed) {
                return Ok(Err(refused));
            }
            tx.execute(
                "UPDATE users SET mfa_enabled = TRUE, totp_last_step = $2, updated_at = $3
                 WHERE id = $1",
                &[&by.user_id, &step, &now],
            )
            .await?;
            store_recovery_codes(tx, &by.user_id, &codes).await?;
            record(tx, &events, Some(&by.user_id)).await?;
            log_invalidations(tx, &by.user_id, vec![None], now)
                .await
                .map(Ok)
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
        self.write_as(&by, now, async |tx| {
            let user = user_in(tx, &by.user_id).await?;
            let spent = spend_proof(tx, &by.user_id, proof.as_ref(), now).await?;
            if let Err(refused) = rules::may_change_with_code(user.mfa_enabled, spent) {
                return Ok(Err(refused));
            }
            mfa_off(tx, &by.user_id, now).await?;
            enqueue(tx, &notice, &user.email, now).await?;
            record(tx, &events, Some(&by.user_id)).await?;
            log_invalidations(tx, &by.user_id, vec![None], now)
                .await
                .map(Ok)
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
        self.write_as(&by, now, async |tx| {
            let enabled = user_in(tx, &by.user_id).await?.mfa_enabled;
            let spent = spend_proof(tx, &by.user_id, proof.as_ref(), now).await?;
            if let Err(refused) = rules::may_change_with_code(enabled, spent) {
                return Ok(Err(refused));
            }
            store_recovery_codes(tx, &by.user_id, &codes).await.map(Ok)
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
        self.write_as(&by, now, async |tx| {
            let row = tx
                .query_one(
                    "SELECT password_hash, mfa_enabled FROM users WHERE id = $1",
                    &[&by.user_id],
                )
                .await?;
            if row.try_get::<_, String>(0)? != verified_hash {
                return Ok(Err(Error::WrongCurrentPassword));
            }
            if row.try_get::<_, bool>(1)? {
                let spent = spend_proof(tx, &by.user_id, proof.as_ref(), now).await?;
                if !spent {
                    return Ok(Err(Error::SecondFactorRefused));
                }
            }
            tx.execute(
                "UPDATE sessions SET auth_time = $2 WHERE id = $1",
                &[&by.session_id, &now],
            )
            .await?;
            Ok(Ok(()))
        })
        .await
    }

    async fn admin_keys(&self) -> Result<Vec<AdminKey>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT id, name, scopes, created_at FROM admin_keys
                 WHERE revoked_at IS NULL ORDER BY created_at, id",
                &[],
            )
            .await
            .map_err(classify)?;
        rows.iter()
            .map(admin_key_from)
            .collect::<std::result::Result<_, _>>()
            .map_err(classify)
    }

    async fn admin_key(&self, id: String) -> Result<Option<(AdminKey, String)>> {
        let client = self.client().await?;
        let row = client
            .query_opt(
                "SELECT id, name, scopes, created_at, digest FROM admin_keys
                 WHERE id = $1 AND revoked_at IS NULL",
                &[&id],
            )
            .await
            .map_err(classify)?;
        row.map(|row| Ok((admin_key_from(&row)?, row.try_get(4)?)))
            .transpose()
            .map_err(classify)
    }

    async fn users(&self, select: UserSelect, now: i64) -> Result<Vec<UserRecord>> {
        let client = self.client().await?;
        let from = |rows: &str| {
            format!(
                "SELECT {USER_COLUMNS}, last_login_at,
                   (SELECT count(*) FROM sessions s
                    WHERE s.user_id = {rows}.id AND s.revoked_at IS NULL AND s.expires_at > $1)
                 FROM {rows}"
            )
        };
        let columns = from("users");
        let limit = |limit: u32| i64::from(limit);
        let rows = match select {
            UserSelect::One(id) => {
                let sql = format!("{columns} WHERE id = $2");
                client.query(&sql, &[&now, &id]).await
            }
            UserSelect::Page {
                prefix: None,
                after,
                limit: n,
            } => {
                let sql = format!("{columns} WHERE id > $2 ORDER BY id LIMIT $3");
                let after = after.unwrap_or_default();
                client.query(&sql, &[&now, &after, &limit(n)]).await
            }
            UserSelect::Page {
                prefix: Some((low, high)),
                after,
                limit: n,
            } => {
                // The prefix ranges pick the rows (a BitmapOr over the two
                // prefix indexes), then they are ordered: left to itself, the
                // planner may walk every id in order and filter instead.
                let sql = format!(
                    "WITH hits AS MATERIALIZED (
                       SELECT * FROM users
                       WHERE (lower(email) COLLATE \"C\" >= $4 AND lower(email) COLLATE \"C\" < $5)
                          OR (lower(username) COLLATE \"C\" >= $4
                              AND lower(username) COLLATE \"C\" < $5))
                     {} WHERE id > $2 ORDER BY id LIMIT $3",
                    from("hits")
                );
                let after = after.unwrap_or_default();
                client
                    .query(&sql, &[&now, &after, &limit(n), &low, &high])
                    .await
            }
        }
        .map_err(classify)?;
        rows.iter()
            .map(|row| {
                Ok(UserRecord {
                    user: user_from(row)?,
                    last_login_at: row.try_get(AFTER_USER)?,
                    active_sessions: u64::try_from(row.try_get::<_, i64>(AFTER_USER + 1)?)
                        .unwrap_or(0),
                })
            })
            .collect::<std::result::Result<_, tokio_postgres::Error>>()
            .map_err(classify)
    }

    async fn change_user(
        &self,
        user_id: String,
        change: AdminChange,
        now: i64,
        events: Vec<Event>,
    ) -> Result<Option<Vec<Invalidation>>> {
        self.write(async |tx| {
            let locked = format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1 FOR UPDATE");
            let found = match &change {
                AdminChange::Deactivate | AdminChange::Reactivate => {
                    let active = matches!(change, AdminChange::Reactivate);
                    tx.execute(
                        "UPDATE users SET is_active = $3, updated_at = $2 WHERE id = $1",
                        &[&user_id, &now, &active],
                    )
                    .await?
                }
                AdminChange::Logout => {
                    tx.execute("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", &[&user_id])
                        .await?
                }
                AdminChange::RemoveMfa { notice } => {
                    match tx.query_opt(&locked, &[&user_id]).await? {
                        Some(row) => {
                            let user = user_from(&row)?;
                            if user.mfa_enabled {
                                mfa_off(tx, &user_id, now).await?;
                                enqueue(tx, notice, &user.email, now).await?;
                            }
                            1
                        }
                        None => 0,
                    }
                }
                AdminChange::Erase => match tx.query_opt(&locked, &[&user_id]).await? {
                    Some(row) => {
                        let user = user_from(&row)?;
                        tx.execute(
                            "DELETE FROM outbox WHERE lower(recipient) IN (lower($1), lower($2))",
                            &[&user.email, &user.pending_email],
                        )
                        .await?;
                        // Of its events, the id, what and when stay.
                        tx.execute(
                            "UPDATE audit_events SET login = NULL, ip = NULL, details = '{}'
                             WHERE user_id = $1 OR login IN (lower($2), lower($3), lower($4))",
                            &[&user_id, &user.username, &user.email, &user.pending_email],
                        )
                        .await?;
                        // Sessions, links, codes and challenges go with it (ON DELETE CASCADE).
                        tx.execute("DELETE FROM users WHERE id = $1", &[&user_id])
                            .await?
                    }
                    None => 0,
                },
                AdminChange::SetRoles(roles) => {
                    tx.execute(
                        "UPDATE users SET roles = $3, updated_at = $2 WHERE id = $1",
                        &[&user_id, &now, &json_list(roles)],
                    )
                    .await?
                }
            };
            if found == 0 {
                return Ok(None);
            }
            record(tx, &events, Some(&user_id)).await?;
            let logged = match rules::ends_sessions(&change) {
                true => revoke_in(tx, &user_id, &Revoke::All, now).await?,
                false => log_invalidations(tx, &user_id, vec![None], now).await?,
            };
            Ok(Some(logged))
        })
        .await
    }

    async fn create_admin_key(&self, new: NewAdminKey, events: Vec<Event>) -> Result<()> {
        self.write(async |tx| {
            let k = &new.key;
            tx.execute(
                "INSERT INTO admin_keys (id, name, scopes, digest, created_at)
                 VALUES ($1, $2, $3, $4, $5)",
                &[
                    &k.id,
                    &k.name,
                    &json_list(&k.scopes),
                    &new.digest,
                    &k.created_at,
                ],
            )
            .await?;
            record(tx, &events, None).await
        })
        .await
    }

    async fn revoke_admin_key(&self, id: String, now: i64, events: Vec<Event>) -> Result<bool> {
        self.write(async |tx| {
            let changed = tx
                .execute(
                    "UPDATE admin_keys SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
                    &[&id, &now],
                )
                .await?
                == 1;
            if changed {
                record(tx, &events, None).await?;
            }
            Ok(changed)
        })
        .await
    }

    async fn outbox_pending(&self) -> Result<u64> {
        let client = self.client().await?;
        let pending: i64 = client
            .query_one("SELECT count(*) FROM outbox WHERE state = 'pending'", &[])
            .await
            .and_then(|row| row.try_get(0))
            .map_err(classify)?;
        Ok(u64::try_from(pending).unwrap_or(0))
    }

    async fn deactivate(
        &self,
        by: Principal,
        now: i64,
        events: Vec<Event>,
    ) -> Result<Vec<Invalidation>> {
        self.write_as(&by, now, async |tx| {
            tx.execute(
                "UPDATE users SET is_active = FALSE, updated_at = $2 WHERE id = $1",
                &[&by.user_id, &now],
            )
            .await?;
            record(tx, &events, Some(&by.user_id)).await?;
            revoke_in(tx, &by.user_id, &Revoke::All, now).await.map(Ok)
        })
        .await
    }

    async fn touch_sessions(&self, touches: Vec<(String, i64)>) -> Result<()> {
        let (ids, ats): (Vec<String>, Vec<i64>) = touches.into_iter().unzip();
        let client = self.client().await?;
        client
            .execute(
                "UPDATE sessions s SET last_used_at = GREATEST(s.last_used_at, t.at)
                 FROM unnest($1::text[], $2::bigint[]) AS t(id, at) WHERE s.id = t.id",
                &[&ids, &ats],
            )
            .await
            .map(drop)
            .map_err(classify)
    }

    async fn append_events(&self, events: Vec<Event>) -> Result<()> {
        self.write(async |tx| record(tx, &events, None).await).await
    }

    async fn audit(&self, query: Query) -> Result<Vec<Entry>> {
        // Only the filters asked for, so each picks its index.
        let mut sql = String::from(
            "SELECT id, at, event, user_id, login, ip, request_id, details
             FROM audit_events WHERE TRUE",
        );
        let limit = i64::from(query.limit);
        let mut args: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = Vec::new();
        let filters: [(&str, Option<&(dyn tokio_postgres::types::ToSql + Sync)>); 4] = [
            ("user_id =", query.user_id.as_ref().map(|v| v as _)),
            ("event =", query.event.as_ref().map(|v| v as _)),
            ("at >=", query.since.as_ref().map(|v| v as _)),
            ("id <", query.before.as_ref().map(|v| v as _)),
        ];
        for (condition, value) in filters {
            if let Some(value) = value {
                args.push(value);
                sql.push_str(&format!(" AND {condition} ${}", args.len()));
            }
        }
        args.push(&limit);
        sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", args.len()));
        let client = self.client().await?;
        let rows = client.query(&sql, &args).await.map_err(classify)?;
        rows.iter()
            .map(entry_from)
            .collect::<std::result::Result<_, _>>()
            .map_err(classify)
    }

    async fn purge(&self, now: i64, events_before: i64) -> Result<u64> {
        let keep = rules::retention(now);
        self.write(async |tx| {
            let sessions = tx
                .execute(
                    "DELETE FROM sessions WHERE expires_at <= $1 OR revoked_at <= $2",
                    &[&keep.expired_before, &keep.revoked_before],
                )
                .await?;
            tx.execute(
                "DELETE FROM invalidations WHERE at <= $1",
                &[&keep.revoked_before],
            )
            .await?;
            tx.execute(
                "DELETE FROM email_links WHERE expires_at <= $1 OR used_at <= $1",
                &[&keep.mail_before],
            )
            .await?;
            tx.execute(
                "DELETE FROM mfa_challenges WHERE expires_at <= $1",
                &[&keep.expired_before],
            )
            .await?;
            tx.execute(
                "DELETE FROM outbox WHERE state <> 'pending' AND done_at <= $1",
                &[&keep.mail_before],
            )
            .await?;
            tx.execute("DELETE FROM audit_events WHERE at < $1", &[&events_before])
                .await?;
            Ok(sessions)
        })
        .await
    }

    async fn key_ring(&self) -> Result<Vec<StoredKey>> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT kid, alg, state, created_at, activates_at, retired_at, public_jwk, private_key
                 FROM signing_keys",
                &[],
            )
            .await
            .map_err(classify)?;
        rows.iter()
            .map(|row| {
                Ok(StoredKey {
                    info: key_info(row)?,
                    public_jwk: row.try_get(6)?,
                    sealed_private: row.try_get(7)?,
                })
            })
            .collect::<std::result::Result<_, tokio_postgres::Error>>()
            .map_err(classify)
    }

    async fn change_keys(
        &self,
        op: KeyOp,
        policy: RingPolicy,
        fresh: NewKey,
        now: i64,
    ) -> Result<Vec<Change>> {
        self.write(async |tx| {
            // Instances take turns: one plans and applies while the others wait.
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&KEYS_LOCK])
                .await?;
            let keys = tx
                .query(
                    "SELECT kid, alg, state, created_at, activates_at, retired_at FROM signing_keys",
                    &[],
                )
                .await?
                .iter()
                .map(key_info)
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let changes = match op.plan(&keys, now, policy, &fresh.kid, fresh.alg.name()) {
                Ok(changes) => changes,
                Err(e) => return Ok(Err(e)),
            };
            for change in &changes {
                change_key(tx, change, &fresh, now).await?;
            }
            Ok(Ok(changes))
        })
        .await?
    }

    async fn close(&self) -> Result<()> {
        self.pool.close();
        Ok(())
    }
}
