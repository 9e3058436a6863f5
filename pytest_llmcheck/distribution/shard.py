"""``--llm-shard=K/N``: run part K of N of the session, one part per CI job.

Loading a model is the expensive step, so the parts are cut along models: the run's
models (in ``--llm-model`` order) go round robin to the N parts. With fewer models than
parts (one model, typically) that would leave parts empty, so the tests themselves are
split instead, round robin over their sorted node ids. Tests without a model are always
split that way. Every job computes the same cut from the same collection, so the N jobs
together run every test exactly once.

The other parts' tests are deselected (``pytest_deselected``, "N deselected" in pytest's
summary), after ``-k``/``-m`` and after syrupy saw every collected test, so their answer
snapshots count as deselected, never as unused.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytest

_FORM = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")


@dataclass(frozen=True)
class Shard:
    """Part ``index`` (1-based) of ``total``."""

    index: int
    total: int

    def __str__(self) -> str:
        return f"{self.index}/{self.total}"

    def by_models(self, models: Sequence[str]) -> bool:
        """Whether the cut is along models (at least one model per part)."""
        return len(models) >= self.total

    def models(self, models: Sequence[str]) -> list[str]:
        """This part's models when the cut is along models, else all of them."""
        if not self.by_models(models):
            return list(models)
        return [m for i, m in enumerate(models) if i % self.total == self.index - 1]

    def split(
        self,
        items: Sequence[pytest.Item],
        models: Sequence[str],
        model_of: Callable[[pytest.Item], str | None],
    ) -> tuple[list[pytest.Item], list[pytest.Item]]:
        """(kept, deselected), each in the order given."""
        mine = set(self.models(models)) if self.by_models(models) else None
        by_index = [it for it in items if mine is None or model_of(it) is None]
        ranks = {nodeid: i for i, nodeid in enumerate(sorted(it.nodeid for it in by_index))}
        kept: list[pytest.Item] = []
        dropped: list[pytest.Item] = []
        for item in items:
            if mine is not None and (model := model_of(item)) is not None:
                keep = model in mine
            else:
                keep = ranks[item.nodeid] % self.total == self.index - 1
            (kept if keep else dropped).append(item)
        return kept, dropped


def parse_shard(where: str, value: str) -> Shard:
    """``K/N`` with whole numbers 1 <= K <= N; anything else is a one-line usage error."""
    match = _FORM.fullmatch(value)
    if match is not None:
        index, total = int(match.group(1)), int(match.group(2))
        if 1 <= index <= total:
            return Shard(index, total)
    raise pytest.UsageError(
        f"{where}: invalid value {value!r}; expected K/N with whole numbers 1 <= K <= N (e.g. 2/4)"
    )


class ShardSelector:
    """The plugin object that deselects the other parts; registered only with ``--llm-shard``."""

    def __init__(
        self, shard: Shard, models: Callable[[], list[str]], model_of: Callable[[pytest.Item], str | None]
    ) -> None:
        self.shard = shard
        self.models = models
        self.model_of = model_of

    def pytest_report_header(self) -> str:
        models = self.models()
        if self.shard.by_models(models):
            return f"llmcheck: shard {self.shard} runs models {', '.join(self.shard.models(models))}"
        return f"llmcheck: shard {self.shard} runs 1 in {self.shard.total} tests (fewer models than shards)"

    @pytest.hookimpl(trylast=True)  # after -k/-m, and after syrupy recorded every collected item
    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        kept, dropped = self.shard.split(items, self.models(), self.model_of)
        if dropped:
            config.hook.pytest_deselected(items=dropped)
            items[:] = kept
