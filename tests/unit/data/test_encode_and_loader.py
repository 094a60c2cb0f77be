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


def test_loader_resumes_exactly_and_refuses_another_data_order(synthetic_pipeline):
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
    with pytest.raises(InputError, match="seed was 3, now 4"):
        BatchLoader(split, batch_size=4, ctx=32, seed=4).load_state_dict(state)
    with pytest.raises(InputError, match="ctx was 32, now 16"):
        BatchLoader(split, batch_size=4, ctx=16, seed=3).load_state_dict(state)


def _step_windows(loaders, micro_batches):
    """The windows one optimizer step reads over all ranks and micro-batches, sorted."""
    rows = []
    for _ in range(micro_batches):
        for ld in loaders:
            x, _ = next(ld)
            rows.extend(map(tuple, x.tolist()))
    return sorted(rows)


def test_a_step_reads_the_same_windows_however_the_global_batch_is_split(synthetic_pipeline):
    """8 sequences a step: 2 ranks x 4, 1 rank x 8, or 1 rank x 4 x 2 micro-batches; a resume
    may switch between them."""
    split = TokenShards(synthetic_pipeline["tokens"]).split("train")

    def ranks(world, batch):
        return [
            BatchLoader(split, batch, 16, seed=1, rank=r, world_size=world) for r in range(world)
        ]

    two, one, accum = ranks(2, 4), ranks(1, 8), ranks(1, 4)
    for _ in range(3):
        a, b, c = _step_windows(two, 1), _step_windows(one, 1), _step_windows(accum, 2)
        assert a == b == c and len(set(a)) == 8
    # resume the two-rank run on one rank with the same global batch: the same next step
    resumed = ranks(1, 8)
    resumed[0].load_state_dict(two[0].state_dict())
    assert _step_windows(resumed, 1) == _step_windows(two, 1)


def test_ranks_see_disjoint_windows_within_an_epoch(synthetic_pipeline):
    split = TokenShards(synthetic_pipeline["tokens"]).split("train")
    loaders = [BatchLoader(split, 2, 16, seed=1, rank=r, world_size=2) for r in range(2)]
    n = loaders[0].num_windows
    seen = _step_windows(loaders, n // 4)  # 4 windows a step: n // 4 steps fit in one epoch
    assert len(set(seen)) == len(seen) == (n // 4) * 4  # no window twice within the epoch


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


def test_an_imported_models_tokenizer_encodes_a_corpus_by_its_own_bos_rule(
    synthetic_pipeline, tmp_path
):
    """A Qwen-style tokenizer (no bos) separates documents with its eos only; the tokens carry
    its template and end ids, and the imported model evaluates on them."""
    import shutil

    import numpy as np

    from pocketlm.data.encode import encode_corpus
    from pocketlm.data.token_shards import TokenShards
    from pocketlm.evals.evaluate import evaluate_model
    from pocketlm.interop.hf_import import import_hf
    from tests.unit.interop.hf_families import build_hf_model
    from tests.unit.tokenizer.hf_folders import write_folder

    folder = tmp_path / "qwen"
    build_hf_model("qwen2").save_pretrained(folder)
    for f in write_folder("qwen2_5", tmp_path / "tok", "jinja").iterdir():
        shutil.copyfile(f, folder / f.name)
    model_dir = import_hf(folder, tmp_path / "imported")
    tokens = encode_corpus(synthetic_pipeline["corpus"], model_dir, tmp_path / "tokens")
    shards = TokenShards(tokens)
    assert shards.manifest["summary"]["add_bos"] is False and shards.bos_id is None
    assert (tokens / "tokenizer" / "chat_template.jinja").is_file()
    stream = np.fromfile(tokens / "train.bin", dtype=shards.dtype)
    docs = shards.manifest["summary"]["splits"]["train"]["docs"]
    assert (stream == shards.manifest["summary"]["eos_id"]).sum() >= docs
    result = evaluate_model(model_dir, tokens)
    assert np.isfinite(result["loss"]) and result["bpb"] > 0
