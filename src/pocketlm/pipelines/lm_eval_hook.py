"""Make `lm_eval --model pocketlm` work as typed: add PocketLM's model to lm-evaluation-harness's
registry the moment lm_eval fills it.

lm_eval (0.4.x) fills its model registry from its own `lm_eval.models` package and reads no
entry points, so nothing a plug-in installs is seen by `lm_eval --model ...`. The installed
`pocketlm-lm-eval.pth` (site-packages; see setup.py) imports this module when Python starts, and
`install()` puts one finder in front of `sys.meta_path` that waits for `lm_eval.models`: when
that module has run, "pocketlm" is registered as a lazy "module:attribute" placeholder, so
neither torch nor PocketLM's adapter is imported unless a run asks for the model. Start-up cost
when lm_eval is never imported: importing this file and one name comparison per import.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the finder protocol's types; not imported at every start-up
    import types
    from importlib.abc import Loader
    from importlib.machinery import ModuleSpec

WATCHED = "lm_eval.models"  # runs lm_eval's registration of its own models when imported
MODEL_NAME = "pocketlm"  # the same name as pipelines.lm_eval_model.MODEL_NAME
TARGET = "pocketlm.pipelines.lm_eval_model:PocketLMEval"


def register_placeholder() -> None:
    """Register "pocketlm" (lazily, by "module:attribute") unless the registry has it."""
    from lm_eval.api.registry import model_registry

    if MODEL_NAME not in model_registry:
        model_registry.register(MODEL_NAME, target=TARGET)


class _RegisteringLoader:
    """The real loader of `lm_eval.models`, then the registration (the loader protocol)."""

    def __init__(self, inner: Loader) -> None:
        self.inner = inner

    def create_module(self, spec: ModuleSpec) -> types.ModuleType | None:
        return self.inner.create_module(spec)

    def __getattr__(self, name: str) -> object:  # resource readers etc.: the real loader's
        return getattr(self.inner, name)

    def exec_module(self, module: types.ModuleType) -> None:
        self.inner.exec_module(module)
        try:
            register_placeholder()
        except Exception as exc:  # an lm_eval without this registry API: say so, break nothing
            print(f"pocketlm: could not register the lm_eval model ({exc})", file=sys.stderr)


class LmEvalFinder:
    """Finds nothing itself; wraps the loader of `lm_eval.models` (once, then leaves): the
    meta path finder protocol."""

    def find_spec(self, name: str, path: object = None, target: object = None) -> ModuleSpec | None:
        if name != WATCHED:
            return None
        if self in sys.meta_path:  # one shot: the real finders answer from here on
            sys.meta_path.remove(self)
        for finder in sys.meta_path:
            spec = getattr(finder, "find_spec", lambda *a: None)(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _RegisteringLoader(spec.loader)
                return spec
        return None


def install() -> bool:
    """Put the finder first on sys.meta_path, or register at once where lm_eval.models is
    already imported; False when nothing was needed (the finder is there already)."""
    if WATCHED in sys.modules:
        register_placeholder()
        return True
    if any(isinstance(f, LmEvalFinder) for f in sys.meta_path):
        return False
    sys.meta_path.insert(0, LmEvalFinder())
    return True
