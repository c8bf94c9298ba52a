"""Result-cache benchmark: one batch with duplicates generated without the cache, then a batch of
the same shape (fresh texts) with it, in the same run on the same stack; items/s of each, the
speed-up, and the hit rate (from the items and from ``/v1/cache/stats``).

Starts its own Redis, one worker and the API (``textgen_cli.localstack``); the last line is one JSON object.

    .venv/bin/python bench/cache.py                       # 500 items, 50% duplicates
    .venv/bin/python bench/cache.py --items 100 --max-tokens 4
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from textgen_cli.localstack import LocalStack  # noqa: E402

PRODUCTS = Path(__file__).resolve().parent.parent / "examples" / "products.csv"


def items(n: int, duplicates: float, tag: str, seed: int) -> list[dict[str, object]]:
    """``n`` product items of which a ``duplicates`` share repeat an earlier product, shuffled."""
    names = [line.split(",")[1] for line in PRODUCTS.read_text().splitlines()[1:]]
    distinct = max(1, round(n * (1 - duplicates)))
    products = [{"name": f"{names[i % len(names)]} {tag}-{i}", "category": "Catalogue"} for i in range(distinct)]
    chosen = products + [products[i % distinct] for i in range(n - distinct)]
    random.Random(seed).shuffle(chosen)
    return [{"custom_id": f"item-{i}", "product": p} for i, p in enumerate(chosen)]


def run_batch(client: httpx.Client, batch_items: list[dict[str, object]], max_tokens: int,
              cache: bool) -> dict[str, object]:
    started = time.perf_counter()
    resp = client.post("/v1/batches", json={"items": batch_items, "max_tokens": max_tokens, "temperature": 0,
                                            "cache": cache})
    assert resp.status_code == 202, resp.text
    batch = resp.json()
    while batch["status"] not in ("completed", "failed", "canceled"):
        time.sleep(0.5)
        batch = client.get(f"/v1/batches/{batch['id']}").json()
    elapsed = time.perf_counter() - started
    rows = [json.loads(line) for line in client.get(f"/v1/batches/{batch['id']}/results").text.splitlines() if line]
    by_product: dict[str, set[str]] = {}
    for item, row in zip(batch_items, sorted(rows, key=lambda r: int(r["custom_id"].split("-")[1])), strict=True):
        by_product.setdefault(json.dumps(item["product"], sort_keys=True), set()).add(row["output"] or "")
    return {
        "status": batch["status"],
        "counts": batch["request_counts"],
        "seconds": round(elapsed, 1),
        "items_per_s": round(len(batch_items) / elapsed, 2),
        "generated": sum(not r["cached"] for r in rows),
        "cached": sum(bool(r["cached"]) for r in rows),
        "duplicates_agree": all(len(outputs) == 1 for outputs in by_product.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=500)
    parser.add_argument("--duplicates", type=float, default=0.5, help="share of items that repeat another")
    parser.add_argument("--max-tokens", type=int, default=8)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp, LocalStack(
        Path(tmp), extra_env={"TEXTGEN_CACHE_ENABLED": "true", "TEXTGEN_LOG_LEVEL": "WARNING"}
    ) as stack:
        stack.start()
        with stack.client(timeout=600) as client:
            run_batch(client, items(16, 0.0, "warmup", 0), args.max_tokens, cache=False)
            print(f"{args.items} items, {args.duplicates:.0%} duplicates, max_tokens {args.max_tokens}")
            without = run_batch(client, items(args.items, args.duplicates, "a", 1), args.max_tokens, cache=False)
            print(f"  without the cache: {without}")
            stats_before = client.get("/v1/cache/stats").json()
            with_cache = run_batch(client, items(args.items, args.duplicates, "b", 1), args.max_tokens, cache=True)
            print(f"  with the cache:    {with_cache}")
            stats = client.get("/v1/cache/stats").json()

    hits, misses = stats["hits"] - stats_before["hits"], stats["misses"] - stats_before["misses"]
    figures = {
        "items": args.items,
        "duplicates": args.duplicates,
        "max_tokens": args.max_tokens,
        "without_cache_items_per_s": without["items_per_s"],
        "with_cache_items_per_s": with_cache["items_per_s"],
        "speedup": round(float(with_cache["items_per_s"]) / float(without["items_per_s"]), 2),  # type: ignore[arg-type]
        "generated_with_cache": with_cache["generated"],
        "hit_rate": round(int(with_cache["cached"]) / args.items, 3),  # type: ignore[call-overload]
        "stats_hit_rate": round(hits / (hits + misses), 3) if hits + misses else None,
        "cache_bytes_written": stats["bytes_written"] - stats_before["bytes_written"],
        "duplicates_agree": with_cache["duplicates_agree"],
        "batches_completed": without["status"] == with_cache["status"] == "completed",
    }
    print(f"cache: {figures['with_cache_items_per_s']} vs {figures['without_cache_items_per_s']} items/s "
          f"({figures['speedup']}x), hit rate {figures['hit_rate']:.0%}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
