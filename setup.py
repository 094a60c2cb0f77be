"""Build the optional native CPU kernels (C, no external libraries): the inference engine's
kernels (pocketlm.engine._native) and causal attention for CPU training. If no C compiler is found,
the package still installs and PocketLM runs on its PyTorch backend. Also installs
packaging/pocketlm-lm-eval.pth (see BuildPyWithPth)."""

import os

from setuptools import Extension, setup
from setuptools.command.build_py import build_py

NATIVE = "src/pocketlm/engine/native/"
PTH = "packaging/pocketlm-lm-eval.pth"


class BuildPyWithPth(build_py):
    """build_py, plus the start-up hook that registers PocketLM's model in lm-evaluation-harness
    (a .pth file must sit at the top of site-packages: no package directory can carry it). An
    editable install (PEP 660) writes its wheel from `install_lib`, a plain wheel from
    `build_lib`."""

    def run(self) -> None:
        super().run()
        root = self.build_lib
        if getattr(self, "editable_mode", False):
            root = self.get_finalized_command("install").install_lib
        self.copy_file(PTH, os.path.join(root, os.path.basename(PTH)))


setup(
    cmdclass={"build_py": BuildPyWithPth},
    ext_modules=[
        Extension(
            "pocketlm.engine._native",
            sources=[
                NATIVE + f
                for f in (
                    "module.c",
                    "model.c",
                    "matmul.c",
                    "attend.c",
                    "kernels.c",
                    "kernels_avx2.c",
                    "kernels_avx512.c",
                    "kernels_avx512_bf16.c",
                    "gemm_xt_avx512.c",
                    "gemm_xt_avx2.c",
                    "threadpool.c",
                )
            ],
            depends=[NATIVE + "plm.h", NATIVE + "kernels_simd.h", NATIVE + "model_internal.h"],
            extra_compile_args=[
                "-O3",
                "-std=gnu11",
                "-pthread",
                "-fno-math-errno",
                "-Wno-missing-field-initializers",
            ],
            extra_link_args=["-pthread"],
            optional=True,
        ),
        Extension(
            "pocketlm.model._attention",
            sources=["src/pocketlm/model/native/attention.c"],
            extra_compile_args=["-O3", "-std=gnu11", "-pthread", "-fopenmp", "-fno-math-errno"],
            extra_link_args=["-pthread", "-fopenmp"],
            optional=True,
        ),
    ],
)
