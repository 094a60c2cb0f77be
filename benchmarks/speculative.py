"""Speculative decoding speed-up: a target model alone vs the same target with a smaller draft.

    python benchmarks/speculative.py --target RUN_OR_MODEL --draft RUN_OR_MODEL [MORE…] [--backend native]

Both models must share the tokenizer (e.g. two `pocketlm pretrain` runs on the same token
directory). At temperature 0 the text must be identical with and without the draft; the script
checks that, then reports decode tokens/s, the speed-up and the draft acceptance rate per number
of draft tokens. Results go to benchmarks/results/speculative.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from pocketlm.engine.load import load_engine
from pocketlm.engine.sampling import SamplingParams

PROMPTS = [
    "once upon a time, there was a little girl named",
    "the dog ran to the park and",
    "tom and his mom went to the store. they wanted to buy",
    "one day, a big bird flew over the house. the bird",
]


def _rate(engine, params: SamplingParams) -> tuple[float, list[list[int]], float]:
    """Generated tokens per second over all prompts (prefill included), their ids, acceptance."""
    tokens, seconds, outs, acc = 0, 0.0, [], []
    for prompt in PROMPTS:
        start = time.perf_counter()
        result = engine.complete(prompt, params)
        seconds += time.perf_counter() - start
        tokens += len(result.token_ids)
        outs.append(result.token_ids)
        if engine.last_acceptance is not None:
            acc.append(engine.last_acceptance)
    return tokens / seconds, outs, statistics.fmean(acc) if acc else float("nan")


def main() -> None:
    """Measure and print the speed-up table."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--target", required=True)
    ap.add_argument("--draft", required=True, nargs="+", help="one or more drafts, interleaved")
    ap.add_argument("--backend", default="native", choices=["native", "torch"])
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--k", type=int, nargs="+", default=[2, 3, 4, 6])
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "speculative.json"))
    args = ap.parse_args()
    params = SamplingParams(temperature=0, max_new_tokens=args.new_tokens)
    plain = load_engine(args.target, backend=args.backend)
    alone = {d: load_engine(d, backend=args.backend) for d in args.draft}
    spec = {
        (d, k): load_engine(args.target, backend=args.backend, draft=d, draft_tokens=k)
        for d in args.draft
        for k in args.k
    }
    rates: dict[tuple[str, int | None], list[float]] = {("target", None): []}
    acceptance: dict[tuple[str, int], float] = {}
    for _ in range(args.rounds):  # interleaved so machine drift hits every variant
        rate, expected, _ = _rate(plain, params)
        rates["target", None].append(rate)
        for d, engine in alone.items():
            rates.setdefault((d, None), []).append(_rate(engine, params)[0])
        for (d, k), engine in spec.items():
            rate, got, acc = _rate(engine, params)
            if got != expected:
                raise SystemExit(
                    f"{d} k={k}: speculative output differs from plain greedy decoding"
                )
            rates.setdefault((d, k), []).append(rate)
            acceptance[d, k] = acc
    base = statistics.median(rates["target", None])
    rows = []
    print(
        f"backend {args.backend}, {args.new_tokens} new tokens x {len(PROMPTS)} prompts, "
        f"median of {args.rounds} rounds; outputs identical to plain greedy: yes"
    )
    print(f"{'draft':40s} {'k':>3s} {'tok/s':>8s} {'speed-up':>9s} {'accepted':>9s}")
    for (d, k), values in rates.items():
        med = statistics.median(values)
        acc = acceptance.get((d, k)) if k else None
        rows.append(
            dict(
                draft=d,
                k=k,  # None: the model alone (the target, or the draft decoding by itself)
                tokens_per_s=round(med, 1),
                speedup=round(med / base, 3),
                acceptance=None if acc is None else round(acc, 3),
            )
        )
        accepted = "" if acc is None else f"{acc:8.0%}"
        print(f"{d[-40:]:40s} {k or '-':>3} {med:8.1f} {med / base:8.2f}x {accepted:>9s}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps(
            dict(target=args.target, draft=args.draft, backend=args.backend, rows=rows), indent=2
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
