"""Read a tokens artifact: memory-mapped token arrays and document offsets per split."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pocketlm.common.errors import ArtifactError, InputError
from pocketlm.common.manifest import read_manifest


@dataclass(frozen=True)
class TokenSplit:
    """One split: `tokens` (memmap, uint16/uint32) and `doc_starts` (uint64 offsets)."""

    name: str
    tokens: np.ndarray
    doc_starts: np.ndarray
    bytes_per_token: float

    def __len__(self) -> int:
        return int(self.tokens.shape[0])


class TokenShards:
    """A tokens artifact opened for reading (nothing is loaded into memory)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.manifest = read_manifest(self.directory, kind="tokens")
        summary = self.manifest["summary"]
        self.vocab_size: int = summary["vocab_size"]
        self.tokenizer_fingerprint: str = summary["tokenizer_fingerprint"]
        self.bytes_per_token: float = summary["bytes_per_token"]
        self.dtype = np.dtype(summary["dtype"])
        self.bos_id: int = summary["bos_id"]
        self.eos_id: int = summary["eos_id"]
        self._splits: dict[str, TokenSplit] = {}

    @property
    def tokenizer_dir(self) -> Path:
        return self.directory / "tokenizer"

    def split(self, name: str) -> TokenSplit:
        """Open split 'train' or 'val' (memory-mapped)."""
        if name not in self._splits:
            info = self.manifest["summary"]["splits"].get(name)
            if info is None:
                raise ArtifactError(f"{self.directory}: no split {name!r}")
            bin_path = self.directory / f"{name}.bin"
            idx_path = self.directory / f"{name}.idx"
            expected = info["tokens"] * self.dtype.itemsize
            if not bin_path.is_file() or bin_path.stat().st_size != expected:
                raise ArtifactError(
                    f"{bin_path}: missing or truncated (expected {expected} bytes); re-run `pocketlm data encode`"
                )
            tokens = (
                np.memmap(bin_path, dtype=self.dtype, mode="r")
                if expected
                else np.zeros(0, dtype=self.dtype)
            )
            idx_bytes = idx_path.stat().st_size if idx_path.is_file() else 0
            starts = (
                np.memmap(idx_path, dtype=np.uint64, mode="r")
                if idx_bytes
                else np.zeros(0, dtype=np.uint64)
            )
            self._splits[name] = TokenSplit(
                name, tokens, starts, info.get("bytes_per_token") or self.bytes_per_token
            )
        return self._splits[name]

    def has_split(self, name: str) -> bool:
        """True when the split exists and holds tokens."""
        return self.manifest["summary"]["splits"].get(name, {}).get("tokens", 0) > 0

    def check_tokenizer(self, fingerprint: str, vocab_size: int, what: str) -> None:
        """Refuse token data made by another tokenizer than the model's."""
        if fingerprint != self.tokenizer_fingerprint or vocab_size < self.vocab_size:
            raise InputError(
                f"{self.directory} was encoded with tokenizer {self.tokenizer_fingerprint} "
                f"(vocab {self.vocab_size}), but {what} uses tokenizer {fingerprint} (vocab {vocab_size})",
                hint="re-encode the corpus with the model's tokenizer: pocketlm data encode --tokenizer MODEL_DIR",
            )
