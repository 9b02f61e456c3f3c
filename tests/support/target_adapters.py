"""One adapter per real target, for the target conformance suite.

An adapter knows its target's contract from the SPEC (default mapping, required keys,
batch size, the codes its CRM gives) and drives that target's fake: serve it, read a
record, expire tokens, switch failures on and off, refuse a record. Adding a target to
the suite is a new fake plus one adapter here, listed in :data:`ADAPTERS`.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

from receiver.models import Kind
from tests.fakes.dynamics import FakeDynamics
from tests.fakes.salesforce import FakeSalesforce
from tests.fakes.webhook_receiver import FakeWebhookReceiver
from tests.fakes.zoho import FakeZoho
from tests.support.servers import running_server

#: Seconds a "hang" holds an answer: longer than the suite's 1 s HTTP timeout.
HANG_S = 1.5


@dataclass
class Adapter:
    """What the suite needs from one target and its fake; subclasses fill it in."""

    name: str
    #: target field -> HubSpot property, as the SPEC lists the defaults
    default: dict[Kind, dict[str, str]]
    email_field: str  # the target field HubSpot's email lands in
    custom_field: str  # a field name the CRM accepts for a [mapping.*] override
    required_keys: tuple[str, ...]  # what check-config names with no settings at all
    batch_size: int
    records_per_call: int  # most records one upsert call carries (the webhook: 1)
    has_token: bool
    reject_code: str
    reject_message: str
    rate_code: str
    unavailable_code: str
    #: the ``Retry-After`` its fake sends with a rate limit (Salesforce's limit has none)
    retry_after_s: float | None = 1.0
    fake: Any = None
    url: str = "http://127.0.0.1:9"  # until serve() starts the fake
    #: kind -> HubSpot id -> fields the target adds of its own (a Lead's subject)
    extra: Callable[[Kind, str], dict[str, Any]] = field(default=lambda kind, hubspot_id: {})

    async def serve(self, stack: AsyncExitStack) -> None:
        """Start the fake on loopback; ``url`` is its base URL."""
        self.url = await stack.enter_async_context(running_server(self.fake.app))

    def env(self) -> dict[str, str]:
        """Settings (``build_settings`` names) pointing the target at the fake."""
        raise NotImplementedError

    def record(self, kind: Kind, hubspot_id: int | str) -> dict[str, Any] | None:
        """The fields the CRM holds for one record, or None."""
        raise NotImplementedError

    def expire_tokens(self) -> None:
        """Make every token issued so far refused."""
        raise NotImplementedError

    def token_requests(self) -> int:
        """Token requests the fake answered."""
        raise NotImplementedError

    def set_failure(self, mode: str | None) -> None:
        """``"rate_limit"``, ``"unavailable"``, ``"hang"`` or None (all well)."""
        self.fake.failure = mode

    def reject(self, hubspot_id: int | str) -> None:
        """Make the CRM refuse this contact's upserts."""
        self.fake.reject(str(hubspot_id), self.reject_message)

    def accept(self, hubspot_id: int | str) -> None:
        """Stop refusing this contact."""
        self.fake.rejected.pop(str(hubspot_id), None)

    def upsert_sizes(self) -> list[int]:
        """Records carried by each upsert call so far."""
        raise NotImplementedError


class SalesforceAdapter(Adapter):
    def __init__(self) -> None:
        common = {"FirstName": "firstname", "LastName": "lastname", "Email": "email"}
        common |= {"Phone": "phone", "Title": "jobtitle"}
        super().__init__(
            name="salesforce",
            default={"lead": {**common, "Company": "company"}, "contact": common},
            email_field="Email",
            custom_field="Favourite_Colour__c",
            required_keys=(
                "STAGESYNC_SALESFORCE_ACCESS_TOKEN",
                "STAGESYNC_SALESFORCE_INSTANCE_URL",
            ),
            batch_size=200,
            records_per_call=200,
            has_token=True,
            reject_code="FIELD_CUSTOM_VALIDATION_EXCEPTION",
            reject_message="Email domain is not allowed",
            rate_code="REQUEST_LIMIT_EXCEEDED",
            unavailable_code="SERVER_UNAVAILABLE",
            retry_after_s=None,
            fake=FakeSalesforce(),
        )

    def env(self) -> dict[str, str]:
        from tests.fakes.salesforce import CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN

        return {
            "salesforce_instance_url": self.url,
            "salesforce_access_token": self.fake.access_token,
            "salesforce_token_url": f"{self.url}/services/oauth2/token",
            "salesforce_client_id": CLIENT_ID,
            "salesforce_client_secret": CLIENT_SECRET,
            "salesforce_refresh_token": REFRESH_TOKEN,
        }

    def record(self, kind: Kind, hubspot_id: int | str) -> dict[str, Any] | None:
        found = self.fake.record("Lead" if kind == "lead" else "Contact", str(hubspot_id))
        return dict(found.fields) if found is not None else None

    def expire_tokens(self) -> None:
        self.fake.revoke_token()

    def token_requests(self) -> int:
        return int(self.fake.token_refreshes)

    def set_failure(self, mode: str | None) -> None:
        self.fake.limit_exceeded = mode == "rate_limit"
        self.fake.unavailable = mode == "unavailable"
        self.fake.latency_s = HANG_S if mode == "hang" else 0.0

    def upsert_sizes(self) -> list[int]:
        sizes = []
        for call in self.fake.log:
            if call.kind == "upsert" and call.method == "PATCH":
                sizes.append(1)
            elif call.kind == "collection_upsert":
                sizes.append(len(call.body["records"]))
        return sizes


