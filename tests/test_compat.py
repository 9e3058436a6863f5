"""The adapters over other packages' private APIs (``pytest_llmcheck/compat/``) against the
installed packages.

Why: a private name can change in any release. Each package here is pinned to a range in
``pyproject.toml`` with an upper bound; these tests fail, naming that range, when the
installed version leaves it or when the private name the adapter relies on is gone or has
another shape, so widening a pin means checking its adapter first.
"""

from __future__ import annotations

import importlib
import inspect
import re
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def pinned(dist: str) -> Requirement:
    """``dist``'s requirement as pyproject.toml states it (dependencies or an extra)."""
    text = PYPROJECT.read_text(encoding="utf-8")
    pattern = rf'"({re.escape(dist)}(?:\[[^\]]*\])?\s*[<>=!~][^"]*)"'
    found = re.search(pattern, text, re.IGNORECASE)
    assert found is not None, f"{dist} is not pinned in pyproject.toml; its adapter in compat/ needs a range"
    requirement = Requirement(found.group(1))
    assert any(spec.operator in ("<", "<=", "==", "~=") for spec in requirement.specifier), (
        f"{requirement} in pyproject.toml has no upper bound: a release could move the private API "
        "its adapter in pytest_llmcheck/compat/ uses"
    )
    return requirement


def checked(dist: str) -> str:
    """The installed version of ``dist``, asserted to lie in its pinned range; the text to
    start each failure message with."""
    requirement, installed = pinned(dist), version(dist)
    where = f"{dist} {installed} (pinned {requirement.specifier} in pyproject.toml)"
    assert requirement.specifier.contains(installed, prereleases=True), (
        f"{where}: the installed version is outside the pinned range; check its adapter in "
        "pytest_llmcheck/compat/ against it, then move the pin"
    )
    return where


def test_syrupy(request: pytest.FixtureRequest) -> None:
    from syrupy.extensions.single_file import SingleFileSnapshotExtension, WriteMode
    from syrupy.session import SnapshotSession

    from pytest_llmcheck.compat import syrupy

    where = checked("syrupy")
    session = syrupy.snapshot_session(request.config)
    assert session is not None, f"{where}: config._syrupy is no longer syrupy's SnapshotSession"
    for method in ("collect_items", "select_items", "ran_item"):
        assert callable(getattr(SnapshotSession, method, None)), f"{where}: SnapshotSession.{method} is gone"
    parameters = list(inspect.signature(SnapshotSession.ran_item).parameters)
    assert parameters[:3] == ["self", "nodeid", "outcome"], (
        f"{where}: SnapshotSession.ran_item no longer takes (nodeid, outcome)"
    )
    assert "ignore_file_extensions" in SnapshotSession.__dataclass_fields__, (
        f"{where}: SnapshotSession.ignore_file_extensions is gone"
    )
    assert hasattr(SingleFileSnapshotExtension, "_write_mode"), f"{where}: _write_mode is gone"
    assert syrupy.TextSingleFileExtension.get_write_encoding() == "utf-8", (
        f"{where}: _write_mode = WriteMode.TEXT no longer makes the extension write text"
    )
    assert WriteMode.TEXT.value == "t"
    assert syrupy.file_stem('a/b:c?d[e]') == "abcd[e]", (
        f"{where}: _sanitize_filename is gone or cleans names differently"
    )


def test_xdist() -> None:
    from xdist.scheduler import LoadScopeScheduling

    from pytest_llmcheck.compat.xdist import ScopeScheduling

    where = checked("pytest-xdist")
    split = getattr(LoadScopeScheduling, "_split_scope", None)
    assert callable(split), f"{where}: LoadScopeScheduling._split_scope is gone"
    assert list(inspect.signature(split).parameters) == ["self", "nodeid"], (
        f"{where}: LoadScopeScheduling._split_scope no longer takes (nodeid)"
    )
    callers = [name for name, member in vars(LoadScopeScheduling).items()
               if "_split_scope" in getattr(getattr(member, "__code__", None), "co_names", ())]
    assert "schedule" in callers, f"{where}: LoadScopeScheduling.schedule no longer calls _split_scope"
    assert ScopeScheduling._split_scope is not split


