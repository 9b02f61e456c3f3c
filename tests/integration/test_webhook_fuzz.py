"""Property test: no input makes ``POST /webhooks/hubspot`` answer 5xx or stop serving.

One real app (uvicorn in a thread, SQLite, dry-run target) takes arbitrary bodies,
header sets, content types and sizes, some correctly signed so that the JSON checks
and the store are reached too.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from starlette.types import ASGIApp

from receiver.hubspot.signature import sign_v1, sign_v2, sign_v3
from receiver.web.app import create_app
from tests.conftest import SECRET, build_settings
from tests.support.servers import free_port

MAX_BODY = 4096
ALLOWED = {200, 400, 401, 413, 415}
# Past the store's signed 64-bit range too (such events must become invalid, not a 5xx),
# and past 64 bits, which the JSON parser turns into floats.
INT64 = st.integers(min_value=-(2**70), max_value=2**70)

MODES = (
    *("v3", "v3", "v3", "v1", "v2"),  # weighted toward correctly signed requests
    *("v3-wrong-secret", "v3-stale", "v3-bad-timestamp", "v2-bad-version", "unsigned"),
)
# Valid HTTP field values (visible ASCII and obs-text, inner spaces): anything else is
# refused by the HTTP parser before the app sees it, so it cannot test the app.
FIELD_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60).map(
    str.strip
)
FIELD_BYTES = st.binary(max_size=30).map(lambda b: bytes(c for c in b if c >= 0x21 and c != 0x7F))
CONTENT_TYPES = st.one_of(
    st.just("application/json"),  # weighted: most requests should reach the later checks
    st.just("application/json"),
    st.sampled_from(
        [
            "application/json",
            "application/json; charset=utf-8",
            "application/problem+json",
            "text/json",
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "",
            ";",
            "application/",
        ]
    ),
    FIELD_TEXT,
)
HEADER_NAMES = st.sampled_from(
    [
        "X-HubSpot-Signature-v3",
        "X-HubSpot-Request-Timestamp",
        "X-HubSpot-Signature",
        "X-HubSpot-Signature-Version",
        "X-Forwarded-For",
        "X-Forwarded-Proto",
        "Forwarded",
        "Accept",
        "X-Anything",
    ]
)
HEADER_VALUES = st.one_of(
    FIELD_TEXT,
    FIELD_BYTES,
    st.integers(min_value=-(10**20), max_value=10**20).map(str),
)

JSON_LEAF = st.one_of(
    st.none(),
    st.booleans(),
    INT64,
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
JSON = st.recursive(
    JSON_LEAF,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
EVENT_KEYS = (
    "objectId",
    "eventId",
    "portalId",
    "occurredAt",
    "subscriptionType",
    "eventType",
    "propertyName",
    "propertyValue",
    "attemptNumber",
    "primaryObjectId",
)
EVENT_LIKE = st.dictionaries(
    st.sampled_from(EVENT_KEYS),
    st.one_of(
        INT64,
        st.sampled_from(["contact.propertyChange", "contact.merge", "lifecyclestage", "lead"]),
        JSON_LEAF,
    ),
    max_size=len(EVENT_KEYS),
)
# Well-formed events with arbitrary values: these reach the store.
EVENTS = st.fixed_dictionaries(
    {
        "objectId": INT64,
        "eventId": INT64 | st.text(max_size=10),
        "portalId": INT64,
        "occurredAt": INT64,
        "subscriptionType": st.sampled_from(["contact.propertyChange", "contact.merge"])
        | st.text(min_size=1, max_size=20),
    },
    optional={
        "propertyName": st.just("lifecyclestage") | st.text(max_size=10),
        "propertyValue": JSON_LEAF,
        "attemptNumber": st.integers(0, 10),
        "primaryObjectId": INT64,
    },
)
JSON_BODIES = st.one_of(
    st.lists(EVENTS, max_size=8),
    st.lists(EVENT_LIKE, max_size=8),
    st.lists(st.one_of(EVENT_LIKE, JSON), max_size=5),
    JSON,
).map(lambda doc: json.dumps(doc).encode())
BODIES = st.one_of(
    JSON_BODIES,
    st.binary(max_size=600),
    st.sampled_from([MAX_BODY - 1, MAX_BODY, MAX_BODY + 1, 3 * MAX_BODY]).map(
        lambda n: b"[" + b" " * (n - 2) + b"]"
    ),
)


class ThreadedServer:
    """uvicorn serving ``app`` in its own thread and event loop (Hypothesis runs sync)."""

    def __init__(self, app: ASGIApp) -> None:
        self.port = free_port()
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="fuzz-uvicorn", daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home: Path = tmp_path_factory.mktemp("fuzz")
    app = create_app(build_settings(home, max_body_bytes=MAX_BODY))
    with ThreadedServer(app) as url:
        yield url


def sign(mode: str, url: str, body: bytes) -> dict[str, str]:
    now_ms = int(time.time() * 1000)
    if mode.startswith("v3"):
        ts = now_ms - 400_000 if mode == "v3-stale" else now_ms
        secret = "not-the-secret" if mode == "v3-wrong-secret" else SECRET
        stamp = "1.7e12" if mode == "v3-bad-timestamp" else str(ts)
        return {
            "X-HubSpot-Signature-v3": sign_v3(secret, "POST", url, body, ts),
            "X-HubSpot-Request-Timestamp": stamp,
        }
    if mode == "v1":
        return {"X-HubSpot-Signature": sign_v1(SECRET, body), "X-HubSpot-Signature-Version": "v1"}
    if mode.startswith("v2"):
        version = "v9" if mode == "v2-bad-version" else "v2"
        return {
            "X-HubSpot-Signature": sign_v2(SECRET, "POST", url, body),
            "X-HubSpot-Signature-Version": version,
        }
    return {}


def check_answer(response: httpx.Response, body: bytes) -> None:
    assert response.status_code in ALLOWED, (response.status_code, response.text)
    doc: Any = response.json()
    if response.status_code != 200:
        assert set(doc) >= {"error", "message"}
        assert isinstance(doc["error"], str) and isinstance(doc["message"], str)
        return
    items = orjson.loads(body)
    assert isinstance(items, list)
    assert set(doc) == {"accepted", "duplicates", "invalid"}
    assert all(isinstance(v, int) and v >= 0 for v in doc.values())
    assert sum(doc.values()) == len(items)


def test_arbitrary_requests_get_an_allowed_answer_and_the_server_keeps_serving(
    base_url: str,
) -> None:
    url = base_url + "/webhooks/hubspot"
    seen: set[int] = set()

    @settings(
        max_examples=150,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @example(b"[]", "application/json", "v3", {}).via("200")
    @example(b'{"a": 1}', "application/json", "v3", {}).via("400")
    @example(b"[]", "application/json", "unsigned", {}).via("401")
    @example(b" " * (MAX_BODY + 1), "text/plain", "unsigned", {}).via("413")
    @example(b"[]", "text/plain", "v3", {}).via("415")
    @given(
        body=BODIES,
        content_type=CONTENT_TYPES,
        mode=st.sampled_from(MODES),
        extra=st.dictionaries(HEADER_NAMES, HEADER_VALUES, max_size=3),
    )
    def one_request(
        body: bytes, content_type: str, mode: str, extra: dict[str, str | bytes]
    ) -> None:
        headers = httpx.Headers({"Content-Type": content_type, **sign(mode, url, body)})
        for name, value in extra.items():
            if mode == "unsigned" or not name.startswith("X-HubSpot"):  # keep signatures
                headers[name] = value if isinstance(value, str) else value.decode("latin-1")
        response = client.post(url, content=body, headers=headers)
        seen.add(response.status_code)
        check_answer(response, body)

    with httpx.Client(timeout=10) as client:
        one_request()
        assert client.get(base_url + "/healthz").status_code == 200
    assert seen == ALLOWED
