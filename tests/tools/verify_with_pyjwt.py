"""Verifies Gatehouse access tokens the way another team's service would:
with PyJWT's PyJWKClient, which fetches the JWKS, caches it, and fetches it
again when a token names a kid it does not know (at most every 30 s). Reads
one token per line on stdin; prints one JSON line per token:
{"ok": true, "sub", "kid"} or {"ok": false, "error", "detail"}.

    python3 verify_with_pyjwt.py JWKS_URL ISSUER AUDIENCE [LIFESPAN_S] < tokens

LIFESPAN_S is how long the key set is cached: the max-age Gatehouse sends
(300) unless a test shortens time.
"""

import json
import sys

import jwt
from jwt import PyJWKClient


def main() -> None:
    jwks_url, issuer, audience = sys.argv[1:4]
    lifespan = float(sys.argv[4]) if len(sys.argv) > 4 else 300
    client = PyJWKClient(jwks_url, cache_jwk_set=True, lifespan=lifespan)
    for line in sys.stdin:
        token = line.strip()
        if not token:
            continue
        try:
            key = client.get_signing_key_from_jwt(token)
            claims = jwt.decode(
                token,
                key,
                algorithms=["EdDSA", "ES256"],
                audience=audience,
                issuer=issuer,
                options={"require": ["exp", "iat", "sub", "sid"]},
            )
            print(json.dumps({"ok": True, "sub": claims["sub"], "kid": key.key_id}))
        except Exception as e:  # every refusal is an answer, not a crash
            print(json.dumps({"ok": False, "error": type(e).__name__, "detail": str(e)}))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
