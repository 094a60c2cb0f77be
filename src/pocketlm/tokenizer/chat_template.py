"""THE chat template: one format for chat, the server, SFT and every exporter.

    <|bos|><|system|>\\n{system}<|end|>\\n<|user|>\\n{user}<|end|>\\n<|assistant|>\\n{reply}<|end|>\\n

The Jinja text is stored in tokenizer_config.json so `transformers`' apply_chat_template gives
the same string as `render_chat` below (a test checks this).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pocketlm.common.errors import InputError
from pocketlm.tokenizer.special_tokens import ASSISTANT, BOS, END_OF_TURN, ROLE_TOKENS

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


def render_chat(messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True) -> str:
    """Render messages ({'role': system|user|assistant, 'content': str}) with the chat template."""
    parts = [BOS]
    for i, message in enumerate(messages):
        role = message.get("role")
        content = message.get("content")
        if role not in ROLE_TOKENS:
            raise InputError(
                f"message {i}: role must be one of {', '.join(ROLE_TOKENS)}, got {role!r}"
            )
        if not isinstance(content, str):
            raise InputError(f"message {i}: content must be a string")
        parts.append(f"{ROLE_TOKENS[role]}\n{content}{END_OF_TURN}\n")
    if add_generation_prompt:
        parts.append(f"{ASSISTANT}\n")
    return "".join(parts)
