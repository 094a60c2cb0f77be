"""THE model: a Llama-compatible decoder with Hugging Face parameter names, plus its KV cache."""
