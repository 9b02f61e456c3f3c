"""HubSpot signature verification: documented vectors, SDK cross-checks, failure modes."""

from __future__ import annotations

import hmac

import pytest
from hubspot.utils.signature import Signature  # type: ignore[import-untyped]
from hypothesis import given
from hypothesis import strategies as st

from receiver.errors import SignatureError
from receiver.hubspot.signature import hmac_sha256, sign_v1, sign_v2, sign_v3, verify

# Documented examples (developers.hubspot.com v1/v2 request validation pages, and the
# SDK's own v3 test).
DOC_SECRET = "yyyyyyyy-yyyy-yyyy-yyyy-yyyyyyyyyyyy"
DOC_URI = "https://www.example.com/webhook_uri"
DOC_V1_BODY = (
    b'[{"eventId":1,"subscriptionId":12345,"portalId":62515,"occurredAt":1564113600000,'
    b'"subscriptionType":"contact.creation","attemptNumber":0,"objectId":123,'
    b'"changeSource":"CRM","changeFlag":"NEW","appId":54321}]'
)
DOC_V1_SIGNATURE = "232db2615f3d666fe21a8ec971ac7b5402d33b9a925784df3ca654d05f4817de"
DOC_V2_GET_SIGNATURE = "eee2dddcc73c94d699f5e395f4b9d454a069a6855fbfa152e91e88823087200e"
DOC_V2_BODY = b'{"example_field":"example_value"}'
DOC_V2_POST_SIGNATURE = "9569219f8ba981ffa6f6f16aa0f48637d35d728c7e4d93d0d52efaa512af7900"
DOC_V3_BODY = b"{'example_field':'example_value'}"
DOC_V3_TIMESTAMP = 1693657560000
DOC_V3_SIGNATURE = "K36dawei4A+QBNolUOqo7s91KQDWQ5MXZ/QufNYuk/Y="

SECRET = "s3cr3t-0000-1111-2222-333344445555"
URL = "https://hooks.example.com/webhooks/hubspot"
BODY = b'[{"objectId":1,"subscriptionType":"contact.creation"}]'
NOW_MS = 1_700_000_000_000
MAX_AGE_S = 300


def v3_headers(signature: str, timestamp: int | str = NOW_MS) -> dict[str, str]:
    return {"x-hubspot-signature-v3": signature, "x-hubspot-request-timestamp": str(timestamp)}


def check(
    headers: dict[str, str],
    *,
    secret: str = SECRET,
    url: str = URL,
    body: bytes = BODY,
    method: str = "POST",
    now_ms: int = NOW_MS,
) -> None:
    verify(
        secret=secret,
        method=method,
        url=url,
        body=body,
        headers=headers,
        now_ms=now_ms,
        max_age_s=MAX_AGE_S,
    )


def rejected(
    headers: dict[str, str], *, secret: str = SECRET, url: str = URL, body: bytes = BODY
) -> SignatureError:
    with pytest.raises(SignatureError) as info:
        check(headers, secret=secret, url=url, body=body)
    message = str(info.value)
    assert message
    assert SECRET not in message
    assert secret not in message
    for signature in headers.values():
        if len(signature) > 20:
            assert signature not in message
    return info.value


# --- documented vectors ---------------------------------------------------------------


def test_sign_v3_matches_the_sdk_documented_vector() -> None:
    signature = sign_v3(DOC_SECRET, "POST", DOC_URI, DOC_V3_BODY, DOC_V3_TIMESTAMP)
    assert signature == DOC_V3_SIGNATURE


def test_verify_accepts_the_documented_v3_vector_at_its_timestamp() -> None:
    check(
        v3_headers(DOC_V3_SIGNATURE, DOC_V3_TIMESTAMP),
        secret=DOC_SECRET,
        url=DOC_URI,
        body=DOC_V3_BODY,
        now_ms=DOC_V3_TIMESTAMP + 1_000,
    )


def test_sign_v1_matches_the_documented_example() -> None:
    assert sign_v1(DOC_SECRET, DOC_V1_BODY) == DOC_V1_SIGNATURE


def test_sign_v2_matches_the_documented_get_and_post_examples() -> None:
    assert sign_v2(DOC_SECRET, "GET", DOC_URI, b"") == DOC_V2_GET_SIGNATURE
    assert sign_v2(DOC_SECRET, "POST", DOC_URI, DOC_V2_BODY) == DOC_V2_POST_SIGNATURE


def test_verify_accepts_the_documented_v1_and_v2_examples() -> None:
    v1 = {"x-hubspot-signature": DOC_V1_SIGNATURE, "x-hubspot-signature-version": "v1"}
    check(v1, secret=DOC_SECRET, url=DOC_URI, body=DOC_V1_BODY)
    v2 = {"x-hubspot-signature": DOC_V2_POST_SIGNATURE, "x-hubspot-signature-version": "v2"}
    check(v2, secret=DOC_SECRET, url=DOC_URI, body=DOC_V2_BODY)


