//! Access and refresh tokens: the `TokenIssuer` actor issues them, and
//! publishes what verifying them takes.
//!
//! With `EdDSA` or `ES256` the actor owns the key ring of the database
//! ([`ring`] decides its life, [`keys`] makes the keys): it loads it when it
//! starts and every half second (so a rotation or revocation made by another
//! instance or by `gatehouse keys` is seen within a second), looks after it
//! (a first key, rotation every `key_rotation_days`, forgetting retired keys)
//! and signs with the active key. With `HS256` it signs with `jwt_secret`
//! and publishes no key.
//!
//! Verifying is on the hot path of every authenticated request, so it needs
//! no mailbox: the actor publishes a [`Verifier`] holding every published
//! key, rebuilt whenever the ring changes, which also remembers the tokens
//! it verified (by digest, until their expiry) so that an Ed25519 check is
//! paid once per token, not once per request. Revoking a key rebuilds the
//! verifier without it, and with an empty memory.
//!
//! Validation is configured explicitly rather than trusting jsonwebtoken's
//! defaults: the configured algorithm only, `typ` must be `JWT`, a `kid` of
//! the ring for stored keys, no `crit` extensions, `iss`, `aud`, `exp`,
//! `nbf`, `sub` required, our own leeway, a token-kind claim so that nothing
//! but an access token passes, and a size cap before parsing. `exp` and `nbf`
//! are checked with `now` as a parameter.

pub mod keys;
pub mod ring;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::audit::{Event, SECURITY_TARGET};
use crate::clock::{SharedClock, secs_to_ms};
use crate::error::{Error, Result};
use crate::mailer::EmailVerification;
use crate::sealing::Sealer;
use crate::system::{self, ActorKind, Names};
use crate::user_repo::Repo;
use keys::{SigningAlgorithm, StoredKey};
use ring::{KeyOp, KeyState, RingPolicy};

/// The `[auth]` section of the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// How access tokens are signed.
    pub signing_algorithm: SigningAlgorithm,
    /// HS256 key; mutually exclusive with `jwt_secret_file`.
    pub jwt_secret: Option<SecretString>,
    /// File holding the HS256 key (trailing newline ignored).
    pub jwt_secret_file: Option<PathBuf>,
    /// Seals private signing keys (and TOTP secrets) at rest.
    pub key_encryption_secret: Option<SecretString>,
    /// File holding the key-encryption secret.
    pub key_encryption_secret_file: Option<PathBuf>,
    /// A new signing key every this many days; 0: only by `keys rotate`.
    pub key_rotation_days: u64,
    /// A spent refresh token presented again this soon after its rotation is
    /// refused without revoking the session (two tabs refreshing at once).
    pub refresh_reuse_grace_s: u64,
    /// `iss` claim written and required.
    pub issuer: String,
    /// `aud` claim written and required.
    pub audience: String,
    /// Lifetime of an access token.
    pub access_token_ttl_s: u64,
    /// Lifetime of a refresh token, and how far each refresh slides a session's expiry.
    pub refresh_token_ttl_s: u64,
    /// Clock skew forgiven on `exp` and `nbf`.
    pub leeway_s: u64,
    /// A session never lives longer than this, however often it is refreshed.
    pub session_max_lifetime_s: u64,
    /// Consecutive failed logins for one account before it is locked.
    pub max_failed_logins: u32,
    /// How long a locked account stays locked.
    pub lockout_s: u64,
    /// Whether addresses are verified, and whether login waits for it.
    pub email_verification: EmailVerification,
    /// Lifetime of an email verification link.
    pub verification_ttl_s: u64,
    /// Lifetime of a password-reset link.
    pub reset_ttl_s: u64,
    /// Privileged operations need a password check within this many seconds.
    pub reauth_window_s: u64,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            signing_algorithm: SigningAlgorithm::EdDSA,
            jwt_secret: None,
            jwt_secret_file: None,
            key_encryption_secret: None,
            key_encryption_secret_file: None,
            key_rotation_days: 30,
            refresh_reuse_grace_s: 10,
            issuer: "gatehouse".into(),
            audience: "gatehouse-clients".into(),
            access_token_ttl_s: 900,
            refresh_token_ttl_s: 1_209_600,
            leeway_s: 5,
            session_max_lifetime_s: 2_592_000,
            max_failed_logins: 10,
            lockout_s: 300,
            email_verification: EmailVerification::Optional,
            verification_ttl_s: 86_400,
            reset_ttl_s: 3_600,
            reauth_window_s: 900,
        }
    }
}

