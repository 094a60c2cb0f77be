"""The stdlib instruction set: a documented function becomes (its docstring's first sentence,
its code), methods dedented; undocumented, private, long or unparsable code gives nothing."""

from __future__ import annotations

from pocketlm.data.stdlib_instructions import (
    MAX_ANSWER_CHARS,
    first_sentence,
    records_from_source,
    stdlib_instruction_records,
)

SOURCE = '''
def add(a, b):
    """Return the sum of a and b. Both are numbers."""
    return a + b


def _private(x):
    """Return x unchanged, which nobody asks for."""
    return x


def undocumented(x):
    return x


class Box:
    def size(self, unit):
        """Measure the box in the given unit.

        More text.
        """
        return 1
'''


def test_documented_public_functions_become_requests_for_their_code():
    records = list(records_from_source(SOURCE))
    assert [r["prompt"] for r in records] == [
        "Write a Python function add(a, b): Return the sum of a and b.",
        "Write a Python function size(unit): Measure the box in the given unit.",
    ]
    assert records[0]["completion"].startswith("def add(a, b):\n")
    method = records[1]["completion"]
    assert method.startswith("def size(self, unit):\n    ") and "\n        return" not in method
    compile(method, "<method>", "exec")  # dedented: valid on its own


def test_what_gives_no_record():
    assert list(records_from_source("def broken(:\n")) == []
    long_body = "\n".join(f"    x{i} = {i}" for i in range(200))
    assert list(records_from_source(f'def big():\n    """Do many things."""\n{long_body}\n')) == []
    assert len(f"def big():\n{long_body}") > MAX_ANSWER_CHARS
    assert first_sentence("ok.") == ""  # too short to ask for
    assert (
        first_sentence("Return the thing\nacross lines.  Then more.")
        == "Return the thing across lines."
    )


def test_files_in_order_up_to_a_limit(tmp_path):
    (tmp_path / "a.py").write_text(SOURCE)
    (tmp_path / "b.py").write_bytes(b"\xff\xfe not utf-8")
    (tmp_path / "c.txt").write_text(SOURCE)
    files = sorted(tmp_path.iterdir())
    assert len(stdlib_instruction_records(files)) == 2
    assert len(stdlib_instruction_records(files, limit=1)) == 1
