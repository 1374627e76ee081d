"""Which candidate wins, and which lie on the front: read from what each child job measured on
its own saved files (its job summary), never from what the allocation planned."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# The reported figure is rounded to 4 decimals (the plan counts every stored bit already).
REPORTED_ROUNDING = 1e-4


@dataclass(frozen=True)
class Limits:
    max_bits: float | None = None
    max_bytes: int | None = None
    min_tokens_per_s: float | None = None
    max_increase_pct: float | None = None
    max_accuracy_drop: float | None = None
    accuracy_metric: str = ""  # `task.metric`, e.g. `hellaswag.acc_norm`


def within_budget(row: dict[str, Any], limits: Limits) -> tuple[bool, str]:
    """(holds, why not) for a finished candidate, on its saved files and measured speed."""
    bits, size = row.get("bits_per_quantized_weight"), row.get("checkpoint_bytes")
    if limits.max_bits is not None and (bits is None or bits > limits.max_bits + REPORTED_ROUNDING):
        return False, f"stores {bits} bits per quantized weight, over {limits.max_bits}"
    if limits.max_bytes is not None and (size is None or size > limits.max_bytes):
        return False, f"its files take {size} bytes, over {limits.max_bytes}"
    speed = row.get("decode_tokens_per_second")
    if limits.min_tokens_per_s is not None and (speed is None or speed < limits.min_tokens_per_s):
        return False, f"decodes {speed} tokens/s, under {limits.min_tokens_per_s}"
    return True, ""


def pareto_front(rows: list[dict[str, Any]]) -> set[int]:
    """Indices of the rows no other row beats on both bits and perplexity."""
    measured = [
        (i, r["bits_per_quantized_weight"], r["perplexity"])
        for i, r in enumerate(rows)
        if r.get("perplexity") is not None and r.get("bits_per_quantized_weight") is not None
    ]
    front = set()
    for i, bits, ppl in measured:
        beaten = any(
            b <= bits and p <= ppl and (b < bits or p < ppl) for j, b, p in measured if j != i
        )
        if not beaten:
            front.add(i)
    return front


def choose(rows: list[dict[str, Any]], limits: Limits) -> tuple[int | None, str]:
    """(index of the winner or None, why). Marks every row's `within_budget`, `on_front`,
    `excluded` (why it cannot win). Within the tolerances the smallest candidate wins (fewest
    bytes, then perplexity); with no tolerance, or none within them, the lowest perplexity."""
    front = pareto_front(rows)
    eligible = []
    for index, row in enumerate(rows):
        row["on_front"] = index in front
        if row["state"] != "succeeded" or row.get("perplexity") is None:
            row["within_budget"] = None
            row["excluded"] = f"{row['state']}" + (f": {row['error']}" if row.get("error") else "")
            continue
        holds, why = within_budget(row, limits)
        row["within_budget"] = holds
        row["excluded"] = None if holds else why
        if holds:
            eligible.append(index)
    if not eligible:
        return None, "no candidate finished within the budget"
    best = min(eligible, key=lambda i: rows[i]["perplexity"])
    wanted = tolerances(limits)
    if not wanted:
        return best, "the lowest perplexity within the budget"
    tolerated = [i for i in eligible if all(holds(rows[i]) for _, holds in wanted)]
    named = " and ".join(text for text, _ in wanted)
    if not tolerated:
        return best, (
            f"no candidate within {named}; the best perplexity within the budget "
            f"({rows[best]['change_pct']:+.2f} %)"
        )
    smallest = min(tolerated, key=lambda i: (rows[i]["checkpoint_bytes"], rows[i]["perplexity"]))
    return smallest, (
        f"the smallest candidate within {named} ({rows[smallest]['change_pct']:+.2f} % perplexity)"
    )


def tolerances(limits: Limits) -> list[tuple[str, Callable[[dict[str, Any]], bool]]]:
    """The quality tolerances asked for, each as (words, test on a candidate's row)."""
    found: list[tuple[str, Callable[[dict[str, Any]], bool]]] = []
    if limits.max_increase_pct is not None:
        most = limits.max_increase_pct
        found.append(
            (
                f"+{most:g} % perplexity",
                lambda row: row.get("change_pct") is not None and row["change_pct"] <= most,
            )
        )
    if limits.max_accuracy_drop is not None:
        drop = limits.max_accuracy_drop
        found.append(
            (
                f"a {drop:g} drop of {limits.accuracy_metric}",
                lambda row: row.get("accuracy_drop") is not None and row["accuracy_drop"] <= drop,
            )
        )
    return found
