"""Tiny Hugging Face tokenizer folders of each family, built offline for the tokenizer tests.

Each has a small BPE trained on a few sentences (byte-level like Qwen, Llama 3 and Phi-4, or
SentencePiece-style with byte fallback like Gemma, Mistral and Phi-3), the family's added tokens
(special or not, with Phi-3's whitespace-eating ones), its bos rule, a tokenizer_config.json with
its special tokens, its real chat template (tests/fixtures/chat_templates) stored in either
config style, and its generation_config.json end-of-sequence ids.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

TEMPLATES = Path(__file__).resolve().parents[2] / "fixtures" / "chat_templates"

CORPUS = [
    "Hello there, how are you? I am fine, thank you.",
    "The quick brown fox jumps over the lazy dog. 12345 + 678 = 13023",
    "Tell me a story about a brave cat and a quiet dog in the snow.",
    "日本語のテキスト — héllo wörld 🤖 naïve café",
    "def add(a, b):\n    return a + b\n\n\nprint(add(1, 2))\n",
    "You are a helpful assistant. Be brief.\n\nAnswer the question.",
] * 8


@dataclass(frozen=True)
class Family:
    """A model family's tokenizer layout: what the folder's files say."""

    template: str  # fixture file name
    style: str  # "bytelevel" or "metaspace"
    special: tuple[str, ...]  # special added tokens, in id order after the learned vocabulary
    named: dict[str, str | None]  # tokenizer_config.json's bos_token, eos_token, ...
    eos_tokens: tuple[str, ...] = ()  # generation_config.json's eos_token_id, as tokens
    plain: tuple[str, ...] = ()  # added tokens that are not special (Qwen3's <think>)
    rstrip: tuple[str, ...] = ()  # added tokens that eat the whitespace after them (Phi-3)
    bos_added: bool = False  # the post-processor starts every encoding with bos
    system: bool = True  # the template accepts a system message
    turn_end: str = ""  # the token that closes a turn (the injection tests type it)
    variables: dict = field(default_factory=dict)  # extra template variables both sides get
    tokenizer_class: str = "PreTrainedTokenizerFast"
    qwen: bool = False  # Qwen's NFC normalizer and pre-tokenizer regex (Qwen2Tokenizer's own)
    regex: str = ""  # a byte-level family's own pre-tokenizer regex (default: GPT-2's)

    def template_text(self) -> str:
        """The real template: the fixture without its first (provenance comment) line."""
        text = (TEMPLATES / self.template).read_text(encoding="utf-8")
        return text.split("\n", 1)[1]


# Qwen2Tokenizer's pre-tokenizer (digits one by one, letters with one leading non-letter).
QWEN_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Llama 3's (tiktoken's cl100k pattern): newlines are one piece, apart from the words after them.
LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
CHATML = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
LLAMA3 = (
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
)
GEMMA = ("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>")
PHI3 = ("<|endoftext|>", "<|assistant|>", "<|placeholder1|>", "<|system|>", "<|end|>", "<|user|>")
MISTRAL = (
    "[INST]",
    "[/INST]",
    "[TOOL_CALLS]",
    "[AVAILABLE_TOOLS]",
    "[/AVAILABLE_TOOLS]",
    "[TOOL_RESULTS]",
    "[/TOOL_RESULTS]",
)
DATE = {"date_string": "26 Jul 2024"}  # Llama 3.2 would print today's date otherwise

FAMILIES = {
    "qwen2_5": Family(
        "qwen2_5.jinja",
        "bytelevel",
        CHATML,
        {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
        eos_tokens=("<|im_end|>", "<|endoftext|>"),
        plain=("<tool_call>", "</tool_call>"),
        turn_end="<|im_end|>",
        tokenizer_class="Qwen2Tokenizer",
        qwen=True,
    ),
    "smollm2": Family(
        "smollm2.jinja",
        "bytelevel",
        CHATML,
        {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|im_end|>"},
        eos_tokens=("<|im_end|>",),
        turn_end="<|im_end|>",
    ),
    "qwen3": Family(
        "qwen3.jinja",
        "bytelevel",
        CHATML,
        {"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
        eos_tokens=("<|im_end|>", "<|endoftext|>"),
        plain=("<tool_call>", "</tool_call>", "<think>", "</think>"),
        turn_end="<|im_end|>",
        tokenizer_class="Qwen2Tokenizer",
        qwen=True,
    ),
    "llama3_1": Family(
        "llama3_1.jinja",
        "bytelevel",
        LLAMA3,
        {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
        eos_tokens=("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"),
        bos_added=True,
        turn_end="<|eot_id|>",
        regex=LLAMA3_REGEX,
    ),
    "llama3_2": Family(
        "llama3_2.jinja",
        "bytelevel",
        LLAMA3,
        {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
        eos_tokens=("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"),
        bos_added=True,
        turn_end="<|eot_id|>",
        variables=DATE,
        regex=LLAMA3_REGEX,
    ),
    "gemma2": Family(
        "gemma2.jinja",
        "metaspace",
        GEMMA,
        {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"},
        eos_tokens=("<eos>", "<end_of_turn>"),
        bos_added=True,
        system=False,
        turn_end="<end_of_turn>",
    ),
    "gemma3": Family(
        "gemma3.jinja",
        "metaspace",
        (*GEMMA, "<start_of_image>"),
        {
            "bos_token": "<bos>",
            "eos_token": "<eos>",
            "pad_token": "<pad>",
            "unk_token": "<unk>",
            "image_token": "<start_of_image>",
        },
        eos_tokens=("<eos>", "<end_of_turn>"),
        bos_added=True,
        turn_end="<end_of_turn>",
    ),
    "phi3": Family(
        "phi3.jinja",
        "metaspace",
        ("<unk>", "<s>", "</s>", *PHI3),
        {"bos_token": "<s>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"},
        eos_tokens=("<|endoftext|>", "<|assistant|>", "<|end|>"),
        rstrip=("<|assistant|>", "<|system|>", "<|end|>", "<|user|>"),
        turn_end="<|end|>",
    ),
    "phi3_5": Family(
        "phi3_5.jinja",
        "metaspace",
        ("<unk>", "<s>", "</s>", *PHI3),
        {"bos_token": "<s>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"},
        eos_tokens=("<|endoftext|>", "<|assistant|>", "<|end|>"),
        rstrip=("<|assistant|>", "<|system|>", "<|end|>", "<|user|>"),
        turn_end="<|end|>",
    ),
    "phi4_mini": Family(
        "phi4_mini.jinja",
        "bytelevel",
        ("<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>", "<|tool|>"),
        {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"},
        eos_tokens=("<|endoftext|>", "<|end|>"),
        turn_end="<|end|>",
    ),
    "mistral_v0_3": Family(
        "mistral_v0_3.jinja",
        "metaspace",
        ("<unk>", "<s>", "</s>", *MISTRAL),
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"},
        eos_tokens=("</s>",),
        bos_added=True,
        turn_end="[/INST]",
        tokenizer_class="LlamaTokenizer",
    ),
}


def build_backend(family: Family):
    """The family's tokenizer.json as a `tokenizers` Tokenizer, trained on CORPUS."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    if family.style == "bytelevel":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        if family.qwen:
            tok.normalizer = normalizers.NFC()
        if family.qwen or family.regex:
            tok.pre_tokenizer = pre_tokenizers.Sequence(
                [
                    pre_tokenizers.Split(
                        Regex(family.regex or QWEN_REGEX), behavior="isolated", invert=False
                    ),
                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
                ]
            )
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
        trainer = trainers.BpeTrainer(
            vocab_size=420, initial_alphabet=alphabet, show_progress=False
        )
        tok.train_from_iterator(CORPUS, trainer=trainer)
    else:  # SentencePiece-style: "▁" for spaces, unknown characters as <0xNN> bytes
        tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
        tok.pre_tokenizer = pre_tokenizers.Metaspace(
            replacement="▁", prepend_scheme="first", split=False
        )
        tok.decoder = decoders.Sequence(
            [
                decoders.Replace("▁", " "),
                decoders.ByteFallback(),
                decoders.Fuse(),
                decoders.Strip(" ", 1, 0),
            ]
        )
        trainer = trainers.BpeTrainer(vocab_size=440, special_tokens=["<unk>"], show_progress=False)
        tok.train_from_iterator(CORPUS, trainer=trainer)
        # The byte tokens belong to the model's vocabulary (as in a converted SentencePiece
        # model), not to the added tokens, so they stay ordinary tokens.
        data = json.loads(tok.to_str())
        vocab = data["model"]["vocab"]
        for b in range(256):
            vocab[f"<0x{b:02X}>"] = len(vocab)
        tok = Tokenizer.from_str(json.dumps(data))
    tok.add_special_tokens(
        [
            AddedToken(t, special=True, normalized=False, rstrip=t in family.rstrip)
            for t in family.special
            if tok.token_to_id(t) is None
        ]
    )
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in family.plain])
    bos = family.named.get("bos_token")
    if family.bos_added:
        bos_id = tok.token_to_id(bos)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
        )
    return tok


def write_folder(name: str, out: Path, style: str = "config") -> Path:
    """A tokenizer folder of family `name`, its chat template in tokenizer_config.json ("config",
    transformers 4.x) or in chat_template.jinja ("jinja", transformers 5)."""
    family = FAMILIES[name]
    out.mkdir(parents=True, exist_ok=True)
    backend = build_backend(family)
    backend.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": family.tokenizer_class,
        **family.named,
        "model_max_length": 4096,
        "clean_up_tokenization_spaces": False,
    }
    if style == "config":
        config["chat_template"] = family.template_text()
    else:
        (out / "chat_template.jinja").write_text(family.template_text(), encoding="utf-8")
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    named = {k: v for k, v in family.named.items() if v is not None}
    (out / "special_tokens_map.json").write_text(json.dumps(named, indent=2), encoding="utf-8")
    eos_ids = [backend.token_to_id(t) for t in family.eos_tokens]
    generation = {"eos_token_id": eos_ids[0] if len(eos_ids) == 1 else eos_ids}
    (out / "generation_config.json").write_text(json.dumps(generation), encoding="utf-8")
    return out
