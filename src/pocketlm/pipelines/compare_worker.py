"""One variant of `pocketlm compare`, measured in its own process (so its peak memory is its own).

The parent drives it over a pipe, one command at a time: ("load",) opens the model for timing and
warms it up; ("round",) times one prefill + decode (engine/bench.timed_round); ("memory",) reads
this process's peak resident set; ("prepare",) imports what the evaluation needs (all variants
at once); ("quality",) evaluates bits/byte (evals/evaluate, what `pocketlm eval` reports) and a
classifier's task accuracy, or a language model's task files (pipelines/task_eval, what `pocketlm
eval --task` reports, on the variant's own backend) and its greedy continuations of fixed prompts
(token ids, for the parity with the reference: evals/artifact_parity); ("stop",) ends it. Every reply is ("ok", value) or
("error", message, whether it is the user's to fix). Quality comes after memory, so the peak counts
loading and decoding the model, not the evaluation's torch copy of it.
"""

from __future__ import annotations

import traceback
from typing import Any


def _load(spec: dict[str, Any]) -> Any:
    from pocketlm.engine.bench import open_bench, timed_round

    if spec["classifier"]:  # the engine generates text; a classifier has no decode speed
        return None
    target = open_bench(spec["directory"], **spec["bench"])
    timed_round(target)  # warm-up: caches, allocator pools and kernels touched once, not timed
    return target


def _prepare(spec: dict[str, Any]) -> None:
    if spec["tokens"] is not None and not spec["classifier"] and not spec["exported"]:
        import pocketlm.evals.evaluate
    if spec["task"] is not None and spec["classifier"]:
        import pocketlm.engine.classify
    if spec["task_files"] and not spec["classifier"]:
        import pocketlm.pipelines.task_eval  # noqa: F401


def _quality(spec: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"bpb": None, "task_accuracy": None}
    # bits/byte runs the PyTorch model (evals/evaluate): an exported file has none to run
    if spec["tokens"] is not None and not spec["classifier"] and not spec["exported"]:
        from pocketlm.evals.evaluate import evaluate_model

        out["bpb"] = evaluate_model(spec["directory"], spec["tokens"], **spec["eval"])["bpb"]
    if spec["task"] is not None and spec["classifier"]:
        out["task_accuracy"] = _accuracy(spec)
    if not spec["classifier"]:
        if spec["task_files"]:
            out.update(_task_scores(spec))
        if spec["greedy"]["new_tokens"] > 0:
            out["greedy"] = _greedy(spec)
    return out


def _task_scores(spec: dict[str, Any]) -> dict[str, Any]:
    """The task files scored as `pocketlm eval --task` does, on the variant's own backend."""
    from pocketlm.evals.artifact_parity import mean_task_score, task_scores
    from pocketlm.pipelines.task_eval import TaskEvalSettings, evaluate_tasks

    bench = spec["bench"]
    settings = TaskEvalSettings(
        backend=bench["backend"], device=bench["device"], threads=bench["threads"],
        limit=spec["task_limit"],
    )  # fmt: skip
    report = evaluate_tasks(spec["directory"], spec["task_files"], settings)
    scores = task_scores(report["tasks"])
    return {"task_scores": scores, "task_accuracy": mean_task_score(scores), "items": report["items"]}  # fmt: skip


def _greedy(spec: dict[str, Any]) -> list[list[int]]:
    """Token ids of the greedy continuation of each fixed prompt: exactly `new_tokens` (fewer
    where the context ends), never stopping at an end token, ties to the lowest id."""
    import numpy as np

    from pocketlm.engine.load import open_backend

    bench = spec["bench"]
    backend, tokenizer = open_backend(
        spec["directory"], backend=bench["backend"], device=bench["device"], threads=bench["threads"]
    )  # fmt: skip
    wanted = spec["greedy"]["new_tokens"]
    head = [tokenizer.bos_id] if tokenizer.add_bos else []
    out = []
    for prompt in spec["greedy"]["prompts"]:
        ids = [*head, *tokenizer.encode(prompt)][-max(1, backend.context_length - wanted) :]
        n = min(wanted, backend.context_length - len(ids))
        backend.release(0)
        token = int(np.argmax(backend.prefill(0, ids)))
        tokens = [token]
        for _ in range(n - 1):
            token = int(np.argmax(backend.decode((0,), (token,))[0]))
            tokens.append(token)
        out.append(tokens[:n])
    backend.release(0)
    return out


def _accuracy(spec: dict[str, Any]) -> float:
    import numpy as np

    from pocketlm.common.errors import InputError
    from pocketlm.engine.classify import open_classifier
    from pocketlm.evals.classify_metrics import classification_metrics

    texts, labels_true = spec["task"]
    classifier = open_classifier(spec["directory"], device=spec["eval"]["device"])
    labels = list(classifier.labels)
    unknown = sorted(set(labels_true) - set(labels))
    if unknown:
        raise InputError(f"labels {unknown[:5]} in the task file are not among its {labels}")
    predictions = classifier.predict(texts)
    probs = np.array([[p.probabilities[name] for name in labels] for p in predictions])
    truth = [labels.index(label) for label in labels_true]
    return classification_metrics(truth, probs, labels)["accuracy"]


def serve(conn: Any, spec: dict[str, Any]) -> None:
    """Answer the parent's commands for one variant until ("stop",) or a closed pipe."""
    from pocketlm.common.errors import PocketLMError
    from pocketlm.engine import load  # noqa: F401 — imported while the other variants import too
    from pocketlm.engine.bench import peak_rss_mb, timed_round

    target = None
    while True:
        try:
            cmd = conn.recv()
        except EOFError:
            return
        try:
            if cmd[0] == "stop":
                return
            if cmd[0] == "load":
                target = _load(spec)
                reply: Any = None if target is None else (target.load_s, target.backend.name)
            elif cmd[0] == "round":
                reply = None if target is None else timed_round(target)
            elif cmd[0] == "memory":
                reply = peak_rss_mb()
            elif cmd[0] == "prepare":
                reply = _prepare(spec)
            elif cmd[0] == "quality":
                reply = _quality(spec)
            else:
                raise ValueError(f"unknown command {cmd!r}")
            conn.send(("ok", reply))
        except PocketLMError as exc:
            conn.send(("error", str(exc), True))
        except Exception:  # the parent reports it with the variant's name
            conn.send(("error", traceback.format_exc(), False))
