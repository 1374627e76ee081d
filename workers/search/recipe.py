"""An allocation as an ordinary quantization stage: the most common setting is the stage's, the
others are `overrides` whose `re:` patterns name exactly the allocated layers (one pattern per
layer kind and setting: `model.layers.(3|7).mlp.down_proj`), so the job's validation, memory
plan and artifact are those of any recipe."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from typing import Any

from workers.search.allocation import Allocation
from workers.search.sensitivity import Setting

LAYER_NAME = re.compile(r"^(?P<prefix>.*?\.layers\.)(?P<index>\d+)\.(?P<kind>.+)$")


def layer_patterns(names: list[str]) -> list[str]:
    """`re:` patterns matching exactly `names`, one per layer kind (full-match anchored)."""
    by_kind: dict[tuple[str, str], list[str]] = defaultdict(list)
    singles = []
    for name in names:
        found = LAYER_NAME.match(name)
        if found is None:
            singles.append(name)
            continue
        by_kind[(found["prefix"], found["kind"])].append(found["index"])
    patterns = [f"re:^{re.escape(name)}$" for name in sorted(singles)]
    for (prefix, kind), indices in sorted(by_kind.items()):
        ordered = "|".join(sorted(indices, key=int))
        patterns.append(f"re:^{re.escape(prefix)}({ordered})\\.{re.escape(kind)}$")
    return patterns


def stage_params(allocation: Allocation, base: dict[str, Any]) -> dict[str, Any]:
    """`base` (e.g. GPTQ's own options) with the allocation's bits, group size and overrides."""
    counts = Counter(allocation.settings.values())
    common: Setting = counts.most_common(1)[0][0]
    others: dict[Setting, list[str]] = defaultdict(list)
    for name, setting in allocation.settings.items():
        if setting != common:
            others[setting].append(name)
    overrides = [
        {"targets": layer_patterns(names), "bits": s.bits, "group_size": group_size(s)}
        for s, names in sorted(others.items())
    ]
    return {
        **base,
        "bits": common.bits,
        "group_size": common.group_size or None,
        "targets": layer_patterns(sorted(allocation.settings)),
        "overrides": overrides,
    }


def group_size(setting: Setting) -> int | str:
    """An override's group size: `channel` is the recipe's word for one scale per row."""
    return setting.group_size or "channel"
