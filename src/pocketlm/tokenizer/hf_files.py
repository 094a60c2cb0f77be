"""What a Hugging Face tokenizer folder says besides tokenizer.json, read as `transformers` 5 reads it.

- the chat template: `chat_template.jinja` (transformers 5) wins over `tokenizer_config.json`'s
  `chat_template` (4.x: a string, or a list of named templates of which "default" is the one);
  a processor-style `chat_template.json` is the last resort;
- the named special tokens (`bos_token`, `eos_token`, `pad_token`, ... and model-specific
  `*_token` keys such as Gemma 3's `image_token`): from tokenizer_config.json, overridden by
  special_tokens_map.json only when the config has no `added_tokens_decoder` (as transformers);
- `chat_control_tokens`: the added tokens to treat as control tokens in chat text, when given.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pocketlm.common.errors import ArtifactError

TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
CHAT_TEMPLATE_JSON_FILE = "chat_template.json"


@dataclass(frozen=True)
class TokenizerSettings:
    """The tokenizer folder's settings that tokenizer.json does not hold."""

    special_tokens: dict[str, str]  # "bos_token" -> "<s>", ...: the names templates see
    chat_template: str | None
    chat_template_source: str | None  # the file it came from
    chat_control_tokens: tuple[str, ...] | None


def read_json_file(path: Path) -> dict[str, Any] | None:
    """A JSON object from `path`, None when the file does not exist; ArtifactError when bad."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ArtifactError(f"{path}: corrupt ({exc})") from exc
    if not isinstance(data, dict):
        raise ArtifactError(f"{path}: corrupt (not a JSON object)")
    return data


def read_tokenizer_settings(directory: str | Path) -> TokenizerSettings:
    """The special tokens, chat template and control tokens of a tokenizer folder."""
    directory = Path(directory)
    config = read_json_file(directory / TOKENIZER_CONFIG_FILE) or {}
    tokens = _named_tokens(config, directory / TOKENIZER_CONFIG_FILE)
    if "added_tokens_decoder" not in config:
        smap_path = directory / SPECIAL_TOKENS_MAP_FILE
        tokens.update(_named_tokens(read_json_file(smap_path) or {}, smap_path))
    template, source = _chat_template(directory, config)
    control = config.get("chat_control_tokens")
    if control is not None and not (
        isinstance(control, list) and all(isinstance(t, str) for t in control)
    ):
        raise ArtifactError(
            f"{directory / TOKENIZER_CONFIG_FILE}: chat_control_tokens must be a list of strings"
        )
    return TokenizerSettings(
        {k: v for k, v in tokens.items() if v is not None},
        template,
        source,
        None if control is None else tuple(control),
    )


def _token_text(value: Any) -> str | None:
    """A token given as text or as a serialized AddedToken ({"content": ...})."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _named_tokens(data: dict[str, Any], path: Path) -> dict[str, str | None]:
    """The `*_token` entries that name a token (flags like add_bos_token are booleans)."""
    tokens: dict[str, str | None] = {}
    for key, value in data.items():
        if not key.endswith("_token") or isinstance(value, bool):
            continue
        if value is None:
            tokens[key] = None
        elif (text := _token_text(value)) is not None:
            tokens[key] = text
        elif not isinstance(value, int | float | list):
            raise ArtifactError(f"{path}: {key} must be a token's text, got {value!r}")
    return tokens


def _chat_template(directory: Path, config: dict[str, Any]) -> tuple[str | None, str | None]:
    path = directory / CHAT_TEMPLATE_FILE
    if path.is_file():
        try:
            return path.read_text(encoding="utf-8"), str(path)
        except (OSError, UnicodeDecodeError) as exc:
            raise ArtifactError(f"{path}: cannot read the chat template ({exc})") from exc
    config_path = directory / TOKENIZER_CONFIG_FILE
    if config.get("chat_template") is not None:
        return _pick_template(config["chat_template"], config_path), str(config_path)
    json_path = directory / CHAT_TEMPLATE_JSON_FILE
    data = read_json_file(json_path)
    if data is not None and data.get("chat_template") is not None:
        return _pick_template(data["chat_template"], json_path), str(json_path)
    return None, None


def _pick_template(value: Any, path: Path) -> str:
    """The template text: a string, or the "default" of a list of {"name", "template"}."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        named = {
            t.get("name"): t.get("template")
            for t in value
            if isinstance(t, dict) and isinstance(t.get("template"), str)
        }
        if isinstance(named.get("default"), str):
            return named["default"]
        raise ArtifactError(
            f"{path}: chat_template lists templates {sorted(map(str, named))} but none named "
            "'default'"
        )
    raise ArtifactError(f"{path}: chat_template must be text or a list of named templates")
