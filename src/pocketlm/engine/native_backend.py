"""The native CPU backend: the C kernels in `_native` over memory-mapped weights, without torch.

Weights stay in their final layout in model.safetensors (fp32, bf16, int8 rows or int4 groups)
and are mapped, not copied: the process touches only the pages it needs. Every Backend method
maps onto one C call, `forward(tokens, positions, slots, logits, all_logits)`, which places each
token at its position in its slot's KV cache; the GIL is released while it runs. The model
crosses to C as native_weights.py lays it out, with the family options of its config
(NATIVE_FEATURES).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pocketlm.checkpoint.layout import WEIGHTS_FILE
from pocketlm.checkpoint.safetensors_mmap import MappedTensors
from pocketlm.checkpoint.weights_spec import check_weights, read_quantization
from pocketlm.common.cpu_load import free_cores, runnable_others
from pocketlm.common.device import usable_cores
from pocketlm.common.errors import ArtifactError, ConfigError, InputError, PocketLMError
from pocketlm.common.isa import check_isa, isa_cap
from pocketlm.engine.backend import check_append, check_decode, check_slot_count, check_slots
from pocketlm.engine.native_weights import c_config, c_rope, c_weights
from pocketlm.model.config import ModelConfig
from pocketlm.model.rope_freqs import long_factors_from

# Family options (ModelConfig.family_features) the C engine implements; any other sends the model
# to the torch backend with a message naming the option.
NATIVE_FEATURES = frozenset((
    "qkv_bias", "norm_kind", "norm_offset", "activation", "mlp_kind", "o_bias", "mlp_bias",
    "lm_head_bias", "qk_norm", "rotary_dim", "rope_scaling", "rope_factor", "rope_low_freq_factor",
    "rope_high_freq_factor", "rope_original_max_len", "rope_short_factor", "rope_long_factor",
    "rope_local_theta", "sliding_window", "layer_types", "parallel_block", "embed_scale",
    "attn_scale", "attn_softcap", "final_softcap", "sandwich_norms", "n_experts",
    "n_experts_per_token", "expert_ffn_dim", "router", "shared_expert_ffn_dim",
))  # fmt: skip

# A sliding layer's KV cache rolls: it keeps window + KV_REWIND + max_batch positions, so a slot
# can be truncated back by up to this many tokens (speculative decoding rejects a few drafts).
KV_REWIND = 64


class NativeUnavailable(PocketLMError):
    """The native backend cannot run this model here (no compiled extension, unsupported layout);
    `features`: the model's family options it does not implement, when those are the reason."""

    def __init__(self, message: str, features: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.features = features


def native_isa() -> str | None:
    """The kernel set the extension would use on this CPU, or None when it is not built."""
    try:
        from pocketlm.engine import _native
    except ImportError:
        return None
    return _native.cpu_isa()


class NativeBackend:
    """The Backend over the C kernels (CPU); logits come back as numpy float32 (V,) or (n, V)."""

    name = "native"
    # Multiples of the C side's 64-token chunks: chunked prefill then computes exactly what one
    # call over the whole prompt computes.
    prefill_chunk = 256

    def __init__(
        self,
        directory: Path,
        config: ModelConfig,
        *,
        threads: int = 0,
        max_len: int | None = None,
        max_batch: int = 64,
        slots: int = 1,
        isa: str = "",
        kv_rewind: int = KV_REWIND,
    ) -> None:
        """isa: a cap on the kernel set ("portable", "avx2", "avx512"; "" = POCKETLM_ISA, or the
        best this CPU runs); `self.isa` says which set was chosen. kv_rewind: how far truncate
        may go back (sliding layers keep that many positions past their window)."""
        check_slot_count(slots)
        if max_len is not None and max_len < 1:
            raise ConfigError(f"max_len must be >= 1 token, got {max_len}")
        if kv_rewind < 0:
            raise ConfigError(f"kv_rewind must be >= 0 tokens, got {kv_rewind}")
        try:
            from pocketlm.engine import _native
        except ImportError as exc:
            raise NativeUnavailable(
                "the native extension is not built (reinstall pocketlm with a C compiler available)"
            ) from exc
        unsupported = tuple(f for f in config.family_features() if f not in NATIVE_FEATURES)
        if not config.has_lm_head:  # classifiers and encoders (BERT, ...): nothing to generate
            what = "a sequence classifier" if config.labels else "an encoder (model.causal false)"
            raise NativeUnavailable(
                f"the native engine runs language models; {what} has no LM head "
                f"(options {', '.join(unsupported)}): the torch model runs it",
                unsupported,
            )
        if unsupported:
            raise NativeUnavailable(
                f"the native engine does not implement {', '.join(unsupported)} (model family "
                "options in model_config.json); the torch backend runs this model",
                unsupported,
            )
        self.config = config
        self.directory = directory
        quant = read_quantization(directory)
        group = quant.get("group_size") or 32
        weights_path = directory / WEIGHTS_FILE
        t = MappedTensors(weights_path)
        # Names, shapes and dtypes must match the config before a pointer goes to C: the C side
        # reads rows x cols of every matrix it is given.
        check_weights(t.header, config, quant, weights_path)
        self._tensors = t  # keeps the mapping alive
        c = config
        weights = c_weights(t, c, group)
        self._context_length = min(max_len or c.max_seq_len, c.max_seq_len)
        # default: the cores other programs leave free now (threads sharing a taken core make
        # every decode step wait for the slowest one)
        self.threads = threads or free_cores(runnable_others(), usable_cores())
        # longrope picks its factors per call (the long ones once a call reaches past the original
        # context): a whole prompt per call, and a slot whose context grows past that boundary
        # runs again from its first token, as the torch backend (and transformers' generate) do
        self._rope_boundary = long_factors_from(c) or None
        if self._rope_boundary:
            self.prefill_chunk = None
        isa = check_isa(isa, "isa") if isa else isa_cap()
        ring = [  # positions each layer's cache keeps (model.c: sliding layers roll)
            w + kv_rewind + max_batch if w and w + kv_rewind + max_batch < self._context_length
            else self._context_length
            for w in (c.sliding_window if c.layer_kind(i) == "sliding" else 0 for i in range(c.n_layers))
        ]  # fmt: skip
        self._kv_rewind = kv_rewind if min(ring) < self._context_length else None
        try:
            self._model = _native.Model(
                c_config(c, self._context_length, max_batch, slots, kv_rewind),
                weights["embed"],
                weights["lm_head"],
                weights["final_norm"],
                weights["layers"],
                c_rope(c),
                self.threads,
                isa,
                final_norm_bias=weights["final_norm_bias"],
                lm_head_bias=weights["lm_head_bias"],
            )
        except ValueError as exc:  # the C side's own load-time bounds checks
            raise ArtifactError(f"{weights_path}: {exc}") from exc
        except MemoryError as exc:
            raise PocketLMError(
                f"cannot allocate the native backend's buffers for {slots} slot(s) of "
                f"{self._context_length} tokens (KV cache "
                f"{2 * slots * sum(ring) * c.kv_dim * 4 / 1e6:.0f} MB): "
                "use a smaller --max-len or fewer --slots"
            ) from exc
        self.isa = self._model.isa()
        self._lengths = [0] * slots  # tokens in each slot's context
        self._reached = [0] * slots  # the longest each slot's context was since its release
        self._tokens: list[list[int]] = [[] for _ in range(slots)]  # longrope: each slot's context

    @property
    def slots(self) -> int:
        """How many sequences the backend holds at once."""
        return len(self._lengths)

    @property
    def context_length(self) -> int:
        """The most tokens one slot's context holds."""
        return self._context_length

    @property
    def vocab_size(self) -> int:
        """Length of the logits vectors."""
        return self.config.vocab_size

    @property
    def device(self) -> str:
        """Always "cpu"."""
        return "cpu"

    def position(self, slot: int) -> int:
        """Tokens in the slot's context now."""
        return self._lengths[slot]

    def prefill(self, slot: int, token_ids: Sequence[int]) -> np.ndarray:
        """Append tokens to a slot (one call; long prompts run in chunks inside); logits (V,) after
        the last one (only it goes through the head)."""
        return self._append(slot, token_ids, every=False)

    def extend(self, slot: int, token_ids: Sequence[int]) -> np.ndarray:
        """Append tokens to a slot; float32 logits (n, V) after each of them."""
        return self._append(slot, token_ids, every=True)

    def extend_many(
        self, slots: Sequence[int], token_lists: Sequence[Sequence[int]], *, every: bool = True
    ) -> list[np.ndarray]:
        """token_lists[i] appended to slots[i] (distinct slots) in ONE forward (the kernels take
        each token's own slot and position); float32 logits (n_i, V) after each token of each.
        Many short sequences share each read of the weights (scoring many items' contexts and
        continuations at once). every=False: (V,) after each list's last token: every token
        but the last ones in one forward that computes no logits, then the last ones in one
        decode step."""
        slots = [int(s) for s in slots]
        check_slots(slots, self.slots)
        if len(slots) != len(token_lists):
            raise InputError(f"{len(slots)} slots but {len(token_lists)} token lists")
        for s, ids in zip(slots, token_lists, strict=True):
            check_append(self, s, len(ids))
        if self._rope_boundary and any(
            self._crosses_boundary(s, len(ids)) for s, ids in zip(slots, token_lists, strict=True)
        ):  # a slot runs again from its first token: one call each
            one = self.extend if every else self.prefill
            return [one(s, ids) for s, ids in zip(slots, token_lists, strict=True)]
        if every:
            return self._forward_many(slots, token_lists, every=True)
        self._forward_many(slots, [t[:-1] for t in token_lists], every=False)
        return list(self.decode(slots, [t[-1] for t in token_lists]))  # (V,) each

    def _forward_many(
        self, slots: list[int], token_lists: Sequence[Sequence[int]], *, every: bool
    ) -> list[np.ndarray]:
        """One forward over the tokens of several slots (checked); logits (n_i, V) of each if
        `every`, else none (the caches filled)."""
        sizes = [len(t) for t in token_lists]
        if sum(sizes) == 0:
            return [np.empty((0, self.vocab_size), dtype=np.float32) for _ in slots]
        ids = np.ascontiguousarray(np.concatenate([np.asarray(t) for t in token_lists]), np.int32)
        positions = np.concatenate(  # (total,) each token's own position in its slot
            [np.arange(self._lengths[s], self._lengths[s] + n) for s, n in zip(slots, sizes, strict=True)]
        ).astype(np.int32)  # fmt: skip
        owners = np.repeat(np.array(slots, dtype=np.int32), sizes)  # (total,)
        shape = (ids.shape[0], self.vocab_size) if every else (self.vocab_size,)
        out = np.empty(shape, dtype=np.float32)  # (total, V), or the last token's (V,)
        self._model.forward(ids, positions, owners, out, every)
        rows, first = [], 0
        for s, t, n in zip(slots, token_lists, sizes, strict=True):
            if every:
                rows.append(out[first : first + n])
            first += n
            self._lengths[s] += n
            self._reached[s] = max(self._reached[s], self._lengths[s])
            if self._rope_boundary:
                self._tokens[s] += [int(x) for x in t]
        return rows

    def decode(self, slots: Sequence[int], token_ids: Sequence[int]) -> np.ndarray:
        """Token i at the end of sequence slots[i] (distinct slots), one call; logits (n, V)."""
        slots = [int(s) for s in slots]
        check_decode(self, slots, token_ids)
        if self._rope_boundary and any(self._crosses_boundary(s, 1) for s in slots):
            return self._decode_crossing(slots, token_ids)
        ids = np.ascontiguousarray(token_ids, dtype=np.int32)  # (n,)
        out = np.empty((ids.shape[0], self.vocab_size), dtype=np.float32)  # (n, V)
        positions = np.array([self._lengths[s] for s in slots], dtype=np.int32)  # (n,)
        self._model.forward(ids, positions, np.array(slots, dtype=np.int32), out, True)
        for s in slots:
            self._lengths[s] += 1
            self._reached[s] = max(self._reached[s], self._lengths[s])
        if self._rope_boundary:
            for s, t in zip(slots, ids.tolist()):
                self._tokens[s].append(t)
        return out

    def _decode_crossing(self, slots: list[int], token_ids: Sequence[int]) -> np.ndarray:
        """decode() when some slots grow past longrope's boundary: each of those runs its whole
        context again, alone; the others decode together."""
        out = np.empty((len(slots), self.vocab_size), dtype=np.float32)  # (n, V)
        rest = []
        for i, (s, t) in enumerate(zip(slots, token_ids)):
            if self._crosses_boundary(s, 1):
                out[i] = self._append(s, [int(t)], every=False)
            else:
                rest.append(i)
        if rest:
            out[rest] = self.decode([slots[i] for i in rest], [token_ids[i] for i in rest])
        return out

    def truncate(self, slot: int, position: int) -> None:
        """Forget the slot's tokens after the first `position` (later writes overwrite the cache).
        With sliding-window layers (rolling caches) at most kv_rewind tokens back from the longest
        the context was: further back, their keys are overwritten (InputError; release instead)."""
        check_slots((slot,), self.slots)
        keep = min(self._lengths[slot], max(0, position))
        back = self._reached[slot] - keep
        if keep and self._kv_rewind is not None and back > self._kv_rewind:
            raise InputError(
                f"cannot go back {back} tokens in slot {slot}: this model's sliding-window layers "
                f"keep {self._kv_rewind} positions past their window; release the slot and "
                "prefill it again"
            )
        self._lengths[slot] = keep
        del self._tokens[slot][keep:]
        if not keep:
            self._reached[slot] = 0

    def release(self, slot: int) -> None:
        """Forget the slot's context (cache entries are overwritten by position)."""
        check_slots((slot,), self.slots)
        self._lengths[slot] = 0
        self._reached[slot] = 0
        self._tokens[slot] = []

    def profile(self, enable: bool = True) -> dict[str, float]:
        """Seconds spent per phase (embed, norm, qkv, attention, ffn, lm_head, ...) since the last call."""
        return self._model.profile(enable)

    def _crosses_boundary(self, slot: int, n_new: int) -> bool:
        """Whether n_new tokens take a slot holding a short context past longrope's boundary."""
        at, boundary = self._lengths[slot], self._rope_boundary
        return boundary is not None and 0 < at <= boundary < at + n_new

    def _append(self, slot: int, token_ids: Sequence[int], *, every: bool) -> np.ndarray:
        """Tokens at the end of one slot's sequence: logits (n, V) after each if `every`, else (V,)."""
        ids = np.ascontiguousarray(token_ids, dtype=np.int32)  # (n,)
        n = ids.shape[0]
        check_append(self, slot, n)
        start = self._lengths[slot]
        if self._rope_boundary and self._crosses_boundary(slot, n):  # again, with the long factors
            ids = np.array(self._tokens[slot] + ids.tolist(), dtype=np.int32)  # (start + n,)
            self._tokens[slot], start = [], 0
        total = ids.shape[0]
        out = np.empty((total, self.vocab_size) if every else self.vocab_size, dtype=np.float32)
        positions = np.arange(start, start + total, dtype=np.int32)  # (total,)
        self._model.forward(ids, positions, np.full(total, slot, dtype=np.int32), out, every)
        self._lengths[slot] = start + total
        self._reached[slot] = max(self._reached[slot], start + total)
        if self._rope_boundary:
            self._tokens[slot] += ids.tolist()
        return out[total - n :] if every else out
