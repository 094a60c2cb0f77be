"""Stored teacher targets (in the API's text form) aligned with a student's tokens by byte spans:
exact on the teacher's own tokenizer, partial on another split, none on text they do not
spell; packed rows carry them exactly as unpacked rows do."""

from __future__ import annotations

import math

import numpy as np
import pytest
from tokenizers import Tokenizer as Backend
from tokenizers import decoders, models, pre_tokenizers, trainers

from pocketlm.data.packing import pack_examples, plan_rows
from pocketlm.data.sft_tokens import sft_tokens
from pocketlm.data.sparse_targets import (
    align_reply,
    pack_targets,
    record_targets,
    reply_targets,
)
from pocketlm.data.synth.replies import sparse_targets
from pocketlm.engine.generation import TokenLogprob
from pocketlm.serve.openai_responses import TokenTexts, chat_logprobs
from pocketlm.tokenizer.special_tokens import SPECIAL_TOKENS
from pocketlm.tokenizer.token_bytes import vocab_bytes
from pocketlm.tokenizer.tokenizer import Tokenizer

CORPUS = [
    "the little cat sat on the warm mat and looked at the sea. " * 3,
    "a dog and a fox ran over the hill; why is the sea blue? the sun, the owl. " * 3,
    "naïve café owners sell crème brûlée — 3.14 € each, 日本語 too! " * 2,
]
REPLY = "the cat looked at the blue sea, naïve café — 日本語 🙂!"


def byte_bpe(vocab_size: int) -> Tokenizer:
    """A PocketLM byte-level BPE tokenizer trained in-process on CORPUS."""
    backend = Backend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )  # fmt: skip
    backend.train_from_iterator(CORPUS, trainer=trainer)
    return Tokenizer(backend)


@pytest.fixture(scope="module")
def teacher_tok() -> Tokenizer:
    return byte_bpe(420)


def served_targets(tokenizer: Tokenizer, ids: list[int], k: int, seed: int = 0) -> list[dict]:
    """What `pocketlm synth` stores for a reply the server wrote as `ids`: its chat logprobs
    object (top-k of a random distribution, the chosen token among them) read by synth."""
    rng = np.random.default_rng(seed)
    entries = []
    for token_id in ids:
        logits = rng.normal(size=tokenizer.vocab_size)
        logits[token_id] += 8.0
        logp = logits - np.logaddexp.reduce(logits)
        top = np.argsort(-logp)[:k]
        entries.append(TokenLogprob(token_id, float(logp[token_id]),
                                    tuple((int(i), float(logp[i])) for i in top)))  # fmt: skip
    return sparse_targets(chat_logprobs(entries, TokenTexts(tokenizer)))


def test_the_teachers_own_tokenizer_aligns_every_reply_token(teacher_tok):
    ids = teacher_tok.encode(REPLY, parse_special=False)
    stored = served_targets(teacher_tok, ids, k=4)
    assert any("bytes" in t for t in stored)  # a multi-byte character split across tokens
    got_ids, t = reply_targets(REPLY, stored, teacher_tok)
    assert got_ids == ids and t.valid.all() and t.width == 4
    for i, entry in enumerate(stored):
        alternatives = entry["top"]
        assert len(alternatives) == 4
        for j, (text, lp, *raw) in enumerate(alternatives):
            raw_bytes = bytes(raw[0]) if raw else text.encode("utf-8")
            assert vocab_bytes(teacher_tok).table[t.ids[i, j]] == raw_bytes
            assert t.logprobs[i, j] == pytest.approx(lp, abs=1e-6)
        assert ids[i] in t.ids[i]  # the chosen token is among them


def test_the_chosen_token_joins_the_list_and_k_caps_it(teacher_tok):
    ids = teacher_tok.encode(REPLY, parse_special=False)
    stored = served_targets(teacher_tok, ids, k=0)  # logprobs only: the chosen token alone
    assert all(t["top"] == [] for t in stored)
    _, t = reply_targets(REPLY, stored, teacher_tok)
    assert t.valid.all() and t.width == 1
    assert list(t.ids[:, 0]) == ids
    assert np.allclose(t.logprobs[:, 0], [s["logprob"] for s in stored], atol=1e-6)
    _, capped = reply_targets(REPLY, served_targets(teacher_tok, ids, k=5), teacher_tok, k=2)
    assert capped.width == 2 and (capped.logprobs[:, 0] >= capped.logprobs[:, 1]).all()


def test_a_null_logprob_and_a_token_the_student_lacks_are_dropped(teacher_tok):
    ids = teacher_tok.encode("the cat", parse_special=False)
    stored = served_targets(teacher_tok, ids, k=3)
    stored[0]["top"] = [["zzz-not-a-token", -0.5], [stored[0]["top"][1][0], None],
                        *stored[0]["top"][2:]]  # fmt: skip
    _, t = reply_targets("the cat", stored, teacher_tok)
    assert t.valid.all()
    listed = t.logprobs[0] > -math.inf
    kept = {stored[0]["token"], stored[0]["top"][2][0]}
    assert {teacher_tok.decode([i]) for i in t.ids[0][listed]} == kept


