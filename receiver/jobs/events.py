"""Search results as events: what backfill and reconciliation queue.

Each contact a search finds becomes an event like a webhook's, in the same table and
states: ``subscription_type`` ``stagesync.backfill`` or ``stagesync.reconcile``,
``object_id`` the contact id, ``raw`` what the search returned for it (``id``,
``properties``, ``updatedAt``), ``occurredAt`` its ``updatedAt``.

The duplicate key makes the overlap of two reconciliation passes harmless: the same
contact found with the same ``updatedAt`` is the same event. A backfill's key also
names its job, so a new backfill upserts every contact again (as it must), while the
page a restarted job reads a second time is counted as duplicates.
"""

from __future__ import annotations

import hashlib

import orjson

from receiver.hubspot.search import Hit
from receiver.models import NewEvent
from receiver.sync.mapping import LIFECYCLE_STAGE


def _key(occurred_at: int, ident: bytes) -> bytes:
    # The layout of the webhook keys (receiver.hubspot.payload): time first, then a hash.
    return (
        occurred_at.to_bytes(8, "big", signed=True)
        + hashlib.blake2b(ident, digest_size=16).digest()
    )


def search_event(hit: Hit, subscription_type: str, scope: str = "") -> NewEvent:
    """The event for one search hit; ``scope`` (a job's name) joins the duplicate key."""
    ident = orjson.dumps([subscription_type, scope, hit.object_id, hit.updated_ms])
    return NewEvent(
        dedup_key=_key(hit.updated_ms, ident),
        raw=orjson.dumps(hit.raw()),
        object_id=hit.object_id,
        subscription_type=subscription_type,
        occurred_at=hit.updated_ms,
        stage=hit.properties.get(LIFECYCLE_STAGE) or None,
    )
