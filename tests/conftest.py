from __future__ import annotations

import contextlib
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]


def _preimport_heavy_modules() -> None:
    """Import numpy, matplotlib, jsonschema, torch, transformers, torchao and llama_cpp up front.

    pytester's in-process runs drop every module first imported inside them, and C
    extensions (numpy, torch, torchao's ops) cannot be imported twice in one process.
    Inner sessions that load a model or draw a report chart would otherwise break every
    later test that needs them.
    """
    import jsonschema  # noqa: F401  (its rpds extension)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot
    import numpy  # noqa: F401
    import torch  # noqa: F401
    import transformers  # noqa: F401

    from pytest_llmcheck.engines.transformers.quantize import quiet_loggers

    with quiet_loggers("torchao", "torch.utils._pytree"):
        import torchao.quantization  # noqa: F401
    with contextlib.suppress(ImportError):  # the [llamacpp] extra; its tests fail without it
        import llama_cpp  # noqa: F401  (ctypes-loaded libllama)


@pytest.fixture(autouse=True)
def native_numerics_unless_asked(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Inner sessions run natively, like this test process (pyproject.toml): torch is already
    imported here, so an in-process session could not hold it to portable kernels. Tests of
    portable numerics undo this (``monkeypatch.delenv("LLMCHECK_NUMERICS")``) and start fresh
    processes. Whatever an inner session sets for portable numerics is undone afterwards."""
    import os

    from pytest_llmcheck.config.numerics import BEFORE_ENV, CHOICE_ENV, PORTABLE_ENV

    names = (*PORTABLE_ENV, BEFORE_ENV)
    saved = {name: os.environ.get(name) for name in names}
    monkeypatch.setenv(CHOICE_ENV, "native")
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def itrex_worker_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **start: object) -> dict[str, str]:
    """The environment ``ItrexEngine.start`` gives its worker, captured without starting one."""
    from pytest_llmcheck.config.registry import ModelRef
    from pytest_llmcheck.engines.itrex import engine as itrex
    from pytest_llmcheck.engines.itrex.env import ItrexPython

    seen: dict[str, str] = {}

    class Stop(Exception):
        pass

    def fake_worker(python: Path, workdir: Path, *, env: dict[str, str] | None = None) -> None:
        seen.update(env or {})
        raise Stop

    monkeypatch.setattr(itrex, "WorkerProcess", fake_worker)
    monkeypatch.setattr(itrex, "legacy_view", lambda folder, view: [])
    monkeypatch.setattr(itrex, "check_remote_code", lambda ref, folder: None)
    ref = ModelRef(name="tiny@itrex", source="local", location=str(tmp_path), engine="itrex")
    python = ItrexPython(path=Path("/nonexistent/python"), origin="test", versions={})
    with pytest.raises(Stop):
        itrex.ItrexEngine.start(ref, tmp_path, python, workdir=tmp_path / "work", **start)  # type: ignore[arg-type]
    return seen


def pytest_sessionstart(session: pytest.Session) -> None:
    _preimport_heavy_modules()  # at session start, so `pytest --help` here stays fast


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama folder (real transformers + torchao path, fast), built once."""
    from tests.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama")


def write_fake_ini(pytester: pytest.Pytester, extra: str = "") -> Path:
    """Write the `fake` fixture's ini (fake engine, private cache), plus `extra` ini lines."""
    lines = [
        "[pytest]",
        "addopts = -p tests.fake_engine -p no:cacheprovider",
        f"llmcheck_cache_dir = {pytester.path / 'cache'}",
        "filterwarnings = ignore::pytest.PytestAssertRewriteWarning",
        *textwrap.dedent(extra).strip().splitlines(),
    ]
    return pytester.makeini("\n".join(lines) + "\n")


@pytest.fixture
def fake(pytester: pytest.Pytester) -> pytest.Pytester:
    """A pytester whose inner sessions use the fake engine and a private cache."""
    from tests import fake_engine

    fake_engine.LOADS.clear()
    fake_engine.EVENTS.clear()
    write_fake_ini(pytester)
    return pytester
