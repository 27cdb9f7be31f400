//! Signing key material: generating an Ed25519 or P-256 key, sealing its
//! private half for the database, and turning stored keys back into what
//! jsonwebtoken signs and verifies with. The public half is kept as the JWK
//! that is published; its `kid` is the key's RFC 7638 thumbprint.

use jsonwebtoken::jwk::{Jwk, KeyAlgorithm, PublicKeyUse, ThumbprintHash};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use serde::Deserialize;

use super::ring::KeyInfo;
use crate::error::{Error, Result};
use crate::sealing::Sealer;

/// `auth.signing_algorithm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum SigningAlgorithm {
    /// Ed25519, with keys Gatehouse generates and keeps in its database.
    EdDSA,
    /// ECDSA over P-256 with SHA-256, likewise.
    ES256,
    /// HMAC with `auth.jwt_secret`; nothing is published.
    HS256,
}

impl SigningAlgorithm {
    pub fn name(self) -> &'static str {
        match self {
            Self::EdDSA => "EdDSA",
            Self::ES256 => "ES256",
            Self::HS256 => "HS256",
        }
    }

    pub fn jwt(self) -> Algorithm {
        match self {
            Self::EdDSA => Algorithm::EdDSA,
            Self::ES256 => Algorithm::ES256,
            Self::HS256 => Algorithm::HS256,
        }
    }

    /// Whether its keys live in the database (and are published).
    pub fn stored(self) -> bool {
        self != Self::HS256
    }
}

/// A key made for the ring, ready to be stored.
#[derive(Clone)]
pub struct NewKey {
    pub kid: String,
    pub alg: SigningAlgorithm,
    /// The JWK that is published, as JSON.
    pub public_jwk: String,
    /// The PKCS#8 private key, sealed for `kid`.
    pub sealed_private: Vec<u8>,
}

impl std::fmt::Debug for NewKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// A key as the database holds it.
#[derive(Clone)]
pub struct StoredKey {
    pub info: KeyInfo,
    /// The JWK that is published, as JSON.
    pub public_jwk: String,
    /// The PKCS#8 private key, sealed for its kid.
    pub sealed_private: Vec<u8>,
}

impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredKey")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

fn random32() -> Result<zeroize::Zeroizing<[u8; 32]>> {
    let mut bytes = zeroize::Zeroizing::new([0u8; 32]);
    getrandom::fill(bytes.as_mut()).map_err(|e| Error::Internal(format!("no randomness: {e}")))?;
    Ok(bytes)
}

/// The PKCS#8 DER of a new private key for `alg`.
fn private_pkcs8(alg: SigningAlgorithm) -> Result<zeroize::Zeroizing<Vec<u8>>> {
    use ed25519_dalek::pkcs8::EncodePrivateKey as _;
    let der = match alg {
        // PKCS#8 v1 (no public key inside): the form jsonwebtoken reads.
        SigningAlgorithm::EdDSA => ed25519_dalek::pkcs8::KeypairBytes {
            secret_key: *random32()?,
            public_key: None,
        }
        .to_pkcs8_der()
        .map_err(|e| Error::Internal(format!("encoding an Ed25519 key: {e}")))?,
        SigningAlgorithm::ES256 => {
            // A random scalar is a valid key unless it is zero or not below
            // the group order; retry in that (vanishingly rare) case.
            let secret = loop {
                if let Ok(secret) = p256::SecretKey::from_slice(random32()?.as_ref()) {
                    break secret;
                }
            };
            secret
                .to_pkcs8_der()
                .map_err(|e| Error::Internal(format!("encoding a P-256 key: {e}")))?
        }
        SigningAlgorithm::HS256 => {
            return Err(Error::Internal("HS256 keys are not generated".into()));
        }
    };
    Ok(zeroize::Zeroizing::new(der.as_bytes().to_vec()))
}

fn encoding_key(alg: SigningAlgorithm, der: &[u8]) -> EncodingKey {
    match alg {
        SigningAlgorithm::ES256 => EncodingKey::from_ec_der(der),
        SigningAlgorithm::EdDSA | SigningAlgorithm::HS256 => EncodingKey::from_ed_der(der),
    }
}

