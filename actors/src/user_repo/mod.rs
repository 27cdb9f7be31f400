//! The `UserRepo` actor: the only way to the user store.
//!
//! It opens the store when it starts (SQLite file or PostgreSQL pool, from
//! the settings), so a restart reopens its connections, and creates and
//! publishes the [`SessionCache`] that authenticated requests read; a new
//! cache is untrusted until the first poll of the invalidation log, which
//! happens at once.
//!
//! Operations arrive as typed messages ([`protocol`]). Reads run concurrently,
//! off the mailbox. Writes are serialized by the actor itself: it keeps them
//! in a queue and starts the next when the previous one is done, so two
//! registrations never race inside the database, and a write whose caller
//! gave up is skipped rather than committed unseen. What a write made stale
//! is dropped from the cache before its caller hears of it. The mailbox never
//! waits on the database.
//!
//! Four times a second it reads the invalidation log and applies what other
//! processes changed; every ten minutes it purges what has expired. Security
//! events that came with no write wait here (at most [`MAX_PENDING_EVENTS`])
//! and are stored in one batch write, as session uses are.

pub mod cache;
pub mod pg;
pub mod protocol;
pub mod rules;
pub mod sqlite;
pub mod store;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use ractor::rpc::CallResult;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::audit::Event;
use crate::clock::SharedClock;
use crate::error::{Error, Result};
use crate::model::{ActiveSession, Invalidation, User};
use crate::system::{ActorKind, Names};
pub use cache::SessionCache;
pub use protocol::{Read, Store, Write};
pub use store::DatabaseSettings;

/// Messages the `UserRepo` accepts.
pub enum UserRepoMsg {
    Read(Read),
    /// Boxed: writes carry whole messages and would make every message as large.
    Write(Box<Write>),
    /// The session if active, through the cache: what was read is cached.
    ActiveSession {
        session_id: String,
        now: i64,
        reply: RpcReplyPort<Result<Option<ActiveSession>>>,
    },
    /// A user by id, through the cache.
    User {
        user_id: String,
        now: i64,
        reply: RpcReplyPort<Result<Option<User>>>,
    },
    /// Record that a session was used (bookkeeping; nobody waits).
    Touch {
        session_id: String,
        now: i64,
    },
    /// Store a security event that came with no write (nobody waits).
    Record(Box<Event>),
    /// The write in progress finished; start the next.
    WriteDone,
    /// Time to read the invalidation log.
    Poll,
    /// A poll that started at `started` came back.
    Polled {
        started: i64,
        result: Result<(Vec<Invalidation>, i64)>,
    },
    /// Time to delete expired sessions and old log entries.
    Purge,
    /// Fail on purpose (chaos testing): the supervisor must restart us.
    Crash,
}

/// What the `UserRepo` is started with; it opens the store itself.
#[derive(Clone)]
pub struct UserRepoArgs {
    pub settings: DatabaseSettings,
    pub clock: SharedClock,
    /// Where it publishes the cache it creates.
    pub cache: Arc<ArcSwapOption<SessionCache>>,
}

/// A write waiting for its turn.
enum Queued {
    /// A caller's, with its reply port (boxed: a write is far larger than
    /// the bookkeeping).
    Asked(Box<Write>),
    /// The repository's own bookkeeping: the session uses recorded in
    /// [`RepoState::touches`] by the time this write runs, in one transaction.
    Touches,
    /// The events in [`RepoState::events`] by the time this write runs.
    Events,
    Purge {
        now: i64,
    },
}

