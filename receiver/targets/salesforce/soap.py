"""The one SOAP call stagesync makes: Partner API ``convertLead``. Pure functions.

Lead conversion exists only in the SOAP API (and Apex), so the envelope is written by
hand, as small as the call allows, and answers are read with ``defusedxml``: an XML
answer from the network is never given to the plain ``xml.etree`` parser, which expands
entities. The OAuth access token serves as the SOAP ``sessionId``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from xml.etree.ElementTree import Element
from xml.sax.saxutils import escape

import defusedxml.ElementTree as SafeET

from receiver.errors import PermanentError, TransientError, UpstreamError
from receiver.targets.salesforce.errors import Scrub, classify_error

SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
PARTNER_NS = "urn:partner.soap.sforce.com"
#: Leads one ``convertLead`` call takes (Salesforce's advice for the same call in Apex).
CONVERT_LIMIT = 100
#: Headers of a SOAP 1.1 call; Salesforce wants a SOAPAction, any value.
SOAP_HEADERS = {"Content-Type": "text/xml; charset=UTF-8", "SOAPAction": '""'}


@dataclass(frozen=True, slots=True)
class Converted:
    """A Lead converted: the Contact (and Account) it became."""

    lead_id: str
    contact_id: str
    account_id: str | None


def soap_path(version: str) -> str:
    """The Partner API endpoint for a REST version such as ``v62.0``: ``/services/Soap/u/62.0``."""
    return f"/services/Soap/u/{version.removeprefix('v')}"


def convert_envelope(session_id: str, lead_ids: Sequence[str], converted_status: str) -> bytes:
    """The ``convertLead`` request: no Opportunity, no notification e-mail."""
    converts = "".join(
        "<urn:leadConverts>"
        f"<urn:convertedStatus>{escape(converted_status)}</urn:convertedStatus>"
        "<urn:doNotCreateOpportunity>true</urn:doNotCreateOpportunity>"
        f"<urn:leadId>{escape(lead_id)}</urn:leadId>"
        "<urn:sendNotificationEmail>false</urn:sendNotificationEmail>"
        "</urn:leadConverts>"
        for lead_id in lead_ids
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<soapenv:Envelope xmlns:soapenv="{SOAP_NS}" xmlns:urn="{PARTNER_NS}">'
        "<soapenv:Header><urn:SessionHeader>"
        f"<urn:sessionId>{escape(session_id)}</urn:sessionId>"
        "</urn:SessionHeader></soapenv:Header>"
        f"<soapenv:Body><urn:convertLead>{converts}</urn:convertLead></soapenv:Body>"
        "</soapenv:Envelope>"
    ).encode()


def parse_document(content: bytes) -> Element | None:
    """The answer's root element, or None when it is not well-formed (or is hostile) XML."""
    try:
        root: Element = SafeET.fromstring(content)
    except Exception:  # ParseError, and defusedxml's refusals of entities and DTDs
        return None
    return root


def fault(root: Element | None) -> tuple[str, str] | None:
    """``(code, message)`` of a SOAP fault: ``sf:INVALID_SESSION_ID`` gives its last part."""
    if root is None:
        return None
    node = root.find(f".//{{{SOAP_NS}}}Fault")
    if node is None:
        return None
    code = (node.findtext("faultcode") or "UNKNOWN_EXCEPTION").rpartition(":")[2]
    return code, (node.findtext("faultstring") or "").strip()


def limit_info(root: Element | None) -> tuple[int, int] | None:
    """``(used, limit)`` from the answer's ``LimitInfoHeader`` for API requests."""
    if root is None:
        return None
    for info in root.iter(f"{{{PARTNER_NS}}}limitInfo"):
        if (info.findtext(f"{{{PARTNER_NS}}}type") or "") != "API REQUESTS":
            continue
        try:
            current = int(info.findtext(f"{{{PARTNER_NS}}}current") or "")
            limit = int(info.findtext(f"{{{PARTNER_NS}}}limit") or "")
        except ValueError:
            return None
        return current, limit
    return None


def convert_results(
    status: int, root: Element | None, count: int, scrub: Scrub
) -> list[Converted | UpstreamError]:
    """One result per Lead sent, in order; a whole-call failure is raised."""
    failure = fault(root)
    if failure is not None:
        raise classify_error(failure[0], scrub(failure[1] or "Salesforce refused convertLead"))
    if root is None or status != 200:
        if status >= 500 or root is None:
            raise TransientError(
                f"http_{status}", f"Salesforce answered convertLead with HTTP {status}"
            )
        raise PermanentError(f"http_{status}", f"Salesforce answered convertLead with {status}")
    results = root.findall(f".//{{{PARTNER_NS}}}convertLeadResponse/{{{PARTNER_NS}}}result")
    if len(results) != count:
        raise TransientError(
            "bad_response",
            f"Salesforce answered a convertLead of {count} Leads with {len(results)} results",
        )
    return [_result(node, scrub) for node in results]


def _result(node: Element, scrub: Scrub) -> Converted | UpstreamError:
    ns = f"{{{PARTNER_NS}}}"
    if (node.findtext(f"{ns}success") or "").strip() == "true":
        contact = (node.findtext(f"{ns}contactId") or "").strip()
        if contact:
            return Converted(
                lead_id=(node.findtext(f"{ns}leadId") or "").strip(),
                contact_id=contact,
                account_id=(node.findtext(f"{ns}accountId") or "").strip() or None,
            )
    errors = node.findall(f"{ns}errors")
    if not errors:
        return PermanentError("UNKNOWN_ERROR", "Salesforce converted the Lead into no Contact")
    first = errors[0]
    code = (first.findtext(f"{ns}statusCode") or "UNKNOWN_ERROR").strip()
    message = "; ".join((e.findtext(f"{ns}message") or "").strip() for e in errors)
    return classify_error(code, scrub(message or "Salesforce refused to convert the Lead"))