impl AuthSettings {
    /// How the key ring is looked after under these settings.
    pub fn ring_policy(&self) -> RingPolicy {
        RingPolicy {
            rotate_every_ms: (self.key_rotation_days > 0)
                .then(|| secs_to_ms(self.key_rotation_days.saturating_mul(86_400))),
            keep_retired_ms: secs_to_ms(self.access_token_ttl_s.saturating_add(self.leeway_s)),
        }
    }
}

/// Tokens longer than this are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 4096;

/// The value of the token-kind claim in every access token.
const ACCESS: &str = "access";

/// Claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccessClaims {
    /// User id.
    pub sub: String,
    /// Session id: revoking the session kills the token.
    pub sid: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    pub iss: String,
    pub aud: String,
    /// Unique per token, for audit trails.
    pub jti: String,
    /// Token kind; always `access`, so no other JWT we might mint could pass.
    pub token_use: String,
    /// When the session's password was last checked (Unix seconds).
    pub auth_time: i64,
    /// How the session was authenticated: `["pwd"]`, or `["pwd", "mfa"]`.
    pub amr: Vec<String>,
    /// The user's roles when the token was issued.
    pub roles: Vec<String>,
}

/// What a token says about its session, besides the times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub user_id: String,
    pub session_id: String,
    /// Unix seconds.
    pub auth_time: i64,
    pub amr: Vec<String>,
    pub roles: Vec<String>,
}

/// A freshly minted opaque token (a refresh token, an email link's) and the
/// digest that is stored instead of it.
pub struct OpaqueToken {
    pub token: SecretString,
    pub digest: String,
}

impl OpaqueToken {
    /// 256 bits of randomness, URL-safe base64.
    pub fn generate() -> Result<Self> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| Error::Internal(format!("no randomness: {e}")))?;
        let token = URL_SAFE_NO_PAD.encode(bytes);
        let digest = token_digest(&token);
        Ok(Self {
            token: token.into(),
            digest,
        })
    }
}