pub struct RepoState {
    store: Arc<dyn Store>,
    cache: Arc<SessionCache>,
    clock: SharedClock,
    /// Where this incarnation reads the invalidation log from; negative until
    /// the first poll fixes it.
    cursor: i64,
    polling: bool,
    queue: VecDeque<Queued>,
    writing: bool,
    /// Session uses not yet written (the latest per session), at most
    /// [`MAX_PENDING_TOUCHES`]; a [`Queued::Touches`] is queued while any wait.
    touches: HashMap<String, i64>,
    /// Security events not yet stored, at most [`MAX_PENDING_EVENTS`]; a
    /// [`Queued::Events`] is queued while any wait.
    events: Vec<Event>,
    /// How long stored events are kept, in ms.
    keep_events_ms: i64,
}

/// Session uses held for the next batch; beyond it they are dropped (they
/// are bookkeeping: `last_used_at` in the session list).
const MAX_PENDING_TOUCHES: usize = 100_000;

/// Security events held for the next batch; beyond it they are dropped and
/// counted (`gatehouse_audit_events_dropped_total`), as a flood of refusals
/// must not grow memory without bound. Each is also in the log.
pub const MAX_PENDING_EVENTS: usize = 10_000;

/// How often the invalidation log is read.
pub const POLL_EVERY: Duration = Duration::from_millis(250);

/// How often expired sessions are purged.
pub const PURGE_EVERY: Duration = Duration::from_secs(600);

/// Opens the store the settings name: PostgreSQL when `url` is set, else the SQLite file.
pub async fn open(settings: &DatabaseSettings) -> Result<Arc<dyn Store>> {
    if settings.url.is_empty() {
        let settings = settings.clone();
        let store = tokio::task::spawn_blocking(move || sqlite::SqliteStore::open(&settings))
            .await
            .map_err(|e| Error::Internal(format!("opening the store: {e}")))??;
        Ok(Arc::new(store))
    } else {
        Ok(Arc::new(pg::PgStore::connect(settings)?))
    }
}

pub struct UserRepo;

impl UserRepo {
    /// Starts the next queued write, skipping those nobody waits for any more.
    fn next_write(myself: &ActorRef<UserRepoMsg>, state: &mut RepoState) {
        while !state.writing {
            let Some(queued) = state.queue.pop_front() else {
                return;
            };
            if let Queued::Asked(write) = &queued
                && write.abandoned()
            {
                continue;
            }
            state.writing = true;
            let (store, cache) = (Arc::clone(&state.store), Arc::clone(&state.cache));
            let myself = myself.clone();
            // Uses recorded from now on wait for the next batch.
            let touches = match &queued {
                Queued::Touches => std::mem::take(&mut state.touches),
                _ => HashMap::new(),
            };
            let events = match &queued {
                Queued::Events => std::mem::take(&mut state.events),
                _ => Vec::new(),
            };
            let keep_events_ms = state.keep_events_ms;
            tokio::spawn(async move {
                match queued {
                    Queued::Asked(write) => write.run(store.as_ref(), &cache).await,
                    Queued::Touches => {
                        let touches = touches.into_iter().collect();
                        if let Err(e) = store.touch_sessions(touches).await {
                            tracing::debug!(error = %e, "could not record session use");
                        }
                    }
                    Queued::Events => {
                        let count = events.len() as u64;
                        if let Err(e) = store.append_events(events).await {
                            tracing::warn!(error = %e, count, "security events were not stored");
                            metrics::counter!("gatehouse_audit_events_dropped_total")
                                .increment(count);
                        }
                    }
                    Queued::Purge { now } => match store
                        .purge(now, now.saturating_sub(keep_events_ms))
                        .await
                    {
                        Ok(purged) => tracing::info!(purged, "purged expired and revoked sessions"),
                        Err(e) => tracing::warn!(error = %e, "purging expired sessions failed"),
                    },
                }
                let _ = myself.send_message(UserRepoMsg::WriteDone);
            });
        }
    }
}

