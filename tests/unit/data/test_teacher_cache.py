"""The teacher cache's files without a teacher: the student loader's unshifted windows start at
multiples of ctx (what the cache is indexed by), shards are written in order and atomically,
and a cache with a missing or misshapen shard is refused by name."""

from __future__ import annotations

import numpy as np
import pytest

from pocketlm.common.errors import ArtifactError
from pocketlm.data.loader import BatchLoader
from pocketlm.data.teacher_cache import (
    CacheWriter,
    TeacherCache,
    partial_dir,
    pass_windows,
    shard_names,
    window_starts,
)
from pocketlm.data.token_shards import TokenSplit

SETTINGS = {
    "split": "train", "ctx": 4, "top_k": 2, "vocab_size": 50, "num_windows": 5,
    "shard_windows": 2, "tokens": {"path": "t", "sha256": "x"}, "teacher": {"path": "m"},
    "tokenizer_fingerprint": "f",
}  # fmt: skip


def _split(n: int) -> TokenSplit:
    return TokenSplit("train", np.arange(n, dtype=np.uint16), np.zeros(1, np.uint64), 1.0)


def test_unshifted_windows_start_at_multiples_of_ctx_in_every_epoch():
    loader = BatchLoader(_split(41), 3, 4, seed=1, shift=False, max_windows=7)
    assert loader.num_windows == 7
    starts = loader.starts_at(0, 21)  # three epochs
    assert set(starts % 4) == {0} and sorted(starts[:7] // 4) == list(range(7))
    inputs, targets = loader.windows_at(0, 3)
    assert np.array_equal(inputs[:, 0], starts[:3]) and np.array_equal(targets, inputs + 1)
    assert set(BatchLoader(_split(41), 3, 4, seed=1).starts_at(0, 30) % 4) != {0}  # shifted


@pytest.mark.parametrize("n_tokens", [41, 42, 44, 45, 200])
@pytest.mark.parametrize("passes", [1, 2, 3, 4])
def test_passes_shift_the_windows_and_every_window_fits(n_tokens, passes):
    ctx = 4
    per_pass = pass_windows(n_tokens, ctx, passes)
    starts = window_starts(np.arange(per_pass * passes), per_pass, ctx, passes)
    assert starts.max() + ctx + 1 <= n_tokens  # the last window of the last pass fits
    last_pass = starts[(passes - 1) * per_pass :]
    assert last_pass.max() + ctx + ctx + 1 > n_tokens  # one more window would not
    for p in range(passes):  # pass p: W windows ctx apart, shifted by p * ctx // passes
        mine = starts[p * per_pass : (p + 1) * per_pass]
        assert np.array_equal(mine, np.arange(per_pass) * ctx + p * ctx // passes)
    if passes == 1:
        assert per_pass == (n_tokens - 1) // ctx  # one pass: the unshifted loader's windows


def _shard(windows: int, fill: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.full((windows, 4, 2), fill, dtype=np.uint16)
    return ids, np.full((windows, 4, 2), -1.0, dtype=np.float16)


def _finished(tmp_path) -> TeacherCache:
    writer = CacheWriter(tmp_path / "cache", SETTINGS)
    for index, windows in enumerate((2, 2, 1)):
        writer.write_shard(index, *_shard(windows, index))
    writer.commit([], parents=[], summary={}, command=None)
    return TeacherCache(tmp_path / "cache")


def test_rows_come_from_their_shards(tmp_path):
    cache = _finished(tmp_path)
    ids, logprobs = cache.rows(np.array([4, 0, 3]))
    assert ids[:, 0, 0].tolist() == [2, 0, 1] and ids.dtype == np.int64
    assert logprobs.dtype == np.float16 and not partial_dir(tmp_path / "cache").exists()


def test_shards_are_written_in_order_and_a_rerun_continues(tmp_path):
    writer = CacheWriter(tmp_path / "cache", SETTINGS)
    with pytest.raises(ValueError, match="out of order"):
        writer.write_shard(1, *_shard(2, 0))
    writer.write_shard(0, *_shard(2, 0))
    assert not list(partial_dir(tmp_path / "cache").glob(".*tmp*"))  # renamed into place
    assert CacheWriter(tmp_path / "cache", SETTINGS).done == 1


def test_a_missing_or_misshapen_shard_is_refused(tmp_path):
    cache = _finished(tmp_path)
    ids_file = cache.directory / shard_names("train", 1)[0]
    np.save(ids_file, np.zeros((3, 4, 2), dtype=np.uint16))
    with pytest.raises(ArtifactError, match="shape"):
        TeacherCache(cache.directory).rows(np.array([2]))
    ids_file.unlink()
    with pytest.raises(ArtifactError, match="missing"):
        TeacherCache(cache.directory)