# --- cross-check against the official SDK -----------------------------------------------

uris = st.builds(
    lambda host, path, query: f"https://{host}.example.com/{path}{query}",
    st.from_regex(r"[a-z0-9]{1,12}", fullmatch=True),
    st.from_regex(r"[A-Za-z0-9_./-]{0,30}", fullmatch=True),
    st.sampled_from(["", "?a=1", "?b=2&a=1", "?x=a%20b"]),
)
secrets = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40)


@given(secret=secrets, body=st.text(max_size=300), uri=uris, timestamp=st.integers(0, 10**13))
def test_sign_v3_agrees_with_the_official_sdk(
    secret: str, body: str, uri: str, timestamp: int
) -> None:
    expected = Signature.get_signature(
        secret, body, "v3", http_uri=uri, http_method="POST", timestamp=str(timestamp)
    )
    assert sign_v3(secret, "POST", uri, body.encode(), timestamp) == expected
    check(
        v3_headers(expected, timestamp),
        secret=secret,
        url=uri,
        body=body.encode(),
        now_ms=timestamp,
    )


@given(
    secret=st.one_of(
        st.text(max_size=200),
        st.sampled_from(["", "k" * 63, "k" * 64, "k" * 65, "é" * 32, "ü" * 33]),
    ),
    message=st.binary(max_size=500),
)
def test_hmac_from_cached_pads_equals_the_standard_library_for_keys_of_every_length(
    secret: str, message: bytes
) -> None:
    # Keys shorter than, equal to and longer than SHA-256's 64-byte block (hashed first);
    # the second call reads the pads from the cache.
    expected = hmac.digest(secret.encode(), message, "sha256")
    assert hmac_sha256(secret, message) == expected
    assert hmac_sha256(secret, message) == expected


@given(secret=secrets, body=st.text(max_size=300), uri=uris)
def test_sign_v1_and_v2_agree_with_the_official_sdk(secret: str, body: str, uri: str) -> None:
    v1 = Signature.get_signature(secret, body, "v1")
    v2 = Signature.get_signature(secret, body, "v2", http_uri=uri, http_method="POST")
    assert sign_v1(secret, body.encode()) == v1
    assert sign_v2(secret, "POST", uri, body.encode()) == v2
    raw = body.encode()
    check({"x-hubspot-signature": v1, "x-hubspot-signature-version": "v1"}, secret=secret, body=raw)
    check(
        {"x-hubspot-signature": v2, "x-hubspot-signature-version": "v2"},
        secret=secret,
        url=uri,
        body=raw,
    )


# --- v3 URI decoding --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoded", "decoded"),
    [
        ("https://h.example.com/hook%3Fa%3Db", "https://h.example.com/hook?a%3Db"),
        (
            "https://h.example.com/hook?next=https%3A%2F%2Fx.io%2Fp",
            "https://h.example.com/hook?next=https://x.io/p",
        ),
        ("https://h.example.com/hook?e=a%40b%2cc%3bd", "https://h.example.com/hook?e=a@b,c;d"),
        (
            "https://h.example.com/%21%24%27%28%29%2A%2f%3a",
            "https://h.example.com/!$'()*/:",
        ),
    ],
)
def test_v3_verifies_against_the_uri_with_listed_escapes_decoded(
    encoded: str, decoded: str
) -> None:
    sdk = Signature.get_signature(
        SECRET, BODY.decode(), "v3", http_uri=decoded, timestamp=str(NOW_MS)
    )
    check(v3_headers(sdk), url=encoded)
    assert sign_v3(SECRET, "POST", encoded, BODY, NOW_MS) == sdk


def test_v3_does_not_decode_escapes_outside_the_list() -> None:
    encoded = "https://h.example.com/hook?q=a%20b%3Dc%252F"
    as_is = Signature.get_signature(
        SECRET, BODY.decode(), "v3", http_uri=encoded, timestamp=str(NOW_MS)
    )
    check(v3_headers(as_is), url=encoded)
    over_decoded = "https://h.example.com/hook?q=a b=c%2F"
    wrong = Signature.get_signature(
        SECRET, BODY.decode(), "v3", http_uri=over_decoded, timestamp=str(NOW_MS)
    )
    rejected(v3_headers(wrong), url=encoded)


def test_v2_uses_the_uri_exactly_as_given() -> None:
    encoded = "https://h.example.com/hook?next=https%3A%2F%2Fx.io"
    signature = sign_v2(SECRET, "POST", encoded, BODY)
    check({"x-hubspot-signature": signature, "x-hubspot-signature-version": "v2"}, url=encoded)
    decoded = sign_v2(SECRET, "POST", "https://h.example.com/hook?next=https://x.io", BODY)
    rejected({"x-hubspot-signature": decoded, "x-hubspot-signature-version": "v2"}, url=encoded)


