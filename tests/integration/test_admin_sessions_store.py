"""The admin page's sessions in both stores: remembered until logout or expiry."""

from __future__ import annotations

from receiver.store.base import EventStore
from tests.integration.conftest import Backend

NOW = 1_700_000_000.0


async def test_a_session_is_open_until_it_ends_or_expires(store: EventStore) -> None:
    await store.start_admin_session("a" * 64, NOW + 100, NOW)
    await store.start_admin_session("b" * 64, NOW + 10, NOW)
    assert await store.admin_session_open("a" * 64, NOW + 50)
    assert not await store.admin_session_open("b" * 64, NOW + 10)  # expired
    assert not await store.admin_session_open("c" * 64, NOW)  # never started
    await store.end_admin_session("a" * 64)
    assert not await store.admin_session_open("a" * 64, NOW + 50)
    await store.end_admin_session("a" * 64)  # ending twice is no error


async def test_every_instance_sees_a_logout(backend: Backend) -> None:
    backend.skip_if_memory("each in-memory store is its own database")
    first, second = backend.new(), backend.new()
    await first.open()
    await second.open()
    try:
        await first.start_admin_session("s" * 64, NOW + 100, NOW)
        assert await second.admin_session_open("s" * 64, NOW)
        await second.end_admin_session("s" * 64)
        assert not await first.admin_session_open("s" * 64, NOW)
    finally:
        await first.close()
        await second.close()
