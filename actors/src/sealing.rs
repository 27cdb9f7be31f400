//! Secrets at rest: what the database holds of a private signing key or a
//! TOTP secret is sealed with the key-encryption secret.
//!
//! XChaCha20-Poly1305 with a random 192-bit nonce per message, under a key
//! derived from `auth.key_encryption_secret` by HKDF-SHA256 with a purpose
//! label (one key per kind of secret), and the row's id as associated data,
//! so a sealed value copied to another row does not open there. A sealed
//! value is `nonce ‖ ciphertext ‖ tag`.

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::error::{Error, Result};

/// Bytes of nonce in front of every sealed value.
const NONCE_BYTES: usize = 24;

/// Seals and opens one kind of secret.
pub struct Sealer {
    cipher: XChaCha20Poly1305,
}

impl Sealer {
    /// A sealer for secrets of `purpose` (e.g. `"signing-keys"`), under `secret`.
    pub fn new(secret: &SecretString, purpose: &str) -> Result<Self> {
        let mut key = Zeroizing::new([0u8; 32]);
        Hkdf::<Sha256>::new(
            Some(b"gatehouse key-encryption v1"),
            secret.expose_secret().as_bytes(),
        )
        .expand(purpose.as_bytes(), key.as_mut())
        .map_err(|_| Error::Internal("deriving the sealing key".into()))?;
        let cipher = XChaCha20Poly1305::new_from_slice(key.as_ref())
            .map_err(|_| Error::Internal("the sealing key has the wrong length".into()))?;
        Ok(Self { cipher })
    }

    /// `plain`, sealed for the row `id`.
    pub fn seal(&self, id: &str, plain: &[u8]) -> Result<Vec<u8>> {
        let mut nonce = [0u8; NONCE_BYTES];
        getrandom::fill(&mut nonce).map_err(|e| Error::Internal(format!("no randomness: {e}")))?;
        let sealed = self
            .cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plain,
                    aad: id.as_bytes(),
                },
            )
            .map_err(|_| Error::Internal("sealing a secret failed".into()))?;
        Ok([nonce.as_slice(), &sealed].concat())
    }

    /// What was sealed for the row `id`; an error if it was sealed for
    /// another row, under another secret, or tampered with.
    pub fn open(&self, id: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        let cannot = || {
            Error::Internal(
                "a sealed secret does not open: wrong key-encryption secret, or a damaged row"
                    .into(),
            )
        };
        if sealed.len() <= NONCE_BYTES {
            return Err(cannot());
        }
        let (nonce, ciphertext) = sealed.split_at(NONCE_BYTES);
        let nonce = XNonce::try_from(nonce).map_err(|_| cannot())?;
        self.cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: ciphertext,
                    aad: id.as_bytes(),
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| cannot())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer(secret: &str) -> Sealer {
        Sealer::new(&SecretString::from(secret.to_owned()), "tests").unwrap()
    }

    #[test]
    fn sealed_values_open_only_for_their_row_and_secret() {
        let s = sealer("a key-encryption secret of enough length");
        let sealed = s.seal("row-1", b"private bytes").unwrap();
        assert!(
            !sealed.windows(7).any(|w| w == b"private"),
            "not in the clear"
        );
        assert_eq!(
            s.open("row-1", &sealed).unwrap().as_slice(),
            b"private bytes"
        );
        assert!(s.open("row-2", &sealed).is_err(), "another row");
        assert!(
            sealer("another key-encryption secret, as long")
                .open("row-1", &sealed)
                .is_err()
        );
        let mut tampered = sealed.clone();
        if let Some(last) = tampered.last_mut() {
            *last ^= 1;
        }
        assert!(s.open("row-1", &tampered).is_err());
        assert!(s.open("row-1", b"short").is_err());
        assert_ne!(
            s.seal("row-1", b"private bytes").unwrap(),
            sealed,
            "a fresh nonce each time"
        );
    }

    #[test]
    fn purposes_get_different_keys() {
        let secret = SecretString::from("a key-encryption secret of enough length");
        let keys = Sealer::new(&secret, "signing-keys").unwrap();
        let totp = Sealer::new(&secret, "totp").unwrap();
        let sealed = keys.seal("id", b"x").unwrap();
        assert!(totp.open("id", &sealed).is_err());
    }
}
