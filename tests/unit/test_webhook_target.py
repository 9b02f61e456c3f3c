"""The webhook target against ``httpx.MockTransport``: signing, payload, answers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from receiver.errors import PermanentError, RateLimited, TransientError
from receiver.targets.base import EventRef, UpsertRequest, UpsertResult
from receiver.targets.webhook.settings import WebhookSettings
from receiver.targets.webhook.signing import Signer, check_secret
from receiver.targets.webhook.target import WebhookTarget

URL = "https://hooks.example.com/stagesync"
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
NOW = 1_714_564_800.0

Handler = Callable[[httpx.Request], Coroutine[None, None, httpx.Response]]
Factory = Callable[..., WebhookTarget]


@pytest.fixture
async def make() -> AsyncIterator[Factory]:
    clients: list[httpx.AsyncClient] = []

    def factory(handler: Handler, **overrides: Any) -> WebhookTarget:
        client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
        clients.append(client)
        settings = WebhookSettings(url=URL, secret=SECRET, **overrides)
        return WebhookTarget(settings=settings, http=client, clock=lambda: NOW)

    yield factory
    for client in clients:
        await client.aclose()


def test_signatures_match_the_published_standard_webhooks_test_vector() -> None:
    # The vector of the specification's reference libraries.
    headers = Signer(SECRET).headers(
        "msg_p5jXN8AQM9LWM0D4loKWxJek", b'{"test": 2432232314}', 1614265330
    )
    assert headers == {
        "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "webhook-timestamp": "1614265330",
        "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    }


@pytest.mark.parametrize(
    ("secret", "problem"),
    [
        ("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "must start with 'whsec_'"),
        ("whsec_not base64!", "followed by base64"),
        ("whsec_c2hvcnQ=", "24 to 64 bytes"),
    ],
)
def test_secrets_that_are_not_whsec_secrets_are_refused(secret: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        check_secret(secret)


async def test_upsert_posts_the_signed_payload_the_spec_describes(make: Factory) -> None:
    seen: list[httpx.Request] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json={"id": "rec-9"})

    target = make(handler)
    request = UpsertRequest(
        "lead", "101", {"email": "ada@example.com"}, event=EventRef(7, 1714564800123)
    )
    assert await target.upsert(request) == UpsertResult("rec-9", created=True)
    sent = seen[0]
    assert json.loads(sent.content) == {
        "type": "contact.upsert",
        "kind": "lead",
        "hubspot_id": 101,
        "fields": {"email": "ada@example.com"},
        "occurred_at": "2024-05-01T12:00:00.123Z",
    }
    assert sent.headers["webhook-id"] == "evt_7_lead"
    assert sent.headers["webhook-timestamp"] == str(int(NOW))
    verifier = Webhook(SECRET)
    with pytest.raises(Exception, match="too old"):
        verifier.verify(sent.content, dict(sent.headers))  # signed at NOW, years ago
    when = datetime.fromtimestamp(NOW, tz=UTC)
    assert sent.headers["webhook-signature"] == verifier.sign("evt_7_lead", when, sent.content)


async def test_webhook_id_is_stable_across_retries_and_new_after_a_replay(make: Factory) -> None:
    ids: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        ids.append(request.headers["webhook-id"])
        return httpx.Response(503 if len(ids) == 1 else 200)

    target = make(handler)
    first = UpsertRequest("contact", "5", {}, event=EventRef(11, 1, delivery=0))
    with pytest.raises(TransientError):
        await target.upsert(first)
    await target.upsert(first)
    await target.upsert(UpsertRequest("contact", "5", {}, event=EventRef(11, 1, delivery=2)))
    assert ids == ["evt_11_contact", "evt_11_contact", "evt_11_r2_contact"]


@pytest.mark.parametrize(
    ("answer", "error", "code"),
    [
        (httpx.Response(429, headers={"Retry-After": "30"}, text="slow"), RateLimited, "http_429"),
        (httpx.Response(408, text="timeout"), TransientError, "http_408"),
        (httpx.Response(502, text="bad gateway"), TransientError, "http_502"),
        (httpx.Response(422, text='{"error": "invalid email"}'), PermanentError, "http_422"),
        (httpx.Response(301, headers={"Location": "/elsewhere"}), PermanentError, "http_301"),
    ],
)
async def test_answers_map_onto_the_error_tree(
    make: Factory, answer: httpx.Response, error: type[Exception], code: str
) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        return answer

    with pytest.raises(error) as caught:
        await make(handler).upsert(UpsertRequest("lead", "1", {}))
    assert type(caught.value) is error
    assert caught.value.code == code  # type: ignore[attr-defined]
    if code == "http_429":
        assert caught.value.retry_after == 30  # type: ignore[attr-defined]
    if code == "http_422":
        assert caught.value.message == '{"error": "invalid email"}'  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("failure", "code"),
    [(httpx.ReadTimeout, "timeout"), (httpx.ConnectError, "connection_error")],
)
async def test_no_answer_is_transient_and_counted_as_an_error(
    failure: type[httpx.RequestError], code: str
) -> None:
    async def handler(request: httpx.Request) -> httpx.Response:
        if request.headers["webhook-id"].endswith("_lead"):
            raise failure("no answer", request=request)
        return httpx.Response(204)

    calls: list[str] = []
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        settings = WebhookSettings(url=URL, secret=SECRET)
        target = WebhookTarget(settings=settings, http=client, on_call=calls.append)
        with pytest.raises(TransientError) as caught:
            await target.upsert(UpsertRequest("lead", "1", {}, event=EventRef(7, 1)))
        await target.upsert(UpsertRequest("contact", "1", {}, event=EventRef(8, 1)))
    assert type(caught.value) is TransientError
    assert caught.value.code == code
    assert "webhook endpoint" in caught.value.message
    assert calls == ["error", "2xx"]


async def test_delete_posts_both_kinds_and_absent_records_count_as_done(make: Factory) -> None:
    kinds: list[tuple[str, str]] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        kinds.append((body["type"], body["kind"]))
        return httpx.Response(204 if body["kind"] == "lead" else 404)

    assert await make(handler).delete("9", event=EventRef(3, 0)) == 1
    assert sorted(kinds) == [("contact.delete", "contact"), ("contact.delete", "lead")]


async def test_a_batch_is_one_post_per_record_within_the_concurrency_bound(make: Factory) -> None:
    active = peak = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.01)
        active -= 1
        hubspot_id = json.loads(request.content)["hubspot_id"]
        return httpx.Response(200 if hubspot_id != 3 else 400, text="no")

    target = make(handler, max_concurrency=4)
    results = await target.upsert_batch([UpsertRequest("lead", str(n), {}) for n in range(12)])
    assert peak == 4
    assert [isinstance(r, PermanentError) for r in results] == [n == 3 for n in range(12)]
