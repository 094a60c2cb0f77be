"""Batched inference of a sequence classifier: texts (or token ids) in, per input the label and
the probability of every label out.

`open_classifier` opens a classifier model directory (a model artifact, a training run, or a
Hugging Face *ForSequenceClassification folder, imported once by interop.open_model), or a base
with a classifier's LoRA adapter, on the torch backend (the native engine runs language models);
or an `export onnx` directory of a classifier in onnxruntime (engine/onnx_classifier.py).
`Classifier.predict` sorts the inputs by length so that a batch holds similar lengths (little
padding), pads them on the right (the attention mask decides, so any pad id works) and returns
the predictions in input order. Texts are encoded as transformers' tokenizer(text) does
(Tokenizer.encode_inputs) and cut to the context, keeping their first tokens, as training does.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pocketlm.common.cpu_load import free_cores, runnable_others
from pocketlm.common.device import usable_cores
from pocketlm.common.errors import ConfigError, InputError
from pocketlm.tokenizer.tokenizer import Tokenizer

THREADS_RECHECK_S = 2.0  # how often a classifier looks again at what other programs use


@dataclass(frozen=True)
class Prediction:
    """One input's class: its label, every label's probability (the model's label order), the
    tokens it was classified by, and whether it was cut to the context."""

    label: str
    probabilities: dict[str, float]
    tokens: int
    truncated: bool = False


class Classifier:
    """A classifier model on a device with its tokenizer, classifying batches of inputs."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Tokenizer,
        *,
        device: torch.device,
        dtype: torch.dtype | None = None,
        max_len: int | None = None,
        threads: int = 0,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        config = model.config
        if not config.labels:
            raise ConfigError("the model is a language model, not a classifier (it has no labels)")
        if max_len is not None and not 1 <= max_len <= config.max_seq_len:
            raise ConfigError(f"max_len must be in 1..{config.max_seq_len}, got {max_len}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = device
        self.dtype = dtype
        self.labels: tuple[str, ...] = config.labels
        self.context_length: int = max_len or config.max_seq_len
        self.vocab_size: int = config.vocab_size
        ids = (tokenizer.pad_id, tokenizer.eos_id)
        self.pad_id = next((i for i in ids if i is not None), 0)  # any id: the mask decides
        self.threads = threads  # CPU threads of a forward; 0: the cores others leave free
        self._now, self._free, self._checked = now, 1, -float("inf")

    def _cpu_threads(self) -> int:
        """Threads for the next forward on the CPU: as asked, or the cores other programs leave
        free, measured again at most every THREADS_RECHECK_S (a thread sharing a taken core
        makes every matmul wait for it: 790 ms instead of 21 ms a text at load 6 on 2 cores)."""
        if self.threads:
            return self.threads
        if self._now() - self._checked >= THREADS_RECHECK_S:
            self._free = free_cores(runnable_others(), usable_cores())
            self._checked = self._now()
        return self._free

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of texts as the classifier takes them (not cut to the context)."""
        return self.tokenizer.encode_inputs(texts)

    def prepare(self, inputs: Sequence[str] | Sequence[Sequence[int]]) -> list[list[int]]:
        """Token ids of texts or token lists, cut to the context; InputError naming an input
        with no tokens or an id outside the vocabulary."""
        if not inputs:
            return []
        if all(isinstance(x, str) for x in inputs):
            encoded = self.encode(inputs)  # type: ignore[arg-type]
        elif any(isinstance(x, str) for x in inputs):
            raise InputError("give texts or token id lists, not both")
        else:
            encoded = [[int(i) for i in ids] for ids in inputs]
        for n, ids in enumerate(encoded):
            if not ids:
                raise InputError(f"input {n} has no tokens: there is nothing to classify")
            bad = next((i for i in ids if not 0 <= i < self.vocab_size), None)
            if bad is not None:
                raise InputError(f"input {n}: token id {bad} is outside the vocabulary")
        return encoded

    @torch.no_grad()
    def logits(self, token_lists: Sequence[Sequence[int]], batch_size: int = 32) -> np.ndarray:
        """(N, n_labels) float32 logits of token lists (each cut to the context), in input
        order; batches of similar lengths."""
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        out = np.zeros((len(token_lists), len(self.labels)), dtype=np.float32)
        order = sorted(range(len(token_lists)), key=lambda i: -len(token_lists[i]))
        if self.device.type == "cpu":
            torch.set_num_threads(self._cpu_threads())
        for first in range(0, len(order), batch_size):
            rows = order[first : first + batch_size]
            seqs = [list(token_lists[i][: self.context_length]) for i in rows]
            longest = len(seqs[0])  # sorted longest first
            ids = torch.full((len(seqs), longest), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(seqs), longest), dtype=torch.bool)
            for r, seq in enumerate(seqs):
                ids[r, : len(seq)] = torch.tensor(seq, dtype=torch.long)
                mask[r, : len(seq)] = True
            logits = self.model(ids.to(self.device), attention_mask=mask.to(self.device))
            out[rows] = logits.float().cpu().numpy()
        return out

    def predict(
        self, inputs: Sequence[str] | Sequence[Sequence[int]], batch_size: int = 32
    ) -> list[Prediction]:
        """Per input (texts or token id lists), in input order: its label and probabilities."""
        encoded = self.prepare(inputs)
        probs = softmax(self.logits(encoded, batch_size))  # (N, n_labels)
        return [
            Prediction(
                self.labels[int(p.argmax())],
                {label: float(v) for label, v in zip(self.labels, p, strict=True)},
                min(len(ids), self.context_length),
                len(ids) > self.context_length,
            )
            for p, ids in zip(probs, encoded, strict=True)
        ]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax, computed in float64 (the probabilities of a row sum to 1)."""
    shifted = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def open_classifier(
    model: str | Path,
    *,
    adapter: str | Path | None = None,
    device: str = "auto",
    precision: str = "auto",
    max_len: int | None = None,
    threads: int = 0,
) -> Classifier:
    """A Classifier for a classifier model (dir, training run or HF folder, or an `export onnx`
    directory of one, run in onnxruntime on the CPU), or for a base with a classifier's LoRA
    adapter (`adapter`), on the resolved device and precision."""
    from pocketlm.engine.exported import ONNX, exported_format

    if exported_format(model) == ONNX:
        return _open_onnx(Path(model), adapter, device, precision, max_len, threads)
    from pocketlm.checkpoint.model_io import load_model
    from pocketlm.common.device import resolve_device, resolve_precision, torch_dtype
    from pocketlm.interop.open_model import model_dir

    directory = model_dir(model)
    dev = resolve_device(device)
    dtype = torch_dtype(resolve_precision(precision, dev))
    if adapter is not None:
        from pocketlm.checkpoint.adapted_model import load_adapted_model

        loaded = load_adapted_model(directory, adapter, device=dev, dtype=dtype)
    else:
        loaded = load_model(directory, device=dev, dtype=dtype)
    if not loaded.config.labels:
        what = f"{directory} with the adapter {adapter}" if adapter is not None else directory
        raise ConfigError(
            f"{what} is a language model, not a classifier: train one with `pocketlm classify "
            "train`, or generate text with it"
        )
    return Classifier(
        loaded.model, loaded.tokenizer, device=dev, dtype=dtype, max_len=max_len, threads=threads
    )


def _open_onnx(
    directory: Path,
    adapter: str | Path | None,
    device: str,
    precision: str,
    max_len: int | None,
    threads: int,
) -> Classifier:
    """A Classifier over an exported classifier graph; ConfigError for what it cannot take."""
    from pocketlm.engine.onnx_classifier import OnnxClassifierModel

    if adapter is not None:
        raise ConfigError("an exported onnx classifier runs without adapters: merge the adapter and export again")  # fmt: skip
    if device.strip().lower() not in ("auto", "cpu") or precision not in ("auto", "fp32"):
        raise ConfigError(
            "an exported onnx classifier runs on the CPU in the precision it was exported with: "
            "leave --device and --precision at auto"
        )
    model = OnnxClassifierModel(directory, threads=threads)
    tokenizer = Tokenizer.load(directory)
    # threads: onnxruntime's own pool, sized at load; torch's is not used
    return Classifier(model, tokenizer, device=torch.device("cpu"), max_len=max_len, threads=threads or 1)  # fmt: skip