# --- version selection ------------------------------------------------------------------


def test_v3_is_preferred_over_a_valid_v1_signature() -> None:
    headers = v3_headers("A" * 44) | {
        "x-hubspot-signature": sign_v1(SECRET, BODY),
        "x-hubspot-signature-version": "v1",
    }
    rejected(headers)


def test_missing_version_header_is_checked_as_v1() -> None:
    check({"x-hubspot-signature": sign_v1(SECRET, BODY)})
    rejected({"x-hubspot-signature": sign_v2(SECRET, "POST", URL, BODY)})


def test_hex_signature_is_accepted_in_upper_case() -> None:
    signature = sign_v2(SECRET, "POST", URL, BODY).upper()
    check({"x-hubspot-signature": signature, "x-hubspot-signature-version": "V2"})


def test_unknown_signature_version_is_rejected() -> None:
    rejected({"x-hubspot-signature": sign_v1(SECRET, BODY), "x-hubspot-signature-version": "v9"})


# --- failures ---------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["v1", "v2", "v3"])
def test_tampered_body_is_rejected(version: str) -> None:
    headers = signed_headers(version)
    rejected(headers, body=BODY + b" ")


@pytest.mark.parametrize("version", ["v1", "v2", "v3"])
def test_wrong_secret_is_rejected_without_leaking_it(version: str) -> None:
    headers = signed_headers(version)
    error = rejected(headers, secret="other-secret-9999-8888-7777")
    assert "other-secret" not in str(error)


@pytest.mark.parametrize("version", ["v2", "v3"])
def test_different_url_is_rejected(version: str) -> None:
    rejected(signed_headers(version), url=URL.replace("https:", "http:"))


@pytest.mark.parametrize("offset_s", [-301, 301, -3600, 3600])
def test_v3_timestamp_outside_the_window_is_rejected_in_both_directions(offset_s: int) -> None:
    timestamp = NOW_MS + offset_s * 1000
    headers = v3_headers(sign_v3(SECRET, "POST", URL, BODY, timestamp), timestamp)
    error = rejected(headers)
    assert "timestamp" in str(error)


@pytest.mark.parametrize("offset_s", [-300, 0, 300])
def test_v3_timestamp_at_the_window_edge_is_accepted(offset_s: int) -> None:
    timestamp = NOW_MS + offset_s * 1000
    check(v3_headers(sign_v3(SECRET, "POST", URL, BODY, timestamp), timestamp))


@pytest.mark.parametrize(
    "timestamp",
    [f"{NOW_MS}.0", "1.7e12", "garbage", "", " ", f"-{NOW_MS}", f"+{NOW_MS}", "1_700_000", "١٢٣"],
)
def test_v3_non_integer_timestamp_is_rejected(timestamp: str) -> None:
    # Signed over the very string sent, so only the timestamp format can fail.
    signature = Signature.get_signature(
        SECRET, BODY.decode(), "v3", http_uri=URL, timestamp=timestamp
    )
    rejected(v3_headers(signature, timestamp))


def test_v3_signature_without_timestamp_header_is_rejected() -> None:
    headers = {"x-hubspot-signature-v3": sign_v3(SECRET, "POST", URL, BODY, NOW_MS)}
    assert "timestamp" in str(rejected(headers)).lower()


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"x-hubspot-signature-version": "v1"},
        {"x-hubspot-signature": "", "x-hubspot-signature-version": "v1"},
        {"x-hubspot-request-timestamp": str(NOW_MS)},
    ],
)
def test_missing_signature_headers_are_rejected(headers: dict[str, str]) -> None:
    assert "missing" in str(rejected(headers))


@pytest.mark.parametrize(
    "signature", ["é" * 44, "K36dawei4A+QBNolUOqo7s91KQDWQ5MXZ/QufNYuk/Y=", "x"]
)
def test_malformed_or_foreign_v3_signature_is_rejected(signature: str) -> None:
    rejected(v3_headers(signature))


def test_non_ascii_hex_signature_is_rejected() -> None:
    rejected({"x-hubspot-signature": "\u212a" * 64, "x-hubspot-signature-version": "v1"})


def signed_headers(version: str) -> dict[str, str]:
    if version == "v3":
        return v3_headers(sign_v3(SECRET, "POST", URL, BODY, NOW_MS))
    signature = sign_v1(SECRET, BODY) if version == "v1" else sign_v2(SECRET, "POST", URL, BODY)
    return {"x-hubspot-signature": signature, "x-hubspot-signature-version": version}
