"""Classifier inference: batched predictions in input order equal the model's own logits one
text at a time; the batcher shares batches between concurrent requests."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from pocketlm.checkpoint.model_io import save_model
from pocketlm.common.errors import ConfigError, InputError
from pocketlm.engine.classify import open_classifier, softmax
from pocketlm.engine.classify_batcher import ClassifyBatcher
from pocketlm.engine.load import open_backend
from pocketlm.engine.scheduler import SchedulerBusy, SchedulerClosed
from pocketlm.model.classifier import to_classifier
from pocketlm.model.config import ModelConfig
from pocketlm.model.transformer import build_model

LABELS = ("negative", "neutral", "positive")
TEXTS = [
    "the cat sat",
    "a big red ball and a small blue ball in the park",
    "happy",
    "the dog said <|end|> and smiled",
    "sad story",
]


@pytest.fixture(scope="module")
def classifier_dir(synthetic_pipeline, tmp_path_factory):
    config = ModelConfig(
        vocab_size=512, dim=32, n_layers=2, n_heads=2, n_kv_heads=1, max_seq_len=24
    )
    model = to_classifier(build_model(config, seed=4), LABELS, seed=1, std=0.5)
    out = tmp_path_factory.mktemp("cls") / "model"
    return save_model(out, model, synthetic_pipeline["tokenizer"])


def test_predictions_are_the_models_own_logits_in_input_order(classifier_dir):
    classifier = open_classifier(classifier_dir, device="cpu", precision="fp32")
    tok = classifier.tokenizer
    assert classifier.labels == LABELS
    predictions = classifier.predict(TEXTS, batch_size=2)
    for text, got in zip(TEXTS, predictions, strict=True):
        ids = tok.encode(text, add_bos=True, parse_special=False)
        assert got.tokens == len(ids) and not got.truncated
        with torch.no_grad():
            logits = classifier.model(torch.tensor([ids]))[0].numpy()
        want = softmax(logits[None])[0]
        np.testing.assert_allclose(list(got.probabilities.values()), want, atol=1e-5)
        assert list(got.probabilities) == list(LABELS)
        assert got.label == LABELS[int(want.argmax())]
        assert sum(got.probabilities.values()) == pytest.approx(1.0)
    one_by_one = classifier.predict(TEXTS, batch_size=1)
    for a, b in zip(predictions, one_by_one, strict=True):
        np.testing.assert_allclose(
            list(a.probabilities.values()), list(b.probabilities.values()), atol=1e-5
        )
    assert len({p.label for p in predictions}) > 1  # the head is not degenerate


def test_token_lists_truncation_and_bad_inputs(classifier_dir):
    classifier = open_classifier(classifier_dir, device="cpu", precision="fp32", max_len=4)
    ids = classifier.encode(TEXTS[:2])
    by_ids = classifier.predict(ids)
    by_text = classifier.predict(TEXTS[:2])
    assert by_ids == by_text
    assert by_text[1].truncated and by_text[1].tokens == 4
    cut = classifier.predict([ids[1][:4]])[0]
    assert cut.probabilities == pytest.approx(by_text[1].probabilities, abs=1e-6)
    assert classifier.predict([]) == []
    with pytest.raises(InputError, match="input 1 has no tokens"):
        classifier.predict([[3], []])
    with pytest.raises(InputError, match="outside the vocabulary"):
        classifier.predict([[3, 9999]])
    with pytest.raises(InputError, match="not both"):
        classifier.predict(["text", [3]])


def test_a_classifier_is_not_opened_for_generation_and_a_language_model_not_for_classifying(
    classifier_dir, tiny_model_dir
):
    with pytest.raises(ConfigError, match="is a classifier over"):
        open_backend(classifier_dir, backend="auto")
    with pytest.raises(ConfigError, match="language model, not a classifier"):
        open_classifier(tiny_model_dir, device="cpu")


def test_the_batcher_answers_concurrent_requests_as_predict_does(classifier_dir):
    classifier = open_classifier(classifier_dir, device="cpu", precision="fp32")
    requests = [classifier.encode(TEXTS[i:]) for i in range(len(TEXTS))]
    batcher = ClassifyBatcher(classifier, max_batch=4, max_queue=64).start()
    try:
        with ThreadPoolExecutor(4) as pool:
            futures = list(pool.map(batcher.submit, requests))
            answers = [f.result(timeout=30) for f in futures]
        for request, answer in zip(requests, answers, strict=True):
            want = classifier.predict(request)
            assert [a.label for a in answer] == [w.label for w in want]
            for a, w in zip(answer, want, strict=True):
                np.testing.assert_allclose(
                    list(a.probabilities.values()), list(w.probabilities.values()), atol=1e-5
                )
        stats = batcher.stats()
        assert stats.finished == sum(len(r) for r in requests) and stats.running
        assert stats.prompt_tokens == sum(len(i) for r in requests for i in r)
    finally:
        batcher.stop()
    with pytest.raises(SchedulerClosed):
        batcher.submit(requests[0])


def test_a_full_queue_refuses_and_stopping_refuses_what_waits(classifier_dir):
    gate = threading.Event()

    class Held:
        labels, context_length = LABELS, 24

        def predict(self, inputs, batch_size=32):
            gate.wait(10)
            return [None] * len(inputs)

    batcher = ClassifyBatcher(Held(), max_batch=2, max_queue=3).start()
    with pytest.raises(InputError, match="at most 5"):
        batcher.submit([[1]] * 6)
    first = batcher.submit([[1], [2]])  # taken by the worker, held at the gate
    for _ in range(100):
        if batcher.stats().active:
            break
        threading.Event().wait(0.01)
    waiting = batcher.submit([[1], [2], [3]])
    with pytest.raises(SchedulerBusy):
        batcher.submit([[6]])
    batcher.stop(drain=False, timeout=0.1)
    with pytest.raises(SchedulerClosed):
        waiting.result(timeout=5)
    gate.set()
    assert first.result(timeout=5) == [None, None]


def test_threads_follow_what_other_programs_leave_free(tiny_classifier_dir, monkeypatch) -> None:
    from pocketlm.engine import classify

    clock = [0.0]
    busy = [0.0]
    monkeypatch.setattr(classify, "runnable_others", lambda: busy[0])
    monkeypatch.setattr(classify, "usable_cores", lambda: 2)
    c = classify.open_classifier(tiny_classifier_dir, device="cpu")
    c._now = lambda: clock[0]
    before = torch.get_num_threads()
    try:
        c.predict(["some words"])
        assert torch.get_num_threads() == 2
        busy[0] = 1.5  # another program now keeps a core busy
        c.predict(["some words"])
        assert torch.get_num_threads() == 2  # not measured again before the recheck interval
        clock[0] += classify.THREADS_RECHECK_S
        c.predict(["some words"])
        assert torch.get_num_threads() == 1
        c.threads = 2  # asked for: kept whatever the load
        c.predict(["some words"])
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
