"""The corpus report: data_report.md with per-filter, per-source and per-split numbers, plus a histogram."""

from __future__ import annotations

from collections import Counter
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


@dataclass
class RemovalStats:
    """What each step removed: documents and bytes per reason."""

    docs: Counter = field(default_factory=Counter)
    bytes: Counter = field(default_factory=Counter)

    def add(self, reason: str, n_bytes: int) -> None:
        self.docs[reason] += 1
        self.bytes[reason] += n_bytes


REASON_TEXT = {
    "too_short": "shorter than clean.min_chars",
    "too_long": "longer than clean.max_chars",
    "repeated_lines": "too many repeated lines (clean.max_dup_line_fraction)",
    "repeated_ngram": "one word pair dominates (clean.max_top_ngram_fraction)",
    "duplicated_ngrams": "too many repeated 5-grams (clean.max_dup_ngram_fraction)",
    "exact_duplicate": "exact duplicate of an earlier document",
    "near_duplicate": "near duplicate of an earlier document (MinHash LSH)",
}


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
    lines += ["", "## Removed", "", "| step | documents | bytes | why |", "|---|---:|---:|---|"]
    removed_docs = s["removed"]["docs"]
    if not removed_docs:
        lines.append("| — | 0 | 0 B | nothing removed |")
    for reason, n in sorted(removed_docs.items(), key=lambda kv: -kv[1]):
        lines.append(
            f"| {reason} | {n:,} | {format_bytes(s['removed']['bytes'][reason])} | {REASON_TEXT.get(reason, '')} |"
        )
    if s["bytes_changed_by_cleaning"]:
        lines += [
            "",
            f"Normalisation and whitespace repair changed the size of kept text by "
            f"{s['bytes_changed_by_cleaning']:+,} bytes.",
        ]
    if s["pii"]:
        lines += ["", "## PII scrubbed", "", "| kind | replacements |", "|---|---:|"]
        lines += [f"| {k} | {v:,} |" for k, v in sorted(s["pii"].items())]
    lines += [
        "",
        "## Sources",
        "",
        "| source | files | documents read | bytes read | documents kept | bytes kept | files skipped |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, src in s["sources"].items():
        skipped = ", ".join(f"{k}: {v}" for k, v in sorted(src["skipped_files"].items())) or "—"
        lines.append(
            f"| `{name}` | {src['files']:,} | {src['docs_read']:,} | {format_bytes(src['bytes_read'])} | "
            f"{src['docs_kept']:,} | {format_bytes(src['bytes_kept'])} | {skipped} |"
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