impl Actor for UserRepo {
    type Msg = UserRepoMsg;
    type State = RepoState;
    type Arguments = UserRepoArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: UserRepoArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let store = open(&args.settings).await?;
        let cache = Arc::new(SessionCache::default());
        args.cache.store(Some(Arc::clone(&cache)));
        // Read the log at once: until the first poll the cache serves nothing.
        myself.send_message(UserRepoMsg::Poll)?;
        myself.send_interval(POLL_EVERY, || UserRepoMsg::Poll);
        myself.send_interval(PURGE_EVERY, || UserRepoMsg::Purge);
        Ok(RepoState {
            store,
            cache,
            clock: args.clock,
            cursor: -1,
            polling: false,
            queue: VecDeque::new(),
            writing: false,
            touches: HashMap::new(),
            events: Vec::new(),
            keep_events_ms: i64::from(args.settings.audit_retention_days)
                .saturating_mul(86_400_000),
        })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Err(e) = state.store.close().await {
            tracing::warn!(error = %e, "flushing the store failed");
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            UserRepoMsg::Read(read) => {
                let store = Arc::clone(&state.store);
                tokio::spawn(async move { read.run(store.as_ref()).await });
            }
            UserRepoMsg::Write(write) => {
                state.queue.push_back(Queued::Asked(write));
                Self::next_write(&myself, state);
            }
            UserRepoMsg::Touch { session_id, now } => {
                if state.touches.is_empty() {
                    state.queue.push_back(Queued::Touches);
                }
                if state.touches.len() < MAX_PENDING_TOUCHES
                    || state.touches.contains_key(&session_id)
                {
                    let at = state.touches.entry(session_id).or_insert(now);
                    *at = (*at).max(now);
                }
                Self::next_write(&myself, state);
            }
            UserRepoMsg::Record(mut event) => {
                if state.events.is_empty() {
                    state.queue.push_back(Queued::Events);
                }
                if state.events.len() < MAX_PENDING_EVENTS {
                    if event.at == 0 {
                        event.at = state.clock.now_ms();
                    }
                    state.events.push(*event);
                } else {
                    metrics::counter!("gatehouse_audit_events_dropped_total").increment(1);
                }
                Self::next_write(&myself, state);
            }
            UserRepoMsg::Purge => {
                let now = state.clock.now_ms();
                state.queue.push_back(Queued::Purge { now });
                Self::next_write(&myself, state);
            }
            UserRepoMsg::WriteDone => {
                state.writing = false;
                Self::next_write(&myself, state);
            }
            UserRepoMsg::ActiveSession {
                session_id,
                now,
                reply,
            } => {
                let (store, cache) = (Arc::clone(&state.store), Arc::clone(&state.cache));
                let epoch = cache.epoch();
                tokio::spawn(async move {
                    let found = store.active_session(session_id, now).await;
                    if let Ok(Some(session)) = &found {
                        cache.put_session(session.clone(), epoch, now);
                    }
                    let _ = reply.send(found);
                });
            }
            UserRepoMsg::User {
                user_id,
                now,
                reply,
            } => {
                let (store, cache) = (Arc::clone(&state.store), Arc::clone(&state.cache));
                let epoch = cache.epoch();
                tokio::spawn(async move {
                    let found = store.user(user_id).await;
                    if let Ok(Some(user)) = &found {
                        cache.put_user(user.clone(), epoch, now);
                    }
                    let _ = reply.send(found);
                });
            }
            UserRepoMsg::Poll if !state.polling => {
                state.polling = true;
                let store = Arc::clone(&state.store);
                let (cursor, started) = (state.cursor, state.clock.now_ms());
                tokio::spawn(async move {
                    let result = store.invalidations_since(cursor).await;
                    let _ = myself.send_message(UserRepoMsg::Polled { started, result });
                });
            }
            UserRepoMsg::Poll => {}
            UserRepoMsg::Polled { started, result } => {
                state.polling = false;
                match result {
                    Ok((changes, cursor)) => {
                        for change in &changes {
                            state.cache.invalidate(change);
                        }
                        state.cursor = cursor;
                        state.cache.polled(started);
                    }
                    Err(e) => tracing::warn!(error = %e, "reading the invalidation log failed"),
                }
            }
            UserRepoMsg::Crash => return Err("crash requested through the chaos route".into()),
        }
        Ok(())
    }
}

