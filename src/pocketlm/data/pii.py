"""PII scrubbing: e-mail addresses, phone numbers, IP addresses and secrets become placeholders."""

from __future__ import annotations

import re
from collections import Counter

# Order matters: secrets first (they may contain digits that look like phones), then e-mails, IPs, phones.
_PATTERNS: list[tuple[str, re.Pattern[str], str]] = [
    (
        "private_key",
        re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S),
        "[PRIVATE_KEY]",
    ),
    ("secret", re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"), "[SECRET]"),
    ("secret", re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36,}\b"), "[SECRET]"),
    ("secret", re.compile(r"\bsk-[A-Za-z0-9_-]{20,}\b"), "[SECRET]"),
    ("secret", re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}\b"), "[SECRET]"),
    (
        "secret",
        re.compile(r"\beyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\b"),
        "[SECRET]",
    ),
    (
        "secret",
        re.compile(
            r"(?i)\b((?:api[_-]?key|secret|token|password|passwd|access[_-]?key)\s*[:=]\s*[\"']?)"
            r"([A-Za-z0-9/+_=-]{16,})"
        ),
        r"\1[SECRET]",
    ),
    ("email", re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b"), "[EMAIL]"),
    (
        "ip_address",
        re.compile(r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b"),
        "[IP_ADDRESS]",
    ),
    (
        "ip_address",
        re.compile(r"(?i)(?<![\w:])(?:[0-9a-f]{1,4}:){7}[0-9a-f]{1,4}(?![\w:])"),
        "[IP_ADDRESS]",
    ),
    (
        "phone",
        re.compile(
            r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\d{2,4}[ .-])\d{3,4}[ .-]\d{3,4}(?![\w])"
        ),
        "[PHONE]",
    ),
]


def scrub_pii(text: str) -> tuple[str, Counter]:
    """Replace PII with placeholders; returns the new text and counts per kind."""
    counts: Counter = Counter()
    for kind, pattern, replacement in _PATTERNS:
        text, n = pattern.subn(replacement, text)
        if n:
            counts[kind] += n
    return text, counts
