"""The architecture rules of DEVELOPERS.md, enforced."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "pocketlm"

# Who may import whom: exactly the arrows the code uses (DEVELOPERS.md). The server sits on the
# engine (serve -> engine), never the reverse; the model never imports tokenizer, data or
# optimizers. A new arrow is a design decision: add it here (and to DEVELOPERS.md) on purpose.
ALLOWED: dict[str, set[str]] = {
    "common": set(),
    "tokenizer": {"common"},
    "data": {"common", "tokenizer"},
    "model": {"common"},
    "checkpoint": {"common", "model", "tokenizer"},
    "engine": {"common", "model", "checkpoint", "tokenizer", "interop"},
    "serve": {"common", "tokenizer", "engine"},
    "evals": {"common", "checkpoint", "tokenizer", "data", "interop"},
    "compress": {"common", "model", "checkpoint", "data", "evals", "interop"},
    "interop": {"common", "model", "checkpoint", "tokenizer"},
    # finetune opens its base through interop.open_model, as every entry point taking a model
    "train": {"common", "model", "checkpoint", "tokenizer", "data", "evals", "interop"},
    "pipelines": {
        "common",
        "compress",  # the quickstart's variants, the draft's cut
        "tokenizer",
        "data",
        "checkpoint",
        "interop",
        "engine",
        "evals",
        "train",
    },
    "cli": {
        "common",
        "checkpoint",  # inspect reads a training run's state
        "model",
        "tokenizer",
        "data",
        "engine",
        "serve",
        "evals",
        "compress",
        "interop",
        "train",
        "pipelines",
    },
}


def _modules():
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        yield path, (rel.parts[0] if len(rel.parts) > 1 else None)


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    rel = path.relative_to(SRC.parent).with_suffix("").parts  # ('pocketlm', 'data', 'build')
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(rel[: len(rel) - node.level])
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            found.append((node.lineno, name))
    return found


def test_every_subpackage_is_known():
    packages = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages <= set(ALLOWED), f"add {packages - set(ALLOWED)} to ALLOWED and DEVELOPERS.md"


def _arrows() -> dict[str, dict[str, list[str]]]:
    """package -> imported package -> where ("path:line") each import is."""
    found: dict[str, dict[str, list[str]]] = {p: {} for p in ALLOWED}
    for path, package in _modules():
        if package is None:
            continue
        for line, name in _imports(path):
            parts = name.split(".")
            if parts[0] != "pocketlm" or len(parts) < 2 or parts[1] not in ALLOWED:
                continue
            if parts[1] != package:
                where = f"{path.relative_to(SRC)}:{line}"
                found.setdefault(package, {}).setdefault(parts[1], []).append(where)
    return found


def test_imports_point_down_the_layers():
    violations = [
        f"{where}: {package} imports {target}"
        for package, targets in _arrows().items()
        for target, places in targets.items()
        if target not in ALLOWED[package]
        for where in places
    ]
    assert not violations, "\n".join(violations)


def test_the_table_lists_only_arrows_the_code_uses():
    arrows = _arrows()
    unused = {
        p: sorted(ALLOWED[p] - set(arrows[p])) for p in ALLOWED if ALLOWED[p] - set(arrows[p])
    }
    assert not unused, f"remove these arrows from ALLOWED (nothing uses them): {unused}"


def test_server_depends_on_engine_never_the_reverse():
    assert "engine" in ALLOWED["serve"] and "serve" not in ALLOWED["engine"]
    assert [p for p in ALLOWED if "serve" in ALLOWED[p]] == ["cli"]  # only commands start servers
    arrows = _arrows()
    assert "engine" in arrows["serve"], "serve is built on the engine"
    assert "serve" not in arrows["engine"], arrows["engine"].get("serve")


def test_model_never_imports_optimizers_tokenizer_or_data():
    for path in (SRC / "model").rglob("*.py"):
        for line, name in _imports(path):
            assert not name.startswith(("torch.optim", "pocketlm.tokenizer", "pocketlm.data")), (
                f"{path}:{line} imports {name}"
            )


def test_no_environment_reads_outside_common():
    offenders = []
    for path, package in _modules():
        if package == "common":
            continue
        text = path.read_text(encoding="utf-8")
        for needle in ("os.environ", "os.getenv", "getenv("):
            if needle in text:
                offenders.append(f"{path.relative_to(SRC)} uses {needle}")
    assert not offenders, offenders


def test_no_pickle_loading_anywhere():
    offenders = []
    for path, _ in _modules():
        text = path.read_text(encoding="utf-8")
        for needle in ("pickle.load", "torch.load(", "allow_pickle=True", "weights_only=False"):
            if needle in text:
                offenders.append(f"{path.relative_to(SRC)} uses {needle}")
    assert not offenders, offenders


def _help_imports_torch(args: list[str]) -> tuple[bool, str]:
    code = (
        "import sys\n"
        "from pocketlm.cli.main import main\n"
        f"try:\n    main({args!r})\nexcept SystemExit:\n    pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    return "TORCH" in proc.stderr.split(), proc.stdout


def _all_help_invocations() -> list[list[str]]:
    from pocketlm.cli.main import build_parser

    parser = build_parser()
    out = [["--help"]]
    sub_action = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, sub in sub_action.choices.items():
        out.append([name, "--help"])
        for action in sub._actions:
            if action.__class__.__name__ == "_SubParsersAction":
                out += [[name, inner, "--help"] for inner in action.choices]
    return out


@pytest.mark.parametrize("args", _all_help_invocations(), ids=lambda a: " ".join(a))
def test_help_never_imports_torch(args):
    imported, stdout = _help_imports_torch(args)
    assert "usage: pocketlm" in stdout
    assert not imported, f"pocketlm {' '.join(args)} imported torch"
