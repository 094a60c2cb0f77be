"""The names an `export onnx` directory uses, in one torch-free place: the exporter writes them,
the onnxruntime backends and the artifact sniffing read them."""

from __future__ import annotations

ONNX_FILE = "model.onnx"
ONNX_DATA_FILE = "model.onnx.data"  # the weights, beside the graph, when they are large
ONNX_CONFIG_FILE = "onnx_config.json"
# onnx_config.json's "task": what the graph computes
TEXT_GENERATION, TEXT_CLASSIFICATION = "text-generation", "text-classification"
