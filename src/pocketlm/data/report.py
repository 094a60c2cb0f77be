"""The corpus report: data_report.md with per-filter, per-source and per-split numbers, plus a histogram."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pocketlm.common.units import format_bytes, format_duration

# Log-spaced document-length bins (characters): 1 .. 10^8.
LENGTH_BIN_EDGES = np.logspace(0, 8, 33)


@dataclass
class LengthHistogram:
    """Counts of documents per log-spaced length bin; constant memory."""

    counts: np.ndarray = field(
        default_factory=lambda: np.zeros(len(LENGTH_BIN_EDGES) - 1, dtype=np.int64)
    )

    def add(self, n_chars: int) -> None:
        idx = int(np.searchsorted(LENGTH_BIN_EDGES, max(1, n_chars), side="right")) - 1
        self.counts[min(max(idx, 0), len(self.counts) - 1)] += 1

    def save_png(self, path: Path, title: str) -> None:
        """Bar chart of document lengths on a log axis."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 3.6), dpi=110)
        widths = np.diff(LENGTH_BIN_EDGES)
        ax.bar(
            LENGTH_BIN_EDGES[:-1],
            self.counts,
            width=widths,
            align="edge",
            color="#4C72B0",
            edgecolor="white",
        )
        ax.set_xscale("log")
        ax.set_xlabel("document length (characters, log scale)")
        ax.set_ylabel("documents")
        ax.set_title(title)
        nonzero = np.nonzero(self.counts)[0]
        if nonzero.size:
            ax.set_xlim(LENGTH_BIN_EDGES[nonzero[0]], LENGTH_BIN_EDGES[nonzero[-1] + 1])
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)


REASON_TEXT = {
    "too_short": "shorter than clean.min_chars",
    "too_long": "longer than clean.max_chars",
    "too_long_raw": "a line or record over sources.max_record_bytes, dropped unread",
    "repeated_lines": "too many repeated lines (clean.max_dup_line_fraction)",
    "repeated_ngram": "one word pair dominates (clean.max_top_ngram_fraction)",
    "duplicated_ngrams": "too many repeated 5-grams (clean.max_dup_ngram_fraction)",
    "exact_duplicate": "exact duplicate of an earlier document",
    "near_duplicate": "near duplicate of an earlier document (MinHash LSH)",
}


def _why(outcome: str) -> str:
    if outcome.startswith("bad:"):
        return "bad record, skipped (--on-bad-record skip)"
    return REASON_TEXT.get(outcome, "")


def _accounting_lines(s: dict) -> list[str]:
    acc = s["accounting"]
    records, n_bytes = acc["records"], acc["bytes"]
    lines = [
        "",
        "## Removed — where every record and byte went",
        "",
        "Records in = kept + dropped by reason; bytes in = kept + dropped + framing + files "
        "skipped unread. Bytes are as stored in the files (Parquet and datasets: text bytes).",
        "",
        "| outcome | records | bytes | why |",
        "|---|---:|---:|---|",
        f"| in | {records['in']:,} | {format_bytes(n_bytes['in'])} | "
        f"{acc['files']['read']:,} files read, {acc['files']['skipped']:,} skipped |",
        f"| kept | {records['kept']:,} | {format_bytes(n_bytes['kept'])} | |",
    ]
    for reason, n in sorted(records["dropped"].items(), key=lambda kv: -kv[1]):
        lines.append(
            f"| {reason} | {n:,} | {format_bytes(n_bytes['dropped'][reason])} | {_why(reason)} |"
        )
    lines.append(f"| framing | — | {format_bytes(n_bytes['framing'])} | CSV headers, blank lines |")
    lines.append(
        f"| files skipped | — | {format_bytes(n_bytes['skipped_files'])} | "
        "unsupported, binary or unreadable files, named below |"
    )
    if s["dropped_unread_examples"]:
        lines += ["", "Dropped unread (first ones):", ""]
        lines += [f"- {e}" for e in s["dropped_unread_examples"]]
    return lines


def _dropped_files_lines(s: dict) -> list[str]:
    named = s["dropped_files"]
    lines = ["", f"## Files dropped or cut ({named['count']:,})", ""]
    if not named["count"]:
        return [*lines, "None: every file read kept all its records."]
    lines += [
        "| file | status | records in | kept | bytes in | why |",
        "|---|---|---:|---:|---:|---|",
    ]
    for e in named["first"]:
        dropped = ", ".join(f"{k}: {n:,}" for k, n in e.get("dropped", {}).items())
        why = dropped or e["reason"]
        lines.append(
            f"| `{e['path']}` | {e['status']} | {e.get('records_in', 0):,} | "
            f"{e.get('records_kept', 0):,} | {format_bytes(e['bytes_in'])} | {why} |"
        )
    if named["count"] > len(named["first"]):
        lines += ["", f"… and {named['count'] - len(named['first']):,} more in `{named['file']}`."]
    else:
        lines += ["", f"The same list, machine-readable: `{named['file']}`."]
    return lines


def render_report(s: dict) -> str:
    """Markdown for data_report.md from the build summary dict."""
    lines = [
        "# Corpus report",
        "",
        f"Built in {format_duration(s['seconds'])} at {s['mb_per_s']:.1f} MB/s "
        f"({format_bytes(s['bytes_read'])} read, {s['docs_read']:,} documents).",
        "",
        "| split | documents | bytes |",
        "|---|---:|---:|",
    ]
    for split in ("train", "val"):
        lines.append(
            f"| {split} | {s['splits'][split]['docs']:,} | {format_bytes(s['splits'][split]['bytes'])} |"
        )
    lines += _accounting_lines(s)
    if s["bytes_changed_by_cleaning"]:
        lines += [
            "",
            f"Normalisation and whitespace repair changed the size of kept text by "
            f"{s['bytes_changed_by_cleaning']:+,} bytes.",
        ]
    lines += _dropped_files_lines(s)
    if s["pii"]:
        lines += ["", "## PII scrubbed", "", "| kind | replacements |", "|---|---:|"]
        lines += [f"| {k} | {v:,} |" for k, v in sorted(s["pii"].items())]
    lines += [
        "",
        "## Sources",
        "",
        "| source | files read | records in | bytes in | records kept | bytes written | files skipped |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, src in s["sources"].items():
        skipped = ", ".join(f"{k}: {v}" for k, v in sorted(src["skipped_files"].items())) or "—"
        lines.append(
            f"| `{name}` | {src['files']:,} | {src['records_in']:,} | {format_bytes(src['bytes_in'])} | "
            f"{src['records_kept']:,} | {format_bytes(src['bytes_written'])} | {skipped} |"
        )
    bad = s["bad_records"]
    lines += ["", "## Bad records", ""]
    if bad["total"] == 0:
        lines.append("None.")
    else:
        lines.append(f"{bad['total']:,} bad records were skipped (--on-bad-record skip):")
        lines.append("")
        lines += [f"- {kind}: {n:,}" for kind, n in sorted(bad["counts"].items())]
        lines += ["", "First examples:", ""] + [f"- {e}" for e in bad["examples"]]
    lines += [
        "",
        "## Document lengths",
        "",
        "![document lengths](doc_lengths.png)",
        "",
        f"Near-duplicate detection: MinHash with {s['dedup']['num_perm']} permutations over word "
        f"{s['dedup']['shingle_words']}-grams, LSH {s['dedup']['bands']} bands × {s['dedup']['rows']} rows "
        f"(threshold {s['dedup']['threshold']}).",
        "",
    ]
    return "\n".join(lines)
