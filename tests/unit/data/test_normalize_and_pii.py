from __future__ import annotations

from pocketlm.data.normalize import html_to_text, normalize_text
from pocketlm.data.pii import scrub_pii


def test_normalize_repairs_controls_newlines_and_spaces():
    raw = "\ufeffCafe\u0301\r\nline\x00two\u200b  \t\r\n\n\n\n\n\nend\u00a0here\x1b"
    assert normalize_text(raw) == "Café\nlinetwo\n\n\nend here"


def test_normalize_keeps_code_indentation_and_tabs():
    code = "def f():\n\tif x:\n        return 1   \n"
    assert normalize_text(code) == "def f():\n\tif x:\n        return 1"


def test_nfkc_is_optional():
    assert normalize_text("ﬁ", "NFKC") == "fi" and normalize_text("ﬁ", "NFC") == "ﬁ"


def test_html_to_text_drops_scripts_styles_and_keeps_blocks():
    html = "<html><head><style>p{}</style></head><body><h1>Title</h1><p>One &amp; two</p><script>bad()</script><p>Three</p><pre>a\n  b</pre></body></html>"
    assert html_to_text(html) == "Title\n\nOne & two\n\nThree\n\na\n  b"


def test_scrub_pii_replaces_each_kind_and_counts():
    text = (
        "Mail me at jane.doe@example.com or call +1 415-555-0132. Server 192.168.10.4 is up. "
        "key AKIAIOSFODNN7EXAMPLE and api_key = 'abcd1234efgh5678ijkl' plus ghp_"
        + "a" * 36
        + " end."
    )
    out, counts = scrub_pii(text)
    assert "jane.doe" not in out and "[EMAIL]" in out
    assert "415-555-0132" not in out and "[PHONE]" in out
    assert "192.168.10.4" not in out and "[IP_ADDRESS]" in out
    assert (
        "AKIAIOSFODNN7EXAMPLE" not in out
        and "abcd1234efgh5678ijkl" not in out
        and "ghp_" not in out
    )
    assert (
        counts["email"] == 1
        and counts["phone"] == 1
        and counts["ip_address"] == 1
        and counts["secret"] == 3
    )


def test_scrub_pii_leaves_ordinary_text_alone():
    text = "Version 3.11.7 was released in 2023; see section 4.2 and call foo(1, 2)."
    assert scrub_pii(text) == (text, {})
