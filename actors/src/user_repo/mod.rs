//! The `UserRepo` actor: the only way to the user store.
//!
//! Writes are serialized: the actor hands each to its writer task, which runs
//! them one after another (on a blocking thread or the driver's socket), so
//! two registrations never race inside the database, and a write queued
//! behind a caller that gave up is skipped rather than committed unseen. The
//! mailbox itself never waits on the database: reads and the invalidation
//! poll run concurrently, also while a write waits on a locked database.
//!
//! Operations travel as jobs: a closure over the [`UserStore`] that sends its
//! typed result back on a oneshot channel. The store methods are the typed
//! interface; the actor decides only *how* they run (serial or concurrent),
//! which keeps one message type for every operation.
//!
//! The actor also polls the store's invalidation log four times a second and
//! applies it to the shared [`SessionCache`].

pub mod cache;
pub mod pg;
pub mod sqlite;
pub mod store;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::{mpsc, oneshot};

use crate::clock;
use crate::error::{Error, Result};
use crate::model::Invalidation;
use crate::system::{self, ActorKind, Names};
pub use cache::SessionCache;
pub use store::{DatabaseSettings, UserStore};

type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// One operation on the store, carrying its own reply channel.
pub type Job = Box<dyn FnOnce(Arc<dyn UserStore>) -> BoxFuture + Send>;

/// Messages the `UserRepo` accepts.
pub enum UserRepoMsg {
    /// Runs alone, in arrival order.
    Write(Job),
    /// Runs concurrently with other reads.
    Read(Job),
    /// Time to read the invalidation log.
    Poll,
    /// Time to delete expired sessions and old log entries.
    Purge,
    /// A poll that started at `started` came back.
    Polled {
        started: i64,
        result: Result<(Vec<Invalidation>, i64)>,
    },
    /// Fail on purpose (chaos testing): the supervisor must restart us.
    Crash,
}

/// What the `UserRepo` is started with; both outlive any one incarnation of the actor.
#[derive(Clone)]
pub struct UserRepoArgs {
    pub store: Arc<dyn UserStore>,
    pub cache: Arc<SessionCache>,
}

pub struct RepoState {
    store: Arc<dyn UserStore>,
    cache: Arc<SessionCache>,
    /// The writer task's queue; dropping it (when this incarnation ends)
    /// lets the task finish what was queued and stop.
    writes: mpsc::UnboundedSender<Job>,
    polling: bool,
}

/// How often the invalidation log is read.
pub const POLL_EVERY: Duration = Duration::from_millis(250);

/// How often expired sessions are purged.
pub const PURGE_EVERY: Duration = Duration::from_secs(600);

pub struct UserRepo;

impl Actor for UserRepo {
    type Msg = UserRepoMsg;
    type State = RepoState;
    type Arguments = UserRepoArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: UserRepoArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        // Read the log at once: until the first poll the cache serves nothing.
        myself.send_message(UserRepoMsg::Poll)?;
        myself.send_interval(POLL_EVERY, || UserRepoMsg::Poll);
        myself.send_interval(PURGE_EVERY, || UserRepoMsg::Purge);
        let (writes, mut queue) = mpsc::unbounded_channel::<Job>();
        let store = Arc::clone(&args.store);
        tokio::spawn(async move {
            while let Some(job) = queue.recv().await {
                job(Arc::clone(&store)).await;
            }
        });
        Ok(RepoState {
            store: args.store,
            cache: args.cache,
            writes,
            polling: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            UserRepoMsg::Write(job) => {
                if state.writes.send(job).is_err() {
                    return Err("the writer task is gone".into());
                }
            }
            UserRepoMsg::Read(job) => {
                tokio::spawn(job(Arc::clone(&state.store)));
            }
            UserRepoMsg::Poll if !state.polling => {
                state.polling = true;
                let store = Arc::clone(&state.store);
                let cursor = state.cache.cursor();
                tokio::spawn(async move {
                    let started = clock::unix_ms();
                    let result = store.invalidations_since(cursor).await;
                    let _ = myself.send_message(UserRepoMsg::Polled { started, result });
                });
            }
            UserRepoMsg::Poll => {}
            UserRepoMsg::Purge => {
                let purge: Job = Box::new(|store| {
                    Box::pin(async move {
                        match store.purge(clock::unix_ms()).await {
                            Ok(purged) => {
                                tracing::info!(purged, "purged expired and revoked sessions")
                            }
                            Err(e) => tracing::warn!(error = %e, "purging expired sessions failed"),
                        }
                    })
                });
                let _ = state.writes.send(purge);
            }
            UserRepoMsg::Polled { started, result } => {
                state.polling = false;
                match result {
                    Ok((changes, cursor)) => {
                        for change in &changes {
                            state.cache.invalidate(change);
                        }
                        state.cache.polled(started, cursor);
                    }
                    Err(e) => tracing::warn!(error = %e, "reading the invalidation log failed"),
                }
            }
            UserRepoMsg::Crash => return Err("crash requested through the chaos route".into()),
        }
        Ok(())
    }
}

/// The callers' handle to the `UserRepo`, valid across its restarts.
#[derive(Clone)]
pub struct UserRepoClient {
    names: Arc<Names>,
    timeout: Duration,
}

impl UserRepoClient {
    pub fn new(names: Arc<Names>, timeout: Duration) -> Self {
        Self { names, timeout }
    }

    /// Runs `op` as a write: after every write queued before it, alone.
    pub async fn write<T, F, Fut>(&self, op: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(Arc<dyn UserStore>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T>> + Send + 'static,
    {
        self.run(op, UserRepoMsg::Write).await
    }

    /// Runs `op` as a read, concurrently with other reads.
    pub async fn read<T, F, Fut>(&self, op: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(Arc<dyn UserStore>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T>> + Send + 'static,
    {
        self.run(op, UserRepoMsg::Read).await
    }

    async fn run<T, F, Fut>(&self, op: F, kind: fn(Job) -> UserRepoMsg) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(Arc<dyn UserStore>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T>> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |store| {
            Box::pin(async move {
                // The caller timed out or went away: do not commit what nobody will see.
                if tx.is_closed() {
                    return;
                }
                let _ = tx.send(op(store).await);
            })
        });
        system::send(self.names.get(ActorKind::UserRepo), kind(job))?;
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(result)) => result,
            // The actor failed with the job in its mailbox: the store never saw it.
            Ok(Err(_)) => Err(Error::ActorUnavailable("user_repo dropped the call".into())),
            Err(_) => Err(Error::Unavailable("user_repo call timed out".into())),
        }
    }
}
