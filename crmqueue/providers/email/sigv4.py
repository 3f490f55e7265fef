"""AWS Signature Version 4, written against AWS's published signature test suite
(tests check the "get-vanilla" case)."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from collections.abc import Mapping
from urllib.parse import quote, urlsplit

ALGORITHM = "AWS4-HMAC-SHA256"


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    key = _hmac(("AWS4" + secret).encode(), date)
    key = _hmac(key, region)
    key = _hmac(key, service)
    return _hmac(key, "aws4_request")


def canonical_request(
    method: str, url: str, headers: Mapping[str, str], body: bytes
) -> tuple[str, str]:
    """(canonical request, signed header list). Every header given is signed."""
    parts = urlsplit(url)
    path = quote(parts.path or "/", safe="/-_.~")
    query_pairs = []
    for item in filter(None, parts.query.split("&")):
        name, _, value = item.partition("=")
        query_pairs.append((quote(name, safe="-_.~"), quote(value, safe="-_.~")))
    query = "&".join(f"{k}={v}" for k, v in sorted(query_pairs))
    normal = {k.lower().strip(): " ".join(v.strip().split()) for k, v in headers.items()}
    names = sorted(normal)
    canonical_headers = "".join(f"{name}:{normal[name]}\n" for name in names)
    signed = ";".join(names)
    payload_hash = hashlib.sha256(body).hexdigest()
    text = "\n".join([method.upper(), path, query, canonical_headers, signed, payload_hash])
    return text, signed


def authorization(
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    access_key: str,
    secret_key: str,
    region: str,
    service: str,
    amz_date: str,
) -> str:
    """The Authorization header value for a request whose `headers` (to be signed) already
    include host and x-amz-date."""
    creq, signed = canonical_request(method, url, headers, body)
    scope = f"{amz_date[:8]}/{region}/{service}/aws4_request"
    to_sign = "\n".join([ALGORITHM, amz_date, scope, hashlib.sha256(creq.encode()).hexdigest()])
    key = signing_key(secret_key, amz_date[:8], region, service)
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return (
        f"{ALGORITHM} Credential={access_key}/{scope}, SignedHeaders={signed},"
        f" Signature={signature}"
    )


def sign(
    method: str,
    url: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    access_key: str,
    secret_key: str,
    region: str,
    service: str,
    session_token: str | None = None,
    now: dt.datetime | None = None,
) -> dict[str, str]:
    """`headers` plus Host, X-Amz-Date, X-Amz-Security-Token (temporary credentials) and
    Authorization, all of them signed."""
    amz_date = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%dT%H%M%SZ")
    out = dict(headers)
    out["Host"] = urlsplit(url).netloc
    out["X-Amz-Date"] = amz_date
    if session_token:
        out["X-Amz-Security-Token"] = session_token
    out["Authorization"] = authorization(
        method,
        url,
        out,
        body,
        access_key=access_key,
        secret_key=secret_key,
        region=region,
        service=service,
        amz_date=amz_date,
    )
    return out