/// What is stored for an opaque token: its SHA-256, hex. The token has 256
/// bits of entropy, so a fast hash is enough to make a leaked table useless.
pub fn token_digest(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What signs access tokens: owned by the `TokenIssuer`.
pub struct Signer {
    encoding: EncodingKey,
    header: Header,
    issuer: String,
    audience: String,
    access_ttl_s: u64,
}

impl Signer {
    fn new(
        alg: Algorithm,
        kid: Option<String>,
        encoding: EncodingKey,
        settings: &AuthSettings,
    ) -> Self {
        let mut header = Header::new(alg);
        header.typ = Some("JWT".into());
        header.kid = kid;
        Self {
            encoding,
            header,
            issuer: settings.issuer.clone(),
            audience: settings.audience.clone(),
            access_ttl_s: settings.access_token_ttl_s,
        }
    }

    /// The signing key's id, for stored keys.
    pub fn kid(&self) -> Option<&str> {
        self.header.kid.as_deref()
    }

    /// Signs an access token for `grant`, valid from `now` (unix seconds).
    pub fn sign(&self, grant: &Grant, now: i64) -> Result<AccessToken> {
        let ttl = self.access_ttl_s;
        let claims = AccessClaims {
            sub: grant.user_id.clone(),
            sid: grant.session_id.clone(),
            iat: now,
            nbf: now,
            exp: now.saturating_add(i64::try_from(ttl).unwrap_or(i64::MAX)),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            jti: uuid::Uuid::new_v4().to_string(),
            token_use: ACCESS.into(),
            auth_time: grant.auth_time,
            amr: grant.amr.clone(),
            roles: grant.roles.clone(),
        };
        let token = jsonwebtoken::encode(&self.header, &claims, &self.encoding)
            .map_err(|e| Error::Internal(format!("jwt sign: {e}")))?;
        Ok(AccessToken {
            token: token.into(),
            expires_in: ttl,
        })
    }
}

/// Tokens remembered as verified at most, per verifier.
const VERIFIED_CAPACITY: u64 = 250_000;

/// A token whose signature and claims were checked, remembered by digest.
struct Verified {
    claims: AccessClaims,
}

/// What checks access tokens: published by the `TokenIssuer`, read by every
/// authenticated request. It holds every published key (or the HS256
/// secret) and the JWKS document that publishes them.
pub struct Verifier {
    alg: Algorithm,
    /// By `kid`; the HS256 secret under the empty kid.
    keys: HashMap<String, DecodingKey>,
    validation: Validation,
    leeway_s: i64,
    /// Tokens already verified, by SHA-256 of the token, until their expiry
    /// could have come (the access token lifetime); `exp` is checked anew on
    /// every use.
    verified: moka::sync::Cache<[u8; 32], Arc<Verified>>,
    /// `{"keys": [...]}` as served at `/.well-known/jwks.json`.
    jwks: Bytes,
}

impl Verifier {
    fn new(
        alg: Algorithm,
        keys: HashMap<String, DecodingKey>,
        published: &[serde_json::Value],
        settings: &AuthSettings,
    ) -> Result<Self> {
        let mut validation = Validation::new(alg);
        validation.algorithms = vec![alg];
        // exp and nbf are checked in `verify` with `now` as a parameter.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        validation.set_issuer(&[&settings.issuer]);
        validation.set_audience(&[&settings.audience]);
        let ttl = Duration::from_secs(
            settings
                .access_token_ttl_s
                .saturating_add(settings.leeway_s),
        );
        let jwks = serde_json::to_vec(&serde_json::json!({ "keys": published }))
            .map_err(|e| Error::Internal(format!("serializing the JWKS: {e}")))?;
        Ok(Self {
            alg,
            keys,
            validation,
            leeway_s: i64::try_from(settings.leeway_s).unwrap_or(i64::MAX),
            verified: moka::sync::Cache::builder()
                .max_capacity(VERIFIED_CAPACITY)
                .time_to_live(ttl)
                .build(),
            jwks: Bytes::from(jwks),
        })
    }

    /// Checks signature, header, claims and times; `now` is unix seconds.
    pub fn verify(&self, token: &str, now: i64) -> Result<AccessClaims> {
        if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
            return Err(Error::InvalidToken);
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let verified = match self.verified.get(&digest) {
            Some(verified) => verified,
            None => {
                let verified = Arc::new(self.check(token)?);
                self.verified.insert(digest, Arc::clone(&verified));
                verified
            }
        };
        let claims = &verified.claims;
        if claims.nbf > now.saturating_add(self.leeway_s) {
            return Err(Error::InvalidToken);
        }
        if claims.exp <= now.saturating_sub(self.leeway_s) {
            return Err(Error::TokenExpired);
        }
        Ok(claims.clone())
    }

    /// The signature, header and claims of a token not seen before.
    fn check(&self, token: &str) -> Result<Verified> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| Error::InvalidToken)?;
        if header.alg != self.alg || header.typ.as_deref() != Some("JWT") || header.crit.is_some() {
            return Err(Error::InvalidToken);
        }
        let key = match self.alg {
            Algorithm::HS256 => self.keys.get(""),
            _ => header.kid.as_deref().and_then(|kid| self.keys.get(kid)),
        }
        .ok_or(Error::InvalidToken)?;
        let claims = jsonwebtoken::decode::<AccessClaims>(token, key, &self.validation)
            .map_err(|_| Error::InvalidToken)?
            .claims;
        if claims.token_use != ACCESS {
            return Err(Error::InvalidToken);
        }
        Ok(Verified { claims })
    }

    /// The JWKS document: the public keys of every key that is next, active
    /// or retired (none with HS256).
    pub fn jwks(&self) -> Bytes {
        self.jwks.clone()
    }
}

/// The HS256 signer and verifier for `secret` under `settings`.
pub fn hs256(secret: &SecretString, settings: &AuthSettings) -> Result<(Signer, Verifier)> {
    let key = secret.expose_secret().as_bytes();
    let encoding =
        EncodingKey::from_secret(key).map_err(|e| Error::Internal(format!("jwt key: {e}")))?;
    let decoding =
        DecodingKey::from_secret(key).map_err(|e| Error::Internal(format!("jwt key: {e}")))?;
    let signer = Signer::new(Algorithm::HS256, None, encoding, settings);
    let verifier = Verifier::new(
        Algorithm::HS256,
        HashMap::from([(String::new(), decoding)]),
        &[],
        settings,
    )?;
    Ok((signer, verifier))
}

/// The signer (if a key is active) and verifier for a stored key ring.
pub fn from_ring(
    alg: SigningAlgorithm,
    ring: &[StoredKey],
    sealer: &Sealer,
    settings: &AuthSettings,
) -> Result<(Option<Signer>, Verifier)> {
    let mut decoding = HashMap::new();
    let mut published = Vec::new();
    let mut signer = None;
    for key in ring.iter().filter(|k| k.info.alg == alg.name()) {
        let (jwk, verifying) = keys::verifying_key(&key.public_jwk)?;
        decoding.insert(key.info.kid.clone(), verifying);
        published.push(
            serde_json::to_value(&jwk)
                .map_err(|e| Error::Internal(format!("serializing a JWK: {e}")))?,
        );
        if key.info.state == KeyState::Active {
            let encoding = keys::signing_key(alg, sealer, &key.info.kid, &key.sealed_private)?;
            signer = Some(Signer::new(
                alg.jwt(),
                Some(key.info.kid.clone()),
                encoding,
                settings,
            ));
        }
    }
    let verifier = Verifier::new(alg.jwt(), decoding, &published, settings)?;
    Ok((signer, verifier))
}