class DynamicsAdapter(Adapter):
    def __init__(self) -> None:
        contact = {"firstname": "firstname", "lastname": "lastname"}
        contact |= {"emailaddress1": "email", "telephone1": "phone", "jobtitle": "jobtitle"}
        super().__init__(
            name="dynamics",
            default={"lead": {**contact, "companyname": "company"}, "contact": contact},
            email_field="emailaddress1",
            custom_field="stagesync_favouritecolour",
            required_keys=tuple(
                f"STAGESYNC_DYNAMICS_{key}"
                for key in ("URL", "TENANT_ID", "CLIENT_ID", "CLIENT_SECRET")
            ),
            batch_size=200,
            records_per_call=200,
            has_token=True,
            reject_code="0x80040265",
            reject_message="Email address is on the blocked list",
            rate_code="0x80072322",
            unavailable_code="0x80040216",
            fake=FakeDynamics(hang_s=HANG_S),
            extra=lambda kind, hubspot_id: (
                {"subject": f"HubSpot contact {hubspot_id}"} if kind == "lead" else {}
            ),
        )

    async def serve(self, stack: AsyncExitStack) -> None:
        await super().serve(stack)
        self.fake.base_url = self.url

    def env(self) -> dict[str, str]:
        from tests.fakes.dynamics import CLIENT_ID, CLIENT_SECRET, TENANT_ID

        return {
            "dynamics_url": self.url,
            "dynamics_tenant_id": TENANT_ID,
            "dynamics_client_id": CLIENT_ID,
            "dynamics_client_secret": CLIENT_SECRET,
            "dynamics_token_url": self.url + "/{tenant}/oauth2/v2.0/token",
        }

    def record(self, kind: Kind, hubspot_id: int | str) -> dict[str, Any] | None:
        found = self.fake.record("leads" if kind == "lead" else "contacts", str(hubspot_id))
        return dict(found) if found is not None else None

    def expire_tokens(self) -> None:
        self.fake.revoke_tokens()

    def token_requests(self) -> int:
        return int(self.fake.calls["token"])

    def upsert_sizes(self) -> list[int]:
        return [1] * self.fake.calls["upsert"] + list(self.fake.batch_sizes)


class ZohoAdapter(Adapter):
    def __init__(self) -> None:
        contact = {"First_Name": "firstname", "Last_Name": "lastname", "Email": "email"}
        contact |= {"Phone": "phone", "Designation": "jobtitle"}
        super().__init__(
            name="zoho",
            default={"lead": {**contact, "Company": "company"}, "contact": contact},
            email_field="Email",
            custom_field="Favourite_Colour",
            required_keys=tuple(
                f"STAGESYNC_ZOHO_{key}" for key in ("CLIENT_ID", "CLIENT_SECRET", "REFRESH_TOKEN")
            ),
            batch_size=100,
            records_per_call=100,
            has_token=True,
            reject_code="INVALID_DATA",
            reject_message="invalid data",
            rate_code="TOO_MANY_REQUESTS",
            unavailable_code="INTERNAL_ERROR",
            fake=FakeZoho(hang_s=HANG_S),
        )

    def env(self) -> dict[str, str]:
        from tests.fakes.zoho import CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN

        return {
            "zoho_accounts_url": self.url,
            "zoho_client_id": CLIENT_ID,
            "zoho_client_secret": CLIENT_SECRET,
            "zoho_refresh_token": REFRESH_TOKEN,
        }

    def record(self, kind: Kind, hubspot_id: int | str) -> dict[str, Any] | None:
        found = self.fake.record("Leads" if kind == "lead" else "Contacts", str(hubspot_id))
        return dict(found) if found is not None else None

    def expire_tokens(self) -> None:
        self.fake.revoke_tokens()

    def token_requests(self) -> int:
        return int(self.fake.calls["token"])

    def upsert_sizes(self) -> list[int]:
        return list(self.fake.upsert_sizes)


class WebhookAdapter(Adapter):
    def __init__(self) -> None:
        names = ("email", "firstname", "lastname", "phone", "company", "jobtitle")
        passed = {name: name for name in (*names, "lifecyclestage")}
        super().__init__(
            name="webhook",
            default={"lead": passed, "contact": dict(passed)},
            email_field="email",
            custom_field="favourite_colour",
            required_keys=("STAGESYNC_WEBHOOK_URL", "STAGESYNC_WEBHOOK_SECRET"),
            batch_size=50,
            records_per_call=1,
            has_token=False,
            reject_code="http_422",
            reject_message="email domain is blocked",
            rate_code="http_429",
            unavailable_code="http_503",
            fake=FakeWebhookReceiver(hang_s=HANG_S),
        )

    def env(self) -> dict[str, str]:
        from tests.fakes.webhook_receiver import PATH, SECRET

        return {"webhook_url": self.url + PATH, "webhook_secret": SECRET}

    def record(self, kind: Kind, hubspot_id: int | str) -> dict[str, Any] | None:
        found = self.fake.record(kind, str(hubspot_id))
        return dict(found) if found is not None else None

    def upsert_sizes(self) -> list[int]:
        return [1] * self.fake.calls["upsert"]


#: Every real target, by name: a fifth is one more entry.
ADAPTERS: dict[str, Callable[[], Adapter]] = {
    "salesforce": SalesforceAdapter,
    "dynamics": DynamicsAdapter,
    "zoho": ZohoAdapter,
    "webhook": WebhookAdapter,
}
