"""Encoder options of the one model: bidirectional attention (SDPA and PocketLM's kernels agree),
learned positions, token types, post-norm blocks, factorised embeddings, shared layers; the
tensors on disk and the parameter count of every combination."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from pocketlm.checkpoint.model_io import weights_state_dict
from pocketlm.checkpoint.weights_spec import expected_tensors
from pocketlm.common.errors import ConfigError
from pocketlm.model.config import ModelConfig
from pocketlm.model.transformer import build_model, set_attention_kernel

# BERT's shape of options; head_dim 16 so PocketLM's kernels apply wherever they can
ENCODER = ModelConfig(
    vocab_size=64, dim=64, n_layers=2, n_heads=4, n_kv_heads=4, ffn_dim=96, max_seq_len=24,
    causal=False, position_kind="learned", type_vocab_size=2, embed_norm=True,
    norm_position="post", norm_kind="layer", mlp_kind="plain", activation="gelu", qkv_bias=True,
    o_bias=True, mlp_bias=True, tie_embeddings=False, pooling="first",
)  # fmt: skip
CLASSIFIER = dataclasses.replace(
    ENCODER, labels=("a", "b", "c"), pooler="tanh", classifier_bias=True
)
ALBERT = dataclasses.replace(CLASSIFIER, embed_dim=16, shared_layers=True, n_layers=3)
MOBILEBERT = dataclasses.replace(
    CLASSIFIER, embed_dim=16, embed_trigram=True, bottleneck_dim=32, n_ffn=3, norm_kind="affine",
    activation="relu",
)  # fmt: skip
VARIANTS = {
    "encoder": ENCODER,
    "encoder_with_pooler": dataclasses.replace(ENCODER, pooler="tanh"),
    "classifier": CLASSIFIER,
    "distilbert": dataclasses.replace(CLASSIFIER, type_vocab_size=0, pooler="relu"),
    "albert": ALBERT,
    "mobilebert": MOBILEBERT,
    "mobilebert_base": dataclasses.replace(MOBILEBERT, labels=(), pooler="none"),
    "pre_norm_encoder": dataclasses.replace(ENCODER, norm_position="pre", embed_norm=False),
    "learned_positions_decoder": ModelConfig(
        vocab_size=64,
        dim=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        max_seq_len=24,
        position_kind="learned",
    ),
}


def _ids(batch: int, length: int, seed: int = 3) -> torch.Tensor:
    return torch.randint(0, 64, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", list(VARIANTS))
def test_tensors_and_parameter_count_match_the_model(name: str) -> None:
    config = VARIANTS[name]
    model = build_model(config)
    spec = expected_tensors(config, {"scheme": "none"})
    state = weights_state_dict(model)
    assert set(spec) == set(state)
    assert all(tuple(state[n].shape) == s.shape for n, s in spec.items())
    assert config.num_params() == model.num_params()


def test_trigram_embeddings_see_the_neighbours_inside_a_sequence() -> None:
    from pocketlm.model.embeddings import trigrams

    x = torch.arange(1.0, 7.0).reshape(1, 6, 1)  # tokens 1..6, one feature each
    positions = torch.tensor([[0, 1, 2, 0, 1, 2]])  # two documents of three
    out = trigrams(x, positions)  # (1, 6, 3): next, this, previous
    assert out[0].tolist() == [[2, 1, 0], [3, 2, 1], [0, 3, 2], [5, 4, 0], [6, 5, 4], [0, 6, 5]]


def test_shared_layers_are_one_layer_applied_n_times() -> None:
    model = build_model(ALBERT, seed=2).eval()
    assert len(model.model.layers) == 1
    assert not any(".layers.1." in n for n in model.state_dict())
    three = model(_ids(2, 9))
    two = dataclasses.replace(ALBERT, n_layers=2)
    fewer = build_model(two, seed=2).eval()
    fewer.load_state_dict(model.state_dict())
    assert not torch.allclose(three, fewer(_ids(2, 9)))  # the depth is n_layers applications


@pytest.mark.parametrize("kernel", ["auto", "sdpa"])
def test_encoder_attention_sees_both_ways(kernel: str) -> None:
    model = build_model(ENCODER, seed=1).eval()
    set_attention_kernel(model, kernel)
    ids = _ids(1, 10)
    later = ids.clone()
    later[0, -1] = (later[0, -1] + 1) % 64
    with torch.no_grad():
        a, b = model(ids), model(later)
    assert a.shape == (1, 10, 64)
    assert not torch.allclose(a[0, 0], b[0, 0])  # the first token sees the last one
    decoder = build_model(dataclasses.replace(ENCODER, causal=True), seed=1).eval()
    set_attention_kernel(decoder, kernel)
    with torch.no_grad():  # a decoder with the same options does not
        a, b = decoder(ids), decoder(later)
    torch.testing.assert_close(a[0, :-1], b[0, :-1], atol=1e-6, rtol=0)


def test_native_and_sdpa_kernels_agree_with_learned_positions() -> None:
    """PocketLM's kernels (causal, no rotary) and SDPA compute the same decoder; an encoder runs
    on SDPA under either setting (the kernels are causal only)."""
    for config in (VARIANTS["learned_positions_decoder"], CLASSIFIER):
        model = build_model(config, seed=4).eval()
        mask = torch.tensor([[1] * 12, [1] * 8 + [0] * 4])
        extra = {"attention_mask": mask} if config.labels else {"doc_ids": 1 - mask}
        outs = []
        for kernel in ("auto", "sdpa"):
            set_attention_kernel(model, kernel)
            with torch.no_grad():
                outs.append(model(_ids(2, 12), **extra))
        torch.testing.assert_close(outs[0], outs[1], atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "config", [CLASSIFIER, ALBERT, MOBILEBERT], ids=["bert", "albert", "mobilebert"]
)
def test_encoder_classifier_padding_on_either_side(config: ModelConfig) -> None:
    model = build_model(config, seed=5).eval()
    text = _ids(1, 6)
    pad = torch.zeros(1, 3, dtype=torch.long)
    with torch.no_grad():
        alone = model(text)
        right = model(torch.cat([text, pad], 1), attention_mask=torch.tensor([[1] * 6 + [0] * 3]))
        left = model(torch.cat([pad, text], 1), attention_mask=torch.tensor([[0] * 3 + [1] * 6]))
    torch.testing.assert_close(right, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(left, alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "config", [ENCODER, dataclasses.replace(MOBILEBERT, labels=(), pooler="none")],
    ids=["bert", "mobilebert"],
)  # fmt: skip
def test_packed_encoder_documents_attend_only_inside_themselves(config: ModelConfig) -> None:
    """Attention, and MobileBERT's trigram embeddings, stay inside each packed document."""
    model = build_model(config, seed=6).eval()
    a, b = _ids(1, 5, seed=1), _ids(1, 7, seed=2)
    with torch.no_grad():
        packed = model(torch.cat([a, b], 1), doc_ids=torch.tensor([[0] * 5 + [1] * 7]))
        torch.testing.assert_close(packed[:, :5], model(a), atol=1e-5, rtol=0)
        torch.testing.assert_close(packed[:, 5:], model(b), atol=1e-5, rtol=0)