/// An access token as handed to a client.
pub struct AccessToken {
    pub token: SecretString,
    pub expires_in: u64,
}

/// What one login or refresh is handed: both tokens.
pub struct Issued {
    pub access: AccessToken,
    pub refresh: OpaqueToken,
}

/// Messages the `TokenIssuer` accepts.
pub enum TokenIssuerMsg {
    /// A fresh refresh token, and an access token for `grant` signed at
    /// `now` (unix seconds): one round trip per login or refresh.
    Issue {
        grant: Grant,
        now: i64,
        reply: RpcReplyPort<Result<Issued>>,
    },
    /// Read the key ring again (stored keys).
    Reload,
    /// The key ring as read.
    Loaded(Result<Vec<StoredKey>>),
    /// Look after the ring: whatever is due.
    Upkeep,
    /// Fail on purpose (chaos testing): the supervisor must restart us.
    Crash,
}

/// Where the signing keys come from.
#[derive(Clone)]
pub enum KeySource {
    /// `auth.jwt_secret`.
    Secret(SecretString),
    /// The database's key ring, private halves sealed with `sealer`.
    Ring {
        alg: SigningAlgorithm,
        sealer: Arc<Sealer>,
        repo: Repo,
    },
}

/// What the `TokenIssuer` is started with.
#[derive(Clone)]
pub struct TokenIssuerArgs {
    pub source: KeySource,
    pub settings: AuthSettings,
    pub clock: SharedClock,
    /// Where it publishes its [`Verifier`].
    pub published: Arc<ArcSwapOption<Verifier>>,
}

/// The actor's state.
pub struct Issuer {
    args: TokenIssuerArgs,
    /// What signs now; none until a stored ring with an active key was read.
    signer: Option<Signer>,
    /// The ring as last built (kid, state), to rebuild only on a change.
    built: Vec<(String, KeyState)>,
    /// The ring as last found unusable, to say so once per change.
    unusable: Vec<(String, KeyState)>,
    loading: bool,
}

/// How often a stored ring is read again.
pub const RELOAD_EVERY: Duration = Duration::from_millis(500);

/// How often a stored ring is looked after.
pub const UPKEEP_EVERY: Duration = Duration::from_secs(30);

pub struct TokenIssuer;

/// How long starting waits for a first read of the ring (and a first key).
const FIRST_LOAD_WITHIN: Duration = Duration::from_secs(5);

