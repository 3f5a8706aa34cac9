"""Latency of the risk screen per message: the lexicon alone, and the combined screen (lexicon + learned layer).

    python -m bench.safety_screen [--messages 1000]

The mix is a seeded sample of the safety corpus (dialogs/safety/corpus/: texting-style one-liners
to long homework reports, as clients write them) plus 2 % messages at the 4,000-character limit.
One message at a time on onnxruntime's one intra-op thread (as the service runs it), after a
warm-up; prints p50/p95/p99 per screen and the mix's length profile. Not a test: nothing here runs in the suite.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable

from bench._support import machine


def _mix(n: int, seed: int = 16) -> list[str]:
    from dialogs.safety import corpus

    texts = [e.text for e in corpus.load()]
    rng = random.Random(seed)
    sample = [rng.choice(texts) for _ in range(n)]
    long = (
        "Thought record. Situation: at my desk after the team meeting. Automatic thought: they all think "
        "I'm useless and I will be let go. Emotion: shame 80%, anxiety 60%. Evidence for: my manager "
        "didn't smile. Evidence against: she thanked me for the report last week. "
    )
    for i in range(0, n, 50):
        sample[i] = (long * 20)[:4000]
    return sample


def _time(screen: Callable[[str], object], texts: list[str]) -> list[float]:
    for text in texts[:20]:
        screen(text)
    out = []
    for text in texts:
        start = time.perf_counter()
        screen(text)
        out.append((time.perf_counter() - start) * 1000)
    return out


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(messages: int = 1000) -> list[dict[str, object]]:
    from dialogs import safety
    from dialogs.safety import lexicon

    safety.load()  # the process's own layer, as `companion run` loads it at start
    texts = _mix(messages)
    results = []
    for name, screen in (("lexicon alone", lexicon.assess), ("combined screen", safety.assess)):
        ms = _time(screen, texts)
        results.append(
            {
                "what": name,
                "messages": len(texts),
                "p50_ms": _quantile(ms, 0.50),
                "p95_ms": _quantile(ms, 0.95),
                "p99_ms": _quantile(ms, 0.99),
                "mean_ms": statistics.fmean(ms),
            }
        )
    lengths = sorted(len(t) for t in texts)
    results.append(
        {
            "what": "mix",
            "messages": len(texts),
            "median_chars": lengths[len(lengths) // 2],
            "p95_chars": lengths[int(0.95 * len(lengths))],
        }
    )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1000)
    args = parser.parse_args()
    print(f"# python -m bench.safety_screen --messages {args.messages}")
    print(f"# {machine()}")
    for result in run(args.messages):
        if result["what"] == "mix":
            chars = f"median {result['median_chars']} chars, p95 {result['p95_chars']}"
            print(f"mix: {result['messages']} messages, {chars}")
        else:
            print(
                f"{result['what']}: p50 {result['p50_ms']:.2f} ms, p95 {result['p95_ms']:.2f} ms,"
                f" p99 {result['p99_ms']:.2f} ms, mean {result['mean_ms']:.2f} ms"
            )


if __name__ == "__main__":
    main()
