from __future__ import annotations

import numpy as np
import pytest

from pocketlm.common.errors import InputError
from pocketlm.common.manifest import read_manifest
from pocketlm.data.loader import BatchLoader, eval_windows
from pocketlm.data.token_shards import TokenShards
from pocketlm.tokenizer.tokenizer import Tokenizer


def test_token_shards_hold_documents_between_bos_and_eos(synthetic_pipeline):
    shards = TokenShards(synthetic_pipeline["tokens"])
    tok = Tokenizer.load(shards.tokenizer_dir)
    train = shards.split("train")
    assert train.tokens.dtype == np.uint16 and shards.dtype == np.uint16
    starts = train.doc_starts
    assert starts[0] == 0 and np.all(np.diff(starts.astype(np.int64)) > 0)
    assert np.all(train.tokens[starts.astype(np.int64)] == tok.bos_id)
    ends = np.append(starts[1:].astype(np.int64), len(train)) - 1
    assert np.all(train.tokens[ends] == tok.eos_id)
    first_doc = tok.decode(train.tokens[1 : int(starts[1]) - 1])
    import pyarrow.parquet as pq

    from pocketlm.common.doc_shards import shard_paths

    first_text = (
        pq.read_table(shard_paths(synthetic_pipeline["corpus"], "train")[0])
        .column("text")[0]
        .as_py()
    )
    assert first_doc == first_text


def test_bytes_per_token_recorded(synthetic_pipeline):
    s = read_manifest(synthetic_pipeline["tokens"])["summary"]
    assert s["bytes_per_token"] == s["splits"]["val"]["bytes_per_token"] > 1.0
    assert s["splits"]["val"]["tokens"] > 0 and s["tokenizer_fingerprint"]


def test_loader_is_a_pure_function_of_step_and_resumes_exactly(synthetic_pipeline):
    split = TokenShards(synthetic_pipeline["tokens"]).split("train")
    a = BatchLoader(split, batch_size=4, ctx=32, seed=3)
    first = [next(a) for _ in range(7)]
    state = a.state_dict()
    rest = [next(a) for _ in range(5)]
    b = BatchLoader(split, batch_size=4, ctx=32, seed=3)
    b.load_state_dict(state)
    again = [next(b) for _ in range(5)]
    for (x1, y1), (x2, y2) in zip(rest, again):
        assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    x, y = first[0]
    assert x.shape == (4, 32) and x.dtype == np.int64 and np.array_equal(x[:, 1:], y[:, :-1])
    with pytest.raises(InputError, match="batch_size was 4, now 8"):
        BatchLoader(split, batch_size=8, ctx=32, seed=3).load_state_dict(state)


def test_ranks_see_disjoint_windows_and_an_epoch_covers_everything(synthetic_pipeline):
    split = TokenShards(synthetic_pipeline["tokens"]).split("train")
    ctx = 16
    loaders = [
        BatchLoader(split, batch_size=2, ctx=ctx, seed=1, rank=r, world_size=2) for r in range(2)
    ]
    n = loaders[0].num_windows
    seen = []
    for _ in range(n // 4):
        for ld in loaders:
            x, _ = next(ld)
            seen.extend(x[:, 0].tolist())
    starts = set()
    for ld in loaders:
        for step in range(n // 4):
            first = (step * 2 + ld.rank) * 2
            for k in range(first, first + 2):
                starts.add(int(ld._perm(0)[0][k]))
    assert len(starts) == (n // 4) * 4  # no window twice within the epoch


def test_loader_refuses_too_little_data(synthetic_pipeline):
    split = TokenShards(synthetic_pipeline["tokens"]).split("val")
    with pytest.raises(InputError, match="fewer than one window"):
        BatchLoader(split, batch_size=1, ctx=len(split) + 5)


def test_eval_windows_are_deterministic(synthetic_pipeline):
    split = TokenShards(synthetic_pipeline["tokens"]).split("val")
    a = [x.copy() for x, _ in eval_windows(split, 3, 16, 200)]
    b = [x.copy() for x, _ in eval_windows(split, 3, 16, 200)]
    assert len(a) > 0 and all(np.array_equal(p, q) for p, q in zip(a, b))


def test_truncated_token_file_is_detected(synthetic_pipeline, tmp_path):
    import shutil

    from pocketlm.common.errors import ArtifactError

    copy = tmp_path / "tokens"
    shutil.copytree(synthetic_pipeline["tokens"], copy)
    with open(copy / "train.bin", "r+b") as fh:
        fh.truncate(100)
    with pytest.raises(ArtifactError, match="missing or truncated"):
        TokenShards(copy).split("train")