def test_token_types_default_to_type_zero() -> None:
    model = build_model(ENCODER, seed=7).eval()
    ids = _ids(2, 8)
    with torch.no_grad():
        default = model(ids)
        zeros = model(ids, token_type_ids=torch.zeros_like(ids))
        ones = model(ids, token_type_ids=torch.ones_like(ids))
    torch.testing.assert_close(default, zeros, atol=1e-6, rtol=0)
    assert not torch.allclose(default, ones)
    no_types = build_model(dataclasses.replace(ENCODER, type_vocab_size=0)).eval()
    with pytest.raises(ValueError, match="token-type"):
        no_types(ids, token_type_ids=torch.zeros_like(ids))


def test_an_encoder_has_no_lm_head() -> None:
    model = build_model(ENCODER)
    assert not hasattr(model, "lm_head") and not ENCODER.has_lm_head
    with pytest.raises(ValueError, match="encoder"):
        model(_ids(1, 4), targets=_ids(1, 4))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(causal=True, shared_layers=True), "encoders"),
        (dict(causal=True, embed_dim=16), "encoders"),
        (dict(causal=True, norm_kind="affine"), "encoders"),
        (dict(causal=True, activation="relu"), "encoders"),
        (dict(causal=True, embed_trigram=True), "encoders"),
        (dict(bottleneck_dim=32, mlp_kind="gated"), "MobileBERT"),
        (dict(n_ffn=2), "n_ffn"),
        (dict(causal=True, pooler="tanh"), "pooler"),
        (dict(sliding_window=4), "causal"),
        (dict(norm_position="pre", parallel_block=True, norm_position_check=True), "post"),
        (dict(norm_position="middle"), "norm_position"),
        (dict(position_kind="absolute"), "position_kind"),
        (dict(type_vocab_size=-1), "type_vocab_size"),
    ],
)
def test_encoder_options_are_checked(options: dict, message: str) -> None:
    options = dict(options)
    if options.pop("norm_position_check", False):
        options["norm_position"] = "post"
    with pytest.raises(ConfigError, match=message):
        dataclasses.replace(ENCODER, **options)


