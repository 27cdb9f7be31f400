//! The OpenAPI 3.1 document served at `/api/v1/openapi.json`.
//!
//! The document is written by hand (`openapi.json`); what depends on the
//! configuration (the password length limits) is filled in at start-up, so a
//! request the document calls valid is one the server accepts.

use bytes::Bytes;
use serde_json::Value;

use crate::config::Config;

/// The document as this configuration serves it.
pub fn document(config: &Config) -> Result<Bytes, serde_json::Error> {
    let mut doc: Value = serde_json::from_str(include_str!("openapi.json"))?;
    let (min, max) = (config.password.min_length, config.password.max_length);
    for (schema, field) in [
        ("RegisterRequest", "password"),
        ("ChangePasswordRequest", "new_password"),
    ] {
        let pointer = format!("/components/schemas/{schema}/properties/{field}");
        if let Some(Value::Object(property)) = doc.pointer_mut(&pointer) {
            property.insert("minLength".into(), min.into());
            property.insert("maxLength".into(), max.into());
        }
    }
    serde_json::to_vec(&doc).map(Bytes::from)
}
