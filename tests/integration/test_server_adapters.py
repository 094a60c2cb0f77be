"""Several LoRA adapters served on one base (`serve --model BASE --adapter NAME=DIR …`), live on
127.0.0.1: /v1/models lists them, a request's `model` picks one (the base by its own name) and
gets the same greedy text as `generate --adapter` for it, an unknown name gets a 404, and requests
for different adapters arriving together each get their own model's answer."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from pocketlm.cli.main import build_parser  # noqa: E402
from pocketlm.cli.serve_cmd import adapter_specs, open_models  # noqa: E402
from pocketlm.common.errors import ConfigError  # noqa: E402
from pocketlm.engine.load import load_engine  # noqa: E402
from pocketlm.engine.sampling import SamplingParams  # noqa: E402
from pocketlm.model.lora import LoRAConfig  # noqa: E402
from tests.integration.live_server import free_port, live_server, wait_until  # noqa: E402
from tests.unit.checkpoint.lora_adapters import make_adapter  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ("the little", "once upon a time")
MAX_TOKENS = 6


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory):
    """Two adapters of the tiny model that answer differently from it and from each other."""
    root = tmp_path_factory.mktemp("adapters")
    lora = LoRAConfig(rank=4, alpha=16.0, targets="q_proj,v_proj,lm_head")
    return {
        name: make_adapter(tiny_model_dir, root / f"{name}-dir", lora, seed=seed)[0]
        for name, seed in (("alpha", 0), ("beta", 7))
    }


def _greedy(model, adapter=None) -> dict[str, str]:
    """What `generate --adapter` answers each prompt, greedy (the CLI's engine, in process)."""
    engine = load_engine(model, device="cpu", adapter=adapter, backend="auto")
    params = SamplingParams(max_new_tokens=MAX_TOKENS, temperature=0.0)
    return {p: "".join(c.text for c in engine.generate(p, params)) for p in PROMPTS}


@pytest.fixture(scope="module")
def expected(tiny_model_dir, adapters):
    out = {"tiny": _greedy(tiny_model_dir)}
    out.update({name: _greedy(tiny_model_dir, path) for name, path in adapters.items()})
    return out


@pytest.fixture(scope="module", params=["mixed", "separate"])
def server(request, tiny_model_dir, adapters):
    """The server `serve --model tiny --adapter alpha=… --adapter beta=… --slots 3` builds (its
    own option parsing and model opening): base and adapters mixed in one batch of 3 slots, or
    (--separate-adapters) 3 slots per model, the adapters over one copy of the base."""
    mixed = request.param == "mixed"
    args = build_parser().parse_args(
        ["serve", "--model", str(tiny_model_dir), "--model-name", "tiny", "--slots", "3"]
        + [f for name, path in adapters.items() for f in ("--adapter", f"{name}={path}")]
        + ([] if mixed else ["--separate-adapters"])
    )
    base, served = open_models(args, threads=1)
    assert base.model_id == "tiny" and [a.model_id for a in served] == ["alpha", "beta"]
    assert all(a.backend_name == "torch" and a.parent == "tiny" for a in served)
    assert all((a.scheduler is base.scheduler) == mixed for a in served)
    if not mixed:
        down = [
            a.scheduler.backend.model.get_submodule("model.layers.0.mlp.down_proj") for a in served
        ]
        assert down[0].weight.data_ptr() == down[1].weight.data_ptr()  # one copy of the base
    with live_server(base.scheduler, base.tokenizer, adapters=served, default_model="alpha") as srv:
        srv.slots = 3 if mixed else 9
        yield srv


def _complete(client, model: str | None, prompt: str) -> str:
    body = {"prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0}
    if model is not None:
        body["model"] = model
    r = client.post("/v1/completions", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["model"] == (model or "alpha")
    return r.json()["choices"][0]["text"]


def test_models_lists_the_default_first_then_the_others(server):
    with httpx.Client(base_url=server.url, timeout=30) as client:
        data = client.get("/v1/models").json()["data"]
        assert [m["id"] for m in data] == ["alpha", "tiny", "beta"]
        assert [m.get("parent") for m in data] == ["tiny", None, "tiny"]
        assert client.get("/v1/models/beta").json()["parent"] == "tiny"
        health = client.get("/health").json()
        assert health["model"] == "alpha" and sorted(health["models"]) == ["alpha", "beta", "tiny"]
        assert health["slots"] == server.slots


def test_each_name_gets_its_own_models_greedy_text(server, expected):
    answers = {name: expected[name][PROMPTS[0]] for name in ("tiny", "alpha", "beta")}
    assert len(set(answers.values())) == 3, answers  # the adapters change the answer
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for name in ("tiny", "alpha", "beta"):
            for prompt in PROMPTS:
                assert _complete(client, name, prompt) == expected[name][prompt], (name, prompt)
        assert _complete(client, None, PROMPTS[0]) == expected["alpha"][PROMPTS[0]]
        chat = client.post(
            "/v1/chat/completions",
            json={"model": "beta", "messages": [{"role": "user", "content": "hi"}], "n": 1},
        )
        assert chat.status_code == 200 and chat.json()["model"] == "beta"


def test_an_unknown_model_gets_a_404_openai_error(server):
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for path, body in (
            ("/v1/completions", {"model": "gamma", "prompt": "x"}),
            ("/v1/chat/completions", {"model": "gamma", "messages": [{"role": "user"}]}),
        ):
            r = client.post(path, json=body)
            assert r.status_code == 404, r.text
            error = r.json()["error"]
            assert error["code"] == "model_not_found" and error["param"] == "model"
            assert "gamma" in error["message"] and "beta" in error["message"]
        assert client.get("/v1/models/gamma").status_code == 404


def test_requests_for_different_adapters_together_each_get_their_own_answer(server, expected):
    jobs = [(name, p) for _ in range(2) for name in ("alpha", "beta", "tiny") for p in PROMPTS]
    answers: dict[int, str] = {}
    start = threading.Barrier(len(jobs))

    def ask(i: int, name: str, prompt: str) -> None:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            start.wait()
            answers[i] = _complete(client, name, prompt)

    threads = [threading.Thread(target=ask, args=(i, *job)) for i, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(answers) == len(jobs)
    for i, (name, prompt) in enumerate(jobs):
        assert answers[i] == expected[name][prompt], (name, prompt)


def test_adapter_values_name_their_model_or_take_the_directorys_name(tmp_path):
    (tmp_path / "a=b").mkdir()
    assert adapter_specs(["support=runs/x", "runs/lora-code", str(tmp_path / "a=b")]) == [
        ("support", Path("runs/x")),
        ("lora-code", Path("runs/lora-code")),
        ("a=b", tmp_path / "a=b"),
    ]
    with pytest.raises(ConfigError, match="give a directory"):
        adapter_specs(["support="])


def test_two_models_of_one_name_are_refused_before_loading(tmp_path):
    args = build_parser().parse_args(
        ["serve", "--model", str(tmp_path / "nowhere"), "--adapter", "nowhere=a"]
    )
    with pytest.raises(ConfigError, match="two served models are named 'nowhere'"):
        open_models(args, threads=1)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/health", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def test_the_serve_command_serves_named_and_unnamed_adapters(tiny_model_dir, adapters, expected):
    """The real command: `--adapter alpha=DIR` and `--adapter DIR` (named after DIR), the base
    under its directory's name; SIGTERM still exits 0."""
    port = free_port()
    command = [sys.executable, "-m", "pocketlm", "serve", "--model", str(tiny_model_dir)]
    command += ["--adapter", f"alpha={adapters['alpha']}", "--adapter", str(adapters["beta"])]
    command += ["--port", str(port), "--slots", "1", "--threads", "1"]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    try:
        assert wait_until(lambda: proc.poll() is not None or _healthy(url), timeout_s=60)
        assert proc.poll() is None, proc.stderr.read()
        with httpx.Client(base_url=url, timeout=30) as client:
            ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
            assert ids == ["alpha", tiny_model_dir.name, "beta-dir"]
            assert _complete(client, "beta-dir", PROMPTS[1]) == expected["beta"][PROMPTS[1]]
            assert _complete(client, None, PROMPTS[1]) == expected["alpha"][PROMPTS[1]]
            text = _complete(client, tiny_model_dir.name, PROMPTS[1])
            assert text == expected["tiny"][PROMPTS[1]]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert "alpha (torch)" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
