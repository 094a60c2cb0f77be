"""Build the optional native CPU kernels (C, no external libraries): the inference engine's
kernels (pocketlm.engine._native) and causal attention for CPU training. If no C compiler is found,
the package still installs and PocketLM runs on its PyTorch backend."""

from setuptools import Extension, setup

NATIVE = "src/pocketlm/engine/native/"

setup(
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
    ]
)
