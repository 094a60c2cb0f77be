"""THE check of a model directory before any loader uses it (native and torch alike, no torch).

A model directory is accepted only when: its manifest lists every file a loader reads with the
size on disk (and the sha256, for every file but the weights); model_config.json and
quantization.json hold sane values; the tokenizer files parse and the tokenizer's ids fit the
config's vocabulary; and the safetensors header is well formed and holds exactly the tensors the
config implies (weights_spec). Anything else is an ArtifactError naming the file and the tensor
or field. The weights' bytes are not hashed here: that would read the whole file before the
first token (`pocketlm inspect --verify` does it); their size and layout are checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pocketlm.checkpoint.json_files import read_json_object
from pocketlm.checkpoint.layout import (
    CONFIG_FILE,
    MODEL_KIND,
    QUANT_FILE,
    WEIGHTS_FILE,
    refuse_pickles,
)
from pocketlm.checkpoint.safetensors_mmap import read_header
from pocketlm.checkpoint.weights_spec import check_weights, read_quantization
from pocketlm.common.errors import ArtifactError
from pocketlm.common.manifest import check_listed_file, read_manifest
from pocketlm.model.config import ModelConfig
from pocketlm.tokenizer.tokenizer import (
    HF_TOKENIZER_FILES,
    TOKENIZER_FILE,
    TOKENIZER_FILES,
    Tokenizer,
)

REQUIRED_FILES = (WEIGHTS_FILE, CONFIG_FILE, TOKENIZER_FILE)


@dataclass(frozen=True)
class CheckedModel:
    """A model directory that passed check_model_dir, with what the check read."""

    directory: Path
    manifest: dict[str, Any]
    config: ModelConfig
    quant: dict[str, Any]
    tokenizer: Tokenizer


def check_model_dir(directory: Path) -> CheckedModel:
    """Validate a model artifact directory for loading; ArtifactError naming file and field if not."""
    directory = Path(directory)
    refuse_pickles(directory)
    manifest = read_manifest(directory, kind=MODEL_KIND)
    # An imported model also carries its chat template and generation_config.json.
    optional = [n for n in (QUANT_FILE, *HF_TOKENIZER_FILES) if n not in REQUIRED_FILES]
    for name in (*REQUIRED_FILES, *optional):
        listed = name in manifest.get("files", {})
        if name in REQUIRED_FILES or listed or (directory / name).exists():
            check_listed_file(directory, manifest, name, check_hash=name != WEIGHTS_FILE)
    config = ModelConfig.load(directory / CONFIG_FILE)
    quant = read_quantization(directory)
    tokenizer = Tokenizer.load(directory)
    check_tokenizer_fits(tokenizer, config, directory)
    for name in TOKENIZER_FILES:
        if name != TOKENIZER_FILE and (directory / name).exists():
            read_json_object(directory / name)
    weights = directory / WEIGHTS_FILE
    header, _ = read_header(weights)
    check_weights(header, config, quant, weights)
    return CheckedModel(directory, manifest, config, quant, tokenizer)


def check_tokenizer_fits(tokenizer: Tokenizer, config: ModelConfig, directory: Path) -> None:
    """Raise ArtifactError when the tokenizer can produce ids the model has no row for."""
    if tokenizer.vocab_size > config.vocab_size:
        raise ArtifactError(
            f"{directory}: tokenizer has {tokenizer.vocab_size} tokens but the model's vocabulary "
            f"is {config.vocab_size} ({TOKENIZER_FILE} and {CONFIG_FILE} disagree)"
        )