def test_another_split_aligns_only_the_tokens_with_equal_spans(teacher_tok):
    student_tok = byte_bpe(300)  # fewer merges: longer teacher tokens split in two
    stored = served_targets(teacher_tok, teacher_tok.encode(REPLY, parse_special=False), k=3)
    student_ids, t = reply_targets(REPLY, stored, student_tok)
    table = vocab_bytes(student_tok).table
    teacher_spans, at = set(), 0
    for entry in stored:
        raw = bytes(entry["bytes"]) if "bytes" in entry else entry["token"].encode()
        teacher_spans.add((at, at + len(raw)))
        at += len(raw)
    at, expected = 0, []
    for i in student_ids:
        expected.append((at, at + len(table[i])) in teacher_spans)
        at += len(table[i])
    assert list(t.valid) == expected and 0 < sum(expected) < len(expected)
    for i in np.flatnonzero(
        t.valid
    ):  # an aligned token's alternatives are student ids of the same bytes
        listed = t.logprobs[i] > -math.inf
        assert student_ids[i] in t.ids[i][listed]


def test_text_the_teacher_tokens_do_not_spell_aligns_nothing(teacher_tok):
    stored = served_targets(teacher_tok, teacher_tok.encode(REPLY, parse_special=False), k=3)
    ids, t = reply_targets("A" + REPLY[1:], stored, teacher_tok)
    assert len(ids) == len(t.valid) and not t.valid.any()


def test_after_a_half_character_the_teacher_wrote_nothing_aligns(teacher_tok):
    head = teacher_tok.encode("the cat", parse_special=False)
    lone = vocab_bytes(teacher_tok).index[b"\xe5"]  # the first byte of a 3-byte character
    ids = [*head, lone, *teacher_tok.encode(" sat", parse_special=False)]
    stored = served_targets(teacher_tok, ids, k=2)
    reply = teacher_tok.decode(ids)  # the text the API sends: U+FFFD for the lone byte
    assert "\ufffd" in reply
    _, t = reply_targets(reply, stored, teacher_tok)
    assert t.valid[: len(head)].all() and not t.valid[len(head) :].any()


def test_a_record_aligns_its_reply_inside_the_chat_template_not_the_end_of_turn(teacher_tok):
    reply = "the sea is blue."
    messages = [{"role": "user", "content": "why is the sea blue?"},
                {"role": "assistant", "content": reply}]  # fmt: skip
    tokens = sft_tokens(teacher_tok, messages)
    stored = served_targets(teacher_tok, teacher_tok.encode(reply, parse_special=False), k=2)
    t = record_targets(tokens, messages, stored, vocab_bytes(teacher_tok))
    mask = np.asarray(tokens.loss_mask)
    assert not t.valid[~mask].any()
    end = np.flatnonzero(mask)[-1]
    assert tokens.ids[end] in teacher_tok.stop_ids and not t.valid[end]
    assert t.valid[mask].sum() == mask.sum() - 1  # every reply token but the end of turn
    assert record_targets(tokens, messages, None, vocab_bytes(teacher_tok)) is None


def test_packed_rows_carry_the_same_targets_as_unpacked_rows(teacher_tok):
    rng = np.random.default_rng(3)
    vocab = vocab_bytes(teacher_tok)
    examples, targets = [], []
    for n in range(7):
        words = rng.choice(["the", "cat", "sea", "blue", "owl", "café"], size=2 + n % 4)
        reply = " ".join(words)
        messages = [{"role": "user", "content": f"q{n}"}, {"role": "assistant", "content": reply}]
        tokens = sft_tokens(teacher_tok, messages)
        stored = served_targets(teacher_tok, teacher_tok.encode(reply, parse_special=False),
                                k=1 + n % 3, seed=n)  # fmt: skip
        examples.append(tokens)
        targets.append(None if n == 4 else record_targets(tokens, messages, stored, vocab))
    ctx = 40

    def per_example(packing: bool) -> list[tuple]:
        plan = plan_rows([len(e.ids) - 1 for e in examples], ctx, packing)
        rows = pack_examples(examples, ctx, 0, packing=packing)
        extra = pack_targets(examples, targets, plan, ctx)
        out = [None] * len(examples)
        for r, members in enumerate(plan):
            at = 0
            for i in members:
                n = len(examples[i].ids) - 1
                seg = slice(at, at + n)
                out[i] = (rows.targets[r, seg], extra["teacher_ids"][r, seg],
                          extra["teacher_logprobs"][r, seg], extra["teacher_valid"][r, seg])  # fmt: skip
                at += n
        return out

    packed, unpacked = per_example(True), per_example(False)
    for a, b in zip(packed, unpacked, strict=True):
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)
    assert not packed[4][3].any() and packed[0][3].any()
    valid = packed[0][3]
    assert (packed[0][0][valid] >= 0).all()  # targets only where the hard label is a target


def test_align_reply_finds_the_reply_after_prompt_bytes_and_before_the_end_of_turn(teacher_tok):
    vocab = vocab_bytes(teacher_tok)
    reply = "the cat"
    reply_ids = teacher_tok.encode(reply, parse_special=False)
    stored = served_targets(teacher_tok, reply_ids, k=2)
    around = [
        *teacher_tok.encode("\n", parse_special=False),
        *reply_ids,
        teacher_tok.end_of_turn_id,
    ]
    t = align_reply(reply, stored, around, vocab)
    assert list(t.valid) == [False, *[True] * len(reply_ids), False]
    truncated = align_reply(reply, stored, reply_ids[:-1], vocab)  # the example was cut short
    assert truncated.valid.all()
