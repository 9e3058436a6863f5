"""pytest-xdist: every model is loaded by one worker only.

xdist's default ``load`` mode hands any pending test to any idle worker, so with two
workers and two models each worker ends up loading both (four loads of multi-second,
multi-GB models instead of two). ``ModelScheduling`` is xdist's ``loadscope`` scheduler
with one change: the work unit of a test that runs on a model is *that model*, so all of
a model's tests go to one worker as one unit, and the units (models) are spread over the
workers, largest first. Tests without a model are units of their own and go anywhere.

It is used when ``-n`` is given and the user did not choose a ``--dist`` mode (xdist
turns ``-n`` alone into ``--dist load``); any explicit ``--dist`` (``load`` included) is
respected. The controller does not collect, so the model of a test is read from its node
id: the ``llm`` parameter's id is the model name (``quiz.llm.yaml::q1[smollm2]``,
``test_x.py::test_y[smollm2-3]``). It never relies on ``--dist loadgroup``'s node-id
suffixes.

Imported only from the plugin's ``pytest_xdist_make_scheduler`` hook, so only when
xdist runs; the top-level ``xdist`` imports below are pytest-xdist itself (its private
scheduling hook only through ``compat/xdist.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from xdist.remote import Producer

from pytest_llmcheck.compat.xdist import ScopeScheduling

SCOPE_PREFIX = "llmcheck model "  # a work unit's name: no node id starts like this (no '::')


def model_in_nodeid(nodeid: str, models: Sequence[str]) -> str | None:
    """The model a test runs on, from its node id, or None.

    The id between the last ``[`` and ``]`` of the test name joins the parameter ids
    with ``-``; the model is the run's model name that fills whole ``-`` parts of it
    (the longest one when names nest, like ``b`` and ``b-c``; the leftmost position
    when a name occurs twice).
    """
    name = nodeid.rsplit("::", 1)[-1]
    start = name.find("[")
    if start < 0 or not name.endswith("]"):
        return None
    parts = name[start + 1 : -1].split("-")
    best: tuple[int, int, str] | None = None  # (-parts, position, model)
    for model in models:
        size = len(model.split("-"))
        for i in range(len(parts) - size + 1):
            if "-".join(parts[i : i + size]) == model:
                candidate = (-size, i, model)
                if best is None or candidate < best:
                    best = candidate
                break
    return best[2] if best is not None else None


def wants_model_scheduling(dist: str, explicit: bool) -> bool:
    """Schedule by model when xdist runs in ``load`` mode that the user did not ask for.

    ``-n N`` alone makes xdist use ``load``; ``--dist load`` (or ``-d``), ``loadscope``,
    ``loadfile``, ``loadgroup``, ``worksteal`` and ``each`` given on the command line or
    in ``addopts`` are the user's choice and kept.
    """
    return dist == "load" and not explicit


def dist_given(config: pytest.Config) -> bool:
    """Whether ``--dist``/``-d`` was given (command line, ``addopts`` or ``PYTEST_ADDOPTS``).

    ``known_args_namespace`` holds the values as parsed, before xdist's
    ``pytest_cmdline_main`` turns ``-n`` into ``dist = "load"``.
    """
    known = config.known_args_namespace
    return getattr(known, "dist", "no") != "no" or bool(getattr(known, "distload", False))


class ModelScheduling(ScopeScheduling):
    """``loadscope`` with one scope per model (see the module docstring)."""

    def __init__(self, config: pytest.Config, log: Producer | None, models: Sequence[str]) -> None:
        super().__init__(config, log)
        self.log = log.llmchecksched if log is not None else Producer("llmchecksched")
        self.models = list(models)

    def scope_of(self, nodeid: str) -> str:
        model = model_in_nodeid(nodeid, self.models)
        return nodeid if model is None else SCOPE_PREFIX + model


def make_scheduler(
    config: pytest.Config, log: Producer | None, models: Sequence[str]
) -> ModelScheduling | None:
    """The model scheduler, or None to let xdist pick (an explicit ``--dist`` or no models)."""
    if not models or not wants_model_scheduling(str(config.getvalue("dist")), dist_given(config)):
        return None
    return ModelScheduling(config, log, models)
