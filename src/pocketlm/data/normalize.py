"""Text normalisation: Unicode form, control characters, whitespace repair, HTML to text. Pure functions."""

from __future__ import annotations

import html
import re
import unicodedata
from html.parser import HTMLParser

# C0/C1 control characters except tab and newline, plus zero-width and BOM characters.
_CONTROL_RE = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\u200c\u200d\u2060\ufeff\ufffe]"
)
# Exotic spaces that should read as a plain space.
_SPACE_RE = re.compile("[\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]")
_TRAILING_WS_RE = re.compile(r"[ \t]+$", re.MULTILINE)
_MANY_BLANK_LINES_RE = re.compile(r"\n{4,}")


def normalize_text(text: str, unicode_form: str = "NFC") -> str:
    """Unicode-normalise, drop control characters, unify newlines and repair whitespace."""
    if unicode_form != "none":
        text = unicodedata.normalize(unicode_form, text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL_RE.sub("", text)
    text = _SPACE_RE.sub(" ", text)
    text = _TRAILING_WS_RE.sub("", text)
    # Keep at most two blank lines in a row: layout survives, padding does not.
    text = _MANY_BLANK_LINES_RE.sub("\n\n\n", text)
    return text.strip("\n")


_BLOCK_TAGS = {
    "p",
    "div",
    "br",
    "li",
    "ul",
    "ol",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "tr",
    "table",
    "section",
    "article",
    "header",
    "footer",
    "blockquote",
    "pre",
    "hr",
    "dd",
    "dt",
    "title",
}
_PRE_SPACE, _PRE_TAB = "\ue000", "\ue001"  # private-use: not whitespace to str.strip
_SKIP_TAGS = {"script", "style", "noscript", "template", "svg"}


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip_depth = 0
        self._in_title = False
        self._pre_depth = 0

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag in _SKIP_TAGS:
            self._skip_depth += 1
        if tag == "pre":
            self._pre_depth += 1
        if tag == "title":
            self._in_title = True
        if tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP_TAGS and self._skip_depth:
            self._skip_depth -= 1
        if tag == "pre" and self._pre_depth:
            self._pre_depth -= 1
        if tag == "title":
            self._in_title = False
        if tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self._skip_depth:
            return
        if self._pre_depth:
            # Protect preformatted spaces from the line stripping in html_to_text.
            self.parts.append(data.replace(" ", _PRE_SPACE).replace("\t", _PRE_TAB))
        else:
            self.parts.append(re.sub(r"[ \t\r\n]+", " ", data))


def html_to_text(markup: str) -> str:
    """Strip tags (dropping script/style), keep block structure as newlines, unescape entities."""
    parser = _TextExtractor()
    parser.feed(markup)
    parser.close()
    text = html.unescape("".join(parser.parts))
    lines = [line.strip() for line in text.split("\n")]
    out: list[str] = []
    for line in lines:
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out).strip().replace(_PRE_SPACE, " ").replace(_PRE_TAB, "\t")
