"""An `export onnx` classifier directory in onnxruntime, called as engine/classify.Classifier
calls a torch classifier: model(input_ids, attention_mask=mask) -> (B, n_labels) logits, with
`config.labels`, `config.max_seq_len` and `config.vocab_size` read from onnx_config.json.
An encoder graph that takes token_type_ids gets type 0 everywhere, as the torch model defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pocketlm.common.errors import ConfigError
from pocketlm.engine.onnx_backend import onnx_session, read_onnx_config
from pocketlm.interop.onnx_files import TEXT_CLASSIFICATION


@dataclass(frozen=True)
class OnnxClassifierConfig:
    """What engine/classify.Classifier reads off a model's config."""

    labels: tuple[str, ...]
    max_seq_len: int
    vocab_size: int


class OnnxClassifierModel:
    """A classifier graph behind the torch classifier's call: logits (B, n_labels) float32."""

    def __init__(self, directory: str | Path, *, threads: int = 0) -> None:
        """threads: onnxruntime's intra-op threads (0: its default, every core)."""
        self.directory = Path(directory)
        config = read_onnx_config(self.directory)
        if config["task"] != TEXT_CLASSIFICATION:
            raise ConfigError(
                f"{self.directory} holds a {config['task']} graph, not a classifier: generate "
                "text with it (pocketlm generate --model ...)"
            )
        self.config = OnnxClassifierConfig(
            tuple(config["labels"]), int(config["context_length"]), int(config["vocab_size"])
        )
        self.session = onnx_session(self.directory, threads)
        self._types = "token_type_ids" in [i.name for i in self.session.get_inputs()]

    def eval(self) -> OnnxClassifierModel:
        """Itself (the graph always runs as in evaluation)."""
        return self

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids, attention_mask (B, T) -> logits (B, n_labels), as a CPU tensor."""
        ids = input_ids.cpu().numpy().astype(np.int64)
        feeds = {"input_ids": ids, "attention_mask": attention_mask.cpu().numpy().astype(np.int64)}
        if self._types:
            feeds["token_type_ids"] = np.zeros_like(ids)
        return torch.from_numpy(self.session.run(["logits"], feeds)[0])
