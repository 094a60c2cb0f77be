"""A teacher's top-k log-probabilities per position of a token split, stored so that a student
trains without running the teacher (`pocketlm distill cache`); numpy only.

A cache directory (manifest kind "teacher_cache"):

    train-00000.ids.npy       (windows, ctx, k) uint16 (vocabulary <= 65,536) or uint32:
                              the teacher's k most likely next tokens, most likely first
    train-00000.logprobs.npy  (windows, ctx, k) float16: their log-probabilities (temperature 1)
    tokenizer/                the teacher's tokenizer files (a student made from the cache
                              carries them)

A cache of one pass: window j of the split is tokens[j * ctx : j * ctx + ctx + 1], exactly the
window j the student's loader reads without its per-epoch shift (data/loader.BatchLoader(
shift=False)); its row t holds the teacher's top-k for the token after input t, computed from
inputs 0..t of that window, as the student sees them. A cache of P passes holds P copies of the
split's windows, pass p shifted by p * ctx // P tokens (window_starts): a student reads pass
e mod P in its epoch e, so over several epochs it sees the tokens at different positions as a
live-teacher run does (whose windows move by a random offset each epoch), not the same windows
again. Cache window i is window i mod W of pass i // W (W windows a pass); shard s holds cache
windows s * shard_windows onwards.
At k = 32 and a vocabulary up to 65,536 a position costs k * (2 + 2) = 128 bytes (plus the .npy
headers, amortised over a shard): the token ids themselves are read from the tokens artifact.

While the cache is written it lives in a hidden sibling `.NAME.partial/`: each shard is
written to a temporary file and renamed into place, then `progress.json` records it, so a
killed run loses at most the shard it was computing and a re-run with the same settings
continues there. The finished cache is committed like every artifact (common.manifest).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pocketlm.common.errors import ArtifactError, InputError
from pocketlm.common.manifest import ArtifactWriter, read_manifest, write_json_atomic
from pocketlm.data.loader import BatchLoader
from pocketlm.data.token_shards import TokenSplit

CACHE_KIND = "teacher_cache"
SETTINGS_FILE = "settings.json"
PROGRESS_FILE = "progress.json"
TOKENIZER_DIR = "tokenizer"


def id_dtype(vocab_size: int) -> np.dtype:
    """The narrowest unsigned integer holding every token id of the vocabulary."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def pass_windows(split_tokens: int, ctx: int, passes: int) -> int:
    """Windows W of each pass: window W - 1 of the most shifted pass still has its ctx + 1
    tokens."""
    return (split_tokens - 1 - (passes - 1) * ctx // passes) // ctx


def window_starts(windows: np.ndarray, per_pass: int, ctx: int, passes: int) -> np.ndarray:
    """First token of each cache window (n,): window i is window i mod W of pass i // W, which
    starts at (i mod W) * ctx + (i // W) * ctx // passes."""
    passes_of, j = np.divmod(np.asarray(windows, dtype=np.int64), per_pass)
    return j * ctx + passes_of * ctx // passes


def shard_names(split: str, index: int) -> tuple[str, str]:
    """(ids file, log-probs file) of shard `index`."""
    stem = f"{split}-{index:05d}"
    return f"{stem}.ids.npy", f"{stem}.logprobs.npy"


def partial_dir(out: Path) -> Path:
    """Where an unfinished cache for `out` lives."""
    return out.parent / f".{out.name}.partial"


class CacheWriter:
    """Writes a cache's shards atomically into its partial directory and commits it at the end;
    a new writer with the same settings resumes after the last shard recorded as done."""

    def __init__(self, out: str | Path, settings: dict[str, Any], *, overwrite: bool = False):
        self.out = Path(out)
        self.settings = json.loads(json.dumps(settings))  # as it reads back from JSON
        self.overwrite = overwrite
        if (self.out / "manifest.json").is_file() and not overwrite:
            raise ArtifactError(
                f"{self.out} already holds a finished cache; choose another --out or pass --overwrite"
            )
        self.partial = partial_dir(self.out)
        self.done = 0
        if self.partial.is_dir():
            self.done = self._resume_point()
        if not self.done:
            shutil.rmtree(self.partial, ignore_errors=True)
            self.partial.mkdir(parents=True)
            write_json_atomic(self.partial / SETTINGS_FILE, self.settings)
            write_json_atomic(self.partial / PROGRESS_FILE, {"shards_done": 0})

    def _resume_point(self) -> int:
        """Shards already done in the partial directory (0: start over)."""
        try:
            settings = json.loads((self.partial / SETTINGS_FILE).read_text(encoding="utf-8"))
            progress = json.loads((self.partial / PROGRESS_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return 0
        if settings != self.settings:
            if self.overwrite:
                return 0
            changed = sorted(
                k for k in {*settings, *self.settings} if settings.get(k) != self.settings.get(k)
            )
            raise ArtifactError(
                f"{self.partial} holds an unfinished cache made with other settings "
                f"({', '.join(changed)} differ); re-run with the same ones to continue it, or "
                "pass --overwrite to start over"
            )
        return int(progress.get("shards_done", 0))

    def write_shard(self, index: int, ids: np.ndarray, logprobs: np.ndarray) -> None:
        """Store shard `index` (ids (windows, ctx, k), log-probs the same shape) and record it
        done; shards are written in order."""
        if index != self.done:
            raise ValueError(f"shard {index} written out of order (next is {self.done})")
        split = self.settings["split"]
        for name, array in zip(shard_names(split, index), (ids, logprobs), strict=True):
            _save_atomic(self.partial / name, array)
        self.done = index + 1
        write_json_atomic(self.partial / PROGRESS_FILE, {"shards_done": self.done})

    def commit(
        self,
        tokenizer_files: Sequence[Path],
        *,
        parents: Sequence[dict],
        summary: dict[str, Any],
        command: Sequence[str] | None,
    ) -> Path:
        """Move the shards and the tokenizer files into the finished artifact `out`."""
        with ArtifactWriter(
            self.out, CACHE_KIND, config=self.settings, parents=parents, command=command,
            overwrite=self.overwrite,
        ) as art:  # fmt: skip
            for index in range(self.done):
                for name in shard_names(self.settings["split"], index):
                    os.replace(self.partial / name, art.path(name))
            for f in tokenizer_files:
                shutil.copyfile(f, art.path(f"{TOKENIZER_DIR}/{f.name}"))
            path = art.commit(summary)
        shutil.rmtree(self.partial, ignore_errors=True)
        return path


def _save_atomic(path: Path, array: np.ndarray) -> None:
    """np.save through a temporary file and a rename: a reader never sees half a shard."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        np.save(fh, np.ascontiguousarray(array), allow_pickle=False)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class TeacherCache:
    """A finished cache opened for reading (shards memory-mapped on first use)."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.manifest = read_manifest(self.directory, kind=CACHE_KIND)
        c = self.manifest["config"]
        self.split: str = c["split"]
        self.ctx: int = c["ctx"]
        self.top_k: int = c["top_k"]
        self.vocab_size: int = c["vocab_size"]
        self.num_windows: int = c["num_windows"]  # over all passes
        self.passes: int = c.get("passes", 1)  # caches made before passes existed hold one
        self.pass_windows: int = c.get("pass_windows", self.num_windows)
        self.shard_windows: int = c["shard_windows"]
        self.tokens: dict[str, Any] = c["tokens"]  # path + sha256 of the tokens' manifest
        self.teacher: dict[str, Any] = c["teacher"]
        self.tokenizer_fingerprint: str = c["tokenizer_fingerprint"]
        self._shards: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        shards = -(-self.num_windows // self.shard_windows)
        for index in range(shards):
            for name in shard_names(self.split, index):
                if not (self.directory / name).is_file():
                    raise ArtifactError(
                        f"{self.directory / name}: missing; re-run `pocketlm distill cache`"
                    )

    @property
    def tokenizer_dir(self) -> Path:
        return self.directory / TOKENIZER_DIR

    def _shard(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if index not in self._shards:
            arrays = []
            for name in shard_names(self.split, index):
                array = np.load(self.directory / name, mmap_mode="r", allow_pickle=False)
                windows = min(self.shard_windows, self.num_windows - index * self.shard_windows)
                if array.shape != (windows, self.ctx, self.top_k):
                    raise ArtifactError(
                        f"{self.directory / name}: shape {array.shape}, expected "
                        f"{(windows, self.ctx, self.top_k)}; the cache is corrupt"
                    )
                arrays.append(array)
            self._shards[index] = (arrays[0], arrays[1])
        return self._shards[index]

    def rows(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The cached top-k of windows (n,): (ids (n, ctx, k) int64, log-probs (n, ctx, k) float16)."""
        windows = np.asarray(windows, dtype=np.int64)
        if windows.size and (windows.min() < 0 or windows.max() >= self.num_windows):
            raise InputError(f"window outside the cache's {self.num_windows} windows")
        ids = np.empty((len(windows), self.ctx, self.top_k), dtype=np.int64)
        logprobs = np.empty((len(windows), self.ctx, self.top_k), dtype=np.float16)
        shards, rows = np.divmod(windows, self.shard_windows)
        for shard in np.unique(shards):
            sel = shards == shard
            shard_ids, shard_lp = self._shard(int(shard))
            ids[sel] = shard_ids[rows[sel]]
            logprobs[sel] = shard_lp[rows[sel]]
        return ids, logprobs


class CachedBatches:
    """Resumable micro-batches of the cached windows for one rank: the student's windows
    (inputs, targets) and the teacher's top-k at each of their positions, aligned by window;
    epoch e reads pass e mod P of a cache of P passes."""

    def __init__(
        self,
        cache: TeacherCache,
        split: TokenSplit,
        batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.cache = cache
        self.loader = BatchLoader(
            split, batch_size, cache.ctx, seed=seed, rank=rank, world_size=world_size,
            shift=False, max_windows=cache.pass_windows,
        )  # fmt: skip
        if self.loader.num_windows != cache.pass_windows:
            raise InputError(
                f"the {split.name} split holds {self.loader.num_windows} windows of {cache.ctx} "
                f"tokens but the cache {cache.directory} has {cache.pass_windows} a pass: the "
                "tokens changed since the cache was made"
            )
        self._offsets = np.arange(cache.ctx + 1, dtype=np.int64)

    def batch_at(self, consumed: int) -> dict[str, np.ndarray]:
        """This rank's micro-batch after `consumed` windows: input_ids, targets (B, ctx) and
        teacher_ids, teacher_logprobs (B, ctx, k)."""
        loader, cache = self.loader, self.cache
        first = consumed + loader.rank * loader.batch_size
        counters = first + np.arange(loader.batch_size, dtype=np.int64)  # (B,) global counters
        passes_of = (counters // loader.num_windows) % cache.passes  # (B,) epoch e: pass e mod P
        windows = (
            passes_of * cache.pass_windows
            + loader.starts_at(first, loader.batch_size) // loader.ctx
        )
        starts = window_starts(windows, cache.pass_windows, cache.ctx, cache.passes)  # (B,)
        rows = np.asarray(
            loader.split.tokens[starts[:, None] + self._offsets[None, :]], dtype=np.int64
        )  # (B, ctx+1)
        inputs, targets = rows[:, :-1], rows[:, 1:]
        ids, logprobs = cache.rows(windows)
        return {"input_ids": inputs, "targets": targets, "teacher_ids": ids,
                "teacher_logprobs": logprobs}  # fmt: skip

    def __iter__(self) -> CachedBatches:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = self.batch_at(self.loader.consumed)
        self.loader.consumed += self.loader.windows_per_batch
        return batch

    def state_dict(self) -> dict[str, Any]:
        """The loader's position (windows dealt out)."""
        return self.loader.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the position (the same cache and seed)."""
        self.loader.load_state_dict(state)