def test_modelscope_hub() -> None:
    from modelscope_hub import config as ms_config

    from pytest_llmcheck.compat import modelscope

    where = checked("modelscope-hub")
    download = importlib.import_module(modelscope.DOWNLOAD_MODULE)
    assert isinstance(getattr(download, "tqdm", None), type), (
        f"{where}: {modelscope.DOWNLOAD_MODULE}.tqdm, the class of its progress bars, is gone"
    )
    original = download.tqdm
    with modelscope.quiet_download_bars(False):
        assert download.tqdm is not original
        assert download.tqdm(total=1).disable
    assert download.tqdm is original
    assert hasattr(ms_config, "_default_config"), f"{where}: modelscope_hub.config._default_config is gone"
    assert callable(getattr(ms_config, "set_default_config", None)), f"{where}: set_default_config is gone"
    current = modelscope.current_default_config()
    assert current is None or isinstance(current, ms_config.HubConfig), f"{where}: _default_config changed"


def test_llama_cpp() -> None:
    llama_cpp = pytest.importorskip("llama_cpp", reason="the [llamacpp] extra is not installed")
    from llama_cpp import _logger

    from pytest_llmcheck.compat import llama_cpp as adapter

    where = checked("llama-cpp-python")
    for name in ("ctx", "model"):
        assert isinstance(getattr(llama_cpp.Llama, name, None), property), f"{where}: Llama.{name} is gone"
    for name in ("llama_model_get_vocab", "llama_vocab_get_text", "llama_vocab_is_eog"):
        assert callable(getattr(llama_cpp, name, None)), f"{where}: llama_cpp.{name} is gone"
    assert _logger.logger.name == adapter.LOGGER, (
        f"{where}: its log callback now obeys the logger {_logger.logger.name!r}, not {adapter.LOGGER!r}"
    )
    # the public ways give what the private attributes the engine used to read give
    import ctypes

    from pytest_llmcheck.config.registry import smollm2_path

    with adapter.quiet_logger():
        llama = llama_cpp.Llama(str(smollm2_path()), vocab_only=True, n_ctx=64, verbose=False)
    def address(pointer: object) -> int | None:
        return ctypes.cast(pointer, ctypes.c_void_p).value  # type: ignore[arg-type]

    assert address(adapter.context(llama)) == address(llama._ctx.ctx), (
        f"{where}: Llama.ctx is no longer the llama_context of Llama._ctx"
    )
    assert address(adapter.vocab(llama)) == address(llama._model.vocab), (
        f"{where}: llama_model_get_vocab(Llama.model) is no longer the vocabulary Llama._model holds"
    )
    for token in (llama.token_bos(), llama.token_eos()):
        assert adapter.token_text(llama, token) == llama._model.token_get_text(token), (
            f"{where}: llama_vocab_get_text gives another text for token {token}"
        )
    assert adapter.token_text(llama, llama.token_eos()) == "<|im_end|>"


def test_pytest() -> None:
    from pytest_llmcheck.compat.pytest import option_names

    where = checked("pytest")
    parser = pytest.Parser(_ispytest=True)
    parser.addoption("--anonymous-one")
    parser.getgroup("mine").addoption("--in-a-group", "-G")
    assert option_names(parser) == {"--anonymous-one", "--in-a-group", "-G"}, (
        f"{where}: Parser._groups / Parser._anonymous no longer hold the registered options"
    )


def test_torch() -> None:
    import torch

    from pytest_llmcheck.compat import torch as adapter

    where = checked("torch")
    assert callable(adapter.int4pack_mm_for_cpu()), f"{where}: aten._weight_int4pack_mm_for_cpu is gone"
    pack = adapter.convert_weight_to_int4pack_for_cpu()
    assert callable(pack), f"{where}: aten._convert_weight_to_int4pack_for_cpu is gone"
    packed = pack(torch.zeros(64, 32, dtype=torch.int32), 1)
    assert packed.dtype == torch.uint8, f"{where}: the INT4 packing changed"
    assert packed.numel() == 64 * 32 // 2, f"{where}: the INT4 packing changed"
    for name, probe in adapter.CPU_PROBES.items():
        assert callable(getattr(torch.cpu, probe, None)), f"{where}: torch.cpu.{probe} ({name}) is gone"
        assert isinstance(adapter.cpu_supports(name), bool)


def test_transformers() -> None:
    from transformers import LlamaConfig

    from pytest_llmcheck.compat.transformers import attn_implementation

    where = checked("transformers")
    assert attn_implementation(LlamaConfig(attn_implementation="sdpa")) == "sdpa", (
        f"{where}: PretrainedConfig._attn_implementation no longer holds the attention implementation"
    )
    assert attn_implementation(LlamaConfig()) in (None, "sdpa", "eager")