impl TokenIssuer {
    /// Reads the ring (making a first key if there is none) and builds from
    /// it, before the first token is asked for. A ring that cannot be read
    /// (the database is away at start-up) is read again later; one that is
    /// read but cannot be used (sealed under another key-encryption secret)
    /// is an error: nothing could ever sign.
    async fn first_load(state: &mut Issuer) -> Result<()> {
        let KeySource::Ring { alg, sealer, repo } = &state.args.source else {
            return Ok(());
        };
        let read = async {
            let mut ring = repo.key_ring().await?;
            if !ring.iter().any(|k| k.info.state == KeyState::Active) {
                let fresh = keys::generate(*alg, sealer)?;
                let now = state.args.clock.now_ms();
                let policy = state.args.settings.ring_policy();
                let changes = repo.change_keys(KeyOp::Upkeep, policy, fresh, now).await?;
                log_changes(&changes, "upkeep");
                ring = repo.key_ring().await?;
            }
            Ok::<_, Error>(ring)
        };
        match tokio::time::timeout(FIRST_LOAD_WITHIN, read).await {
            Ok(Ok(ring)) => Self::build(state, &ring),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "the signing keys could not be read yet; retrying");
                Ok(())
            }
            Err(_) => {
                tracing::warn!("reading the signing keys timed out; retrying");
                Ok(())
            }
        }
    }

    /// The ring's shape: what a rebuild depends on.
    fn shape(ring: &[StoredKey]) -> Vec<(String, KeyState)> {
        ring.iter()
            .map(|k| (k.info.kid.clone(), k.info.state))
            .collect()
    }

    /// Rebuilds the signer and the published verifier from `ring`, if it changed.
    fn build(state: &mut Issuer, ring: &[StoredKey]) -> Result<()> {
        let KeySource::Ring { alg, sealer, .. } = &state.args.source else {
            return Ok(());
        };
        let now = state.args.clock.now_ms();
        if let Some(active) = ring.iter().find(|k| k.info.state == KeyState::Active) {
            metrics::gauge!("gatehouse_signing_key_age_seconds")
                .set((now - active.info.activates_at).max(0) as f64 / 1000.0);
        }
        let shape = Self::shape(ring);
        if shape != state.built {
            let (signer, verifier) = from_ring(*alg, ring, sealer, &state.args.settings)?;
            state.signer = signer;
            state.args.published.store(Some(Arc::new(verifier)));
            state.built = shape;
        }
        Ok(())
    }

    /// Runs the upkeep off the mailbox: a fresh key in case one is needed,
    /// the ring's changes applied by the store, the events logged.
    fn upkeep(myself: ActorRef<TokenIssuerMsg>, state: &Issuer) {
        let KeySource::Ring { alg, sealer, repo } = &state.args.source else {
            return;
        };
        let (alg, sealer, repo) = (*alg, Arc::clone(sealer), repo.clone());
        let policy = state.args.settings.ring_policy();
        let now = state.args.clock.now_ms();
        tokio::spawn(async move {
            let changed = match keys::generate(alg, &sealer) {
                Ok(fresh) => repo.change_keys(KeyOp::Upkeep, policy, fresh, now).await,
                Err(e) => Err(e),
            };
            match changed {
                Ok(changes) => drop(log_changes(&changes, "upkeep")),
                Err(e) => tracing::warn!(error = %e, "looking after the signing keys failed"),
            }
            let _ = myself.send_message(TokenIssuerMsg::Reload);
        });
    }
}

/// Logs `key.rotated` for a key that started signing and `key.revoked` for
/// one that was removed while it still verified tokens (`why` says who asked),
/// and returns those two kinds as events to store. Where a repository runs,
/// the audit layer stores them from the log; a command stores them itself.
pub fn log_changes(changes: &[ring::Change], why: &'static str) -> Vec<Event> {
    let mut stored = Vec::new();
    let mut event = |name: &str, kid: &str| {
        stored.push(Event::new(name, 0).detail("kid", kid).detail("by", why));
    };
    for change in changes {
        match change {
            ring::Change::Create {
                kid,
                state: KeyState::Active,
                ..
            }
            | ring::Change::Promote { kid } => {
                tracing::warn!(target: SECURITY_TARGET, event = "key.rotated",
                    kid = %kid, by = why, "a new signing key signs from now on");
                event("key.rotated", kid);
            }
            ring::Change::Create { kid, .. } => {
                tracing::info!(kid = %kid, by = why, "a new signing key is published ahead of signing");
            }
            ring::Change::Delete { kid } if why != "upkeep" => {
                tracing::warn!(target: SECURITY_TARGET, event = "key.revoked",
                    kid = %kid, by = why, "a signing key was revoked; its tokens are refused");
                event("key.revoked", kid);
            }
            ring::Change::Delete { kid } => {
                tracing::info!(kid = %kid, "a retired signing key was forgotten");
            }
        }
    }
    stored
}

