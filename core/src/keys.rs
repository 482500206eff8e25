//! Node keys. One ed25519 key per device signs that device's events; its public half is
//! the [`AuthorId`]. The same 32-byte seed later becomes the node's libp2p identity.

use std::fmt;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};

use crate::id::AuthorId;

/// Why a public key or signature could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The author bytes are not a valid ed25519 point.
    #[error("author {0} is not a valid ed25519 public key")]
    BadAuthorKey(AuthorId),
}

/// An ed25519 signing key. `Debug` never shows the secret.
#[derive(Clone)]
pub struct Keypair(SigningKey);

impl Keypair {
    /// The key for a 32-byte secret seed (the node key file holds exactly this).
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self(SigningKey::from_bytes(seed))
    }

    /// The secret seed, for persisting the key.
    pub fn seed(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// The public half as an author id.
    pub fn author(&self) -> AuthorId {
        AuthorId(self.0.verifying_key().to_bytes())
    }

    pub(crate) fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.0.sign(msg).to_bytes()
    }
}

impl fmt::Debug for Keypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Keypair({})", self.author().short())
    }
}

impl AuthorId {
    /// The ed25519 verifying key, or an error for bytes that are not a curve point.
    pub fn verifying_key(&self) -> Result<VerifyingKey, KeyError> {
        VerifyingKey::from_bytes(&self.0).map_err(|_| KeyError::BadAuthorKey(*self))
    }
}
