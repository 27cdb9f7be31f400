//! Email: the `[email]` settings, the messages Gatehouse sends (rendered
//! from templates shipped in the repository), the transports that deliver
//! them (`file` for development, `smtp` through `lettre`), and the
//! `Mailer` actor that delivers the durable outbox.

pub mod actor;
pub mod settings;
pub mod templates;
pub mod transport;

pub use actor::{Mailer, MailerArgs, MailerMsg};
pub use settings::{EmailSettings, EmailVerification, SmtpSettings, SmtpTls, TransportKind};
pub use templates::{MailKind, Rendered};
pub use transport::{Outbound, SendError, Transport};
