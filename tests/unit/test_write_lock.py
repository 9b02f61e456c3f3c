"""The SQLite store's write lock, driven by real threads as the store's writers are."""

from __future__ import annotations

import threading
import time

import pytest

from receiver.store.sqlite.write_lock import WriteLock


def waiter(lock: WriteLock, urgent: bool, order: list[str], name: str) -> threading.Thread:
    def run() -> None:
        lock.acquire(urgent=urgent)
        order.append(name)
        lock.release()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def settle() -> None:
    time.sleep(0.05)  # long enough for a started thread to reach its wait


@pytest.mark.parametrize(
    ("max_wait_s", "normal_waited_s", "order_wanted"),
    [
        pytest.param(10.0, 0.05, ["urgent", "normal"], id="urgent-first-before-max-wait"),
        pytest.param(0.05, 0.15, ["normal", "urgent"], id="normal-first-once-overdue"),
    ],
)
def test_an_urgent_writer_goes_first_unless_the_normal_one_has_waited_max_wait(
    max_wait_s: float, normal_waited_s: float, order_wanted: list[str]
) -> None:
    lock = WriteLock(max_wait_s=max_wait_s)
    order: list[str] = []
    lock.acquire()
    normal = waiter(lock, False, order, "normal")
    time.sleep(normal_waited_s)
    urgent = waiter(lock, True, order, "urgent")
    settle()
    lock.release()
    normal.join(2)
    urgent.join(2)
    assert order == order_wanted


def test_back_to_back_urgent_writers_let_a_normal_one_in_after_max_wait() -> None:
    lock = WriteLock(max_wait_s=0.1)
    stop = threading.Event()

    def busy_ingest() -> None:
        while not stop.is_set():
            with lock.urgent():
                time.sleep(0.002)

    ingest = threading.Thread(target=busy_ingest)
    ingest.start()
    try:
        settle()
        started = time.monotonic()
        with lock:
            waited = time.monotonic() - started
    finally:
        stop.set()
        ingest.join(2)
    assert waited < 1.0  # not starved: at most max_wait plus scheduling


def test_releasing_an_unlocked_lock_is_an_error() -> None:
    with pytest.raises(RuntimeError):
        WriteLock().release()


def test_contended_says_whether_an_urgent_caller_is_waiting() -> None:
    lock = WriteLock()
    lock.acquire()
    assert not lock.contended()
    waiter = threading.Thread(target=lambda: (lock.acquire(urgent=True), lock.release()))
    waiter.start()
    deadline = time.monotonic() + 5
    while not lock.contended() and time.monotonic() < deadline:
        time.sleep(0.001)
    assert lock.contended()
    lock.release()
    waiter.join(5)
    assert not lock.contended()