/// A new key for `alg`, its private half sealed with `sealer`.
pub fn generate(alg: SigningAlgorithm, sealer: &Sealer) -> Result<NewKey> {
    let der = private_pkcs8(alg)?;
    let mut jwk = Jwk::from_encoding_key(&encoding_key(alg, &der), alg.jwt())
        .map_err(|e| Error::Internal(format!("deriving the public key: {e}")))?;
    let kid = jwk
        .thumbprint(ThumbprintHash::SHA256)
        .map_err(|e| Error::Internal(format!("thumbprint: {e}")))?;
    jwk.common.key_id = Some(kid.clone());
    jwk.common.public_key_use = Some(PublicKeyUse::Signature);
    jwk.common.key_algorithm = Some(match alg {
        SigningAlgorithm::ES256 => KeyAlgorithm::ES256,
        SigningAlgorithm::EdDSA | SigningAlgorithm::HS256 => KeyAlgorithm::EdDSA,
    });
    let public_jwk = serde_json::to_string(&jwk)
        .map_err(|e| Error::Internal(format!("serializing a JWK: {e}")))?;
    let sealed_private = sealer.seal(&kid, &der)?;
    Ok(NewKey {
        kid,
        alg,
        public_jwk,
        sealed_private,
    })
}

/// What signs with a stored key: its private half, opened.
pub fn signing_key(
    alg: SigningAlgorithm,
    sealer: &Sealer,
    kid: &str,
    sealed: &[u8],
) -> Result<EncodingKey> {
    let der = sealer.open(kid, sealed)?;
    Ok(encoding_key(alg, &der))
}

/// What verifies with a stored key: its published JWK, parsed.
pub fn verifying_key(public_jwk: &str) -> Result<(Jwk, DecodingKey)> {
    let jwk: Jwk = serde_json::from_str(public_jwk)
        .map_err(|e| Error::Internal(format!("a stored JWK does not parse: {e}")))?;
    let key = DecodingKey::from_jwk(&jwk)
        .map_err(|e| Error::Internal(format!("a stored JWK is not a key: {e}")))?;
    Ok((jwk, key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    fn sealer() -> Sealer {
        Sealer::new(
            &SecretString::from("keys test key-encryption secret 0123456789"),
            "signing-keys",
        )
        .unwrap()
    }

    #[test]
    fn generated_keys_sign_what_their_published_half_verifies() {
        for alg in [SigningAlgorithm::EdDSA, SigningAlgorithm::ES256] {
            let sealer = sealer();
            let key = generate(alg, &sealer).unwrap();
            let published: serde_json::Value = serde_json::from_str(&key.public_jwk).unwrap();
            assert_eq!(published["kid"], key.kid.as_str());
            assert_eq!(published["use"], "sig");
            assert_eq!(published["alg"], alg.name());
            for private in ["d", "k", "p", "q"] {
                assert!(
                    published.get(private).is_none(),
                    "{alg:?} publishes {private}"
                );
            }
            let signer = signing_key(alg, &sealer, &key.kid, &key.sealed_private).unwrap();
            let mut header = jsonwebtoken::Header::new(alg.jwt());
            header.kid = Some(key.kid.clone());
            let token =
                jsonwebtoken::encode(&header, &serde_json::json!({"sub": "x"}), &signer).unwrap();
            let (_, verifying) = verifying_key(&key.public_jwk).unwrap();
            let mut validation = jsonwebtoken::Validation::new(alg.jwt());
            validation.required_spec_claims.clear();
            validation.validate_exp = false;
            jsonwebtoken::decode::<serde_json::Value>(&token, &verifying, &validation).unwrap();
            // Another key of the same kind does not verify it.
            let other = generate(alg, &sealer).unwrap();
            let (_, wrong) = verifying_key(&other.public_jwk).unwrap();
            assert!(
                jsonwebtoken::decode::<serde_json::Value>(&token, &wrong, &validation).is_err()
            );
            assert_ne!(other.kid, key.kid);
        }
    }

    #[test]
    fn a_sealed_key_does_not_open_under_another_kid() {
        let sealer = sealer();
        let key = generate(SigningAlgorithm::EdDSA, &sealer).unwrap();
        assert!(
            signing_key(
                SigningAlgorithm::EdDSA,
                &sealer,
                "other",
                &key.sealed_private
            )
            .is_err()
        );
    }
}
