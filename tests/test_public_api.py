"""`import pocketlm`: a light import, every public name resolves, and the README's API example
runs end to end on a tiny corpus."""

from __future__ import annotations

import subprocess
import sys

import pocketlm


def test_import_pocketlm_stays_light():
    code = "import sys, pocketlm; print('torch' in sys.modules, 'numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["False", "False"], out.stderr


def test_every_public_name_resolves_and_none_is_shadowed_by_a_subpackage():
    import pkgutil

    subpackages = {m.name for m in pkgutil.iter_modules(pocketlm.__path__)}
    assert not subpackages & set(pocketlm.__all__)  # importing one would replace the name
    for name in pocketlm.__all__:
        assert getattr(pocketlm, name) is not None, name
    assert callable(pocketlm.pretrain) and callable(pocketlm.train_task)
    assert "generate" in dir(pocketlm)


def test_the_api_runs_the_whole_life_of_a_model(text_folder, tmp_path):
    corpus = pocketlm.build_corpus([str(text_folder)], tmp_path / "corpus")
    tok = pocketlm.train_tokenizer(
        corpus, tmp_path / "tok", pocketlm.TokenizerConfig(vocab_size=320)
    )
    tokens = pocketlm.encode_corpus(corpus, tok, tmp_path / "tokens")
    config = pocketlm.configure(
        pocketlm.PretrainConfig(),
        {"model.dim": 32, "model.n_layers": 2, "model.n_heads": 2, "train.ctx": 32},
        **{"train.budget": "4 steps", "train.batch_size": 4, "train.device": "cpu"},
    )
    run = pocketlm.pretrain(tokens, tmp_path / "run", config)
    assert run.steps == 4
    text = pocketlm.generate(run.model_dir, "the", max_new_tokens=5, temperature=0)
    engine = pocketlm.load(run.model_dir)
    assert text == pocketlm.generate(engine, "the", max_new_tokens=5, temperature=0)
    assert pocketlm.evaluate(run.model_dir, tokens, device="cpu")["bpb"] > 0
    q8 = pocketlm.quantize(run.model_dir, tmp_path / "q8", "int8")[0]
    assert pocketlm.load_model(q8).config == pocketlm.load_model(run.model_dir).config
