//! Access and refresh tokens: the `TokenIssuer` actor issues them, and
//! publishes what verifying them takes.
//!
//! The actor owns the signing key, built when it starts (a restart rebuilds
//! it from the configuration), and answers one message per login or refresh
//! with both tokens. Verifying is on the hot path of every authenticated
//! request, so it needs no mailbox: the actor publishes a [`Verifier`] that
//! callers read without a lock.
//!
//! Validation is configured explicitly rather than trusting jsonwebtoken's
//! defaults: HS256 only, `typ` must be `JWT`, no `crit` extensions, `iss`,
//! `aud`, `exp`, `nbf`, `sub` required, our own leeway, a token-kind claim so
//! that nothing but an access token passes, and a size cap before parsing.
//! `exp` and `nbf` are checked here with `now` as a parameter.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::system::{self, ActorKind, Names};

/// The `[auth]` section of the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// HS256 key; mutually exclusive with `jwt_secret_file`.
    pub jwt_secret: Option<SecretString>,
    /// File holding the HS256 key (trailing newline ignored).
    pub jwt_secret_file: Option<std::path::PathBuf>,
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
    /// Consecutive failed logins for one login name before it is locked.
    pub max_failed_logins: u32,
    /// How long a locked login name stays locked.
    pub lockout_s: u64,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            jwt_secret: None,
            jwt_secret_file: None,
            issuer: "gatehouse".into(),
            audience: "gatehouse-clients".into(),
            access_token_ttl_s: 900,
            refresh_token_ttl_s: 1_209_600,
            leeway_s: 5,
            session_max_lifetime_s: 2_592_000,
            max_failed_logins: 10,
            lockout_s: 300,
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
}

/// A freshly minted opaque refresh token and the digest that is stored instead of it.
pub struct RefreshToken {
    pub token: SecretString,
    pub digest: String,
}

impl RefreshToken {
    /// 256 bits of randomness, URL-safe base64.
    pub fn generate() -> Result<Self> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| Error::Internal(format!("no randomness: {e}")))?;
        let token = URL_SAFE_NO_PAD.encode(bytes);
        let digest = refresh_digest(&token);
        Ok(Self {
            token: token.into(),
            digest,
        })
    }
}

/// What is stored for a refresh token: its SHA-256, hex. The token has 256 bits
/// of entropy, so a fast hash is enough to make a leaked table useless.
pub fn refresh_digest(token: &str) -> String {
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

/// What checks access tokens: published by the `TokenIssuer`, read by every
/// authenticated request.
pub struct Verifier {
    decoding: DecodingKey,
    validation: Validation,
    leeway_s: i64,
}

/// Builds the signer and verifier for `secret` under `settings`.
pub fn keys(secret: &SecretString, settings: &AuthSettings) -> Result<(Signer, Verifier)> {
    let key = secret.expose_secret().as_bytes();
    let encoding =
        EncodingKey::from_secret(key).map_err(|e| Error::Internal(format!("jwt key: {e}")))?;
    let decoding =
        DecodingKey::from_secret(key).map_err(|e| Error::Internal(format!("jwt key: {e}")))?;
    let mut validation = Validation::new(Algorithm::HS256);
    validation.algorithms = vec![Algorithm::HS256];
    // exp and nbf are checked in `verify` with `now` as a parameter.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.leeway = 0;
    validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
    validation.set_issuer(&[&settings.issuer]);
    validation.set_audience(&[&settings.audience]);
    let mut header = Header::new(Algorithm::HS256);
    header.typ = Some("JWT".into());
    let signer = Signer {
        encoding,
        header,
        issuer: settings.issuer.clone(),
        audience: settings.audience.clone(),
        access_ttl_s: settings.access_token_ttl_s,
    };
    let verifier = Verifier {
        decoding,
        validation,
        leeway_s: i64::try_from(settings.leeway_s).unwrap_or(i64::MAX),
    };
    Ok((signer, verifier))
}

impl Signer {
    /// Signs an access token for `user_id` in `session_id`, valid from `now` (unix seconds).
    pub fn sign(&self, user_id: &str, session_id: &str, now: i64) -> Result<AccessToken> {
        let ttl = self.access_ttl_s;
        let claims = AccessClaims {
            sub: user_id.to_owned(),
            sid: session_id.to_owned(),
            iat: now,
            nbf: now,
            exp: now.saturating_add(i64::try_from(ttl).unwrap_or(i64::MAX)),
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            jti: uuid::Uuid::new_v4().to_string(),
            token_use: ACCESS.into(),
        };
        let token = jsonwebtoken::encode(&self.header, &claims, &self.encoding)
            .map_err(|e| Error::Internal(format!("jwt sign: {e}")))?;
        Ok(AccessToken {
            token: token.into(),
            expires_in: ttl,
        })
    }
}

impl Verifier {
    /// Checks signature, header, claims and times; `now` is unix seconds.
    pub fn verify(&self, token: &str, now: i64) -> Result<AccessClaims> {
        if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
            return Err(Error::InvalidToken);
        }
        let data = jsonwebtoken::decode::<AccessClaims>(token, &self.decoding, &self.validation)
            .map_err(|_| Error::InvalidToken)?;
        let header = &data.header;
        if header.typ.as_deref() != Some("JWT") || header.crit.is_some() {
            return Err(Error::InvalidToken);
        }
        let claims = data.claims;
        if claims.token_use != ACCESS || claims.nbf > now.saturating_add(self.leeway_s) {
            return Err(Error::InvalidToken);
        }
        if claims.exp <= now.saturating_sub(self.leeway_s) {
            return Err(Error::TokenExpired);
        }
        Ok(claims)
    }
}

