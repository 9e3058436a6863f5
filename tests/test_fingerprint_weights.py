"""Fingerprints that tell weights apart: the content digest of the weight files.

Two models with the same file names and sizes, one byte of weights apart (a fine-tune looks
like this to a names-and-sizes identity), must get different fingerprints on every engine,
a snapshot failure must say that the weights changed, and a judge's cached verdicts must not
outlive its weights. Downloads record the hub's commit for the fingerprint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import struct
import textwrap
from pathlib import Path
from typing import Any

import pytest

from pytest_llmcheck.checks.judge import Judge, VerdictStore, judge_identity
from pytest_llmcheck.config.registry import resolve, smollm2_path
from pytest_llmcheck.config.settings import Settings
from pytest_llmcheck.engines.registry import EngineRegistry
from pytest_llmcheck.engines.transformers.engine import TransformersEngine
from pytest_llmcheck.engines.transformers.quantize import get_quantizer
from pytest_llmcheck.engines.transformers.weights import source_identity, weights_identity
from pytest_llmcheck.snapshots.extension import fingerprint_note
from pytest_llmcheck.storage.cache import Cache
from pytest_llmcheck.storage.hub import download, download_info
from tests.hubserver import HF_REPO, MS_REPO, HubServer
from tests.tiny_model import build_tiny_model

pytest_plugins = ["tests.conftest_hub"]


def flip_weight_byte(folder: Path) -> None:
    """Change one byte of tensor data in ``model.safetensors``: the lowest byte of a float32
    (the last bits of its mantissa), past the header; names and sizes stay as they were."""
    path = folder / "model.safetensors"
    data = bytearray(path.read_bytes())
    start = 8 + struct.unpack("<Q", data[:8])[0]  # the 8-byte header length, then the header
    data[start + 4000] ^= 0x01
    path.write_bytes(bytes(data))


def same_names_and_sizes(a: Path, b: Path) -> bool:
    def listing(folder: Path) -> list[tuple[str, int]]:
        return [(p.relative_to(folder).as_posix(), p.stat().st_size) for p in sorted(folder.rglob("*"))]

    return listing(a) == listing(b)


@pytest.fixture(scope="module")
def twins(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> tuple[Path, Path]:
    """Two tiny model folders alike in file names and sizes, one byte of weights apart."""
    root = tmp_path_factory.mktemp("twins")
    a = Path(shutil.copytree(tiny_model, root / "a" / "tiny-llama"))
    b = Path(shutil.copytree(tiny_model, root / "b" / "tiny-llama"))
    flip_weight_byte(b)
    assert same_names_and_sizes(a, b)
    return a, b


@pytest.fixture(scope="module")
def gguf_twins(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The embedded SmolLM2 GGUF twice, one byte of tensor data apart (a 4-bit weight of the
    largest tensor moved by one step)."""
    from gguf import GGUFReader

    root = tmp_path_factory.mktemp("gguf-twins")
    paths = []
    for side in ("a", "b"):
        (root / side).mkdir()
        paths.append(Path(shutil.copyfile(smollm2_path(), root / side / smollm2_path().name)))
    a, b = paths
    tensor = max(GGUFReader(str(a)).tensors, key=lambda t: int(t.n_bytes))
    offset = int(tensor.data_offset) + 4  # past a Q4_1/Q8_0 block's scales: its first quants
    with open(b, "r+b") as stream:
        stream.seek(offset)
        byte = stream.read(1)[0]
        stream.seek(offset)
        stream.write(bytes([byte ^ 0x01]))
    assert a.stat().st_size == b.stat().st_size
    return a, b


# -- transformers


