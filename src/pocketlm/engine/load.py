"""THE one way to open a saved model for inference: `open_backend`, and `load_engine` over it.

Two backends for model artifacts: "torch" (any device and precision PyTorch drives) and "native"
(the C kernels on the CPU, which start without importing torch). "auto" takes the native one when
the model runs on the CPU in full precision and it can open the model, else torch. Exported
models run on their own runtimes: an `export onnx` directory on "onnx" (onnxruntime) and a .gguf
file on "llamacpp" (llama-cpp-python); "auto" picks those by the path. Generation, chat, the
server and bench all open their models here.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from pocketlm.checkpoint.model_check import check_model_dir
from pocketlm.common.device import gpu_may_be_present
from pocketlm.common.errors import ArtifactError, ConfigError, PocketLMError
from pocketlm.common.log import get_logger
from pocketlm.engine.backend import Backend, check_slot_count
from pocketlm.engine.exported import GGUF, ONNX, exported_format
from pocketlm.engine.generation import GenerationEngine
from pocketlm.interop.open_model import model_dir
from pocketlm.tokenizer.tokenizer import Tokenizer

BACKENDS = ("auto", "torch", "native", "onnx", "llamacpp")
# exported format (engine/exported.py) -> the backend that runs it
EXPORTED_BACKENDS = {ONNX: "onnx", GGUF: "llamacpp"}
_log = get_logger("pocketlm.engine")


def open_backend(
    model: str | Path,
    *,
    slots: int = 1,
    backend: str = "auto",
    device: str = "auto",
    precision: str = "auto",
    threads: int = 0,
    max_len: int | None = None,
    rewind: int = 0,
    adapter: str | Path | None = None,
) -> tuple[Backend, Tokenizer]:
    """(backend holding `slots` sequences, tokenizer) for a model dir, a training run or a
    Hugging Face folder (imported into the cache on first use: interop.open_model).

    backend: "torch", "native" (CPU only; a PocketLMError says why when it cannot run) or
    "auto" (native when the device is the CPU and precision auto/fp32, falling back to torch);
    "onnx" / "llamacpp" for an `export onnx` directory / a .gguf file (auto picks them).
    threads: native backend threads (0 = its default). max_len: context per slot in tokens
    (default and ceiling: the model's). rewind: the most tokens the caller will truncate a slot
    back by, when more than the native backend's rolling caches keep by default (KV_REWIND).
    adapter: a LoRA adapter (or a LoRA training run) to apply on top of `model`, its base; the
    torch backend runs it (auto picks torch).
    """
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}: use {', '.join(BACKENDS)}")
    check_slot_count(slots)  # before any model is read
    exported = exported_format(model)
    if exported is not None or backend in EXPORTED_BACKENDS.values():
        return open_exported(
            model, exported, slots=slots, backend=backend, device=device, precision=precision,
            threads=threads, max_len=max_len, adapter=adapter,
        )  # fmt: skip
    if backend == "native":
        check_native_settings(device, precision)
        if adapter is not None:
            raise ConfigError(
                "the native backend does not apply adapters: use --backend torch (or auto), or "
                "fold the adapter into a model first with `pocketlm merge` and run that natively"
            )
    model = model_dir(model)
    refuse_classifier(model)
    if adapter is None and (
        backend == "native" or (backend == "auto" and native_fits(device, precision))
    ):
        opened = _open_native(
            model,
            slots=slots,
            threads=threads,
            max_len=max_len,
            rewind=rewind,
            required=backend == "native",
        )
        if opened is not None:
            return opened
    return _open_torch(
        model, slots=slots, device=device, precision=precision, max_len=max_len, adapter=adapter
    )


def open_exported(
    model: str | Path,
    exported: str | None,
    *,
    slots: int,
    backend: str,
    device: str,
    precision: str,
    threads: int,
    max_len: int | None,
    adapter: str | Path | None,
) -> tuple[Backend, Tokenizer]:
    """(backend, tokenizer) for an exported model on its runtime; ConfigError naming what does not
    fit (a model artifact given to --backend onnx, an adapter, a GPU or a precision asked for)."""
    wanted = EXPORTED_BACKENDS.get(exported) if exported else None
    if wanted is None:
        need = "an `export onnx` directory" if backend == "onnx" else "a .gguf file"
        raise ConfigError(
            f"--backend {backend} runs {need}, and {model} is not one: export the model first "
            f"(pocketlm export {'onnx' if backend == 'onnx' else 'gguf'}), or use --backend auto"
        )
    if backend not in ("auto", wanted):
        raise ConfigError(f"{model} is an exported {exported} model: it runs on --backend {wanted} (or auto)")  # fmt: skip
    if adapter is not None:
        raise ConfigError(f"an exported {exported} model runs without adapters: merge the adapter and export again")  # fmt: skip
    if device.strip().lower() not in ("auto", "cpu") or precision not in ("auto", "fp32"):
        raise ConfigError(
            f"an exported {exported} model runs on the CPU in the precision it was exported with: "
            "leave --device and --precision at auto"
        )
    if exported == ONNX:
        from pocketlm.engine.onnx_backend import OnnxBackend

        opened = OnnxBackend(model, slots=slots, threads=threads, max_len=max_len)
        tokenizer = Tokenizer.load(model)
        if tokenizer.vocab_size > opened.vocab_size:
            raise ArtifactError(
                f"{model}: tokenizer has {tokenizer.vocab_size} tokens but the graph's logits "
                f"{opened.vocab_size}"
            )
        return opened, tokenizer
    from pocketlm.engine.gguf_backend import open_gguf

    return open_gguf(model, slots=slots, threads=threads, max_len=max_len)


def open_adapters(
    model: str | Path,
    adapters: Sequence[str | Path],
    *,
    slots: int = 1,
    device: str = "auto",
    precision: str = "auto",
    max_len: int | None = None,
) -> list[tuple[Backend, Tokenizer]]:
    """(torch backend, tokenizer) for `model` with each adapter applied in turn, all over ONE
    copy of the base's weights in memory (an adapter adds only its own matrices; a QLoRA one
    its quantized copy); settings as in open_backend."""
    from pocketlm.checkpoint.adapted_model import load_adapted_model
    from pocketlm.checkpoint.model_io import load_model
    from pocketlm.common.device import resolve_device, resolve_precision, torch_dtype
    from pocketlm.engine.torch_backend import TorchBackend

    check_slot_count(slots)
    if not adapters:
        return []
    model = model_dir(model)
    refuse_classifier(model)
    dev = resolve_device(device)
    dtype = torch_dtype(resolve_precision(precision, dev))
    base = load_model(model, device=dev, dtype=dtype)
    opened = []
    for adapter in adapters:
        loaded = load_adapted_model(model, adapter, device=dev, dtype=dtype, shared_base=base)
        backend = TorchBackend(loaded.model, slots=slots, device=dev, dtype=dtype, max_len=max_len)
        opened.append((backend, loaded.tokenizer))
    return opened


def open_mixed_adapters(
    model: str | Path,
    adapters: Sequence[str | Path],
    *,
    slots: int = 1,
    device: str = "auto",
    precision: str = "auto",
    max_len: int | None = None,
) -> tuple[Backend, Tokenizer]:
    """One torch backend for `model` carrying every adapter: each slot runs the base or the
    adapter given to backend.use_adapter (index k: adapters[k]), so one batch mixes them;
    ConfigError when they cannot share one (checkpoint.adapted_model.load_multi_adapter_model)."""
    from pocketlm.checkpoint.adapted_model import load_multi_adapter_model
    from pocketlm.common.device import resolve_device, resolve_precision, torch_dtype
    from pocketlm.engine.torch_backend import TorchBackend

    check_slot_count(slots)
    model = model_dir(model)
    refuse_classifier(model)
    dev = resolve_device(device)
    dtype = torch_dtype(resolve_precision(precision, dev))
    loaded, rows = load_multi_adapter_model(model, adapters, device=dev, dtype=dtype)
    backend = TorchBackend(
        loaded.model, slots=slots, device=dev, dtype=dtype, max_len=max_len, adapter_rows=rows
    )
    return backend, loaded.tokenizer


def load_engine(
    model: str | Path,
    *,
    device: str = "auto",
    precision: str = "auto",
    max_len: int | None = None,
    backend: str = "auto",
    threads: int = 0,
    draft: str | Path | None = None,
    draft_tokens: int = 4,
    adapter: str | Path | None = None,
) -> GenerationEngine:
    """An engine over a one-slot backend from open_backend (same settings and choice).

    draft: a smaller model with the same tokenizer for speculative decoding (opened with the
    same settings), proposing `draft_tokens` tokens per step. adapter: a LoRA adapter applied
    on top of `model` (not on the draft).
    """
    settings = dict(
        device=device, precision=precision, max_len=max_len, backend=backend, threads=threads
    )
    if draft is not None:  # a step rolls back up to its drafted tokens and the target's own one
        settings["rewind"] = draft_tokens + 1
    target, tokenizer = open_backend(model, adapter=adapter, **settings)
    if draft is None:
        return GenerationEngine(target, tokenizer)
    from pocketlm.engine.speculative import check_draft

    draft_backend, draft_tokenizer = open_backend(draft, **settings)
    check_draft(tokenizer, draft_tokenizer)
    return GenerationEngine(target, tokenizer, draft=draft_backend, draft_tokens=draft_tokens)


def classifier_labels(model: str | Path) -> tuple[str, ...]:
    """The labels of a classifier model (a dir, training run or HF folder, imported on first
    use, or an `export onnx` directory of one); () for a language model or a directory the
    model check will refuse anyway."""
    from pocketlm.checkpoint.layout import CONFIG_FILE
    from pocketlm.model.config import ModelConfig

    if exported_format(model) == ONNX:
        from pocketlm.engine.onnx_backend import read_onnx_config

        try:
            return tuple(read_onnx_config(Path(model)).get("labels", ()))
        except (PocketLMError, OSError, ValueError):
            return ()
    try:
        path = model_dir(model) / CONFIG_FILE
        # before the model check: only a plain file of a config's size (not a device, a FIFO
        # or a gigabyte), whatever its manifest says
        if not path.is_file() or path.stat().st_size > 1 << 20:
            return ()
        return ModelConfig.load(path).labels
    except (PocketLMError, OSError, ValueError):
        return ()  # the model check that follows names what is wrong


def refuse_classifier(model: Path) -> None:
    """ConfigError when the model directory holds a classifier: it labels texts, it generates
    nothing (engine/classify.py opens it)."""
    labels = classifier_labels(model)
    if labels:
        raise ConfigError(
            f"{model} is a classifier over {list(labels)}: it labels texts and generates "
            "nothing; use `pocketlm classify predict`, or serve it (POST /v1/classify)"
        )


def check_native_settings(device: str, precision: str) -> None:
    """Raise ConfigError when the device or precision asked for rule out the native backend."""
    if device.strip().lower() not in ("auto", "cpu"):
        raise ConfigError(
            f"the native backend runs on the CPU only, not on device {device!r}: "
            "use --device cpu (or auto), or --backend torch"
        )
    if precision not in ("auto", "fp32"):
        raise ConfigError(
            f"the native backend chooses its own precision; --precision {precision} needs "
            "--backend torch (or use --precision auto)"
        )


def native_fits(device: str, precision: str) -> bool:
    """True when "auto" should try the native backend: the model would run on the CPU in fp32."""
    if precision not in ("auto", "fp32"):
        return False
    spec = device.strip().lower()
    if spec == "cpu":
        return True
    if spec != "auto":
        return False
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return True  # no torch: the CPU is all there is
    if "torch" not in sys.modules and not gpu_may_be_present():
        return True  # no GPU device nodes: resolving would import torch only to pick the CPU
    from pocketlm.common.device import resolve_device

    return resolve_device("auto").type == "cpu"


def _open_torch(
    model: str | Path,
    *,
    slots: int,
    device: str,
    precision: str,
    max_len: int | None,
    adapter: str | Path | None = None,
) -> tuple[Backend, Tokenizer]:
    """The torch backend on the resolved device and precision (the model, or the base model
    with `adapter` applied), and the model's tokenizer."""
    from pocketlm.checkpoint.model_io import load_model
    from pocketlm.common.device import resolve_device, resolve_precision, torch_dtype
    from pocketlm.engine.torch_backend import TorchBackend

    dev = resolve_device(device)
    dtype = torch_dtype(resolve_precision(precision, dev))
    if adapter is not None:
        from pocketlm.checkpoint.adapted_model import load_adapted_model

        loaded = load_adapted_model(model, adapter, device=dev, dtype=dtype)
    else:
        loaded = load_model(model, device=dev, dtype=dtype)
    backend = TorchBackend(loaded.model, slots=slots, device=dev, dtype=dtype, max_len=max_len)
    return backend, loaded.tokenizer