def test_encoder_flops_count_every_key_and_no_lm_head() -> None:
    decoder = dataclasses.replace(ENCODER, causal=True)
    attention = 2 * 2 * ENCODER.n_layers * ENCODER.q_dim * 24  # QK^T and AV over all 24 keys
    head = 2 * ENCODER.vocab_size * ENCODER.dim
    gap = ENCODER.flops_per_token(24, training=False) - decoder.flops_per_token(24, training=False)
    assert gap == pytest.approx(attention / 2 - head)


@pytest.mark.parametrize(
    "config", [CLASSIFIER, ALBERT, MOBILEBERT], ids=["bert", "albert", "mobilebert"]
)
def test_encoder_classifiers_train(config: ModelConfig) -> None:
    """Gradients reach every parameter (a shared layer's from all its applications; token types
    only through type 0's row) and steps on a fixed batch lower the loss."""
    model = build_model(config, seed=8)
    ids, mask = _ids(4, 10), torch.tensor([[1] * 10, [1] * 7 + [0] * 3] * 2)
    labels = torch.tensor([0, 1, 2, 1]) % len(config.labels)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(20):
        loss = torch.nn.functional.cross_entropy(model(ids, attention_mask=mask), labels)
        optimizer.zero_grad()
        loss.backward()
        if not losses:
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0]


@pytest.mark.parametrize("config", [CLASSIFIER, ALBERT], ids=["bert", "albert"])
def test_a_student_of_every_second_layer(config: ModelConfig) -> None:
    """DistilBERT's student initialisation (model/layer_select.py) on encoders: a BERT student
    takes layers 0, 2, ...; an ALBERT student applies its one shared layer half as often."""
    from pocketlm.model.layer_select import every_other_layer, select_layers

    teacher = build_model(dataclasses.replace(config, n_layers=4), seed=9).eval()
    student = select_layers(teacher, every_other_layer(4)).eval()
    assert student.config.n_layers == 2
    assert student.num_params() == student.config.num_params()
    with torch.no_grad():
        ids = _ids(2, 8)
        if config.shared_layers:  # the same tensors, applied twice instead of four times
            assert student.num_params() == teacher.num_params()
        else:
            assert student.num_params() < teacher.num_params()
        assert student(ids).shape == teacher(ids).shape
