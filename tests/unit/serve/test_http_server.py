"""uvicorn's configuration without a server: the connection cap under the open-files limit, and
the raw error responses the protocol writes."""

from __future__ import annotations

import json
import resource

import pytest

pytest.importorskip("uvicorn")

from pocketlm.serve import http_server
from tests.integration.live_server import parse_response


@pytest.mark.parametrize(
    ("soft", "requested", "cap"),
    [
        (1024, 256, 256),  # the usual limit leaves room for the default
        (256, 256, 256 - 64 - http_server.LISTEN_BACKLOG),  # a low limit lowers the cap
        (100, 256, 1),
        (resource.RLIM_INFINITY, 5000, 5000),
    ],
)
def test_the_cap_leaves_the_open_files_limit_room_for_a_burst_of_accepts(
    monkeypatch, server_log, soft, requested, cap
):
    monkeypatch.setattr(resource, "getrlimit", lambda which: (soft, resource.RLIM_INFINITY))
    assert http_server.connection_cap(requested) == cap
    assert any("open-files limit" in line for line in server_log) == (cap < requested)


def test_raw_error_responses_are_http_with_an_openai_body():
    raw = http_server.error_response_bytes(408, "too slow \u00e9", "request_timeout")
    response = parse_response(raw)
    assert response.status == 408 and response.headers["connection"] == "close"
    assert response.headers["content-type"] == "application/json"
    assert json.loads(response.body)["error"] == {
        "message": "too slow \u00e9",
        "type": "invalid_request_error",
        "param": None,
        "code": "request_timeout",
    }
