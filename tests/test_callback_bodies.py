"""Every body type and method a Kaleyra callback profile can choose; hostile XML refused, the receiver up."""

from __future__ import annotations

import time

import pytest
import requests

from airflow_provider_kaleyra.callbacks.bodies import FieldMapping, RawCallback, parse_callback
from airflow_provider_kaleyra.callbacks.receiver import create_standalone_app
from airflow_provider_kaleyra.callbacks.store import CallbackStore
from tests.store_queries import counts, raw_callbacks

SECRET = "cb-secret-bodies"
AUTH = {"X-Kaleyra-Secret": SECRET}


def _read(body: str, content_type: str | None, mapping: FieldMapping | None = None, region=None):
    parsed = parse_callback(RawCallback("POST", body.encode(), content_type), mapping, region)
    return [(r.number, r.capable, r.status, r.request_id) for r in parsed.results], parsed


XML = """<?xml version="1.0"?>
<soip:callback xmlns:soip="urn:x" id="r-1"><result><number>919876543210</number><status>capable</status>
</result><result><number>&#43;919876543211</number><status>not_capable</status></result></soip:callback>"""


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (XML, "application/xml"),
        (XML, "text/xml; charset=utf-8"),
        (XML.split("\n", 1)[1], None),  # no declaration, no content type
    ],
)
def test_xml_bodies_nested_with_attributes_and_repeated_elements(body, content_type):
    results, parsed = _read(body, content_type)
    assert parsed.error is None and not parsed.refused
    assert results == [
        ("+919876543210", True, "capable", "r-1"),
        ("+919876543211", False, "not_capable", "r-1"),
    ]


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        ("number=919876543210\nstatus=capable\nrequest_id=r-2", "text/plain"),
        ("number: 919876543210; status: capable; request_id: r-2", "text/plain"),
        ("919876543210 capable r-2", "text/plain"),
        ("919876543210,capable,r-2", None),
        (
            "<html><body><p>number: &#43;919876543210</p><p>status: capable</p><p>request_id: r-2</p></body></html>",
            "text/html",
        ),
        ('{"number": "&#43;919876543210", "status": "capable", "request_id": "r-2"}', "application/json"),
        ("number=%2B919876543210&status=capable&request_id=r-2", "application/x-www-form-urlencoded"),
    ],
)
def test_text_html_json_and_form_bodies_with_escaped_values(body, content_type):
    results, parsed = _read(body, content_type)
    assert results == [("+919876543210", True, "capable", "r-2")], parsed.error


def test_placeholder_mapping_from_the_connection_keeps_the_tolerant_default():
    mapping = FieldMapping.from_dict({"number": "subscriber", "status": ["state"], "request_id": "ref"})
    results, _ = _read(
        "<cb><subscriber>919876543210</subscriber><state>yes</state><ref>x9</ref></cb>", None, mapping
    )
    assert results == [("+919876543210", True, "yes", "x9")]
    results, _ = _read(
        '{"msisdn": "919876543211", "soip_capable": false}', None, mapping
    )  # defaults still read
    assert results == [("+919876543211", False, "false", None)]
    results, _ = _read("919876543212 no", "text/plain", mapping)
    assert results == [("+919876543212", False, "no", None)]


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
<!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
<!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
<!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
<!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
<!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
<!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">]>
<cb><number>&lol9;</number><status>capable</status></cb>"""
XXE_FILE = '<?xml version="1.0"?><!DOCTYPE cb [<!ENTITY x SYSTEM "file:///etc/passwd">]><cb><number>&x;</number></cb>'
XXE_PARAM = '<!DOCTYPE cb [<!ENTITY % p SYSTEM "http://127.0.0.1:9/x.dtd"> %p;]><cb><number>1</number></cb>'
BARE_DOCTYPE = '<!DOCTYPE cb SYSTEM "http://127.0.0.1:9/cb.dtd"><cb><number>919876543210</number></cb>'


@pytest.fixture
def live(tmp_path, serve_app):
    store = CallbackStore(f"sqlite:///{tmp_path / 'bodies.db'}")
    port = serve_app(create_standalone_app(store=store, secret=SECRET))
    yield f"http://127.0.0.1:{port}/kaleyra/soip/callback", store
    store.dispose()


def test_hostile_xml_is_refused_with_400_and_the_receiver_stays_up(live):
    url, store = live
    for body in (BILLION_LAUGHS, XXE_FILE, XXE_PARAM, BARE_DOCTYPE):
        started = time.monotonic()
        answer = requests.post(
            url, data=body, headers={**AUTH, "Content-Type": "application/xml"}, timeout=10
        )
        assert answer.status_code == 400 and "DOCTYPE" in answer.json()["detail"], answer.text
        assert time.monotonic() - started < 2
    assert counts(store)["callbacks"] == 0
    ok = requests.post(url, data=XML, headers={**AUTH, "Content-Type": "application/xml"}, timeout=5)
    assert ok.status_code == 202 and ok.json()["results"] == 2
    broken = requests.post(
        url, data="<cb><number>9198", headers={**AUTH, "Content-Type": "text/xml"}, timeout=5
    )
    assert broken.status_code == 202 and "not valid XML" in broken.json()["parse_error"]  # stored, flagged


def test_every_method_and_body_type_over_real_http(live):
    url, store = live
    sent = [
        requests.get(url, params={"number": "919876543210", "status": "capable"}, headers=AUTH, timeout=5),
        requests.post(url, json={"number": "919876543211", "soip_capable": True}, headers=AUTH, timeout=5),
        requests.put(url, data=XML, headers={**AUTH, "Content-Type": "application/xml"}, timeout=5),
        requests.delete(url, params={"number": "919876543212", "capable": "no"}, headers=AUTH, timeout=5),
        requests.delete(
            url, data="919876543213 capable", headers={**AUTH, "Content-Type": "text/plain"}, timeout=5
        ),
        requests.put(
            url,
            data="<p>number=919876543214</p><p>status=no</p>",
            headers={**AUTH, "Content-Type": "text/html"},
            timeout=5,
        ),
    ]
    assert [a.status_code for a in sent] == [202] * 6, [a.text for a in sent]
    assert [a.json()["parse_error"] for a in sent] == [None] * 6
    assert counts(store) == {"callbacks": 6, "results": 7, "parse_errors": 0}
    assert sorted(row["method"] for row in raw_callbacks(store)) == [
        "DELETE",
        "DELETE",
        "GET",
        "POST",
        "PUT",
        "PUT",
    ]
