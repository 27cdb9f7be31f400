//! What the other services send: each message rendered from its template,
//! sealed for the outbox row it becomes, and (for a link) the token minted
//! here whose digest alone is stored. The mail is written by the same
//! repository write as the change it announces; the `Mailer` delivers it.

use std::sync::Arc;

use secrecy::ExposeSecret;

use crate::clock::secs_to_ms;
use crate::error::{Error, Result};
use crate::mailer::templates::{self, Context, human_duration};
use crate::mailer::{EmailVerification, MailKind, MailerMsg};
use crate::model::{LinkMail, LinkPurpose, Outgoing};
use crate::sealing::Sealer;
use crate::system::{self, ActorKind, Names};
use crate::token_issuer::OpaqueToken;

/// What the composer needs from the configuration.
#[derive(Debug, Clone)]
pub struct MailPolicy {
    /// The product's name in messages (the display name of `email.from`).
    pub product: String,
    /// Base of the links (`email.link_base`, else `server.public_url`), without a trailing `/`.
    pub link_base: String,
    pub verification: EmailVerification,
    pub verification_ttl_s: u64,
    pub reset_ttl_s: u64,
    /// `email.per_recipient_per_hour`.
    pub per_recipient_per_hour: u32,
}

/// Builds outbox messages, and nudges the mailer once one is written.
#[derive(Clone)]
pub struct Composer {
    pub policy: Arc<MailPolicy>,
    /// Seals bodies under the key-encryption secret (purpose `outbox`).
    pub sealer: Arc<Sealer>,
    pub names: Arc<Names>,
}

impl Composer {
    /// Whether addresses are verified at all.
    pub fn verifies(&self) -> bool {
        self.policy.verification != EmailVerification::Off
    }

    /// Whether login waits for a verified address.
    pub fn requires_verified(&self) -> bool {
        self.policy.verification == EmailVerification::Required
    }

    /// A notice (exempt from the per-recipient cap) to `username`.
    pub fn notice(&self, kind: MailKind, username: &str) -> Result<Outgoing> {
        let context = Context {
            product: self.policy.product.clone(),
            username: username.to_owned(),
            link: None,
            expires_in: None,
        };
        self.outgoing(kind, &context, None, None)
    }

    /// A fresh link of `purpose` for `username`, to the address the write
    /// finds (or `to`), valid from `now` for the purpose's lifetime.
    pub fn link(
        &self,
        purpose: LinkPurpose,
        username: &str,
        to: Option<String>,
        now: i64,
    ) -> Result<LinkMail> {
        let (kind, page, ttl_s) = match purpose {
            LinkPurpose::Verify => (
                MailKind::VerifyAddress,
                "verify-email",
                self.policy.verification_ttl_s,
            ),
            LinkPurpose::Reset => (
                MailKind::ResetPassword,
                "reset-password",
                self.policy.reset_ttl_s,
            ),
        };
        let token = OpaqueToken::generate()?;
        let context = Context {
            product: self.policy.product.clone(),
            username: username.to_owned(),
            link: Some(format!(
                "{}/{page}?token={}",
                self.policy.link_base,
                token.token.expose_secret()
            )),
            expires_in: Some(human_duration(ttl_s)),
        };
        Ok(LinkMail {
            digest: token.digest,
            purpose,
            expires_at: now.saturating_add(secs_to_ms(ttl_s)),
            mail: self.outgoing(kind, &context, to, Some(self.policy.per_recipient_per_hour))?,
        })
    }

    /// The verification link registration and an email change send, unless
    /// verification is off.
    pub fn verify_link(
        &self,
        username: &str,
        to: Option<String>,
        now: i64,
    ) -> Result<Option<LinkMail>> {
        if !self.verifies() {
            return Ok(None);
        }
        self.link(LinkPurpose::Verify, username, to, now).map(Some)
    }

    /// Tells this instance's mailer that a message waits, so it is sent now
    /// rather than at the next poll (other instances find it when they poll).
    pub fn wake(&self) {
        system::cast(self.names.get(ActorKind::Mailer), MailerMsg::Wake);
    }

    fn outgoing(
        &self,
        kind: MailKind,
        context: &Context,
        to: Option<String>,
        cap: Option<u32>,
    ) -> Result<Outgoing> {
        let id = uuid::Uuid::now_v7().to_string();
        let rendered = templates::render(kind, context)?;
        let plain = zeroize::Zeroizing::new(
            serde_json::to_vec(&rendered)
                .map_err(|e| Error::Internal(format!("encoding a message: {e}")))?,
        );
        Ok(Outgoing {
            body: self.sealer.seal(&id, &plain)?,
            id,
            kind: kind.name(),
            to,
            cap,
        })
    }
}
