"""The convertLead envelope and the parsing of SOAP answers."""

from __future__ import annotations

import pytest

from receiver.errors import PermanentError, RateLimited, TransientError
from receiver.targets.salesforce.soap import (
    PARTNER_NS,
    SOAP_NS,
    Converted,
    convert_envelope,
    convert_results,
    fault,
    limit_info,
    parse_document,
    soap_path,
)


def scrub(text: str) -> str:
    return text.replace("SECRET", "[redacted]")


def answer(results: str, header: str = "") -> bytes:
    return (
        f'<soapenv:Envelope xmlns:soapenv="{SOAP_NS}" xmlns="{PARTNER_NS}">'
        f"<soapenv:Header>{header}</soapenv:Header>"
        f"<soapenv:Body><convertLeadResponse>{results}</convertLeadResponse></soapenv:Body>"
        "</soapenv:Envelope>"
    ).encode()


def test_envelope_carries_session_status_and_leads_escaped() -> None:
    body = convert_envelope("00D!tok<en>", ["00Q1", "00Q2"], "Closed & Won")
    root = parse_document(body)
    assert root is not None
    ns = f"{{{PARTNER_NS}}}"
    assert root.findtext(f".//{ns}sessionId") == "00D!tok<en>"
    converts = root.findall(f".//{ns}convertLead/{ns}leadConverts")
    assert [c.findtext(f"{ns}leadId") for c in converts] == ["00Q1", "00Q2"]
    assert {c.findtext(f"{ns}convertedStatus") for c in converts} == {"Closed & Won"}
    assert {c.findtext(f"{ns}doNotCreateOpportunity") for c in converts} == {"true"}


def test_partner_endpoint_drops_the_v_of_the_rest_version() -> None:
    assert soap_path("v62.0") == "/services/Soap/u/62.0"


def test_results_are_read_in_order_with_per_record_errors() -> None:
    content = answer(
        "<result><accountId>001A</accountId><contactId>003A</contactId><leadId>00Q1</leadId>"
        "<success>true</success></result>"
        "<result><errors><message>bad SECRET</message><statusCode>INVALID_STATUS</statusCode>"
        "</errors><leadId>00Q2</leadId><success>false</success></result>"
        "<result><errors><statusCode>UNABLE_TO_LOCK_ROW</statusCode><message>m</message>"
        "</errors><success>false</success></result>"
    )
    results = convert_results(200, parse_document(content), 3, scrub)
    assert results[0] == Converted("00Q1", "003A", "001A")
    assert isinstance(results[1], PermanentError)
    assert (results[1].code, results[1].message) == ("INVALID_STATUS", "bad [redacted]")
    assert isinstance(results[2], TransientError)


def test_a_fault_is_a_whole_call_error_classified_by_its_code() -> None:
    content = (
        f'<soapenv:Envelope xmlns:soapenv="{SOAP_NS}"><soapenv:Body><soapenv:Fault>'
        "<faultcode>sf:REQUEST_LIMIT_EXCEEDED</faultcode><faultstring>Limit</faultstring>"
        "</soapenv:Fault></soapenv:Body></soapenv:Envelope>"
    ).encode()
    root = parse_document(content)
    assert fault(root) == ("REQUEST_LIMIT_EXCEEDED", "Limit")
    with pytest.raises(RateLimited):
        convert_results(500, root, 1, scrub)


def test_an_answer_that_is_not_xml_is_transient_and_a_short_one_too() -> None:
    with pytest.raises(TransientError):
        convert_results(502, parse_document(b"<html>Bad gateway"), 1, scrub)
    with pytest.raises(TransientError):
        convert_results(200, parse_document(answer("")), 1, scrub)


def test_entity_expansion_from_the_network_is_refused() -> None:
    bomb = (
        b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaaaaaaaa">'
        b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]><r>&b;</r>'
    )
    assert parse_document(bomb) is None


def test_limit_info_header_reports_api_requests() -> None:
    header = (
        "<LimitInfoHeader><limitInfo><current>12</current><limit>15000</limit>"
        "<type>API REQUESTS</type></limitInfo></LimitInfoHeader>"
    )
    assert limit_info(parse_document(answer("", header))) == (12, 15000)
    assert limit_info(parse_document(answer(""))) is None
