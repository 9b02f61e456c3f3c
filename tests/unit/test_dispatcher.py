"""The dispatcher on the in-memory store and a scripted target: routing, attempts and
history, rate limits, deletions, per-contact order, leases and wake-ups.

Time that matters to the dispatcher (leases, next attempts) is a fake clock the tests
move; only the claim loop's own waits are real, and the tests wake it instead.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any

import pytest
from structlog.testing import capture_logs

from receiver.dispatch.work import WAITING_CODE
from receiver.errors import RateLimited
from receiver.ops.metrics import Metrics
from receiver.sync.retry import RetryPolicy
from receiver.targets.base import UpsertRequest, UpsertResult
from tests.fakes.doubles import (
    ScriptedTarget,
    permanent,
    rate_limited,
    transient,
)
from tests.support.dispatch_rig import T0, Reader, running, stage_event
from tests.support.webhooks import event

# -- routing ---------------------------------------------------------------------------------


async def test_a_lead_stage_is_upserted_as_a_lead_and_the_contact_state_kept() -> None:
    async with running() as rig:
        (eid,) = await rig.send(stage_event(1, "lead", email="x"))
        (done,) = await rig.final(eid)
        assert (done.state, done.target_kind, done.target_id) == ("synced", "lead", "lead-1")
        assert rig.target.kinds(1) == {"lead"}
        contact = await rig.store.get_contact(1)
        assert contact is not None and (contact.kind, contact.stage) == ("lead", "lead")
        assert contact.last_occurred_at == 1_000


async def test_a_contact_stage_is_upserted_as_a_contact() -> None:
    async with running() as rig:
        (eid,) = await rig.send(stage_event(2, "customer"))
        (done,) = await rig.final(eid)
        assert (done.state, done.target_kind, done.stage) == ("synced", "contact", "customer")


async def test_another_stage_is_skipped_without_a_target_call() -> None:
    async with running() as rig:
        (eid,) = await rig.send(stage_event(3, "subscriber"))
        (done,) = await rig.final(eid)
        assert (done.state, done.reason, done.attempts) == ("skipped", "stage-not-synced", 1)
        assert rig.target.calls == 0


async def test_promotion_adds_a_contact_and_leaves_the_lead() -> None:
    async with running() as rig:
        (a,) = await rig.send(stage_event(4, "lead", at=1))
        await rig.final(a)
        (b,) = await rig.send(stage_event(4, "opportunity", at=2))
        (done,) = await rig.final(b)
        assert (done.target_kind, done.reason) == ("contact", None)
        assert rig.target.kinds(4) == {"lead", "contact"}


async def test_promotion_convert_asks_the_target_to_convert_the_lead() -> None:
    async with running(promotion="convert") as rig:
        (a,) = await rig.send(stage_event(41, "lead", at=1))
        await rig.final(a)
        (b,) = await rig.send(stage_event(41, "customer", at=2))
        await rig.final(b)
        lead, promoted = rig.target.requests
        assert (lead.kind, lead.convert) == ("lead", False)
        assert lead.contact_fields is not None and "Company" not in lead.contact_fields
        assert (promoted.kind, promoted.convert) == ("contact", True)


class FollowingTarget(ScriptedTarget):
    """Answers every Lead upsert as the Contact it was converted into."""

    async def upsert(self, request: UpsertRequest) -> UpsertResult:
        result = await super().upsert(request)
        return replace(result, kind="contact") if request.kind == "lead" else result


async def test_a_result_of_another_kind_moves_the_contact_to_that_kind() -> None:
    async with running(target=FollowingTarget()) as rig:
        (a,) = await rig.send(stage_event(42, "lead", at=1))
        (done,) = await rig.final(a)
        assert (done.state, done.target_kind) == ("synced", "contact")
        state = await rig.store.get_contact(42)
        assert state is not None and state.kind == "contact"
        (b,) = await rig.send(stage_event(42, "salesqualifiedlead", at=2))
        (later,) = await rig.final(b)
        assert (later.target_kind, later.reason) == ("contact", "no-demotion")
        assert rig.target.requests[-1].kind == "contact"


async def test_demotion_updates_the_contact_with_reason_no_demotion() -> None:
    async with running() as rig:
        (a,) = await rig.send(stage_event(5, "customer", at=1))
        await rig.final(a)
        (b,) = await rig.send(stage_event(5, "lead", at=2))
        (done,) = await rig.final(b)
        assert (done.state, done.reason, done.target_kind) == ("synced", "no-demotion", "contact")
        assert rig.target.kinds(5) == {"contact"}
        assert rig.target.requests[-1].fields["Stage"] == "lead"


async def test_pending_events_of_one_contact_give_one_upsert_with_the_newest_state() -> None:
    target = ScriptedTarget(gate=asyncio.Event())
    async with running(target=target) as rig:
        (first,) = await rig.send(stage_event(99, "lead", at=1))  # holds the target
        await rig.until(lambda: target.calls == 1)
        ids = await rig.send(
            stage_event(6, "lead", at=3), stage_event(6, "customer", at=5),
            stage_event(6, "opportunity", at=4),
        )  # fmt: skip
        target.gate.set()  # type: ignore[union-attr]
        done = await rig.final(first, *ids)
        carrier = next(e for e in done if e.state == "synced" and e.object_id == 6)
        assert carrier.stage == "customer"
        assert sorted((e.state, e.reason) for e in done[1:]) == [
            ("skipped", "coalesced"), ("skipped", "coalesced"), ("synced", None),
        ]  # fmt: skip
        assert all(rig.store.coalesced_into(e.id) == carrier.id for e in done[1:] if e.reason)
        assert target.per_id["6"] == 1


@pytest.mark.parametrize(("one_kind", "batches"), [(True, 2), (False, 1)])
async def test_a_target_that_calls_per_kind_is_given_batches_of_one_kind(
    one_kind: bool, batches: int
) -> None:
    target = ScriptedTarget(gate=asyncio.Event(), one_kind_per_call=one_kind)
    async with running(target=target, concurrency=1) as rig:
        (first,) = await rig.send(stage_event(90, "lead", at=1))  # holds the only worker
        await rig.until(lambda: target.calls == 1)
        ids = await rig.send(
            *(stage_event(n, "lead" if n % 2 else "customer", at=2) for n in range(100, 110))
        )
        await rig.until(lambda: len(rig.dispatcher.workers.ready) == 10, what="10 jobs ready")
        target.gate.set()  # type: ignore[union-attr]
        await rig.final(first, *ids)
    assert len(target.batches) == batches
    assert sorted(r.hubspot_id for b in target.batches for r in b) == [
        str(n) for n in range(100, 110)
    ]
    if one_kind:
        assert [{r.kind for r in b} for b in target.batches] == [{"contact"}, {"lead"}]


async def test_an_event_older_than_the_applied_state_is_stale_and_changes_nothing() -> None:
    async with running() as rig:
        (new,) = await rig.send(stage_event(7, "customer", at=500))
        await rig.final(new)
        (old,) = await rig.send(stage_event(7, "lead", at=100))
        (done,) = await rig.final(old)
        assert (done.state, done.reason) == ("skipped", "stale")
        assert rig.target.calls == 1 and rig.target.kinds(7) == {"contact"}


# -- without a token: the webhook's own data ------------------------------------------------


async def test_without_a_token_the_record_holds_only_the_carried_properties() -> None:
    async with running() as rig:
        (a,) = await rig.send(stage_event(8, "lead", at=1))
        await rig.final(a)
        mail = event(8, property_name="email", property_value="a@example.com", occurred_at=2)
        (b,) = await rig.send(mail)
        (done,) = await rig.final(b)
        assert (done.state, done.target_kind, done.stage) == ("synced", "lead", "lead")
        assert dict(rig.target.requests[-1].fields) == {"Email": "a@example.com"}
        assert rig.target.requests[-1].hubspot_id == "8"


async def test_without_a_token_an_update_of_an_existing_record_may_not_create_it() -> None:
    async with running() as rig:
        (a,) = await rig.send(stage_event(15, "lead", at=1))
        await rig.final(a)
        mail = event(15, property_name="email", property_value="e@example.com", occurred_at=2)
        (b,) = await rig.send(mail)
        await rig.final(b)
        (c,) = await rig.send(stage_event(15, "customer", at=3))  # promotion: a new Contact
        await rig.final(c)
        first, update, promotion = rig.target.requests
        assert (first.kind, first.may_create) == ("lead", True)
        assert (update.kind, update.may_create) == ("lead", False)
        assert (promotion.kind, promotion.may_create) == ("contact", True)


async def test_without_a_token_a_creation_event_of_an_unknown_contact_is_stage_unknown() -> None:
    async with running() as rig:
        (eid,) = await rig.send(event(9, subscription_type="contact.creation"))
        (done,) = await rig.final(eid)
        assert (done.state, done.reason, done.stage) == ("skipped", "stage-unknown", None)
        assert rig.target.calls == 0


async def test_without_a_token_a_property_change_of_an_unknown_contact_is_stage_unknown() -> None:
    async with running() as rig:
        (eid,) = await rig.send(event(10, property_name="email", property_value="b@example.com"))
        (done,) = await rig.final(eid)
        assert (done.state, done.reason) == ("skipped", "stage-unknown")


async def test_without_a_token_a_creation_with_a_stage_change_uses_the_carried_stage() -> None:
    async with running() as rig:
        ids = await rig.send(
            event(11, subscription_type="contact.creation", occurred_at=1),
            stage_event(11, "marketingqualifiedlead", at=2),
        )
        done = await rig.final(*ids)
        assert sorted((e.state, e.reason) for e in done) == [
            ("skipped", "coalesced"), ("synced", None),
        ]  # fmt: skip
        assert rig.target.kinds(11) == {"lead"}


# -- with HubSpot as the source of truth ----------------------------------------------------


async def test_the_stage_fetched_from_hubspot_wins_over_the_event() -> None:
    reader = Reader({12: {"lifecyclestage": "customer", "email": "c@example.com"}})
    async with running(hubspot=reader) as rig:
        (eid,) = await rig.send(stage_event(12, "lead"))
        (done,) = await rig.final(eid)
        assert (done.target_kind, done.stage) == ("contact", "customer")
        assert rig.target.requests[-1].fields["Email"] == "c@example.com"
        assert reader.calls == [[12]]


@pytest.mark.parametrize("current", [{"lifecyclestage": None}, {"lifecyclestage": ""}, {}])
async def test_a_contact_without_a_stage_in_hubspot_is_skipped_stage_not_synced(
    current: dict[str, str | None],
) -> None:
    reader = Reader({16: {"email": "s@example.com", **current}})
    async with running(hubspot=reader) as rig:
        (eid,) = await rig.send(stage_event(16, "lead"))
        (done,) = await rig.final(eid)
        assert (done.state, done.reason) == ("skipped", "stage-not-synced")
        assert rig.target.calls == 0


async def test_a_change_of_an_unmapped_property_is_unsupported_without_any_call() -> None:
    reader = Reader({17: {"lifecyclestage": "lead", "email": "u@example.com"}})
    async with running(hubspot=reader) as rig:
        noise = event(17, property_name="hs_analytics_source", property_value="DIRECT")
        (eid,) = await rig.send(noise)
        (done,) = await rig.final(eid)
        assert (done.state, done.reason) == ("skipped", "unsupported")
        assert rig.target.calls == 0 and reader.calls == []
        (mapped,) = await rig.send(event(17, property_name="email", property_value="u@x.org"))
        (synced,) = await rig.final(mapped)
        assert (synced.state, synced.target_kind) == ("synced", "lead")


async def test_a_contact_hubspot_no_longer_has_is_skipped_not_found() -> None:
    async with running(hubspot=Reader({})) as rig:
        (eid,) = await rig.send(stage_event(13, "lead"))
        (done,) = await rig.final(eid)
        assert (done.state, done.reason) == ("skipped", "not-found")


async def test_a_hubspot_rate_limit_delays_without_an_attempt_or_history() -> None:
    reader = Reader({14: {"lifecyclestage": "lead"}})
    reader.errors.append(RateLimited("RATE_LIMIT", "daily limit (policy DAILY)", 900.0))
    async with running(hubspot=reader) as rig:
        (eid,) = await rig.send(stage_event(14, "lead"))
        (waiting,) = await rig.final(eid, states=("retrying",))
        assert (waiting.attempts, waiting.last_error_code) == (0, "RATE_LIMIT")
        assert rig.store.next_attempt_at(eid) == pytest.approx(rig.clock() + 900.0)
        assert await rig.store.history(eid) == []
        await rig.retry_now(eid)
        (done,) = await rig.final(eid)
        assert (done.state, done.attempts) == ("synced", 1)
        assert [h.outcome for h in await rig.store.history(eid)] == ["synced"]


# -- attempts and history ---------------------------------------------------------------------


async def test_three_transient_failures_then_success_end_synced_with_four_attempts() -> None:
    target = ScriptedTarget()
    target.fail_calls(transient(), transient("timeout"), transient("http_502"))
    async with running(target=target) as rig:
        (eid,) = await rig.send(stage_event(15, "lead"))
        for _ in range(3):
            await rig.final(eid, states=("retrying",))
            calls = target.calls
            await rig.retry_now(eid)
            await rig.until(lambda c=calls: target.calls > c)  # type: ignore[misc]
        (done,) = await rig.final(eid)
        assert (done.state, done.attempts, done.last_error_code) == ("synced", 4, None)
        history = await rig.store.history(eid)
        assert [h.outcome for h in history] == ["retry", "retry", "retry", "synced"]
        assert [h.error_code for h in history] == ["http_503", "timeout", "http_502", None]


async def test_a_permanent_error_fails_after_one_attempt_keeping_the_reason() -> None:
    target = ScriptedTarget()
    target.fail_record(16, permanent("INVALID_EMAIL_ADDRESS", "Email: invalid email address"))
    async with running(target=target) as rig:
        (eid,) = await rig.send(stage_event(16, "lead"))
        (done,) = await rig.final(eid)
        assert (done.state, done.attempts) == ("failed", 1)
        assert done.last_error_code == "INVALID_EMAIL_ADDRESS"
        assert done.last_error_message == "Email: invalid email address"
        assert done.stage == "lead" and done.target_kind is None


async def test_secrets_an_upstream_echoes_are_scrubbed_from_stored_errors() -> None:
    secret = "sf-client/secret+value=1"
    encoded = "sf-client%2fsecret%2Bvalue%3D1"  # lower- and upper-case escapes
    target = ScriptedTarget()
    target.fail_calls(transient(f"proxy_{secret}"))
    target.fail_record(19, permanent(f"BAD_{encoded}", f"gateway said: {secret} / {encoded}"))
    async with running(target=target, secrets=["unused-token", secret]) as rig:
        (eid,) = await rig.send(stage_event(19, "lead"))
        await rig.final(eid, states=("retrying",))
        await rig.retry_now(eid)
        (done,) = await rig.final(eid)
        history = await rig.store.history(eid)
    stored = [done.last_error_code, done.last_error_message]
    stored += [t for h in history for t in (h.error_code, h.error_message)]
    assert done.state == "failed" and len(history) == 2
    assert done.last_error_message == "gateway said: [redacted] / [redacted]"
    assert done.last_error_code == "BAD_[redacted]"
    assert history[0].error_code == "proxy_[redacted]"
    for text in stored:
        assert "secret" not in (text or "").lower(), text


async def test_running_out_of_attempts_fails_the_event() -> None:
    target = ScriptedTarget()
    target.fail_calls(*(transient() for _ in range(5)))
    retry = RetryPolicy(base_s=1, max_s=2, max_attempts=3)
    async with running(target=target, retry=retry) as rig:
        (eid,) = await rig.send(stage_event(17, "lead"))
        for _ in range(2):
            await rig.final(eid, states=("retrying",))
            calls = target.calls
            await rig.retry_now(eid)
            await rig.until(lambda c=calls: target.calls > c)  # type: ignore[misc]
        (done,) = await rig.final(eid)
        assert (done.state, done.attempts) == ("failed", 3)
        assert "gave up after 3 attempts" in (done.last_error_message or "")
        assert [h.outcome for h in await rig.store.history(eid)] == ["retry", "retry", "failed"]


async def test_target_rate_limits_use_no_attempt_and_back_off_by_streak() -> None:
    target = ScriptedTarget()
    target.fail_calls(rate_limited(), rate_limited(), rate_limited())
    async with running(target=target) as rig:
        (eid,) = await rig.send(stage_event(18, "lead"))
        for streak in (1, 2, 3):
            (waiting,) = await rig.final(eid, states=("retrying",))
            assert waiting.attempts == 0
            delay = rig.store.next_attempt_at(eid) - waiting.updated_at
            assert 0 <= delay <= RetryPolicy(5, 60).ceiling(streak)
            calls = target.calls
            await rig.retry_now(eid)
            await rig.until(lambda c=calls: target.calls > c)  # type: ignore[misc]
        (done,) = await rig.final(eid)
        assert (done.state, done.attempts) == ("synced", 1)
        assert [h.outcome for h in await rig.store.history(eid)] == ["synced"]


async def test_many_rate_limited_records_in_one_answer_count_as_one_rate_limit() -> None:
    target = ScriptedTarget(gate=asyncio.Event())
    ids_ = list(range(40, 60))
    for i in ids_:
        target.fail_record(i, rate_limited())
    async with running(target=target) as rig:
        (_hold,) = await rig.send(stage_event(39, "lead"))
        await rig.until(lambda: target.calls == 1)
        sent = await rig.send(*(stage_event(i, "lead") for i in ids_))
        target.gate.set()  # type: ignore[union-attr]
        waiting = await rig.final(*sent, states=("retrying",))
        ceiling = RetryPolicy(5, 60).ceiling(1)
        for e in waiting:
            assert rig.store.next_attempt_at(e.id) - e.updated_at <= ceiling
        assert target.batch_calls == 1


async def test_per_record_errors_in_a_batch_fail_only_that_record() -> None:
    target = ScriptedTarget(gate=asyncio.Event())
    target.fail_record(21, permanent("REQUIRED_FIELD_MISSING", "LastName"))
    async with running(target=target) as rig:
        (hold,) = await rig.send(stage_event(19, "lead"))
        await rig.until(lambda: target.calls == 1)
        ids = await rig.send(*(stage_event(i, "lead") for i in (20, 21, 22)))
        target.gate.set()  # type: ignore[union-attr]
        done = await rig.final(hold, *ids)
        assert [e.state for e in done] == ["synced", "synced", "failed", "synced"]
        assert target.batch_calls == 1 and done[2].last_error_code == "REQUIRED_FIELD_MISSING"


async def test_a_merge_syncs_the_primary_contact() -> None:
    reader = Reader({38: {"lifecyclestage": "customer", "email": "p@example.com"}})
    async with running(hubspot=reader) as rig:
        merge = event(37, subscription_type="contact.merge", primaryObjectId=38)
        (eid,) = await rig.send(merge)
        (done,) = await rig.final(eid)
        assert (done.object_id, done.state, done.target_kind) == (38, "synced", "contact")
        assert reader.calls == [[38]] and rig.target.kinds(38) == {"contact"}
        assert rig.target.kinds(37) == set()


# -- deletions ------------------------------------------------------------------------------


async def test_a_privacy_deletion_deletes_every_record_and_ends_synced() -> None:
    async with running() as rig:
        (a,) = await rig.send(stage_event(23, "lead", at=1))
        await rig.final(a)
        (b,) = await rig.send(event(23, subscription_type="contact.privacyDeletion", occurred_at=2))
        (done,) = await rig.final(b)
        assert done.state == "synced" and rig.target.deleted == ["23"]
        assert rig.target.kinds(23) == set()
        contact = await rig.store.get_contact(23)
        assert contact is not None and contact.kind is None and contact.last_occurred_at == 2


async def test_a_deletion_is_ignored_by_default_without_a_target_call() -> None:
    async with running() as rig:
        (eid,) = await rig.send(event(24, subscription_type="contact.deletion"))
        (done,) = await rig.final(eid)
        assert (done.state, done.reason) == ("skipped", "deletion-ignored")
        assert rig.target.delete_calls == 0


async def test_a_restore_after_a_deletion_runs_next_round_without_spinning() -> None:
    async with running(on_delete="delete") as rig:
        (a,) = await rig.send(stage_event(25, "lead", at=1))
        await rig.final(a)
        ids = await rig.send(
            event(25, subscription_type="contact.deletion", occurred_at=2),
            stage_event(25, "customer", at=3),
        )
        done = await rig.final(*ids)
        assert [e.state for e in done] == ["synced", "synced"]
        assert rig.target.deleted == ["25"] and rig.target.kinds(25) == {"contact"}
        await asyncio.sleep(0.05)
        claims = rig.store.claims
        await asyncio.sleep(0.3)
        assert rig.store.claims - claims <= 1  # idle: at most one poll


async def test_a_restore_waits_behind_a_deletion_that_is_retried() -> None:
    target = ScriptedTarget()
    target.fail_calls(transient())  # the delete fails once
    async with running(target=target, on_delete="delete") as rig:
        gone, back = await rig.send(
            event(26, subscription_type="contact.deletion", occurred_at=2),
            stage_event(26, "lead", at=3),
        )
        await rig.final(gone, states=("retrying",))
        waiting = await rig.get(back)
        assert (waiting.state, waiting.last_error_code, waiting.attempts) == (
            "retrying", WAITING_CODE, 0,
        )  # fmt: skip
        assert rig.store.next_attempt_at(back) == rig.store.next_attempt_at(gone)
        await asyncio.sleep(0.05)
        assert target.calls == 1  # the restore did not overtake the deletion
        await rig.retry_now(gone)
        done = await rig.final(gone, back)
        assert [e.state for e in done] == ["synced", "synced"]
        assert target.kinds(26) == {"lead"} and target.deleted == ["26"]


# -- order, leases and wake-ups -------------------------------------------------------------


async def test_never_two_target_calls_for_one_contact_at_once() -> None:
    target = ScriptedTarget(latency_s=0.01)
    async with running(target=target, concurrency=4) as rig:
        ids: list[int] = []
        for at in range(1, 30):
            ids += await rig.send(stage_event(27, "lead" if at % 2 else "customer", at=at))
            await asyncio.sleep(0.002)
        await rig.final(*ids)
        assert target.max_active_per_id == 1 and target.per_id["27"] >= 2


async def test_a_job_whose_lease_is_half_spent_in_the_queue_is_dropped_then_redone() -> None:
    target = ScriptedTarget(batch_size=1, gate=asyncio.Event())
    async with running(target=target, concurrency=1, lease_s=10.0) as rig:
        first, second = await rig.send(stage_event(28, "lead"), stage_event(29, "lead"))
        await rig.until(lambda: target.calls == 1 and len(rig.store.leases) == 2)
        rig.clock.advance(6)  # past the second job's start-by, within both leases
        target.gate.set()  # type: ignore[union-attr]
        await rig.final(first)
        await asyncio.sleep(0.05)
        assert (await rig.get(second)).state == "pending" and target.per_id["29"] == 0
        rig.clock.advance(5)  # the dropped job's lease runs out
        rig.dispatcher.wake()
        (done,) = await rig.final(second)
        assert done.state == "synced" and target.per_id["29"] == 1


async def test_a_round_that_outlives_its_lease_is_not_recorded_and_is_redone() -> None:
    target = ScriptedTarget(gate=asyncio.Event())
    async with running(target=target, lease_s=10.0) as rig:
        (eid,) = await rig.send(stage_event(30, "lead"))
        await rig.until(lambda: target.calls == 1)
        rig.clock.advance(11)
        target.gate.set()  # type: ignore[union-attr]
        await rig.until(lambda: target.calls == 2, what="the contact claimed again")
        (done,) = await rig.final(eid)
        assert (done.state, done.attempts) == ("synced", 1)
        assert target.per_id["30"] == 2  # the upsert was repeated, harmlessly


async def test_stopping_releases_the_leases_of_unfinished_work() -> None:
    target = ScriptedTarget(gate=asyncio.Event())
    async with running(target=target) as rig:
        (eid,) = await rig.send(stage_event(31, "lead"))
        await rig.until(lambda: target.calls == 1)
        assert 31 in rig.store.leases
    assert rig.store.leases == {}
    assert (await rig.get(eid)).state == "pending"


async def test_an_idle_dispatcher_is_woken_by_a_commit_not_a_poll() -> None:
    async with running() as rig:
        await asyncio.sleep(0.05)  # the claim loop is now waiting
        started = time.monotonic()
        (eid,) = await rig.send(stage_event(32, "lead"))
        await rig.final(eid)
        assert time.monotonic() - started < 0.5


async def test_a_due_retry_is_picked_up_by_the_poll_within_a_second() -> None:
    target = ScriptedTarget()
    target.fail_calls(transient())
    async with running(target=target) as rig:
        (eid,) = await rig.send(stage_event(33, "lead"))
        await rig.final(eid, states=("retrying",))
        rig.clock.t = rig.store.next_attempt_at(eid) + 0.001  # no wake: only the poll
        started = time.monotonic()
        await rig.final(eid)
        assert time.monotonic() - started < 1.5


async def test_work_leased_by_another_instance_waits_without_spinning() -> None:
    async with running() as rig:
        rig.store.leases[34] = ("other-instance", T0 + 3600)
        (eid,) = await rig.send(stage_event(34, "lead"))
        claims = rig.store.claims
        await asyncio.sleep(0.3)
        assert rig.store.claims - claims <= 2
        assert (await rig.get(eid)).state == "pending"
        del rig.store.leases[34]
        rig.dispatcher.wake()
        await rig.final(eid)


async def test_events_arriving_for_a_busy_contact_go_out_when_it_is_released() -> None:
    target = ScriptedTarget(gate=asyncio.Event())
    async with running(target=target) as rig:
        (a,) = await rig.send(stage_event(35, "lead", at=1))
        await rig.until(lambda: target.calls == 1)
        (b,) = await rig.send(stage_event(35, "customer", at=2))
        await asyncio.sleep(0.02)
        started = time.monotonic()
        target.gate.set()  # type: ignore[union-attr]
        await rig.final(a, b)
        assert time.monotonic() - started < 0.5  # woken by the release, not the poll
        assert target.kinds(35) == {"lead", "contact"}


async def test_a_failing_store_write_loses_nothing_and_frees_the_slot() -> None:
    async with running(lease_s=10.0) as rig:
        real = rig.store.record
        failures = [RuntimeError("disk I/O error")]

        async def flaky(*args: Any) -> None:
            if failures:
                raise failures.pop()
            await real(*args)

        rig.store.record = flaky  # type: ignore[method-assign,assignment]
        (eid,) = await rig.send(stage_event(36, "lead"))
        await rig.until(lambda: not failures)
        await asyncio.sleep(0.02)
        assert rig.dispatcher._in_flight == 0
        rig.clock.advance(11)
        rig.dispatcher.wake()
        (done,) = await rig.final(eid)
        assert done.state == "synced"


async def synced_after(pace_s: float) -> tuple[float, float]:
    """Seconds from sending until a lone first event, then a second one, were synced.

    The second event arrives while the round of the first may still be running: ingest
    is busy.
    """
    async with running(ingest_pace_s=pace_s) as rig:
        started = time.monotonic()
        [first] = await rig.send(stage_event(1, "lead"))
        await rig.final(first)
        lone = time.monotonic() - started
        [second] = await rig.send(stage_event(2, "lead"))
        await rig.final(second)
        return lone, time.monotonic() - started


async def test_while_webhooks_keep_coming_claim_rounds_are_spaced_by_the_ingest_pace() -> None:
    lone, both = await synced_after(0.5)
    assert lone < 0.4  # the pause follows a round: a lone event goes out at once
    assert both >= 0.45  # the second round waited for the pace


async def test_without_an_ingest_pace_the_next_round_follows_at_once() -> None:
    lone, both = await synced_after(0.0)
    assert lone < 0.4 and both < 0.4


async def test_a_round_the_store_refuses_is_logged_counted_and_its_contact_claimed_again() -> None:
    target = ScriptedTarget(gate=asyncio.Event())
    metrics = Metrics()
    async with running(target=target, metrics=metrics) as rig:
        (eid,) = await rig.send(stage_event(40, "lead"))
        await rig.until(lambda: target.calls == 1, what="the upsert in flight")
        # Meanwhile another instance takes the contact over (this one froze, say).
        rig.store.leases[40] = ("another-instance", T0 + 3600)
        with capture_logs() as logs:
            assert target.gate is not None
            target.gate.set()
            await rig.until(
                lambda: metrics.registry.get_sample_value("stagesync_rounds_refused_total") == 1,
                what="the refusal",
            )
        assert any(line["event"] == "record_refused_lease_lost" for line in logs)
        assert (await rig.get(eid)).state == "pending"
        assert await rig.store.history(eid) == []
        del rig.store.leases[40]  # the other instance is done with it
        rig.dispatcher.wake()
        (done,) = await rig.final(eid)
        assert done.state == "synced" and done.attempts == 1
        assert [h.outcome for h in await rig.store.history(eid)] == ["synced"]
