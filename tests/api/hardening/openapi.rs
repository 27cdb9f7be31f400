//! Finding 12: the OpenAPI document states the password lengths the server
//! is configured to accept.

use serde_json::Value;

use crate::harness::Builder;

/// Follows `$ref`s (`#/components/...`) until a schema that is not one.
fn resolve<'a>(doc: &'a Value, mut schema: &'a Value) -> &'a Value {
    for _ in 0..32 {
        let Some(reference) = schema.get("$ref").and_then(Value::as_str) else {
            return schema;
        };
        let pointer = reference
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("not a local $ref: {reference}"));
        schema = doc
            .pointer(pointer)
            .unwrap_or_else(|| panic!("$ref to nothing: {reference}"));
    }
    panic!("a $ref cycle");
}

/// `schema` and the parts it is composed of (`allOf`), each resolved.
fn parts<'a>(doc: &'a Value, schema: &'a Value, into: &mut Vec<&'a Value>) {
    let schema = resolve(doc, schema);
    into.push(schema);
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        for part in all {
            parts(doc, part, into);
        }
    }
}

/// The first `keyword` found in `schema` or the parts it is composed of.
fn keyword(doc: &Value, schema: &Value, keyword: &str) -> Option<u64> {
    let mut all = Vec::new();
    parts(doc, schema, &mut all);
    all.iter()
        .find_map(|s| s.get(keyword).and_then(Value::as_u64))
}

/// The schema of `property` in the JSON request body of `method path`.
fn body_property<'a>(doc: &'a Value, path: &str, method: &str, property: &str) -> &'a Value {
    let operation = &doc["paths"][path][method];
    let schema = &operation["requestBody"]["content"]["application/json"]["schema"];
    assert!(
        !schema.is_null(),
        "{method} {path} has no JSON request body"
    );
    let mut all = Vec::new();
    parts(doc, schema, &mut all);
    all.iter()
        .find_map(|s| s.get("properties").and_then(|p| p.get(property)))
        .unwrap_or_else(|| panic!("{method} {path}: no property {property}"))
}

async fn password_lengths(builder: Builder) -> Vec<(String, Option<u64>, Option<u64>)> {
    let s = builder.start();
    let r = s.get("/api/v1/openapi.json", None).await;
    r.ok(200);
    let doc = &r.body;
    [
        ("/api/v1/auth/register", "post", "password"),
        ("/api/v1/users/me/password", "patch", "new_password"),
    ]
    .into_iter()
    .map(|(path, method, property)| {
        let schema = body_property(doc, path, method, property);
        (
            format!("{method} {path} {property}"),
            keyword(doc, schema, "minLength"),
            keyword(doc, schema, "maxLength"),
        )
    })
    .collect()
}

#[tokio::test]
async fn openapi_states_the_configured_password_lengths() {
    let configured = password_lengths(
        super::server()
            .env("GATEHOUSE__PASSWORD__MIN_LENGTH", 10)
            .env("GATEHOUSE__PASSWORD__MAX_LENGTH", 20),
    )
    .await;
    for (what, min, max) in &configured {
        assert_eq!((*min, *max), (Some(10), Some(20)), "{what}");
    }
    let defaults = password_lengths(super::server()).await;
    for (what, min, max) in &defaults {
        assert_eq!((*min, *max), (Some(8), Some(128)), "{what} (defaults)");
    }
}
