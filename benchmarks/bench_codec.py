"""Cost of the checkpoint codec per checkpoint, as a ratio to plain ``orjson``.

For checkpoint states of about 1 KB, 100 KB and 1 MB (a ``GraphCheckpoint`` holding a conversation
and tool outputs, so compression sees realistic text), times encoding and decoding through each
codec chain against ``orjson.dumps``/``orjson.loads`` of the same data. Runs alternate between the
baseline and each chain and the median per-operation time is compared, so machine noise hits both
sides alike. Absolute times are printed for the baseline only: ratios are what carry across machines.

    python benchmarks/bench_codec.py            # ~1 minute
    python benchmarks/bench_codec.py --quick    # fewer rounds
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from typing import Callable

import orjson

from spark_ckpt.codec import (
    Codec, GzipTransform, Identity, Keyring, ZstdTransform, new_key, to_data, zstandard_available,
)
from spark_ckpt.model import GraphCheckpoint, GraphMetadata, NodeSnapshot, Visit

SIZES = {"1 KB": 1_000, "100 KB": 100_000, "1 MB": 1_000_000}
WORDS = (
    "the model called a tool with arguments and returned a summary of the search results for the user "
    "query about invoices totals refund policy shipping status order number customer account balance"
).split()


def checkpoint_of_size(target: int, seed: int = 0) -> GraphCheckpoint:
    rng = random.Random(seed)
    messages: list[dict] = []
    history: list[Visit] = []
    record = None
    while True:
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 40)))
        turn = len(messages)
        messages.append({"role": ("user", "assistant", "tool")[turn % 3], "content": text, "id": f"m{turn:05d}"})
        if turn % 3 == 2:
            history.append(Visit("agent", len(history), turn, output={"content": text[:80]}, duration_s=rng.random()))
        record = GraphCheckpoint(
            checkpoint_id="c1", seq=7, timestamp=1_700_000_000.5,
            graph_metadata=GraphMetadata("bench", "v1", "exec-1"),
            graph_state={"messages": messages, "counter": turn},
            node_states={"agent": NodeSnapshot(process_count=turn, outputs={"content": text})},
            execution_history=history,
        )
        if len(orjson.dumps(to_data(record))) >= target:
            return record


def per_op(fn: Callable[[], object], budget_s: float) -> float:
    """Seconds per call, timing enough calls to fill ``budget_s``."""
    n, elapsed = 1, 0.0
    while True:
        start = time.perf_counter()
        for _ in range(n):
            fn()
        elapsed = time.perf_counter() - start
        if elapsed >= budget_s:
            return elapsed / n
        n *= 2 if elapsed < budget_s / 4 else 1
        n = max(n, int(n * budget_s / max(elapsed, 1e-9)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds instead of 7")
    args = parser.parse_args()
    rounds, budget = (3, 0.03) if args.quick else (7, 0.08)

    keyring = Keyring({"k1": new_key()})
    chains = {
        "envelope only (json)": Codec(),
        "json + AES-256-GCM": Codec(keyring=keyring),
        "json + gzip + AES-256-GCM": Codec(keyring=keyring, pipeline=[GzipTransform(threshold=4096)]),
    }
    if zstandard_available():
        chains["json + zstd + AES-256-GCM"] = Codec(keyring=keyring, pipeline=[ZstdTransform(threshold=4096)])
    identity = Identity("bench", "exec-1", 7)

    print(f"{'state':>7} | {'chain':<27} | {'encode x':>9} | {'decode x':>9} | {'stored/json':>11}")
    print(f"{'':>7} | {'plain orjson (baseline)':<27} | {'dumps':>9} | {'loads':>9} |")
    print("-" * 75)
    for label, size in SIZES.items():
        data = to_data(checkpoint_of_size(size))
        raw = orjson.dumps(data)
        blobs = {name: codec.encode_data(data, identity) for name, codec in chains.items()}
        for name, codec in chains.items():
            assert codec.decode_data(blobs[name], identity)[0] == data
        samples: dict[str, list[float]] = {key: [] for key in ["dumps", "loads", *[f"e:{n}" for n in chains],
                                                                 *[f"d:{n}" for n in chains]]}
        for _ in range(rounds):  # alternate baseline and chains within each round
            for name, codec in chains.items():
                samples["dumps"].append(per_op(lambda: orjson.dumps(data), budget))
                samples[f"e:{name}"].append(per_op(lambda: codec.encode_data(data, identity), budget))
                samples["loads"].append(per_op(lambda: orjson.loads(raw), budget))
                samples[f"d:{name}"].append(per_op(lambda: codec.decode_data(blobs[name], identity), budget))
        dumps, loads = statistics.median(samples["dumps"]), statistics.median(samples["loads"])
        print(f"{label:>7} | {'plain orjson (' + str(len(raw)) + ' B)':<27} | {dumps * 1e6:>7.1f}us | "
              f"{loads * 1e6:>7.1f}us |")
        for name in chains:
            enc = statistics.median(samples[f"e:{name}"]) / dumps
            dec = statistics.median(samples[f"d:{name}"]) / loads
            print(f"{'':>7} | {name:<27} | {enc:>8.2f}x | {dec:>8.2f}x | {len(blobs[name]) / len(raw):>10.2f}x")
        print("-" * 75)


if __name__ == "__main__":
    main()
