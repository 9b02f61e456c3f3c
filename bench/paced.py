"""A paced webhook load in a process of its own: ``python -m bench.paced URL SECRET RATE S``.

Sends ``RATE`` signed requests a second (10 new contacts each) for ``S`` seconds on one
connection and prints one JSON line: requests, errors, and the ack p50/p99/max in ms.
Open loop: each request's latency counts from the time it was due, so a stalled service
is not hidden by the sender waiting for it. A process of its own, so that what the
bench's own process does meanwhile (the fake HubSpot) cannot delay the timings.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

import httpx

from tests.support.webhooks import event, signed

BATCH = 10


def main(argv: list[str]) -> int:
    url, secret, rate, duration = argv[0], argv[1], float(argv[2]), float(argv[3])
    first_contact = int(argv[4]) if len(argv) > 4 else 50_000_000
    latencies: list[float] = []
    errors = 0
    contact = first_contact
    with httpx.Client(timeout=30) as http:
        start = time.monotonic()
        n = 0
        while True:
            due = start + n / rate
            if due - start >= duration:
                break
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            events = [event(contact + i, "lead") for i in range(BATCH)]
            contact += BATCH
            body, headers = signed(url, events, secret)
            answer = http.post(url, content=body, headers=headers)
            latencies.append((time.monotonic() - due) * 1000)
            errors += answer.status_code != 200
            n += 1
    q = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else []
    print(json.dumps({
        "requests": len(latencies),
        "errors": errors,
        "p50_ms": q[49] if q else latencies[0],
        "p99_ms": q[98] if q else latencies[0],
        "max_ms": max(latencies),
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
