"""On-policy batches: exactly the asked share, evenly spread and resumable; the sampler's rows
are prompt + the model's own samples (repeatable by seed), end at a stop id, and mark the
positions sampled from."""

from __future__ import annotations

import itertools

import pytest
import torch

from pocketlm.model.config import ModelConfig
from pocketlm.model.transformer import build_model
from pocketlm.train.on_policy import OnPolicyBatches, SampleRequest, is_on_policy, sample_rows

CPU = torch.device("cpu")


@pytest.mark.parametrize("fraction", [0.0, 0.25, 1 / 3, 0.5, 1.0])
def test_the_share_of_sampled_batches_is_exact_and_spread(fraction):
    turns = [is_on_policy(n, fraction) for n in range(120)]
    assert sum(turns) == round(120 * fraction)
    assert sum(turns[:12]) == round(12 * fraction)  # spread, not bunched


class Counter:
    def __init__(self) -> None:
        self.n = 0

    def __next__(self) -> int:
        self.n += 1
        return self.n

    def state_dict(self) -> dict:
        return {"n": self.n}

    def load_state_dict(self, state: dict) -> None:
        self.n = state["n"]


def test_on_policy_batches_resume_where_they_stopped():
    def make() -> OnPolicyBatches:
        return OnPolicyBatches(Counter(), 0.5, lambda n: SampleRequest([[1]], n, 4))

    whole = make()
    expected = [b if isinstance(b, int) else b.seed for b in itertools.islice(whole, 10)]
    first = make()
    seen = [b if isinstance(b, int) else b.seed for b in itertools.islice(first, 5)]
    second = make()
    second.load_state_dict(first.state_dict())
    seen += [b if isinstance(b, int) else b.seed for b in itertools.islice(second, 5)]
    assert seen == expected


@pytest.fixture(scope="module")
def model():
    config = ModelConfig(vocab_size=64, dim=16, n_layers=1, n_heads=2, n_kv_heads=1, max_seq_len=32)
    return build_model(config, seed=0)


def test_rows_are_prompts_continued_by_the_models_samples(model):
    request = SampleRequest([[1, 2, 3], [4, 5, 6], [7, 8]], seed=11, length=12)
    ids, sampled = sample_rows(model, request, CPU)
    again, _ = sample_rows(model, request, CPU)
    assert torch.equal(ids, again)  # the seed makes them repeatable
    assert (
        ids.shape == (3, 12) and ids[0, :3].tolist() == [1, 2, 3] and ids[2, :2].tolist() == [7, 8]
    )
    assert sampled[0].tolist() == [False, False] + [True] * 9 + [False]
    assert sampled[2].tolist() == [False] + [True] * 10 + [False]
    other, _ = sample_rows(model, SampleRequest(request.prompts, 12, 12), CPU)
    assert not torch.equal(ids, other)


def test_a_row_ends_at_its_first_stop_id(model):
    plain, _ = sample_rows(model, SampleRequest([[1, 2]] * 4, seed=3, length=20), CPU)
    stop = int(plain[0, 4])  # the first row's third sample becomes a stop id
    ids, sampled = sample_rows(
        model, SampleRequest([[1, 2]] * 4, seed=3, length=20, stop_ids=(stop,), pad_id=0), CPU
    )
    first = ids[0].tolist()
    end = next(k for k in range(2, 20) if first[k] == stop)
    assert end <= 4 and all(t == 0 for t in first[end + 1 :])
    assert int(sampled[0].sum()) == end - 1  # positions 1 .. end - 1 sampled ids 2 .. end