/// An access token as handed to a client.
pub struct AccessToken {
    pub token: SecretString,
    pub expires_in: u64,
}

/// What one login or refresh is handed: both tokens.
pub struct Issued {
    pub access: AccessToken,
    pub refresh: RefreshToken,
}

/// Messages the `TokenIssuer` accepts.
pub enum TokenIssuerMsg {
    /// A fresh refresh token, and an access token for `session_id` signed at
    /// `now` (unix seconds): one round trip per login or refresh.
    Issue {
        user_id: String,
        session_id: String,
        now: i64,
        reply: RpcReplyPort<Result<Issued>>,
    },
    /// Fail on purpose (chaos testing): the supervisor must restart us.
    Crash,
}

/// What the `TokenIssuer` is started with.
#[derive(Clone)]
pub struct TokenIssuerArgs {
    pub secret: SecretString,
    pub settings: AuthSettings,
    /// Where it publishes its [`Verifier`].
    pub published: Arc<ArcSwapOption<Verifier>>,
}

pub struct TokenIssuer;

impl Actor for TokenIssuer {
    type Msg = TokenIssuerMsg;
    type State = Signer;
    type Arguments = TokenIssuerArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: TokenIssuerArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let (signer, verifier) = keys(&args.secret, &args.settings)?;
        args.published.store(Some(Arc::new(verifier)));
        Ok(signer)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        signer: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // A caller that gave up is not an error of ours: replies may go nowhere.
        match msg {
            TokenIssuerMsg::Issue {
                user_id,
                session_id,
                now,
                reply,
            } => {
                let issued = RefreshToken::generate().and_then(|refresh| {
                    let access = signer.sign(&user_id, &session_id, now)?;
                    Ok(Issued { access, refresh })
                });
                let _ = reply.send(issued);
            }
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

    pub async fn issue(&self, user_id: &str, session_id: &str, now: i64) -> Result<Issued> {
        let (user_id, session_id) = (user_id.to_owned(), session_id.to_owned());
        system::call(
            self.names.get(ActorKind::TokenIssuer),
            self.timeout,
            |reply| TokenIssuerMsg::Issue {
                user_id,
                session_id,
                now,
                reply,
            },
        )
        .await?
    }

    /// Checks an access token; `now` is unix seconds.
    pub fn verify(&self, token: &str, now: i64) -> Result<AccessClaims> {
        match self.published.load().as_deref() {
            Some(verifier) => verifier.verify(token, now),
            None => Err(Error::ActorUnavailable(
                "token_issuer has not started".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NOW: i64 = 1_800_000_000;

    fn pair() -> (Signer, Verifier) {
        keys(
            &SecretString::from("k".repeat(32)),
            &AuthSettings::default(),
        )
        .unwrap()
    }

    fn forge(header: serde_json::Value, claims: serde_json::Value, key: &[u8]) -> String {
        use hmac_free::sign;
        sign(header, claims, key)
    }

    /// Builds tokens by hand, so that tests can produce what the library would refuse to.
    mod hmac_free {
        use super::*;
        pub fn sign(header: serde_json::Value, claims: serde_json::Value, key: &[u8]) -> String {
            let h = URL_SAFE_NO_PAD.encode(header.to_string());
            let c = URL_SAFE_NO_PAD.encode(claims.to_string());
            let alg = match header["alg"].as_str() {
                Some("HS384") => Algorithm::HS384,
                Some("HS512") => Algorithm::HS512,
                _ => Algorithm::HS256,
            };
            let msg = format!("{h}.{c}");
            let sig = jsonwebtoken::crypto::sign(
                msg.as_bytes(),
                &EncodingKey::from_secret(key).unwrap(),
                alg,
            )
            .unwrap();
            format!("{msg}.{sig}")
        }
    }

    fn claims(now: i64) -> serde_json::Value {
        json!({"sub": "u1", "sid": "s1", "iat": now, "nbf": now, "exp": now + 900,
               "iss": "gatehouse", "aud": "gatehouse-clients", "jti": "j", "token_use": "access"})
    }

    fn hs256() -> serde_json::Value {
        json!({"alg": "HS256", "typ": "JWT"})
    }

    #[test]
    fn round_trip() {
        let (signer, k) = pair();
        let access = signer.sign("u1", "s1", NOW).unwrap();
        assert_eq!(access.expires_in, 900);
        let c = k.verify(access.token.expose_secret(), NOW + 10).unwrap();
        assert_eq!((c.sub.as_str(), c.sid.as_str()), ("u1", "s1"));
        assert_eq!(c.exp, NOW + 900);
    }

    #[test]
    fn expiry_honours_leeway() {
        let (signer, k) = pair();
        let token = signer.sign("u1", "s1", NOW).unwrap().token;
        let t = token.expose_secret();
        assert!(k.verify(t, NOW + 904).is_ok());
        assert!(matches!(k.verify(t, NOW + 905), Err(Error::TokenExpired)));
    }

    #[test]
    fn future_nbf_is_refused() {
        let (signer, k) = pair();
        let token = signer.sign("u1", "s1", NOW + 60).unwrap().token;
        assert!(matches!(
            k.verify(token.expose_secret(), NOW),
            Err(Error::InvalidToken)
        ));
        assert!(k.verify(token.expose_secret(), NOW + 55).is_ok());
    }

    #[test]
    fn hand_built_token_with_right_key_passes() {
        let t = forge(hs256(), claims(NOW), &[b'k'; 32]);
        assert!(pair().1.verify(&t, NOW).is_ok());
    }

    #[test]
    fn attacks_are_refused() {
        let (_, k) = pair();
        let key = [b'k'; 32];
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
        let good = forge(hs256(), claims(NOW), &key);
        let tampered = {
            let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
            let mut c = claims(NOW);
            c["sub"] = json!("admin");
            parts[1] = URL_SAFE_NO_PAD.encode(c.to_string());
            parts.join(".")
        };
        let cases = [
            ("alg none", none),
            ("wrong key", forge(hs256(), claims(NOW), &[b'x'; 32])),
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
            ("iss", forge(hs256(), wrong_iss, &key)),
            ("aud", forge(hs256(), wrong_aud, &key)),
            ("kind", forge(hs256(), refresh_kind, &key)),
            ("missing sid", forge(hs256(), no_sid, &key)),
            ("tampered", tampered),
            ("garbage", "not.a.jwt".into()),
            ("oversized", "a".repeat(MAX_TOKEN_BYTES + 1)),
            (
                "refresh token",
                RefreshToken::generate()
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

    #[test]
    fn refresh_tokens_are_random_and_stored_as_digests() {
        let a = RefreshToken::generate().unwrap();
        let b = RefreshToken::generate().unwrap();
        assert_ne!(a.token.expose_secret(), b.token.expose_secret());
        assert_eq!(a.token.expose_secret().len(), 43);
        assert_eq!(a.digest, refresh_digest(a.token.expose_secret()));
        assert_eq!(a.digest.len(), 64);
    }
}