@pytest.mark.slow
def test_transformers_fingerprints_tell_one_changed_byte_apart(
    twins: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pytest_llmcheck.storage import filehash

    hashed: list[Path] = []
    real = filehash.sha256_file

    def counting(path: Path) -> str:
        hashed.append(path)
        return real(path)

    monkeypatch.setattr(filehash, "sha256_file", counting)
    cache = Cache(tmp_path / "cache")
    prints: list[dict[str, Any]] = []
    for folder, decode in zip(twins, ("python", "generate"), strict=True):
        hashed.clear()
        engine = TransformersEngine.load(resolve(str(folder)), folder, get_quantizer("none"), threads=1,
                                         cache=cache, decode=decode)
        try:
            prints.append(engine.fingerprint())
        finally:
            engine.close()
        # the cache key's digest is the fingerprint's: each file was read once, not twice
        # (model.safetensors of b was written just now, so the memo would not have saved a second read)
        assert len(hashed) == len([p for p in folder.rglob("*") if p.is_file()]), hashed
    a, b = (p["weights"] for p in prints)
    print(f"\ntransformers weights, one byte apart:\n  a: {a}\n  b: {b}")
    assert a["files"] == b["files"]  # names and sizes alike: that identity alone cannot tell them apart
    assert a["sha256"] != b["sha256"]
    for folder, weights in zip(twins, (a, b), strict=True):
        ref = resolve(str(folder))
        assert weights["sha256"] == source_identity(ref, folder)["content"]  # the cache key's, unmemoized
        assert weights_identity(ref, folder) == weights  # without a cache: the same identity
    # the greedy decode path is in the fingerprint too (the lm_head kernel as timed on this machine)
    assert prints[0]["decode"]["loop"] == "fast"
    assert prints[0]["decode"]["step"] == "python"
    assert prints[0]["decode"]["lm_head"] in ("mv", "linear")
    assert prints[1]["decode"] == {"loop": "generate"}


@pytest.mark.slow
def test_a_snapshot_failure_says_the_weights_changed(
    pytester: pytest.Pytester, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Record on one model, then run the same path holding other weights of the same names and
    sizes (a fine-tune): the answer changes and the failure says the weights did."""
    model = Path(shutil.copytree(tiny_model, pytester.path / "models" / "tiny-llama"))
    tuned = build_tiny_model(tmp_path_factory.mktemp("tuned") / "tiny-llama", seed=1)
    assert same_names_and_sizes(model, tuned)
    pytester.makeini(textwrap.dedent(f"""
        [pytest]
        addopts = -p no:cacheprovider -p no:randomly
        llmcheck_cache_dir = {pytester.path / "cache"}
        llmcheck_max_new_tokens = 12
        llmcheck_threads = 1
    """))
    pytester.makepyfile(test_ask="""
        def test_ask(llm):
            llm.ask("What is the capital of France?", snapshot=True)
    """)
    args = (f"--llm-model={model}", "--llm-decode=python")
    pytester.runpytest(*args, "--snapshot-update").assert_outcomes(passed=1)
    (snapshot,) = (pytester.path / "__snapshots__").rglob("*.txt")
    recorded = snapshot.read_text(encoding="utf-8")
    shutil.copyfile(tuned / "model.safetensors", model / "model.safetensors")

    result = pytester.runpytest(*args)
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    print(next(line for line in out.splitlines() if "fingerprint" in line))
    result.stdout.fnmatch_lines(["*answer changed from snapshot*",
                                 "*fingerprint changed: the weights changed (weights.sha256 * -> *)*"])
    assert "fingerprint unchanged" not in out
    assert snapshot.read_text(encoding="utf-8") == recorded  # never written without --snapshot-update


# -- llama.cpp


@pytest.mark.slow
def test_llamacpp_fingerprints_tell_one_changed_byte_apart(
    gguf_twins: tuple[Path, Path], tmp_path: Path
) -> None:
    from pytest_llmcheck.engines.llamacpp import load_llamacpp

    settings = Settings(threads=1, cache_dir=tmp_path / "cache")
    prints: list[dict[str, Any]] = []
    for path in gguf_twins:
        engine = load_llamacpp(resolve(f"{path}@llamacpp"), settings)
        try:
            prints.append(engine.fingerprint())
            # a quantized copy (a float GGUF requantized into the cache) names its source's digest too
            engine.prepared = dataclasses.replace(engine.prepared, source=gguf_twins[0])
            copy = engine.weights_identity()
        finally:
            engine.close()
    a, b = (p["weights"] for p in prints)
    print(f"\nllama.cpp weights, one byte apart:\n  a: {a}\n  b: {b}")
    assert prints[0]["gguf"] == prints[1]["gguf"]  # file name, bytes and type alike
    assert a["sha256"] != b["sha256"]
    # the digest of one GGUF is the file's sha256, as sha256sum prints it
    assert a["sha256"] == hashlib.sha256(gguf_twins[0].read_bytes()).hexdigest()[:32]
    assert "source_sha256" not in a  # loaded as it is: no source
    assert copy == {"sha256": b["sha256"], "source_sha256": a["sha256"]}


# -- the failure message


def test_note_names_changed_weights_first() -> None:
    old = {"weights": {"sha256": "1a2b" * 8, "files": "f1"}, "versions": {"torch": "2.12.0"}}
    new = {"weights": {"sha256": "3c4d" * 8, "files": "f1"}, "versions": {"torch": "2.13.0"}}
    assert fingerprint_note(old, new) == (
        "fingerprint changed: the weights changed (weights.sha256 1a2b1a2b1a2b… -> 3c4d3c4d3c4d…); "
        "versions.torch 2.12.0 -> 2.13.0"
    )
    copy = {"weights": {"sha256": "aa", "source_sha256": "bb"}}
    assert fingerprint_note(copy, {"weights": {"sha256": "cc", "source_sha256": "dd"}}) == (
        "fingerprint changed: the weights changed (weights.sha256 aa -> cc; weights.source_sha256 bb -> dd)"
    )
    # a snapshot recorded before fingerprints carried a digest: nothing is known about the weights
    assert fingerprint_note({"weights": {"files": "f1"}}, {"weights": {"files": "f1", "sha256": "3c4d"}}) == (
        "fingerprint changed: weights.sha256 (none) -> 3c4d"
    )
    assert fingerprint_note(new, new) == "fingerprint unchanged: the model itself answers differently"


# -- the judge


def test_judge_identity_carries_the_weights_digest(tmp_path: Path) -> None:
    """Before it loads, a judge is known by its weights' content: a verdict remembered for other
    weights at the same path is not found."""
    folder = tmp_path / "judge"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}\n', encoding="utf-8")
    (folder / "model.safetensors").write_bytes(bytes(range(256)) * 8)
    settings = Settings(cache_dir=tmp_path / "cache")
    ref = resolve(str(folder))
    before = judge_identity(ref, settings)
    assert before["weights"] == source_identity(ref, folder)["content"]  # the fingerprint's weights.sha256
    (folder / "model.safetensors").write_bytes(bytes([1]) + bytes(range(1, 256)) + bytes(range(256)) * 7)
    after = judge_identity(ref, settings)
    assert {k for k in before if before[k] != after[k]} == {"weights"}
    # a hub judge not downloaded yet has no digest before its first load
    assert judge_identity(resolve(f"hf:{HF_REPO}"), settings)["weights"] is None


@pytest.mark.slow
def test_cached_verdicts_do_not_outlive_the_judges_weights(tiny_model: Path, tmp_path: Path) -> None:
    folder = Path(shutil.copytree(tiny_model, tmp_path / "judge" / "tiny-llama"))
    settings = Settings(threads=1, cache_dir=tmp_path / "cache", quant="none", numerics="native",
                        engine_options={"decode": "generate"})
    engines = EngineRegistry()
    question, answer, rubric = "Say hello.", "Hello!", "The answer is a greeting."

    def grade() -> tuple[Judge, bool]:
        ref = resolve(str(folder))
        judge = Judge("tiny", judge_identity(ref, settings), lambda: engines.load(ref, settings),
                      VerdictStore(settings.cache_dir))
        try:
            return judge, judge.grade(question, answer, rubric).cached
        finally:
            judge.close()

    first, cached = grade()
    assert (first.loads, cached) == (1, False)
    again, cached = grade()
    assert (again.loads, cached) == (0, True)  # same weights: the verdict is cached, the judge not loaded
    flip_weight_byte(folder)  # the judge's weights change in place (same names and sizes)
    changed, cached = grade()
    assert (changed.loads, cached) == (1, False)
    store = json.loads((settings.cache_dir / "judge" / "verdicts.json").read_text(encoding="utf-8"))
    assert len(store["verdicts"]) == 2  # the verdict store key differs with the judge's weights digest
    digests = {fp["weights"]["sha256"] for fp in store["fingerprints"].values()}
    print(f"\njudge weights digests: {sorted(digests)}")
    assert len(digests) == 2


# -- hub commits


@pytest.mark.parametrize("source", ["modelscope", "hf"])
def test_downloads_record_the_commit_for_the_fingerprint(
    source: str, hub_server: HubServer, llm_cache: Cache
) -> None:
    repo = MS_REPO if source == "modelscope" else HF_REPO
    ref = resolve(f"{source}:{repo}")
    folder = download(ref, llm_cache, endpoint=hub_server.url)
    info = download_info(folder)
    assert info is not None
    assert info["revision"] is None  # unpinned (what an alias is) ...
    assert info["commit"] == hub_server.repos[repo].sha  # ... yet the commit its files came from is known
    assert weights_identity(ref, folder, llm_cache.root)["commit"] == hub_server.repos[repo].sha
    assert download_info(folder.parent) is None  # not a download's model folder


def test_modelscope_commit_is_the_newest_of_the_files(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """ModelScope lists each file with the commit that last changed it: the files on disk are as
    in the newest of those; none is claimed when they cannot be ordered or do not match."""
    import modelscope_hub

    from pytest_llmcheck.storage.hub import _modelscope_commit

    (tmp_path / "config.json").write_text("{}", encoding="utf-8")
    (tmp_path / "model.bin").write_bytes(b"12345")
    listing: list[dict[str, Any]] = []

    class Legacy:
        def list_repo_files(self, repo_id: str, repo_type: str, revision: str) -> list[dict[str, Any]]:
            assert (repo_id, repo_type, revision) == ("o/m", "model", "master")
            return listing

    class Api:
        legacy = Legacy()

    monkeypatch.setattr(modelscope_hub, "HubApi", Api)
    listing[:] = [
        {"Path": "config.json", "Size": 2, "Revision": "old", "CommittedDate": 100},
        {"Path": "model.bin", "Size": 5, "Revision": "new", "CommittedDate": 200},
        {"Path": "skipped.bin", "Size": 1, "Revision": "newer", "CommittedDate": 300},
    ]
    assert _modelscope_commit("o/m", None, tmp_path, ["*.json", "model.bin"]) == "new"
    assert _modelscope_commit("o/m", None, tmp_path, None) is None  # skipped.bin is not on disk
    listing[:] = listing[:2]
    listing[1] = {**listing[1], "Size": 6}  # changed on the hub since the download
    assert _modelscope_commit("o/m", None, tmp_path, None) is None
    listing[1] = {"Path": "model.bin", "Size": 5, "Revision": "new"}  # no date: no order
    assert _modelscope_commit("o/m", None, tmp_path, None) is None
