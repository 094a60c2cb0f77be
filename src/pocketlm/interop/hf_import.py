"""`pocketlm import`: a local Hugging Face model folder -> a PocketLM model artifact.

The family comes from config.json (families.find_family: `architectures`, else `model_type`);
its spec turns the config into a ModelConfig and names every tensor. Weights stream tensor by
tensor from model.safetensors or the shards model.safetensors.index.json lists: each tensor is read,
renamed (a fused tensor split along its rows: Phi-3's qkv_proj, gate_up_proj) and written before
the next is read, so memory holds about one tensor (the largest: often the embedding) whatever the
model's size. No torch is imported. A tied LM head stored in the checkpoint anyway is skipped;
an untied one that is missing is an error.

dtypes: bf16 and fp32 tensors are kept as they are (both loaders take either); fp16 becomes fp32,
exactly (PocketLM's loaders do not read fp16 weights; bf16 would round 3 bits of each value).

The artifact holds model.safetensors under PocketLM's names, model_config.json, the source's
tokenizer files copied unchanged and a manifest whose parents are the source files with their
sha256, and whose config records the family, architecture, token ids and the source files' sizes
and modification times (what the import cache compares).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pocketlm.checkpoint.layout import (
    CARRIED_FILES,
    CONFIG_FILE,
    MODEL_KIND,
    PICKLE_SUFFIXES,
    WEIGHTS_FILE,
)
from pocketlm.checkpoint.safetensors_mmap import read_header
from pocketlm.checkpoint.weights_spec import check_weights, expected_tensors
from pocketlm.common.errors import ArtifactError
from pocketlm.common.log import get_logger
from pocketlm.common.manifest import ArtifactWriter, parent_ref
from pocketlm.interop.families import FamilySpec, NameTable, find_family
from pocketlm.interop.families.encoder_names import checkpoint_names, dropped
from pocketlm.interop.families.hf_config import model_config
from pocketlm.interop.safetensors_stream import (
    INDEX_FILE,
    OutTensor,
    SourceWeights,
    write_safetensors,
)
from pocketlm.model.config import ModelConfig
from pocketlm.tokenizer.tokenizer import TOKENIZER_FILE, TOKENIZER_FILES

HF_CONFIG_FILE = "config.json"
# Files copied into the artifact unchanged when the source has them.
COPIED_FILES = (*TOKENIZER_FILES, *CARRIED_FILES)
# Tensors old checkpoints store that no model computes with.
_SKIPPED_SUFFIXES = (".rotary_emb.inv_freq",)
_log = get_logger("pocketlm.interop.import")


def read_hf_config(folder: Path) -> dict[str, Any]:
    """config.json of a Hugging Face model folder, as a JSON object."""
    path = Path(folder) / HF_CONFIG_FILE
    if not path.is_file():
        raise ArtifactError(f"{folder}: no {HF_CONFIG_FILE}: not a Hugging Face model folder")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: not a readable JSON config ({exc})") from exc
    if not isinstance(data, dict):
        raise ArtifactError(f"{path}: not a JSON object")
    return data


def inspect_hf_folder(folder: str | Path) -> tuple[FamilySpec, ModelConfig, dict[str, Any]]:
    """(family spec, ModelConfig, raw config.json) of a folder, without reading any weights."""
    hf = read_hf_config(Path(folder))
    spec = find_family(hf, str(Path(folder) / HF_CONFIG_FILE))
    return spec, model_config(spec, hf), hf


def import_hf(
    src: str | Path,
    out: str | Path,
    *,
    command: Sequence[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a PocketLM model artifact at `out` for the Hugging Face folder `src`; returns it."""
    src = Path(src)
    if not src.is_dir():
        raise ArtifactError(f"{src}: no such model folder")
    _refuse_pickles_only(src)
    spec, config, hf = inspect_hf_folder(src)
    if not (src / TOKENIZER_FILE).is_file():
        raise ArtifactError(
            f"{src}: no {TOKENIZER_FILE}; PocketLM reads tokenizers through it. Write one with "
            "transformers: AutoTokenizer.from_pretrained(DIR).save_pretrained(DIR)"
        )
    weights = SourceWeights(src)
    config = model_config(spec, hf, weights.tensors)  # the weights settle an encoder's pooler
    tensors = _plan(spec, config, weights)
    sources = [src / HF_CONFIG_FILE, *weights.files]
    if (src / INDEX_FILE).is_file():
        sources.append(src / INDEX_FILE)
    copied = [name for name in COPIED_FILES if (src / name).is_file()]
    sources += [src / name for name in copied]
    dtypes: dict[str, int] = {}
    for info in weights.tensors.values():
        dtypes[info.dtype] = dtypes.get(info.dtype, 0) + 1
    source = {
        "path": str(src.resolve()),
        "family": spec.name,
        "architecture": (hf.get("architectures") or [spec.architectures[0]])[0],
        "model_type": hf.get("model_type"),
        "dtypes": dtypes,
        "token_ids": {k: hf.get(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")},
        "files": {
            p.name: {"bytes": p.stat().st_size, "mtime_ns": p.stat().st_mtime_ns} for p in sources
        },
    }
    _log.info("importing %s (%s, %d tensors)", src, spec.name, len(tensors))
    with ArtifactWriter(
        out,
        MODEL_KIND,
        config={"source": source},
        parents=[parent_ref(p) for p in sources],
        command=command,
        overwrite=overwrite,
    ) as art:
        weights_path = art.path(WEIGHTS_FILE)
        write_safetensors(weights_path, tensors, {"format": "pt", "producer": "pocketlm-import"})
        check_weights(read_header(weights_path)[0], config, {"scheme": "none"}, weights_path)
        config.save(art.path(CONFIG_FILE))
        for name in copied:
            shutil.copyfile(src / name, art.path(name))
        return art.commit(
            {
                "params": config.num_params(),
                "model": config.to_dict(),
                "family": spec.name,
                "tensors": len(tensors),
                "weights_bytes": weights_path.stat().st_size,
            }
        )


def _refuse_pickles_only(src: Path) -> None:
    """A folder with pickle weights and no safetensors: say how to convert (never unpickle)."""
    has_safetensors = any(src.glob("*.safetensors"))
    pickles = sorted(p.name for p in src.iterdir() if p.suffix in PICKLE_SUFFIXES and p.is_file())
    if pickles and not has_safetensors:
        raise ArtifactError(
            f"{src}: weights only as {', '.join(pickles)} (pickle: loading it can run arbitrary "
            "code). PocketLM imports safetensors only: convert it where you trust the file, e.g. "
            "transformers' AutoModelForCausalLM.from_pretrained(DIR).save_pretrained(DIR, "
            "safe_serialization=True)"
        )


def _other_spellings(
    plan: list[tuple[str, tuple[str, ...]]],
    table: NameTable,
    config: ModelConfig,
    weights: SourceWeights,
) -> list[tuple[str, tuple[str, ...]]]:
    """The plan with the checkpoint's own spelling where it uses another one the table knows:
    an alternative name, or experts stacked in one [n_experts, rows, cols] tensor per layer."""
    out = []
    stacked: set[str] = set()
    for hf_name, ours in plan:
        if hf_name not in weights.tensors:
            module, _, suffix = hf_name.rpartition(".")
            for primary, other in table.alternatives.items():
                if module.endswith("." + primary):
                    hf_name = f"{module.removesuffix(primary)}{other}.{suffix}"
        prefix, _, inner = ours[0].partition(".mlp.experts.")
        if inner and hf_name not in weights.tensors:
            for fused, parts in table.fused_experts.items():
                name = f"{prefix}.{fused}"
                if name in weights.tensors and inner.split(".")[1] in parts:
                    if name not in stacked:
                        stacked.add(name)
                        group = tuple(
                            f"{prefix}.mlp.experts.{e}.{part}.weight"
                            for e in range(config.n_experts)
                            for part in parts
                        )
                        out.append((name, group))
                    break
            else:
                out.append((hf_name, ours))
            continue
        out.append((hf_name, ours))
    return out


def _plan(spec: FamilySpec, config: ModelConfig, weights: SourceWeights) -> list[OutTensor]:
    """The artifact's tensors in PocketLM order, each fetching (and splitting) its HF source."""
    want = expected_tensors(config, {"scheme": "none"})
    plan = checkpoint_names(spec, spec.hf_names.plan(config), weights.tensors)
    plan = _other_spellings(plan, spec.hf_names, config, weights)
    used = {hf_name for hf_name, _ in plan}
    heads = sorted(n for n in weights.tensors if n not in used and dropped(spec, n))
    if heads:
        _log.info("skipping %d tensors of heads PocketLM does not run (%s)", len(heads), heads[0])
    unknown = sorted(
        n
        for n in weights.tensors
        if n not in used
        and not n.endswith(_SKIPPED_SUFFIXES)
        and not (config.tie_embeddings and n == "lm_head.weight")
        and n not in heads
    )
    if unknown:
        more = f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""
        raise ArtifactError(
            f"{weights.folder}: tensor {unknown[0]!r}{more} is not part of a {spec.name} model "
            "with this config.json (a feature PocketLM does not implement, or a config that does "
            "not match the weights)"
        )
    out: list[OutTensor] = []
    for hf_name, ours in plan:
        info = weights.tensors.get(hf_name)
        if info is None:
            why = " (tie_word_embeddings is false)" if hf_name == "lm_head.weight" else ""
            raise ArtifactError(f"{weights.folder}: tensor {hf_name!r} is missing{why}")
        shapes = [want[name].shape for name in ours]
        rows = sum(s[0] for s in shapes)
        expected = (rows, *shapes[0][1:])
        if len(info.shape) == 3:  # every expert's matrices stacked: [n_experts, rows, cols]
            expected = (config.n_experts, rows // config.n_experts, *shapes[0][1:])
        if info.shape != expected:
            raise ArtifactError(
                f"{info.path}: tensor {hf_name!r} has shape {list(info.shape)}, config.json "
                f"implies {list(expected)}"
            )
        dtype = "BF16" if info.dtype == "BF16" else "F32"
        fused = _FusedReader(weights, hf_name, dtype, [s[0] for s in shapes])
        for part, (name, shape) in enumerate(zip(ours, shapes, strict=True)):
            out.append(OutTensor(name, dtype, shape, fused.part_getter(part)))
    return out


class _FusedReader:
    """Reads a source tensor once and hands out its row blocks (the whole tensor when unfused),
    converted to the output dtype; forgets it after the last block."""

    def __init__(self, weights: SourceWeights, name: str, dtype: str, rows: list[int]) -> None:
        self.weights, self.name, self.dtype = weights, name, dtype
        self.bounds = np.cumsum([0, *rows]).tolist()
        self._values: np.ndarray | None = None
        self._left = len(rows)

    def part_getter(self, part: int):
        def get() -> np.ndarray:
            if self._values is None:
                values = self.weights.read(self.name)
                if values.ndim > 2:  # stacked experts: [n_experts, rows, cols] -> [n * rows, cols]
                    values = values.reshape(-1, values.shape[-1])
                self._values = (
                    values.astype(np.float32, copy=False) if self.dtype == "F32" else values
                )
            block = self._values[self.bounds[part] : self.bounds[part + 1]]
            self._left -= 1
            if not self._left:
                self._values = None  # the writer holds the last block until it is written
            return block

        return get