impl Actor for TokenIssuer {
    type Msg = TokenIssuerMsg;
    type State = Issuer;
    type Arguments = TokenIssuerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: TokenIssuerArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let signer = match &args.source {
            KeySource::Secret(secret) => {
                let (signer, verifier) = hs256(secret, &args.settings)?;
                args.published.store(Some(Arc::new(verifier)));
                Some(signer)
            }
            KeySource::Ring { .. } => {
                // The ring is then read every half second. Should the first
                // read fail (the database is away at start-up), signing waits
                // for a later one; an earlier incarnation's verifier still serves.
                myself.send_interval(RELOAD_EVERY, || TokenIssuerMsg::Reload);
                myself.send_interval(UPKEEP_EVERY, || TokenIssuerMsg::Upkeep);
                None
            }
        };
        let mut state = Issuer {
            args,
            signer,
            built: Vec::new(),
            unusable: Vec::new(),
            loading: false,
        };
        Self::first_load(&mut state)
            .await
            .map_err(|e| format!("the signing keys cannot be used: {e}"))?;
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // A caller that gave up is not an error of ours: replies may go nowhere.
        match msg {
            TokenIssuerMsg::Issue { grant, now, reply } => {
                let issued = match &state.signer {
                    Some(signer) => OpaqueToken::generate().and_then(|refresh| {
                        let access = signer.sign(&grant, now)?;
                        Ok(Issued { access, refresh })
                    }),
                    None => Err(Error::Unavailable(
                        "no signing key has been read yet".into(),
                    )),
                };
                let _ = reply.send(issued);
            }
            TokenIssuerMsg::Reload => {
                if let KeySource::Ring { repo, .. } = &state.args.source
                    && !state.loading
                {
                    state.loading = true;
                    let repo = repo.clone();
                    tokio::spawn(async move {
                        let ring = repo.key_ring().await;
                        let _ = myself.send_message(TokenIssuerMsg::Loaded(ring));
                    });
                }
            }
            TokenIssuerMsg::Loaded(ring) => {
                state.loading = false;
                match ring {
                    Ok(ring) => {
                        if !ring.iter().any(|k| k.info.state == KeyState::Active) {
                            Self::upkeep(myself, state);
                        }
                        if let Err(e) = Self::build(state, &ring) {
                            let shape = Self::shape(&ring);
                            if shape != state.unusable {
                                tracing::error!(error = %e, "the signing keys cannot be used");
                                state.unusable = shape;
                            }
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "reading the signing keys failed"),
                }
            }
            TokenIssuerMsg::Upkeep => Self::upkeep(myself, state),
            TokenIssuerMsg::Crash => return Err("crash requested through the chaos route".into()),
        }
        Ok(())
    }
}

/// The callers' handle: issue through the actor, verify with what it published.
#[derive(Clone)]
pub struct Tokens {
    names: Arc<Names>,
    timeout: Duration,
    published: Arc<ArcSwapOption<Verifier>>,
}

impl Tokens {
    pub fn new(
        names: Arc<Names>,
        timeout: Duration,
        published: Arc<ArcSwapOption<Verifier>>,
    ) -> Self {
        Self {
            names,
            timeout,
            published,
        }
    }

    pub async fn issue(&self, grant: Grant, now: i64) -> Result<Issued> {
        system::call(
            self.names.get(ActorKind::TokenIssuer),
            self.timeout,
            |reply| TokenIssuerMsg::Issue { grant, now, reply },
        )
        .await?
    }

    fn verifier(&self) -> Result<Arc<Verifier>> {
        self.published
            .load_full()
            .ok_or_else(|| Error::Unavailable("no signing keys have been read yet".into()))
    }

    /// Checks an access token; `now` is unix seconds.
    pub fn verify(&self, token: &str, now: i64) -> Result<AccessClaims> {
        self.verifier()?.verify(token, now)
    }

