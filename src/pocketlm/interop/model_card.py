"""README.md model cards for `export hf`: PocketLM's own models (with the chat format) and
imported ones (what they are, where they came from, how to load them)."""

from __future__ import annotations

from pathlib import Path

from pocketlm import __version__
from pocketlm.model.config import ModelConfig
from pocketlm.tokenizer.tokenizer import Tokenizer

DTYPE_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
ARCHITECTURE = "LlamaForCausalLM"


def model_card(
    config: ModelConfig,
    tokenizer: Tokenizer,
    *,
    dtype: str,
    params: int,
    source: Path,
) -> str:
    """README.md: what the model is, how to load it with transformers, and its chat template."""
    attention = (
        "multi-head"
        if config.n_kv_heads == config.n_heads
        else f"grouped-query ({config.n_kv_heads} key/value heads)"
    )
    return f"""---
library_name: transformers
pipeline_tag: text-generation
tags:
- pocketlm
- llama
---

# {_title(source)} (exported by PocketLM)

A small decoder-only language model trained with [PocketLM](https://github.com/pocketlm/pocketlm)
and exported as a `transformers` {ARCHITECTURE} ({params:,} parameters, {DTYPE_NAMES[dtype]} weights).

| | |
|---|---|
| layers | {config.n_layers} |
| hidden size | {config.dim} |
| attention heads | {config.n_heads}, {attention}, head dim {config.resolved_head_dim} |
| feed-forward | SwiGLU, {config.resolved_ffn_dim} |
| context | {config.max_seq_len} tokens (RoPE, theta {config.rope_theta:g}) |
| vocabulary | {config.vocab_size} (byte-level BPE) |
| embeddings | {"tied to the LM head" if config.tie_embeddings else "separate from the LM head"} |
| attention biases | {"q/k/v (o_proj's bias is all zeros)" if config.qkv_bias else "none"} |

Exported by PocketLM {__version__}: logits match PocketLM's own forward pass, and `manifest.json`
records which model it came from.

## Load it with transformers (offline)

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

path = "path/to/this/directory"
tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True)

# plain text (the tokenizer prepends <|bos|>)
inputs = tokenizer("Once upon a time", return_tensors="pt")
print(tokenizer.decode(model.generate(**inputs, max_new_tokens=40)[0]))

# chat (the template already starts with <|bos|>)
messages = [{{"role": "user", "content": "Hello!"}}]
text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False)
out = model.generate(**inputs, max_new_tokens=64)
print(tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```

Generation stops at `<|endoftext|>` (id {tokenizer.eos_id}) or at the end of a chat turn,
`<|end|>` (id {tokenizer.end_of_turn_id}); see `generation_config.json`.

## Chat template

Roles are `system`, `user` and `assistant`; each message is closed by `<|end|>`:

```
<|bos|><|system|>
{{system}}<|end|>
<|user|>
{{user}}<|end|>
<|assistant|>
{{reply}}<|end|>
```

The Jinja text (in `tokenizer_config.json`):

```jinja
{tokenizer.chat_template}
```
"""


def imported_model_card(
    config: ModelConfig, *, architecture: str, dtype: str, params: int, source: str
) -> str:
    """README.md for a model that came from a Hugging Face folder: what it is and how to load it."""
    # (pipeline tag, the Auto class that loads it): a language model, a classifier, an encoder
    pipeline, auto = "text-generation", "AutoModelForCausalLM"
    if config.labels:
        pipeline, auto = "text-classification", "AutoModelForSequenceClassification"
    elif not config.causal:
        pipeline, auto = "feature-extraction", "AutoModel"
    return f"""---
library_name: transformers
pipeline_tag: {pipeline}
tags:
- pocketlm
---

# {Path(source).name} (exported by PocketLM)

A `transformers` {architecture} ({params:,} parameters, {DTYPE_NAMES[dtype]} weights, {config.n_layers}
layers, hidden size {config.dim}, context {config.max_seq_len} tokens), imported by PocketLM
{__version__} from `{source}` and written back in its own family's format: outputs match
PocketLM's forward pass. `manifest.json` records which model it came from.

```python
from transformers import {auto}, AutoTokenizer

path = "path/to/this/directory"
tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
model = {auto}.from_pretrained(path, local_files_only=True)
```
"""


def classifier_model_card(
    config: ModelConfig, *, architecture: str, dtype: str, params: int, source: str, pad_id: int
) -> str:
    """README.md for a sequence classifier: its labels, how to load it, and the padding rule."""
    labels = ", ".join(f"`{label}`" for label in config.labels)
    return f"""---
library_name: transformers
pipeline_tag: text-classification
tags:
- pocketlm
---

# {_title(Path(source))} (exported by PocketLM)

A `transformers` {architecture}: a decoder ({params:,} parameters, {DTYPE_NAMES[dtype]} weights,
{config.n_layers} layers, hidden size {config.dim}, context {config.max_seq_len} tokens) that
labels a text by its last token as one of {labels} (`id2label` in `config.json`). Exported by
PocketLM {__version__}: its logits match PocketLM's own classifier; `manifest.json` records which
model it came from.

```python
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

path = "path/to/this/directory"
tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
model = AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True)
if tokenizer.pad_token_id is None:
    tokenizer.pad_token_id = model.config.pad_token_id
batch = tokenizer(["a lovely film", "a waste of time"], padding=True, return_tensors="pt")
probs = model(**batch).logits.softmax(-1)
print([model.config.id2label[int(i)] for i in probs.argmax(-1)])
```

transformers classifies each row at its last token that is not `pad_token_id` ({pad_id}): pad
with that id (on either side), and note that a text whose own last token is that id would be
classified at an earlier token (PocketLM goes by the attention mask instead). Texts encoded by the
tokenizer never end with it unless they end with that special token.
"""


def _title(source: Path) -> str:
    """A readable model name: the run's name for a run's final model/ directory."""
    return source.parent.name if source.name == "model" and source.parent.name else source.name
