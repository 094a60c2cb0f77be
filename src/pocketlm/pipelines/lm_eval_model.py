"""lm-evaluation-harness on PocketLM: a `pocketlm` model for lm_eval, scored by the same code as
`pocketlm eval --task` (evals/loglikelihood on the engine's backends).

lm_eval (0.4.x) finds models only in its own registry, which it fills from its own modules: no
entry point or plug-in path adds one. The installed start-up hook (pipelines/lm_eval_hook.py,
`pocketlm-lm-eval.pth`) registers `PocketLMEval` lazily when lm_eval fills its registry, so
`lm_eval --model pocketlm ...` works as typed; without the hook (a source checkout on
PYTHONPATH), this module registers it and runs lm_eval's own CLI with the same arguments:

    python -m pocketlm.pipelines.lm_eval_model run --model pocketlm \\
        --model_args pretrained=runs/pretrain,backend=native --tasks my_task --include_path tasks/

or from Python: `register()`, then `lm_eval.simple_evaluate(model="pocketlm", ...)` (or pass a
`PocketLMEval` instance as `model`). model_args: pretrained (any model path PocketLM opens),
backend (auto, torch, native, onnx, llamacpp: `pretrained` an `export onnx` directory or a .gguf
file), device, precision, threads, max_length (context per sequence),
max_gen_toks, adapter (a LoRA adapter on top of pretrained). Needs `pip install 'pocketlm[lmeval]'`.

The three request types: loglikelihood as lm-eval's HF model computes it (evals.loglikelihood:
its _encode_pair, <bos> first where the model starts with one, the context prefilled once for
all continuations that share it); loglikelihood_rolling over lm-eval's disjoint rolling windows
after the model's <bos> (else <eos>), the windows `pocketlm eval --tokens` uses on a tokens
split; generate_until greedy through the engine's batching scheduler, stopping at `until`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

from pocketlm.common.errors import InputError, require

MODEL_NAME = "pocketlm"
GENERATE_BATCH = 32  # prompts handed to the batching scheduler at once


def _lm_eval() -> Any:
    return require("lm_eval", "lmeval", "the lm-evaluation-harness adapter")


@cache
def model_class() -> type:
    """The lm_eval LM subclass (built once, on first use: lm_eval is imported only then)."""
    _lm_eval()  # the install hint when it is missing
    from lm_eval.api.model import LM

    class PocketLMEval(LM):
        """A PocketLM model as lm_eval sees it."""

        def __init__(
            self,
            pretrained: str | Path,
            backend: str = "auto",
            device: str = "auto",
            precision: str = "auto",
            threads: int = 0,
            max_length: int | None = None,
            max_gen_toks: int = 256,
            adapter: str | None = None,
            **_ignored: Any,  # batch_size, max_batch_size, ...: the engine batches on its own
        ) -> None:
            super().__init__()
            from pocketlm.engine.load import open_backend
            from pocketlm.pipelines.task_eval import SCORE_REWIND, scoring_slots

            self.engine, self.tok = open_backend(
                pretrained,
                slots=scoring_slots(pretrained),
                backend=str(backend),
                device=str(device),
                precision=str(precision),
                threads=int(threads),
                max_len=int(max_length) if max_length else None,
                rewind=SCORE_REWIND,
                adapter=adapter,
            )
            self.max_gen_toks = int(max_gen_toks)

        @classmethod
        def create_from_arg_string(cls, arg_string: str, additional_config=None):
            from lm_eval.utils import simple_parse_args_string

            return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

        @classmethod
        def create_from_arg_obj(cls, arg_dict: dict, additional_config=None):
            extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
            device = extra.pop("device", None)  # lm_eval's --device, "cuda:0" unless given
            args = dict(arg_dict)
            if "device" not in args and device is not None:
                args["device"] = usable_device(str(device))
            return cls(**args, **extra)

        def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
            pairs = [tuple(r.args[:2]) for r in requests]
            return loglikelihoods(self.engine, self.tok, pairs)

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
            return [rolling(self.engine, self.tok, r.args[0]) for r in requests]

        def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
            return generate_until(
                self.engine, self.tok, [r.args for r in requests], self.max_gen_toks
            )

    return PocketLMEval


def usable_device(device: str) -> str:
    """lm_eval's --device where it exists; "auto" for a CUDA device on a machine without one
    (lm_eval's default is cuda:0), so the native backend may still run."""
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            return "auto"
    return device


def __getattr__(name: str) -> Any:
    """`PocketLMEval`, the class, built on first use: the "module:attribute" target that the
    installed lm_eval hook (pipelines/lm_eval_hook.py) registers."""
    if name == "PocketLMEval":
        return model_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register() -> type:
    """Register the `pocketlm` model in lm_eval's registry (once, beside lm_eval's own models);
    the class."""
    cls = model_class()
    import lm_eval.models  # noqa: F401 (fills the registry: get_model skips that when not empty)
    from lm_eval.api.registry import model_registry

    if MODEL_NAME not in model_registry:
        model_registry.register(MODEL_NAME, target=cls)
    return cls


def loglikelihoods(
    backend: Any, tokenizer: Any, pairs: Sequence[tuple[str, str]]
) -> list[tuple[float, bool]]:
    """(log-likelihood, greedy) of each (context, continuation), each context prefilled once."""
    from pocketlm.evals.loglikelihood import encode_pairs, score_many

    by_context: dict[str, list[int]] = {}
    for i, (context, _) in enumerate(pairs):
        by_context.setdefault(context, []).append(i)
    groups = list(by_context.items())
    requests = [encode_pairs(tokenizer, c, [pairs[i][1] for i in idx]) for c, idx in groups]
    out: list[tuple[float, bool]] = [(0.0, False)] * len(pairs)
    for (_, indices), scored in zip(groups, score_many(backend, requests), strict=True):
        for i, s in zip(indices, scored, strict=True):
            out[i] = (s.loglikelihood, s.greedy)
    return out


def rolling(backend: Any, tokenizer: Any, text: str) -> float:
    """Log-likelihood of a whole text in lm-eval's rolling windows, after <bos> (else <eos>)."""
    from pocketlm.evals.loglikelihood import rolling_loglikelihood

    prefix = tokenizer.bos_id if tokenizer.add_bos else tokenizer.eos_id
    if prefix is None:
        raise InputError(
            "loglikelihood_rolling scores the first token after <bos> (or <eos>), and this "
            "tokenizer has neither"
        )
    return rolling_loglikelihood(backend, tokenizer.encode(text), prefix)


def generate_until(
    backend: Any, tokenizer: Any, requests: Sequence[tuple[str, dict]], max_gen_toks: int
) -> list[str]:
    """Greedy continuations of each (context, gen_kwargs), cut at gen_kwargs' `until` strings."""
    from pocketlm.pipelines.task_eval import greedy_generator

    outputs: list[str] = [""] * len(requests)
    groups: dict[tuple[int, tuple[str, ...]], list[int]] = {}
    for i, (_, kwargs) in enumerate(requests):
        until = kwargs.get("until") or ()
        stops = (until,) if isinstance(until, str) else tuple(s for s in until if s)
        limit = int(kwargs.get("max_gen_toks", max_gen_toks))
        groups.setdefault((limit, stops), []).append(i)
    for (limit, stops), indices in groups.items():
        generate = greedy_generator(backend, tokenizer, limit)
        for first in range(0, len(indices), GENERATE_BATCH):
            chunk = indices[first : first + GENERATE_BATCH]
            texts = generate([requests[i][0] for i in chunk], [stops] * len(chunk))
            for i, text in zip(chunk, texts, strict=True):
                outputs[i] = text
    return outputs


def main(argv: Sequence[str] | None = None) -> None:
    """lm_eval's command line with the `pocketlm` model registered."""
    register()
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