    /// The JWKS document as published now.
    pub fn jwks(&self) -> Result<Bytes> {
        Ok(self.verifier()?.jwks())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: i64 = 1_800_000_000;

    fn grant() -> Grant {
        Grant {
            user_id: "u1".into(),
            session_id: "s1".into(),
            auth_time: NOW - 30,
            amr: vec!["pwd".into()],
            roles: vec!["admin".into()],
        }
    }

    fn pair() -> (Signer, Verifier) {
        hs256(
            &SecretString::from("k".repeat(32)),
            &AuthSettings::default(),
        )
        .unwrap()
    }

    /// Builds tokens by hand, so that tests can produce what the library would refuse to.
    fn forge(header: serde_json::Value, claims: serde_json::Value, key: &EncodingKey) -> String {
        let h = URL_SAFE_NO_PAD.encode(header.to_string());
        let c = URL_SAFE_NO_PAD.encode(claims.to_string());
        let alg = match header["alg"].as_str() {
            Some("HS384") => Algorithm::HS384,
            Some("HS512") => Algorithm::HS512,
            Some("EdDSA") => Algorithm::EdDSA,
            Some("ES256") => Algorithm::ES256,
            _ => Algorithm::HS256,
        };
        let msg = format!("{h}.{c}");
        let sig = jsonwebtoken::crypto::sign(msg.as_bytes(), key, alg).unwrap();
        format!("{msg}.{sig}")
    }

    fn secret(bytes: &[u8]) -> EncodingKey {
        EncodingKey::from_secret(bytes).unwrap()
    }

    fn claims(now: i64) -> serde_json::Value {
        json!({"sub": "u1", "sid": "s1", "iat": now, "nbf": now, "exp": now + 900,
               "iss": "gatehouse", "aud": "gatehouse-clients", "jti": "j", "token_use": "access",
               "auth_time": now, "amr": ["pwd"], "roles": []})
    }

    fn hs256_header() -> serde_json::Value {
        json!({"alg": "HS256", "typ": "JWT"})
    }

    #[test]
    fn round_trip_carries_the_session_claims() {
        let (signer, k) = pair();
        let access = signer.sign(&grant(), NOW).unwrap();
        assert_eq!(access.expires_in, 900);
        let c = k.verify(access.token.expose_secret(), NOW + 10).unwrap();
        assert_eq!((c.sub.as_str(), c.sid.as_str()), ("u1", "s1"));
        assert_eq!(c.exp, NOW + 900);
        assert_eq!(
            (c.auth_time, c.amr, c.roles),
            (NOW - 30, vec!["pwd".to_owned()], vec!["admin".to_owned()])
        );
        // The second check is answered from memory, and says the same.
        let again = k.verify(access.token.expose_secret(), NOW + 11).unwrap();
        assert_eq!(again.jti, c.jti);
    }

    #[test]
    fn expiry_honours_leeway_also_when_remembered() {
        let (signer, k) = pair();
        let token = signer.sign(&grant(), NOW).unwrap().token;
        let t = token.expose_secret();
        assert!(k.verify(t, NOW + 904).is_ok());
        assert!(matches!(k.verify(t, NOW + 905), Err(Error::TokenExpired)));
    }

    #[test]
    fn future_nbf_is_refused() {
        let (signer, k) = pair();
        let token = signer.sign(&grant(), NOW + 60).unwrap().token;
        assert!(matches!(
            k.verify(token.expose_secret(), NOW),
            Err(Error::InvalidToken)
        ));
        assert!(k.verify(token.expose_secret(), NOW + 55).is_ok());
    }

    #[test]
    fn hand_built_token_with_right_key_passes() {
        let t = forge(hs256_header(), claims(NOW), &secret(&[b'k'; 32]));
        assert!(pair().1.verify(&t, NOW).is_ok());
    }

    #[test]
    fn attacks_on_hs256_are_refused() {
        let (_, k) = pair();
        let key = secret(&[b'k'; 32]);
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(json!({"alg": "none", "typ": "JWT"}).to_string()),
            URL_SAFE_NO_PAD.encode(claims(NOW).to_string())
        );
        let mut wrong_iss = claims(NOW);
        wrong_iss["iss"] = json!("evil");
        let mut wrong_aud = claims(NOW);
        wrong_aud["aud"] = json!("others");
        let mut refresh_kind = claims(NOW);
        refresh_kind["token_use"] = json!("refresh");
        let mut no_sid = claims(NOW);
        no_sid.as_object_mut().unwrap().remove("sid");
        let good = forge(hs256_header(), claims(NOW), &key);
        let tampered = {
            let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
            let mut c = claims(NOW);
            c["sub"] = json!("admin");
            parts[1] = URL_SAFE_NO_PAD.encode(c.to_string());
            parts.join(".")
        };
        let cases = [
            ("alg none", none),
            (
                "wrong key",
                forge(hs256_header(), claims(NOW), &secret(&[b'x'; 32])),
            ),
            (
                "HS512",
                forge(json!({"alg": "HS512", "typ": "JWT"}), claims(NOW), &key),
            ),
            (
                "typ",
                forge(json!({"alg": "HS256", "typ": "at+jwt"}), claims(NOW), &key),
            ),
            ("no typ", forge(json!({"alg": "HS256"}), claims(NOW), &key)),
            (
                "crit",
                forge(
                    json!({"alg": "HS256", "typ": "JWT", "crit": ["exp"]}),
                    claims(NOW),
                    &key,
                ),
            ),
            ("iss", forge(hs256_header(), wrong_iss, &key)),
            ("aud", forge(hs256_header(), wrong_aud, &key)),
            ("kind", forge(hs256_header(), refresh_kind, &key)),
            ("missing sid", forge(hs256_header(), no_sid, &key)),
            ("tampered", tampered),
            ("garbage", "not.a.jwt".into()),
            ("oversized", "a".repeat(MAX_TOKEN_BYTES + 1)),
            (
                "refresh token",
                OpaqueToken::generate()
                    .unwrap()
                    .token
                    .expose_secret()
                    .to_owned(),
            ),
        ];
        for (name, token) in cases {
            assert!(
                matches!(k.verify(&token, NOW), Err(Error::InvalidToken)),
                "{name}"
            );
        }
    }

