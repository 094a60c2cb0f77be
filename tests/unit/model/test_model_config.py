"""ModelConfig from files: any value in any field is a valid config or a ConfigError naming the
field; a broken model_config.json is an ArtifactError naming the file."""

from __future__ import annotations

import math
from dataclasses import fields

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pocketlm.common.errors import ArtifactError, ConfigError
from pocketlm.model.config import MAX_DIM, MAX_SEQ_LEN, ModelConfig

FIELDS = [f.name for f in fields(ModelConfig)]
VALUES = (
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=4)
    | st.lists(st.integers(), max_size=2)
)


@settings(max_examples=300, deadline=None)
@given(changes=st.dictionaries(st.sampled_from(FIELDS), VALUES, min_size=1, max_size=3))
def test_any_values_make_a_sane_config_or_a_config_error(changes):
    data = {**ModelConfig(vocab_size=512, dim=64, n_heads=4, n_kv_heads=2).to_dict(), **changes}
    try:
        c = ModelConfig.from_dict(data)
    except ConfigError as exc:
        assert any(f"model.{name}" in str(exc) or "head" in str(exc) for name in changes), exc
        return
    for name in ("vocab_size", "dim", "n_layers", "n_heads", "n_kv_heads", "max_seq_len"):
        value = getattr(c, name)
        assert type(value) is int and 1 <= value <= MAX_DIM
    assert c.max_seq_len <= MAX_SEQ_LEN and c.n_heads % c.n_kv_heads == 0
    assert c.resolved_head_dim % 2 == 0 and max(c.q_dim, c.kv_dim, c.resolved_ffn_dim) <= MAX_DIM
    assert c.rope_theta > 0 and c.norm_eps > 0 and math.isfinite(c.rope_theta + c.norm_eps)
    assert type(c.tie_embeddings) is bool and type(c.qkv_bias) is bool


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not a readable JSON model config"),
        ("[1]", "must be a JSON object"),
        ('{"dim": 64, "dim_x": 1}', "unknown model config keys: dim_x"),
        ('{"norm_eps": NaN}', "model.norm_eps must be a float, got nan"),
        ("\udcff", "not a readable JSON model config"),
    ],
)
def test_a_broken_file_names_itself(tmp_path, text, message):
    path = tmp_path / "model_config.json"
    path.write_bytes(text.encode("utf-8", errors="surrogateescape"))
    with pytest.raises(ArtifactError, match=message) as exc:
        ModelConfig.load(path)
    assert str(path) in str(exc.value)
    with pytest.raises(ArtifactError, match="missing"):
        ModelConfig.load(tmp_path / "nothing.json")


def test_a_saved_config_loads_back(tmp_path):
    c = ModelConfig(vocab_size=300, dim=96, n_heads=6, n_kv_heads=2, head_dim=32, rope_theta=5e5)
    c.save(tmp_path / "c.json")
    assert ModelConfig.load(tmp_path / "c.json") == c
