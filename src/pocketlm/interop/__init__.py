"""Exporters: a model artifact as a directory other tools load as is (hf now; gguf, onnx later).

Tensor-name maps live in `export.name_maps` as data tables, one per target format.
"""
