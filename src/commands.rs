//! The commands besides serving: `gatehouse keys …` and `gatehouse
//! admin-keys …`. They work on the configured database while servers run
//! (every instance sees a change within a second), and print JSON lines on
//! stdout.

use std::sync::Arc;

use gatehouse_actors::audit::Event;
use gatehouse_actors::clock::{Clock, SystemClock};
use gatehouse_actors::model::AdminKey;
use gatehouse_actors::sealing::Sealer;
use gatehouse_actors::services::admin;
use gatehouse_actors::token_issuer::keys;
use gatehouse_actors::token_issuer::log_changes;
use gatehouse_actors::token_issuer::ring::{KeyInfo, KeyOp, announced};
use gatehouse_actors::user_repo::{self, Store};
use serde::Serialize;
use tracing::Level;

use crate::config::Loaded;
use crate::wire::SigningKeyBody;

/// `gatehouse keys …`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeysCommand {
    /// One line per key.
    List,
    /// Publish a new next key (or, with `now`, make a key sign at once); prints the key.
    Rotate { now: bool },
    /// Remove a key from the ring; its tokens stop verifying.
    Revoke { kid: String },
}

/// `gatehouse admin-keys …`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminKeysCommand {
    /// Prints the new key, this once.
    Create { name: String, scopes: Vec<String> },
    /// One line per key that is not revoked (never the key).
    List,
    /// Every use of the key is refused from now on.
    Revoke { id: String },
}

/// An admin key as listed.
#[derive(Serialize)]
struct AdminKeyLine<'a> {
    id: &'a str,
    name: &'a str,
    scopes: &'a [String],
    created_at: String,
    /// Only when it was just created.
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<&'a str>,
}

impl<'a> AdminKeyLine<'a> {
    fn of(k: &'a AdminKey, key: Option<&'a str>) -> Self {
        Self {
            id: &k.id,
            name: &k.name,
            scopes: &k.scopes,
            created_at: crate::http::rfc3339(k.created_at),
            key,
        }
    }
}

/// Runs an `admin-keys` command against the configured database; the lines to print.
pub async fn admin_keys(loaded: &Loaded, command: AdminKeysCommand) -> Result<Vec<String>, Failed> {
    let store: Arc<dyn Store> = user_repo::open(&loaded.config.database)
        .await
        .map_err(failed(1))?;
    let line = |k: &AdminKey, key: Option<&str>| {
        serde_json::to_string(&AdminKeyLine::of(k, key)).unwrap_or_default()
    };
    let now = SystemClock.now_ms();
    let lines = match command {
        AdminKeysCommand::Create { name, scopes } => {
            let (new, key) = admin::new_key(&name, &scopes, now).map_err(|e| Failed {
                message: match e {
                    gatehouse_actors::Error::Validation(problems) => problems
                        .iter()
                        .map(|p| format!("--{}: {}", p.field, p.message))
                        .collect::<Vec<_>>()
                        .join("\n"),
                    other => other.to_string(),
                },
                code: 2,
            })?;
            let event = Event::new("admin_key.created", now)
                .detail("admin_key", new.key.id.as_str())
                .detail("admin_name", new.key.name.as_str());
            store
                .create_admin_key(new.clone(), vec![event.clone()])
                .await
                .map_err(failed(1))?;
            event.log(Level::INFO, "admin key created");
            vec![line(&new.key, Some(&key))]
        }
        AdminKeysCommand::List => {
            let keys = store.admin_keys().await.map_err(failed(1))?;
            keys.iter().map(|k| line(k, None)).collect()
        }
        AdminKeysCommand::Revoke { id } => {
            let event = Event::new("admin_key.revoked", now).detail("admin_key", id.as_str());
            if !store
                .revoke_admin_key(id.clone(), now, vec![event.clone()])
                .await
                .map_err(failed(1))?
            {
                let _ = store.close().await;
                return Err(Failed {
                    message: "no such admin key".into(),
                    code: 1,
                });
            }
            event.log(Level::WARN, "admin key revoked");
            Vec::new()
        }
    };
    let _ = store.close().await;
    Ok(lines)
}

/// Why a command failed: what to print, and the exit code.
pub struct Failed {
    pub message: String,
    pub code: u8,
}

fn failed(code: u8) -> impl Fn(gatehouse_actors::Error) -> Failed {
    move |e| Failed {
        message: e.to_string(),
        code,
    }
}

/// Runs a `keys` command against the configured database; the lines to print.
pub async fn keys(loaded: &Loaded, command: KeysCommand) -> Result<Vec<String>, Failed> {
    let auth = &loaded.config.auth;
    let alg = auth.signing_algorithm;
    if !alg.stored() {
        return Err(Failed {
            message:
                "auth.signing_algorithm is HS256: it signs with auth.jwt_secret and keeps no keys"
                    .into(),
            code: 2,
        });
    }
    let store: Arc<dyn Store> = user_repo::open(&loaded.config.database)
        .await
        .map_err(failed(1))?;
    let line = |k: &KeyInfo| serde_json::to_string(&SigningKeyBody::from(k)).unwrap_or_default();
    let ring = |store: Arc<dyn Store>| async move {
        let ring = store.key_ring().await.map_err(failed(1))?;
        Ok::<Vec<KeyInfo>, Failed>(ring.into_iter().map(|k| k.info).collect())
    };
    let op = match command {
        KeysCommand::List => {
            let lines = ring(Arc::clone(&store)).await?.iter().map(line).collect();
            let _ = store.close().await;
            return Ok(lines);
        }
        KeysCommand::Rotate { now } => KeyOp::Rotate { now },
        KeysCommand::Revoke { kid } => KeyOp::Revoke { kid },
    };
    let sealer = Sealer::new(&loaded.key_encryption_secret, "signing-keys").map_err(failed(1))?;
    let fresh = keys::generate(alg, &sealer).map_err(failed(1))?;
    let now = SystemClock.now_ms();
    let changes = store
        .change_keys(op.clone(), auth.ring_policy(), fresh, now)
        .await
        .map_err(|e| match e {
            gatehouse_actors::Error::NotFound => Failed {
                message: "no such key".into(),
                code: 1,
            },
            other => failed(1)(other),
        })?;
    let mut events = log_changes(&changes, "gatehouse keys");
    for event in &mut events {
        event.at = now;
    }
    store.append_events(events).await.map_err(failed(1))?;
    let after = ring(Arc::clone(&store)).await?;
    let _ = store.close().await;
    Ok(announced(&after, &op).map(line).into_iter().collect())
}
