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


def chat_turns(messages: Sequence[Mapping[str, str]]) -> list[tuple[str, str]]:
    """(role token, content) of each message, checked (InputError for a bad role or content)."""
    turns = []
    for i, message in enumerate(messages):
        role = message.get("role")
        content = message.get("content")
        if role not in ROLE_TOKENS:
            raise InputError(
                f"message {i}: role must be one of {', '.join(ROLE_TOKENS)}, got {role!r}"
            )
        if not isinstance(content, str):
            raise InputError(f"message {i}: content must be a string")
        turns.append((ROLE_TOKENS[role], content))
    return turns


def render_chat(messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True) -> str:
    """Render messages ({'role': system|user|assistant, 'content': str}) with the chat template.

    The text is for display and for exporters; to get token ids use `Tokenizer.encode_chat`, which
    never turns special-token text inside a message into control tokens (encoding this string would).
    """
    parts = [BOS]
    for role_token, content in chat_turns(messages):
        parts.append(f"{role_token}\n{content}{END_OF_TURN}\n")
    if add_generation_prompt:
        parts.append(f"{ASSISTANT}\n")
    return "".join(parts)
