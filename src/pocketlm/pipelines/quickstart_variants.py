"""The quickstart's variants stage: the artifacts that ship, compared with the model they came from.

The model is quantized to int8 and int4 (`pocketlm quantize`), exported to ONNX (`pocketlm export
onnx`, when the onnx extra is installed) and to a GGUF file (`pocketlm export gguf`, when the gguf
package and llama-cpp-python are), and `pocketlm compare` measures them all: size, speed, bits/byte,
the score on a small cloze task cut from the quickstart's own validation text (evals/cloze_task),
and the parity of each with the model (greedy token agreement, same answers). A missing extra is
a line in the report, never a failure.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

VARIANT_SCHEMES = ("int8", "int4")
ONNX_DIR, GGUF_FILE, CLOZE_FILE = "onnx", "model.gguf", "cloze.jsonl"
CLOZE_ITEMS = 32  # four choices each: seconds per variant at the default size
CLOZE_TOKENS = 50_000  # validation tokens decoded for the task's text, at most
# export -> (the modules it needs, the install hint), in the order the variants are listed
EXPORTS = {
    "ONNX": (("onnx", "onnxruntime"), "pip install 'pocketlm[onnx]'"),
    "GGUF": (("gguf", "llama_cpp"), "pip install 'pocketlm[gguf,llama]'"),
}


def missing_exports() -> dict[str, str]:
    """Export -> its install hint, for the exports whose packages are not installed."""
    return {
        name: hint
        for name, (modules, hint) in EXPORTS.items()
        if any(importlib.util.find_spec(m) is None for m in modules)
    }


def cloze_task(tokens_dir: Path, path: Path, *, items: int = CLOZE_ITEMS, seed: int = 0) -> Path | None:  # fmt: skip
    """Write a multiple-choice cloze task from the tokens' validation text (the train text when
    that gives no items) to `path`; None when neither does."""
    from pocketlm.data.token_shards import TokenShards
    from pocketlm.evals.cloze_task import cloze_records
    from pocketlm.tokenizer.tokenizer import Tokenizer

    shards = TokenShards(tokens_dir)
    tokenizer = Tokenizer.load(shards.tokenizer_dir)
    records: list[dict[str, Any]] = []
    for name in ("val", "train"):  # a corpus too small for a validation split has train only
        if not records and shards.has_split(name):
            texts = _texts(shards.split(name), tokenizer)
            records = cloze_records(texts, items=items, seed=seed)
    if not records:
        return None
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _texts(split: Any, tokenizer: Any) -> list[str]:
    """The split's first documents as text, CLOZE_TOKENS tokens at most."""
    starts = [int(s) for s in split.doc_starts] + [len(split)]
    texts, used = [], 0
    for a, b in itertools.pairwise(starts):
        if used >= CLOZE_TOKENS:
            break
        b = min(b, a + CLOZE_TOKENS - used)
        texts.append(tokenizer.decode(split.tokens[a:b].tolist(), skip_special=True))
        used += b - a
    return texts


def build_variants(
    out: Path,
    run_dir: Path,
    tokens_dir: Path,
    ctx: int,
    prompts: Sequence[str],
    command: Sequence[str] | None,
) -> None:
    """Quantize, export (as the installed extras allow) and compare them all in out/compare."""
    from pocketlm.compress.quantize import quantize_model_dir
    from pocketlm.pipelines.compare import CompareSettings, compare_models

    paths: list[Path] = [run_dir / "model"]
    for scheme in VARIANT_SCHEMES:
        quantize_model_dir(run_dir, out / scheme, scheme, command=command, overwrite=True)
        paths.append(out / scheme)
    missing = missing_exports()
    if "ONNX" not in missing:
        from pocketlm.interop.onnx_export import export_onnx

        paths.append(export_onnx(run_dir, out / ONNX_DIR, command=command, overwrite=True))
    if "GGUF" not in missing:
        from pocketlm.interop.gguf_export import export_gguf

        paths.append(export_gguf(run_dir, out / GGUF_FILE, command=command, overwrite=True))
    task = cloze_task(tokens_dir, out / CLOZE_FILE)
    # Two interleaved rounds and 64k evaluation tokens: a quick look, `pocketlm compare` for more.
    # The bench's prompt and reply fit the model's context (128 + 64 tokens at the default 256).
    settings = CompareSettings(
        rounds=2, max_tokens=65536, prompt_tokens=min(128, ctx // 2),
        new_tokens=min(64, ctx // 4), greedy_tokens=min(32, ctx // 2),
        greedy_prompts=tuple(prompts),
    )  # fmt: skip
    compare_models(
        paths, out / "compare", tokens=tokens_dir, task=task, settings=settings,
        command=command, overwrite=True,
    )  # fmt: skip


def variants_section(compare_dir: Path) -> list[str]:
    """The report's lines on the variants: compare's table, the parity with the model, the
    exports left out and why, the Pareto plot."""
    from pocketlm.evals.artifact_parity import parity_lines
    from pocketlm.evals.compare import table_lines

    report: dict[str, Any] = json.loads((compare_dir / "report.json").read_text(encoding="utf-8"))
    exported = {r.get("exported") for r in report["variants"]}
    lines = [
        "## Variants: which one to ship",
        "",
        "The model, its int8 and int4 copies (`pocketlm quantize`) and its exports (`pocketlm",
        "export onnx`, `pocketlm export gguf`), each measured in its own process on its own",
        "runtime (`pocketlm compare`; details in [compare/report.md](compare/report.md))"
        + (
            "; the task score is a cloze task from the validation text ([cloze.jsonl](cloze.jsonl)):"
            if report["settings"].get("task")
            else ":"
        ),
        "",
        *table_lines(report),
        "",
    ]
    if report.get("parity"):
        lines += [
            "Parity with the model: greedy continuations of the sample prompts compared token",
            "by token, and the cloze answers compared item by item:",
            "",
            *parity_lines(report["parity"]),
            "",
        ]
    for name, (_, hint) in EXPORTS.items():
        if name.lower() not in exported:
            lines.append(f"- {name} export not compared: its packages are not installed ({hint})")
    if lines[-1].startswith("- "):
        lines.append("")
    return [*lines, "![Pareto plot](compare/pareto.png)", ""]