def _open_native(
    model: str | Path,
    *,
    slots: int,
    threads: int,
    max_len: int | None,
    rewind: int,
    required: bool,
) -> tuple[Backend, Tokenizer] | None:
    """The native backend and tokenizer, or None (logged) when it cannot run and is not required."""
    try:
        from pocketlm.engine.native_backend import KV_REWIND, NativeBackend, NativeUnavailable
    except ImportError as exc:
        return _native_failed(f"it is not available in this install ({exc})", required)
    # A corrupt model is an ArtifactError here, never a reason to fall back to torch.
    checked = check_model_dir(Path(model))
    more = {"kv_rewind": rewind} if rewind > KV_REWIND else {}
    try:
        backend = NativeBackend(
            checked.directory, checked.config, threads=threads, max_len=max_len, slots=slots, **more
        )
    except NativeUnavailable as exc:
        features = getattr(exc, "features", ())
        if features and not required:  # the model's own options: worth a line at the default level
            _log.info(
                "torch backend: the native engine does not implement the model option(s) %s",
                ", ".join(features),
            )
            return None
        return _native_failed(str(exc), required)
    return backend, checked.tokenizer


def _native_failed(reason: str, required: bool) -> None:
    """Raise PocketLMError with the reason when native was required; else log it and return None."""
    if required:
        raise PocketLMError(
            f"the native backend cannot run this model: {reason}; use --backend torch (or auto)"
        )
    _log.debug("native backend not used (%s); using torch", reason)
    return None
