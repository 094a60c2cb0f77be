"""The compare table without models: names, quality, fronts, markdown and the plot."""

from __future__ import annotations

from pocketlm.evals.compare import (
    compare_report,
    format_markdown,
    fronts,
    plot_report,
    quality_key,
    table_lines,
    variant_names,
)


def _row(name, size, speed, bpb=None, acc=None, **extra):
    return {"name": name, "size_mb": size, "decode_tokens_per_s": speed, "bpb": bpb,
            "task_accuracy": acc, "params": 1000, **extra}  # fmt: skip


def test_variant_names_are_the_shortest_distinct_suffixes():
    assert variant_names(["runs/a/model", "runs/b/model", "runs/q8"]) == [
        "a/model",
        "b/model",
        "q8",
    ]
    assert variant_names(["x/m", "x/m"]) == ["m", "m#2"]
    assert variant_names(["/abs/one"]) == ["one"]


def test_quality_is_accuracy_when_measured_else_bits_per_byte():
    assert quality_key([_row("a", 1, 1, bpb=1.0), _row("b", 1, 1, acc=0.5)]) == "task_accuracy"
    assert quality_key([_row("a", 1, 1, bpb=1.0), _row("b", 1, 1)]) == "bpb"
    assert quality_key([_row("a", 1, 1)]) is None


def test_fronts_against_speed_and_size():
    rows = [
        _row("fp32", 4.0, 10.0, bpb=1.00),
        _row("int8", 1.0, 25.0, bpb=1.01),
        _row("int4", 0.6, 20.0, bpb=1.10),
        _row("bad", 2.0, 5.0, bpb=1.20),  # bigger, slower and worse than int8
    ]
    assert fronts(rows) == {"speed": ["fp32", "int8"], "size": ["fp32", "int8", "int4"]}
    no_quality = [_row("a", 4.0, 10.0), _row("b", 1.0, 30.0)]
    assert fronts(no_quality) == {"speed": ["b"]}


def test_markdown_lists_every_variant_marks_the_front_and_says_what_is_missing():
    rows = [
        _row("fp32", 4.0, 10.0, bpb=1.0, notes=["task accuracy not measured"]),
        _row("slow", 5.0, 5.0, bpb=1.2),
    ]
    report = compare_report(rows, {"rounds": 3})
    lines = table_lines(report)
    assert len(lines) == 2 + len(rows)
    assert lines[2].startswith("| fp32 * |") and lines[3].startswith("| slow |")
    assert "1,000" in lines[2] and "–" in lines[2]  # parameters; accuracy not measured
    md = format_markdown(report)
    assert "validation bits/byte against decode tokens/s: fp32" in md
    assert "- fp32: task accuracy not measured" in md and "- rounds: 3" in md


def test_plot_report_with_and_without_quality(tmp_path):
    with_q = compare_report([_row("a", 1.0, 2.0, bpb=1.0), _row("b", 2.0, 3.0, bpb=0.9)], {})
    without = compare_report([_row("a", 1.0, 2.0), _row("b", 2.0, None)], {})
    for name, report in (("q.png", with_q), ("n.png", without)):
        assert plot_report(report, tmp_path / name).read_bytes()[:4] == b"\x89PNG"
