"""CSV never swallows rows: malformed records stop the build with file/line/offset, or are counted."""

from __future__ import annotations

import csv
import io
import random
import string
import tempfile
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pocketlm.common.errors import InputError
from pocketlm.data.accounting import Accounting
from pocketlm.data.csv_reader import read_csv
from pocketlm.data.records import BadRecordLog
from pocketlm.data.source_options import SourceOptions


def _read(path: Path, policy: str = "error", **opts):
    book = Accounting(BadRecordLog(policy=policy), lambda n: None)
    ledger = book.open(path, "src")
    docs = list(read_csv(path, SourceOptions(**opts), ledger))
    book.done_reading(ledger)
    for doc in docs:
        book.settle(doc.file_id, "kept", doc.span_bytes)
    return docs, ledger


def _balanced(ledger, size_bytes: int) -> bool:
    return ledger.bytes_in == size_bytes


def test_unterminated_quote_at_the_end_is_detected(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text('id,text\n1,"fine"\n2,"never closed\n3,plain\n4,more\n')
    with pytest.raises(InputError) as err:
        _read(p)
    msg = str(err.value)
    assert "t.csv, line 3, byte offset 17: malformed CSV" in msg
    assert "still open at the end of the file (lines 3-5)" in msg
    docs, ledger = _read(p, policy="skip")
    # The quote swallowed lines 4-5: they come back, only line 3 is bad.
    assert [d.text for d in docs] == ["fine", "plain", "more"]
    assert ledger.records == {"bad:invalid_csv": 1, "kept": 3}
    assert ledger.bytes["bad:invalid_csv"] == len('2,"never closed\n')
    assert _balanced(ledger, p.stat().st_size)


def test_open_quote_closed_by_a_later_quoted_field_is_detected(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text('id,text\n1,"oops\n2,"Quoted, as usual"\n3,last\n')
    docs, ledger = _read(p, policy="skip")
    assert [d.text for d in docs] == ["Quoted, as usual", "last"]
    assert [d.origin for d in docs] == [f"{p}:3", f"{p}:4"]
    assert ledger.bad_log.counts == {"invalid_csv": 1}
    assert "line 2" in ledger.bad_log.examples[0]


def test_wrong_number_of_fields(tmp_path):
    p = tmp_path / "t.tsv"
    p.write_text("id\ttext\n1\tone\n2\ttwo\textra\n3\n4\tfour\n")
    with pytest.raises(
        InputError, match=r"t.tsv, line 3, byte offset 14: malformed CSV: row has 3 fields"
    ):
        _read(p)
    docs, ledger = _read(p, policy="skip")
    assert [d.text for d in docs] == ["one", "four"]
    assert ledger.records["bad:invalid_csv"] == 2 and _balanced(ledger, p.stat().st_size)


def test_record_over_the_line_limit_is_malformed(tmp_path):
    p = tmp_path / "t.csv"
    body = "\n".join(f"line {i}" for i in range(10))
    p.write_text(f'id,text\n1,"{body}"\n2,after\n')
    docs, _ = _read(p, csv_max_record_lines=20)
    assert [d.text for d in docs] == [body, "after"]
    with pytest.raises(InputError, match=r"line 2, .*spans more than 5 lines"):
        _read(p, csv_max_record_lines=5)


def test_field_over_the_byte_limit_is_malformed_and_a_huge_line_too_long(tmp_path):
    p = tmp_path / "t.csv"
    big = "word " * 400  # 2000 bytes, over a 1024-byte limit
    p.write_text(f'id,text\n1,"{big[:500]}\n{big}"\n2,{big}\n3,ok\n')
    with pytest.raises(InputError, match=r"line 2, .*line 3 is over the read limit of 1,024"):
        _read(p, max_record_bytes=1024)
    docs, ledger = _read(p, policy="skip", max_record_bytes=1024)
    # Record 1 is bad (its first line counted), its second line and row 2 are lines over the
    # limit (dropped unread), row 3 survives.
    assert [d.text for d in docs] == ["ok"]
    assert ledger.records == {"bad:invalid_csv": 1, "too_long_raw": 2, "kept": 1}
    assert _balanced(ledger, p.stat().st_size)


def test_missing_column_skips_the_whole_file_under_skip(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("id,body\n1,x\n")
    with pytest.raises(InputError, match=r"no column 'text' \(columns: id, body\)"):
        _read(p)
    docs, ledger = _read(p, policy="skip")
    assert docs == [] and ledger.skipped.startswith("unreadable: no column 'text'")
    assert ledger.bytes_in == p.stat().st_size


# Property: a CSV written by csv.writer with one corrupted single-line row reads back every
# other row exactly, counts the corrupted one, and accounts for every byte; under the default
# policy the error names the corrupted row's line and byte offset.
_WORDS = st.text(alphabet=string.ascii_letters + " ,\n", min_size=0, max_size=30)


def _text(draw_text: str, rng: random.Random) -> str:
    # Fields start with a letter and hold no quote: a stray quote is then always detectable.
    return rng.choice(string.ascii_letters) + draw_text


def _csv_property(rows, corrupt_at, kind, max_lines, seed):
    rng = random.Random(seed)
    texts = [_text(t, rng) for t in rows]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["id", "text"])
    header = out.getvalue().encode()
    body = b""
    lines_before = 1
    expected_line = expected_offset = None
    for i, text in enumerate(texts):
        if i == corrupt_at:
            expected_line, expected_offset = lines_before + 1, len(header) + len(body)
            bad = {
                "open_quote": f'{i},"{text.splitlines()[0]}, open\n',
                "extra_field": f"{i},{text.splitlines()[0].replace(',', ' ')},extra\n",
                "missing_field": f"{i}\n",
            }[kind]
            body += bad.encode()
            lines_before += 1
        row = io.StringIO()
        csv.writer(row, lineterminator="\n").writerow([i, text])
        body += row.getvalue().encode()
        lines_before += row.getvalue().count("\n")
    if corrupt_at >= len(texts):
        expected_line, expected_offset = lines_before + 1, len(header) + len(body)
        body += f'{len(texts)},"never closed, {kind}\n'.encode()
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "p.csv"
        p.write_bytes(header + body)
        docs, ledger = _read(p, policy="skip", csv_max_record_lines=max_lines)
        assert [d.text for d in docs] == texts
        assert ledger.records == Counter({"bad:invalid_csv": 1, "kept": len(texts)})
        assert ledger.bytes_in == p.stat().st_size
        with pytest.raises(InputError) as err:
            _read(p, csv_max_record_lines=max_lines)
        assert (err.value.path, err.value.line, err.value.byte_offset) == (
            str(p),
            expected_line,
            expected_offset,
        )


_csv_args = dict(
    rows=st.lists(_WORDS, min_size=0, max_size=12),
    corrupt_at=st.integers(0, 12),
    kind=st.sampled_from(["open_quote", "extra_field", "missing_field"]),
    max_lines=st.integers(32, 100),  # generated fields span at most 31 lines
    seed=st.integers(0, 2**16),
)


@settings(max_examples=150, deadline=None)
@given(**_csv_args)
def test_csv_corruption_is_counted_and_located(rows, corrupt_at, kind, max_lines, seed):
    _csv_property(rows, corrupt_at, kind, max_lines, seed)


@pytest.mark.slow
@settings(max_examples=3000, deadline=None)
@given(**_csv_args)
def test_csv_corruption_is_counted_and_located_many(rows, corrupt_at, kind, max_lines, seed):
    _csv_property(rows, corrupt_at, kind, max_lines, seed)
