"""A model's own Jinja chat template, rendered and encoded exactly as `transformers` 5 does it.

Rendering: the sandbox transformers uses (ImmutableSandboxedEnvironment, trim_blocks,
lstrip_blocks, loop controls, the `{% generation %}` tag), its `tojson` (no HTML escaping,
ensure_ascii off, indent/separators/sort_keys), `raise_exception`, `strftime_now`, and its
guarded `dict` and `namespace`; variables `messages`, `tools=None`, `documents=None`,
`add_generation_prompt`, the named special tokens (`bos_token`, ...) and any extra variables
(`date_string`, `enable_thinking`, ...). So `render` equals `apply_chat_template(tokenize=False)`.

Encoding without letting message text forge control tokens is transformers'
`sanitize_control_tokens`: control-token text inside a message is wrapped in two private-use
marker characters before rendering; the rendered text is cut at the markers, the marked tokens
are encoded as plain text and the rest (the template's own text) with special tokens parsed.
Control tokens are the special added tokens plus the other added tokens the template's literal
text contains (Qwen3's `<think>`), or the special ones plus `chat_control_tokens` when the
config lists them. One refinement: in assistant messages only special tokens are escaped, so
a reply's own `<think>...</think>` stays markup the template can strip from the history.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from pocketlm.common.errors import ArtifactError, InputError, PocketLMError

MARK_START = "\U000f0000"  # the private-use characters transformers marks user control tokens with
MARK_END = "\U000f0001"
_RESERVED = ("messages", "tools", "documents", "add_generation_prompt")
_MIN_JINJA = (3, 1, 6)  # older versions have known sandbox escapes; templates are untrusted code


@functools.cache
def _environment():
    """THE Jinja environment for chat templates, configured as transformers configures its own."""
    try:
        import jinja2
        import jinja2.ext
        import jinja2.nodes
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError as exc:
        raise PocketLMError(
            "rendering the model's chat template needs jinja2: pip install 'jinja2>=3.1.6'"
        ) from exc
    version = tuple(int(p) for p in re.findall(r"\d+", jinja2.__version__)[:3])
    if version < _MIN_JINJA:
        raise PocketLMError(
            f"jinja2 {jinja2.__version__} has known sandbox escapes and chat templates are "
            "untrusted code: pip install -U 'jinja2>=3.1.6'"
        )

    class GenerationTag(jinja2.ext.Extension):
        """`{% generation %}...{% endgeneration %}` (marks assistant text for training masks)."""

        tags = frozenset({"generation"})

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            call = jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body)
            return call.set_lineno(lineno)

        def _body(self, caller):
            return caller()

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        # Jinja's own tojson escapes HTML characters; transformers' does not.
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    def strftime_now(format):
        return datetime.now().strftime(format)

    class TemplateDict:
        """`dict(...)` without dict's attributes (no way out of the sandbox through them)."""

        def __call__(self, *args, **kwargs):
            return dict(*args, **kwargs)

        def fromkeys(self, *args, **kwargs):
            return dict.fromkeys(*args, **kwargs)

    class TemplateNamespace(jinja2.utils.Namespace):
        """`namespace(...)` that refuses underscore attributes (CPython internals)."""

        def __init__(*args, **kwargs):
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check_name(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(
                    f"chat templates cannot store underscore attributes on a namespace: {name!r}"
                )

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[GenerationTag, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    env.globals["dict"] = TemplateDict()
    env.globals["namespace"] = TemplateNamespace
    return env


class JinjaChatTemplate:
    """One compiled chat template: render messages to text, list the text it writes itself."""

    def __init__(self, text: str, source: str) -> None:
        import jinja2

        self.text = text
        self.source = source
        env = _environment()
        try:
            self._template = env.from_string(text)
            tree = env.parse(text)
        except jinja2.TemplateSyntaxError as exc:
            raise ArtifactError(
                f"{source}: the chat template is not valid Jinja (line {exc.lineno}: {exc.message})"
            ) from exc
        except RecursionError as exc:
            raise ArtifactError(f"{source}: the chat template is nested too deeply") from exc
        literals = {node.data for node in tree.find_all(jinja2.nodes.TemplateData)}
        literals |= {
            node.value for node in tree.find_all(jinja2.nodes.Const) if isinstance(node.value, str)
        }
        # Joined with NUL so that a token cannot match across two literals.
        self.literal_text = "\0".join(literals)

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        add_generation_prompt: bool,
        special_tokens: Mapping[str, str],
        variables: Mapping[str, Any] | None = None,
    ) -> str:
        """The template over plain messages (InputError when the template refuses them)."""
        import jinja2

        extra = dict(variables or {})
        clash = [k for k in extra if k in _RESERVED]
        if clash:
            raise InputError(f"template variables cannot replace {', '.join(clash)}")
        for key, value in extra.items():
            # Plain values only: an object's methods would be reachable from untrusted Jinja.
            if not isinstance(key, str) or type(value) not in (str, int, float, bool, type(None)):
                raise InputError(f"template variable {key!r} must be text, a number or a bool")
        try:
            return self._template.render(
                messages=list(messages),
                tools=None,
                documents=None,
                add_generation_prompt=add_generation_prompt,
                **{**special_tokens, **extra},
            )
        except jinja2.TemplateError as exc:
            raise InputError(
                f"the model's chat template ({self.source}) refused the conversation: {exc}"
            ) from exc
        except (TypeError, ValueError, KeyError, IndexError, AttributeError, RecursionError) as exc:
            raise InputError(
                f"the model's chat template ({self.source}) failed on the conversation "
                f"({type(exc).__name__}: {exc})"
            ) from exc


def plain_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """Messages as fresh dicts of text (InputError naming a bad one); keys set to None dropped."""
    plain = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise InputError(f"message {i}: must be a mapping with 'role' and 'content'")
        item = {}
        for key, value in message.items():
            if value is None:
                continue
            if not isinstance(key, str) or not isinstance(value, str):
                raise InputError(f"message {i}: {key} must be a string")
            item[key] = value
        if not item.get("role"):
            raise InputError(f"message {i}: role must be a non-empty string")
        if "content" not in item:
            raise InputError(f"message {i}: content must be a string")
        plain.append(item)
    return plain


def control_tokens(
    added: Iterable[tuple[str, bool]], literal_text: str, listed: Sequence[str] | None
) -> tuple[str, ...]:
    """The added tokens (content, special) that count as control tokens in chat text."""
    if listed is not None:
        return tuple(t for t, special in added if special or t in listed)
    return tuple(t for t, special in added if special or (t in literal_text and not t.isspace()))


def token_pattern(tokens: Iterable[str]) -> re.Pattern:
    """A regex matching any of `tokens`, the longest first (never matching when there are none)."""
    longest_first = sorted(set(tokens), key=len, reverse=True)
    return re.compile("|".join(map(re.escape, longest_first)) or "(?!)")


def marker_pattern(tokens: re.Pattern) -> re.Pattern:
    """A regex matching a marked control token (captured) or a lone marker (capturing None)."""
    return re.compile(f"{MARK_START}({tokens.pattern}){MARK_END}|[{MARK_START}{MARK_END}]")


def mark(text: str, tokens: re.Pattern) -> str:
    """`text` with its control tokens wrapped in markers (markers already in it dropped first)."""
    text = text.replace(MARK_START, "").replace(MARK_END, "")
    return tokens.sub(f"{MARK_START}\\g<0>{MARK_END}", text)


def encode_marked(
    rendered: str,
    markers: re.Pattern,
    encode: Callable[[str], list[int]],
    encode_plain: Callable[[str], list[int]],
    token_id: Callable[[str], int | None],
) -> list[int]:
    """Ids of a chat rendered from marked messages: marked tokens as plain text, the rest parsed.

    As transformers' encode_marked_chat: the pieces after the first are encoded after a newline
    that is then dropped, so that a SentencePiece tokenizer adds no word-start space to them.
    """
    pieces = markers.split(rendered)  # [text, marked token or None, text, ...]
    newline = encode("\n")
    ids = encode(pieces[0])
    for i, piece in enumerate(pieces[1:], start=1):
        if not piece:
            continue
        as_text = i % 2 == 1
        coder = encode_plain if as_text else encode
        piece_ids = coder("\n" + piece)
        piece_ids = (
            piece_ids[len(newline) :] if piece_ids[: len(newline)] == newline else coder(piece)
        )
        if as_text and token_id(piece) in piece_ids:
            raise ArtifactError(
                f"the tokenizer encodes the plain text {piece!r} to that control token, so chat "
                "text cannot be kept from forging it"
            )
        ids += piece_ids
    return ids
