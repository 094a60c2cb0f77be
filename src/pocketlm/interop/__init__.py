"""Other formats in and out: Hugging Face folders imported (hf_import, open_model) and a model
artifact exported for `transformers` (hf_export) or llama.cpp / Ollama (gguf_export).

Each model family is data in `families/` (one FamilySpec: config keys, tensor-name tables for
Hugging Face and GGUF, llama.cpp's architecture), read by all three directions.
"""