/// The callers' handle to the `UserRepo`, valid across its restarts: the
/// typed operations of [`protocol`], the cached lookups, and the cache.
#[derive(Clone)]
pub struct Repo {
    names: Arc<Names>,
    /// The longest a store call may legitimately take, plus slack for the queue.
    timeout: Duration,
    cache: Arc<ArcSwapOption<SessionCache>>,
}

impl Repo {
    pub fn new(
        names: Arc<Names>,
        timeout: Duration,
        cache: Arc<ArcSwapOption<SessionCache>>,
    ) -> Self {
        Self {
            names,
            timeout,
            cache,
        }
    }

    /// The cache the running incarnation published, if it has started.
    fn cache(&self) -> Option<Arc<SessionCache>> {
        self.cache.load_full()
    }

    /// Asks the repository and waits. A timed-out call is the database's
    /// slowness (the breaker counts it); a call the actor never took is not.
    async fn ask<T: Send + 'static>(
        &self,
        build: impl FnOnce(RpcReplyPort<Result<T>>) -> UserRepoMsg,
    ) -> Result<T> {
        let name = self.names.get(ActorKind::UserRepo);
        let repo = ActorRef::<UserRepoMsg>::where_is(name)
            .ok_or_else(|| Error::ActorUnavailable("user_repo is not running".into()))?;
        match repo.call(build, Some(self.timeout)).await {
            Ok(CallResult::Success(result)) => result,
            Ok(CallResult::Timeout) => Err(Error::Unavailable("user_repo call timed out".into())),
            Ok(CallResult::SenderError) => {
                Err(Error::ActorUnavailable("user_repo dropped the call".into()))
            }
            Err(e) => Err(Error::ActorUnavailable(format!("user_repo: {e}"))),
        }
    }

    /// The session if it is cached as active (and the cache is trusted).
    pub fn cached_session(&self, session_id: &str, now: i64) -> Option<ActiveSession> {
        self.cache()?.session(session_id, now)
    }

    /// The session if active, read from the store; what is read is cached.
    pub async fn active_session(
        &self,
        session_id: &str,
        now: i64,
    ) -> Result<Option<ActiveSession>> {
        let session_id = session_id.to_owned();
        self.ask(|reply| UserRepoMsg::ActiveSession {
            session_id,
            now,
            reply,
        })
        .await
    }

    /// The user if cached (and the cache is trusted).
    pub fn cached_user(&self, user_id: &str, now: i64) -> Option<User> {
        self.cache()?.user(user_id, now)
    }

    /// A user by id, read from the store; what is read is cached.
    pub async fn user(&self, user_id: &str, now: i64) -> Result<Option<User>> {
        let user_id = user_id.to_owned();
        self.ask(|reply| UserRepoMsg::User {
            user_id,
            now,
            reply,
        })
        .await
    }

    /// Records, at most once a minute per session, that it was used.
    pub fn touch(&self, session_id: &str, now: i64) {
        if self.cache().is_some_and(|c| c.touch_due(session_id, now)) {
            let session_id = session_id.to_owned();
            crate::system::cast(
                self.names.get(ActorKind::UserRepo),
                UserRepoMsg::Touch { session_id, now },
            );
        }
    }

    /// Stores a security event that came with no write, soon and in a batch.
    pub fn record(&self, event: Event) {
        crate::system::cast(
            self.names.get(ActorKind::UserRepo),
            UserRepoMsg::Record(Box::new(event)),
        );
    }

    /// Whether the running incarnation's cache was confirmed by a poll lately.
    pub fn trusted(&self, now: i64) -> bool {
        self.cache().is_some_and(|c| c.trusted(now))
    }
}
