"""The fast decode loop's check at load, kept once per machine like the INT4 weights it ran on.

Before greedy answers go through :class:`~pytest_llmcheck.engines.transformers.fastpath.FastDecoder`
its logits are compared bit for bit with the model's own forward on a probe prompt. That runs
the model through transformers four times: at Qwen2-1.5B shape a cached load took 7.5 s with
the check and 5.2-5.4 s without (``benchmarks/bench_size.py --size 1.5b --rows int4 --no-cold``,
three runs, the first one checking; 14 of 28 s when profiled on a busy machine). The
outcome is a function of what the key below holds (the model's fingerprint: weights digest,
recipe, numerics, library versions; the probe's token ids; threads; which steps were checked,
with the C++ step's INT4 product and the body it runs on this CPU;
the decode code's own digest), so it is kept as a ``decode-check`` cache entry and a later load
with the same key reuses it, with the lm_head kernel it was checked with. Any change to one of
those checks again.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
from pathlib import Path
from typing import Any

from pytest_llmcheck.storage.cache import Cache, CacheEntry, CacheError

KIND = "decode-check"
RECORD = "check.json"
# the code whose logits are compared: a change to any of these checks every model again
CODE = ("fastpath.py", "int4.py", "decode_step.py", "decode_step.cpp", "decode_check.py")


@functools.cache
def code_digest() -> str:
    """sha256 of the decode loop's sources (this package's copy)."""
    digest = hashlib.sha256()
    for name in CODE:
        digest.update(name.encode() + b"\0" + (Path(__file__).parent / name).read_bytes())
    return digest.hexdigest()[:32]


def check_key(
    fingerprint: dict[str, Any], probe_ids: list[int], *, threads: int, steps: list[str]
) -> dict[str, Any]:
    """What a check's outcome depends on; ``fingerprint`` without its ``decode`` part and names."""
    return {"fingerprint": fingerprint, "probe": probe_ids, "threads": threads, "steps": steps,
            "code": code_digest()}


def entry_for(cache: Cache | None, key: dict[str, Any]) -> CacheEntry | None:
    if cache is None:
        return None
    with contextlib.suppress(CacheError, OSError):  # a cache it cannot use: check every time
        return cache.entry(KIND, key)
    return None


def recall(entry: CacheEntry | None, steps: int) -> tuple[list[str | None], bool, str | None] | None:
    """(problems per step, lm_head as mv, the lm_head screen's problem) from an earlier check,
    or None (check now)."""
    if entry is None or not entry.ready:
        return None
    try:
        data = json.loads((entry.path / RECORD).read_text(encoding="utf-8"))
        problems, head_mv, screen = data["problems"], data["head_mv"], data.get("screen")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if (not isinstance(problems, list) or len(problems) != steps or not isinstance(head_mv, bool)
            or not all(p is None or isinstance(p, str) for p in problems)
            or not (screen is None or isinstance(screen, str))):
        return None
    return problems, head_mv, screen


def remember(
    entry: CacheEntry | None, problems: list[str | None], head_mv: bool, screen: str | None = None
) -> None:
    """Keep a check's outcome (atomic and locked like every entry); a cache that refuses is no error."""
    if entry is None:
        return
    with contextlib.suppress(CacheError, OSError), entry.build() as tmp:
        if tmp is not None:
            record = {"problems": problems, "head_mv": head_mv, "screen": screen}
            (tmp / RECORD).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
