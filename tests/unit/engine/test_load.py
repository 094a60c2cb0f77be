"""open_backend / load_engine: backend choice (torch, native, auto), falling back when native
cannot run, and slots."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from pocketlm.checkpoint.model_io import save_model
from pocketlm.common.errors import ConfigError, PocketLMError
from pocketlm.engine import load
from pocketlm.engine.load import load_engine
from pocketlm.engine.sampling import SamplingParams
from pocketlm.model.config import ModelConfig
from pocketlm.model.transformer import build_model

NATIVE = "pocketlm.engine.native_backend"
GREEDY = SamplingParams(temperature=0, max_new_tokens=3)


@pytest.fixture(scope="module")
def model_dir(synthetic_pipeline, tmp_path_factory) -> Path:
    config = ModelConfig(
        vocab_size=512, dim=32, n_layers=1, n_heads=4, n_kv_heads=2, max_seq_len=32, init_std=0.1
    )
    out = tmp_path_factory.mktemp("load") / "model"
    return save_model(out, build_model(config, seed=1), synthetic_pipeline["tokenizer"])


class FakeNative:
    """Stands in for the native backend: greedy picks token 7 forever, in every slot."""

    name = "native"
    context_length, vocab_size, device, prefill_chunk = 32, 512, "cpu", 256

    def __init__(self, slots: int) -> None:
        self.slots = slots

    def position(self, slot: int) -> int:
        return 0

    def release(self, slot: int) -> None:
        pass

    def prefill(self, slot: int, token_ids) -> np.ndarray:
        return self.decode([slot], [0])[0]

    def decode(self, slots, token_ids) -> np.ndarray:
        logits = np.zeros((len(slots), self.vocab_size), dtype=np.float32)
        logits[:, 7] = 1.0
        return logits


@pytest.fixture
def native(monkeypatch, model_dir):
    """Install a fake native_backend module; `calls` records its arguments, `fail` its refusal."""
    module = types.ModuleType(NATIVE)

    class NativeUnavailable(Exception):
        pass

    module.NativeUnavailable = NativeUnavailable
    module.KV_REWIND = 64
    module.calls = []
    module.rewinds = []
    module.fail = None

    def native_backend(directory, config, *, threads=0, max_len=None, slots=1, kv_rewind=None):
        module.calls.append((Path(directory), threads, max_len))
        module.rewinds.append(kv_rewind)
        if module.fail is not None:
            raise NativeUnavailable(module.fail)
        return FakeNative(slots)

    module.NativeBackend = native_backend
    monkeypatch.setitem(sys.modules, NATIVE, module)
    return module


def test_torch_backend_on_request(model_dir, native):
    engine = load_engine(model_dir, device="cpu", backend="torch")
    assert engine.name == "torch" and engine.backend.device == "cpu"
    assert native.calls == []
    assert len(engine.complete("the", GREEDY).token_ids) >= 1


def test_auto_takes_native_on_the_cpu(model_dir, native):
    engine = load_engine(model_dir, device="cpu", max_len=16, threads=2)
    assert engine.name == "native"
    assert native.calls == [(model_dir, 2, 16)]
    assert engine.complete("the", GREEDY).token_ids == [7, 7, 7]


def test_a_draft_deeper_than_the_rolling_caches_widens_them(model_dir, native):
    """Speculative decoding rolls a slot back by up to draft_tokens + 1: past KV_REWIND the
    native backend is asked to keep that many positions in its sliding layers' rolling caches."""
    load_engine(model_dir, device="cpu", draft=model_dir, draft_tokens=4)
    load_engine(model_dir, device="cpu", draft=model_dir, draft_tokens=100)
    assert native.rewinds == [None, None, 101, 101]  # target and draft, each time


def test_auto_keeps_torch_for_reduced_precision(model_dir, native):
    engine = load_engine(model_dir, device="cpu", precision="bf16")
    assert engine.name == "torch" and native.calls == []


def test_auto_falls_back_to_torch_when_native_refuses(model_dir, native):
    native.fail = "quantized weights are not supported"
    assert load_engine(model_dir, device="cpu").name == "torch"
    with pytest.raises(PocketLMError, match="quantized weights are not supported"):
        load_engine(model_dir, device="cpu", backend="native")


def test_missing_native_module(model_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, NATIVE, None)  # `import` raises ImportError
    assert load_engine(model_dir, device="cpu").name == "torch"
    with pytest.raises(PocketLMError, match="native backend"):
        load_engine(model_dir, device="cpu", backend="native")


def test_bad_backend_settings(model_dir, native):
    with pytest.raises(ConfigError, match="backend"):
        load_engine(model_dir, backend="cuda")
    with pytest.raises(ConfigError, match="CPU only"):
        load_engine(model_dir, device="cuda", backend="native")
    with pytest.raises(ConfigError, match="precision"):
        load_engine(model_dir, device="cpu", precision="bf16", backend="native")
    assert native.calls == []


def test_auto_device_without_gpu_nodes_does_not_import_torch():
    code = (
        "import sys\n"
        "from pocketlm.engine import load\n"
        "load.gpu_may_be_present = lambda: False\n"
        "print(load.native_fits('auto', 'auto'), 'torch' in sys.modules)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert proc.stdout.split() == ["True", "False"], proc.stdout + proc.stderr
    assert not load.native_fits("cuda", "auto") and not load.native_fits("cpu", "fp16")


def test_slots_reach_either_backend(model_dir, native):
    torch_backend, _ = load.open_backend(model_dir, slots=3, device="cpu", backend="torch")
    assert (torch_backend.name, torch_backend.slots) == ("torch", 3)
    native_backend, tokenizer = load.open_backend(model_dir, slots=2, device="cpu", max_len=16)
    assert (native_backend.name, native_backend.slots) == ("native", 2)
    assert tokenizer.vocab_size == 512 and native.calls == [(model_dir, 0, 16)]
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="slots"):
            load.open_backend(model_dir, slots=bad)


def test_the_native_path_opens_and_generates_without_torch(model_dir):
    pytest.importorskip("pocketlm.engine._native", reason="native extension not built")
    code = (
        "import sys\n"
        "from pocketlm.engine.load import load_engine\n"
        "from pocketlm.engine.sampling import SamplingParams\n"
        f"engine = load_engine({str(model_dir)!r}, device='cpu', backend='native', threads=1)\n"
        "engine.complete('the', SamplingParams(temperature=0, max_new_tokens=3))\n"
        "print(engine.name, 'torch' in sys.modules)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert proc.stdout.split() == ["native", "False"], proc.stdout + proc.stderr