    fn ring(alg: SigningAlgorithm, sealer: &Sealer) -> (Vec<StoredKey>, keys::NewKey) {
        let key = keys::generate(alg, sealer).unwrap();
        let stored = StoredKey {
            info: ring::KeyInfo {
                kid: key.kid.clone(),
                alg: alg.name().into(),
                state: KeyState::Active,
                created_at: 0,
                activates_at: 0,
                retired_at: None,
            },
            public_jwk: key.public_jwk.clone(),
            sealed_private: key.sealed_private.clone(),
        };
        (vec![stored], key)
    }

    #[test]
    fn attacks_on_stored_keys_are_refused() {
        let sealer = Sealer::new(&SecretString::from("k".repeat(40)), "signing-keys").unwrap();
        let settings = AuthSettings::default();
        for alg in [SigningAlgorithm::EdDSA, SigningAlgorithm::ES256] {
            let (stored, key) = ring(alg, &sealer);
            let (signer, verifier) = from_ring(alg, &stored, &sealer, &settings).unwrap();
            let signer = signer.unwrap();
            let good = signer.sign(&grant(), NOW).unwrap().token;
            assert!(
                verifier.verify(good.expose_secret(), NOW).is_ok(),
                "{alg:?}"
            );

            let header = |alg: &str, kid: &str| json!({"alg": alg, "typ": "JWT", "kid": kid});
            // HS256 keyed with the published key: the classic algorithm confusion.
            let confused = forge(
                header("HS256", &key.kid),
                claims(NOW),
                &secret(key.public_jwk.as_bytes()),
            );
            // A foreign key of the same kind, claiming our kid.
            let (_, foreign) = ring(alg, &sealer);
            let foreign_key =
                keys::signing_key(alg, &sealer, &foreign.kid, &foreign.sealed_private).unwrap();
            let impostor = forge(header(alg.name(), &key.kid), claims(NOW), &foreign_key);
            let own_key = keys::signing_key(alg, &sealer, &key.kid, &key.sealed_private).unwrap();
            let unknown_kid = forge(header(alg.name(), "no-such-kid"), claims(NOW), &own_key);
            let no_kid = forge(
                json!({"alg": alg.name(), "typ": "JWT"}),
                claims(NOW),
                &own_key,
            );
            let none = format!(
                "{}.{}.",
                URL_SAFE_NO_PAD
                    .encode(json!({"alg": "none", "typ": "JWT", "kid": key.kid}).to_string()),
                URL_SAFE_NO_PAD.encode(claims(NOW).to_string())
            );
            let hs256_token = pair().0.sign(&grant(), NOW).unwrap().token;
            for (name, token) in [
                ("HS256 with the public key", confused),
                ("foreign key, our kid", impostor),
                ("unknown kid", unknown_kid),
                ("no kid", no_kid),
                ("alg none", none),
                ("an HS256 token", hs256_token.expose_secret().to_owned()),
            ] {
                assert!(
                    matches!(verifier.verify(&token, NOW), Err(Error::InvalidToken)),
                    "{alg:?}: {name}"
                );
            }
            // Once the key leaves the ring, its tokens stop verifying.
            let (_, without) = from_ring(alg, &[], &sealer, &settings).unwrap();
            assert!(matches!(
                without.verify(good.expose_secret(), NOW),
                Err(Error::InvalidToken)
            ));
        }
    }

    #[test]
    fn the_jwks_publishes_public_keys_only() {
        let sealer = Sealer::new(&SecretString::from("k".repeat(40)), "signing-keys").unwrap();
        let (stored, key) = ring(SigningAlgorithm::ES256, &sealer);
        let (_, verifier) = from_ring(
            SigningAlgorithm::ES256,
            &stored,
            &sealer,
            &AuthSettings::default(),
        )
        .unwrap();
        let jwks: serde_json::Value = serde_json::from_slice(&verifier.jwks()).unwrap();
        let published = &jwks["keys"][0];
        assert_eq!(published["kid"], key.kid.as_str());
        assert_eq!(
            (published["kty"].as_str(), published["crv"].as_str()),
            (Some("EC"), Some("P-256"))
        );
        assert!(published["x"].is_string() && published["y"].is_string());
        assert!(published.get("d").is_none());
        let (_, hs) = pair();
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&hs.jwks()).unwrap(),
            json!({"keys": []})
        );
    }

    #[test]
    fn refresh_tokens_are_random_and_stored_as_digests() {
        let a = OpaqueToken::generate().unwrap();
        let b = OpaqueToken::generate().unwrap();
        assert_ne!(a.token.expose_secret(), b.token.expose_secret());
        assert_eq!(a.token.expose_secret().len(), 43);
        assert_eq!(a.digest, token_digest(a.token.expose_secret()));
        assert_eq!(a.digest.len(), 64);
    }
}
