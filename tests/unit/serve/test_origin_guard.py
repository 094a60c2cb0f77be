"""Host and Origin rules: which Host values name the server, and which origins may use it."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pocketlm.common.errors import ConfigError
from pocketlm.serve.middleware import json_content_type_problem
from pocketlm.serve.origin_guard import AccessPolicy, host_name, normalize_origin

_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
_names = st.lists(_label, min_size=1, max_size=4).map(".".join)
_ports = st.integers(0, 65535).map(str)


@settings(max_examples=200)
@given(name=_names, port=st.none() | _ports, upper=st.booleans(), dot=st.booleans())
def test_a_host_value_gives_its_name_whatever_the_port_and_case(name, port, upper, dot):
    value = (name.upper() if upper else name) + ("." if dot else "")
    value += f":{port}" if port is not None else ""
    assert host_name(value) == name


@settings(max_examples=200)
@given(junk=st.text(max_size=20))
def test_malformed_host_values_give_none_never_raise(junk):
    name = host_name(junk)
    if name is not None:  # whatever passes is one name, no port, no spaces
        assert " " not in name and name == name.lower()


@pytest.mark.parametrize(
    ("value", "name"),
    [
        ("[::1]:8000", "::1"),
        ("[::1]", "::1"),
        ("127.0.0.1:8000", "127.0.0.1"),
        ("LocalHost.:80", "localhost"),
        ("a:b", None),
        ("[::1", None),
        ("x:123456", None),
        ("", None),
        ("a b", None),
        (":80", None),
    ],
)
def test_host_values(value, name):
    assert host_name(value) == name


def test_by_default_only_the_bound_address_and_localhost_are_accepted():
    policy = AccessPolicy.build("127.0.0.1")
    for name in ("localhost", "127.0.0.1", "::1"):
        assert policy.host_allowed(name)
    for name in ("evil.example", "192.168.1.5", "localhost.evil.example", "0.0.0.0"):
        assert not policy.host_allowed(name)
    assert AccessPolicy.build("192.168.1.5").host_allowed("192.168.1.5")
    assert AccessPolicy.build("[::1]").host_allowed("::1")


def test_on_every_interface_any_ip_address_is_accepted_but_names_must_be_added():
    for bind in ("0.0.0.0", "::"):
        policy = AccessPolicy.build(bind)
        assert policy.host_allowed("192.168.1.5") and policy.host_allowed("fe80::1")
        assert policy.host_allowed("localhost") and not policy.host_allowed("myhost.local")
        assert "any IP address" in policy.describe_hosts()
    policy = AccessPolicy.build("0.0.0.0", ["MyHost.Local.", "[fe80::2]"])
    assert policy.host_allowed("myhost.local") and policy.host_allowed("fe80::2")
    assert AccessPolicy.build("127.0.0.1", ["*"]).host_allowed("anything.example")


@pytest.mark.parametrize("bad", ["http://x", "x:80", "a/b", "", "a b"])
def test_a_bad_allow_host_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="--allow-host"):
        AccessPolicy.build("127.0.0.1", [bad])


def test_cors_origins_are_normalized_and_checked():
    assert normalize_origin("HTTP://LocalHost:3000/") == "http://localhost:3000"
    assert normalize_origin("*") == "*"
    for bad in ("localhost:3000", "http://x/path", "ftp://x", "http://", "http://a b"):
        with pytest.raises(ConfigError, match="--cors-origin"):
            normalize_origin(bad)
    policy = AccessPolicy.build("127.0.0.1", cors_origins=["http://localhost:3000"])
    assert policy.cors_allowed("http://localhost:3000")
    assert not policy.cors_allowed("http://localhost:3001")
    assert not policy.cors_allowed("null")


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("application/json", True),
        ("Application/JSON; charset=UTF-8", True),
        ('application/json; charset="utf8"', True),
        (None, False),
        ("text/plain", False),
        ("application/x-www-form-urlencoded", False),
        ("multipart/form-data; boundary=x", False),
        ("application/json; charset=latin-1", False),
        ("application/jsonp", False),
    ],
)
def test_only_json_content_types_pass(value, ok):
    assert (json_content_type_problem(value) is None) == ok
