"""The ``llamacpp`` engine: llama.cpp in process on the embedded SmolLM2 GGUF.

Covers picking the GGUF file (folders, hub repos), the once-per-machine quantization of
float GGUFs into the cache, byte-identical answers across sessions (also with the
questions in another order), and llama.cpp's own timings in the report.
"""

from __future__ import annotations

import ctypes
import json
import shutil
import textwrap
from pathlib import Path

import pytest

from pytest_llmcheck.config.registry import ModelRefError, resolve, smollm2_path
from pytest_llmcheck.engines.llamacpp import KIND, LlamaCppError, _quiet, choose_gguf, gguf_header
from pytest_llmcheck.storage.cache import Cache
from tests.hubserver import HubServer

pytest_plugins = ["tests.conftest_hub"]

SUITE = """\
suite: capitals
questions:
  - id: france
    prompt: "What is the capital of France?"
  - id: riddle
    prompt: "明明明明明白白白喜欢他，可她就是不说。这句话里，明明和白白谁喜欢谁？"
"""


@pytest.fixture(scope="session")
def f16_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2 as an F16 GGUF: the embedded Q4_1 file widened by llama.cpp's own quantizer."""
    import llama_cpp

    out = tmp_path_factory.mktemp("f16") / "SmolLM2-135M-Instruct-F16.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_F16
    params.allow_requantize = True
    params.nthread = 2
    with _quiet():
        status = llama_cpp.llama_model_quantize(
            str(smollm2_path()).encode(), str(out).encode(), ctypes.byref(params)
        )
    assert status == 0
    return out


def write_ini(pytester: pytest.Pytester, suite: str = SUITE) -> None:
    pytester.makeini(
        textwrap.dedent(
            f"""
            [pytest]
            addopts = -p no:cacheprovider
            llmcheck_cache_dir = {pytester.path / "cache"}
            llmcheck_max_new_tokens = 16
            llmcheck_threads = 1
            """
        )
    )
    pytester.makefile(".llm.yaml", capitals=suite)


# -- choosing the file


def test_choose_gguf_by_quant_or_name(tmp_path: Path) -> None:
    for name in ("m-Q4_K_M.gguf", "m-Q8_0.gguf", "mmproj-m-f16.gguf", "big-00002-of-00002.gguf", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "big-00001-of-00002.gguf").write_bytes(b"")
    assert choose_gguf(tmp_path, "q8_0", "repo") == "m-Q8_0.gguf"
    assert choose_gguf(tmp_path, "Q4_K_M", "repo") == "m-Q4_K_M.gguf"
    assert choose_gguf(tmp_path, "big-00001-of-00002.gguf", "repo") == "big-00001-of-00002.gguf"
    with pytest.raises(LlamaCppError) as info:
        choose_gguf(tmp_path, "Q4_K", "repo")
    assert str(info.value) == (
        "--llm-gguf-quant=Q4_K matches no GGUF files in repo; "
        "available: big-00001-of-00002.gguf, m-Q4_K_M.gguf, m-Q8_0.gguf"
    )
    with pytest.raises(LlamaCppError) as info:
        choose_gguf(tmp_path, None, "repo")
    assert str(info.value) == (
        "repo holds 3 GGUF files; pick one with --llm-gguf-quant=<quant or file name>: "
        "big-00001-of-00002.gguf, m-Q4_K_M.gguf, m-Q8_0.gguf"
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LlamaCppError, match=r"^no \.gguf file in empty$"):
        choose_gguf(empty, None, "empty")


def test_folders_of_gguf_files_resolve_for_llamacpp_only(tmp_path: Path) -> None:
    folder = tmp_path / "ggufs"
    folder.mkdir()
    (folder / "m-Q4_0.gguf").write_bytes(b"")
    ref = resolve(f"{folder}@llamacpp")
    assert (ref.name, ref.source, ref.engine, ref.gguf_file) == ("ggufs@llamacpp", "local", "llamacpp", None)
    assert resolve(str(folder), default_engine="llamacpp").engine == "llamacpp"
    with pytest.raises(ModelRefError, match=r"has no config.json \(expected a transformers model folder\)$"):
        resolve(str(folder))
    assert resolve("smollm2@llamacpp").gguf_file == smollm2_path().name


# -- reading the GGUF header


def _small_gguf(path: Path) -> bytes:
    """A header-only GGUF written by the ``gguf`` package: scalars, strings, arrays of
    numbers and of strings (a vocabulary's shape); returns its bytes."""
    import gguf

    writer = gguf.GGUFWriter(path, "llama")
    writer.add_file_type(15)  # Q4_K_M
    writer.add_context_length(2048)
    writer.add_string("general.name", "tiny")
    writer.add_float32("llama.rope.freq_base", 10000.0)
    writer.add_bool("tokenizer.ggml.add_bos_token", True)
    writer.add_token_list(["<s>", "</s>", "hello", "明明"])
    writer.add_token_scores([0.0, -1.0, -2.5, -3.0])
    writer.add_uint64("llama.big", 2**40)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.close()
    return path.read_bytes()


def test_gguf_header_of_a_small_file_as_the_gguf_package_wrote_it(tmp_path: Path) -> None:
    from pytest_llmcheck.engines.llamacpp import read_gguf_metadata

    path = tmp_path / "small.gguf"
    _small_gguf(path)
    meta = read_gguf_metadata(path)
    assert meta["general.architecture"] == "llama"
    assert meta["general.name"] == "tiny"
    assert meta["llama.big"] == 2**40
    assert meta["tokenizer.ggml.add_bos_token"] is True
    assert "tokenizer.ggml.tokens" not in meta  # arrays are skipped, and what follows them is read
    assert gguf_header(path) == ("Q4_K_M", 2048)


def test_truncated_or_corrupt_gguf_headers_are_one_line_never_a_hang(tmp_path: Path) -> None:
    """Every truncation of a real header and a thousand seeded corruptions of it: each
    read gives the header's values or the engine's one-line error (no struct.error, IndexError,
    RecursionError, MemoryError or endless loop), in well under a second each."""
    import random
    import struct
    import time

    whole = _small_gguf(tmp_path / "small.gguf")
    path = tmp_path / "fuzzed.gguf"

    def read(data: bytes) -> None:
        path.write_bytes(data)
        start = time.perf_counter()
        problem = ""
        try:
            gguf_header(path)
        except LlamaCppError as exc:
            problem = str(exc)
        assert time.perf_counter() - start < 1.0
        if problem:
            assert "\n" not in problem
            assert problem.startswith(f"{path} is not a readable GGUF file: ")

    for cut in range(len(whole)):
        path.write_bytes(whole[:cut])
        with pytest.raises(LlamaCppError, match="is not a readable GGUF file"):
            gguf_header(path)
    rng = random.Random(23)
    for _ in range(1000):
        data = bytearray(whole)
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(data))
            data[at] = rng.choice([0, 0xFF, 0x7F, 9, 8, rng.randrange(256)])
        read(bytes(data))
    # crafted: absurd counts and lengths, nesting, unknown types
    head = b"GGUF" + struct.pack("<IQ", 3, 0)
    key = struct.pack("<Q", 1) + b"k"
    for crafted in (
        head + struct.pack("<Q", 2**63),  # key/values the file cannot hold
        head + struct.pack("<Q", 1) + struct.pack("<Q", 2**64 - 1) + b"k",  # a key longer than the file
        head + struct.pack("<Q", 1) + key + struct.pack("<IIQ", 9, 8, 2**62),  # 2**62 strings
        head + struct.pack("<Q", 1) + key + struct.pack("<IIQ", 9, 12, 2**61),  # 2**61 doubles
        head + struct.pack("<Q", 1) + key + struct.pack("<I", 9) + struct.pack("<IQ", 9, 1) * 5000,
        head + struct.pack("<Q", 1) + key + struct.pack("<I", 13) + b"\0" * 16,  # no such type
    ):
        path.write_bytes(crafted)
        with pytest.raises(LlamaCppError, match="is not a readable GGUF file: ValueError"):
            gguf_header(path)


@pytest.mark.slow
def test_gguf_metadata_as_gguf_reads_it() -> None:
    """The header reader of its own gives the same scalars as the ``gguf`` package's GGUFReader
    on the embedded SmolLM2 (why it is kept: ``benchmarks/bench_gguf_header.py``)."""
    import gguf

    from pytest_llmcheck.engines.llamacpp import read_gguf_metadata

    path = smollm2_path()
    reader = gguf.GGUFReader(path, "r")
    scalars = {name: field.contents() for name, field in reader.fields.items()
               if len(field.types) == 1 and field.types[0] != gguf.GGUFValueType.ARRAY
               and not name.startswith("GGUF.")}
    meta = read_gguf_metadata(path)
    assert meta == pytest.approx(scalars)
    assert len(meta) > 20


# -- real llama.cpp


def test_embedded_smollm2_through_pytest_with_llama_cpp_timings(pytester: pytest.Pytester) -> None:
    write_ini(pytester)
    result = pytester.runpytest("--llm-model=smollm2@llamacpp", "--llm-report=out", "-v", "--snapshot-update")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "*capitals.llm.yaml::france[[]smollm2@llamacpp[]] PASSED*",
            "smollm2@llamacpp (smollm2@llamacpp): loaded 1x in *s; llama.cpp Q4_1, 94 MiB, 1 thread*",
        ]
    )
    report = json.loads((pytester.path / "out" / "report.json").read_text(encoding="utf-8"))
    (model,) = report["models"]
    assert model["engine"] == "llamacpp"
    assert model["fingerprint"]["gguf"]["type"] == "Q4_1"
    for case in model["cases"]:
        assert case["answer"]
        assert 0 < case["new_tokens"][0] <= 16
        assert 0 < case["ttft"][0] < case["seconds"][0]  # prompt eval, then prompt eval + decode


def test_answers_are_byte_identical_across_sessions_and_question_order(pytester: pytest.Pytester) -> None:
    """Separate processes; the second asks in reverse order (no KV prefix reuse between answers)."""
    write_ini(pytester)
    first = pytester.runpytest_subprocess(
        "--llm-model=smollm2@llamacpp", "--llm-report=one", "--snapshot-update"
    )
    first.assert_outcomes(passed=2)
    reordered = SUITE.split("  - id: ")
    write_ini(pytester, reordered[0] + "  - id: " + reordered[2].rstrip("\n") + "\n  - id: " + reordered[1])
    second = pytester.runpytest_subprocess("--llm-model=smollm2@llamacpp", "--llm-report=two", "-v")
    second.assert_outcomes(passed=2)
    second.stdout.fnmatch_lines(
        ["*riddle[[]smollm2@llamacpp[]] PASSED*", "*france[[]smollm2@llamacpp[]] PASSED*"]
    )

    def answers(folder: str) -> dict[str, str]:
        report = json.loads((pytester.path / folder / "report.json").read_text(encoding="utf-8"))
        (model,) = report["models"]
        return {case["case_id"]: case["answer"] for case in model["cases"]}

    assert answers("one") == answers("two")
    assert [case for case in answers("one").values() if case]


def test_float_gguf_is_quantized_once_per_machine(pytester: pytest.Pytester, f16_gguf: Path) -> None:
    write_ini(pytester)
    model = f"--llm-model={f16_gguf}@llamacpp"
    name = f"{f16_gguf.stem}@llamacpp"
    first = pytester.runpytest(model, "-k", "france", "--snapshot-update")
    first.assert_outcomes(passed=1)
    first.stdout.fnmatch_lines(
        [f"{name} (*): loaded 1x in *s; llama.cpp Q4_K_M, * MiB, 1 thread; quantized from F16"]
    )
    cache = Cache(pytester.path / "cache")
    entries = [e for e in cache.list() if e["kind"] == KIND]
    assert len(entries) == 1
    assert entries[0]["ready"]
    (built,) = Path(str(entries[0]["path"])).glob("*.gguf")
    assert gguf_header(built)[0] == "Q4_K_M"
    mtime = built.stat().st_mtime_ns

    again = pytester.runpytest(model, "-k", "france", "--snapshot-update")
    again.assert_outcomes(passed=1)
    again.stdout.fnmatch_lines(
        [f"{name} (*): loaded 1x in *s (from cache); llama.cpp Q4_K_M, * MiB, 1 thread; quantized from F16"]
    )
    assert built.stat().st_mtime_ns == mtime

    # the same file in another install (another folder, new mtime) is the same entry: keyed by content
    copy = pytester.path / "other-venv" / f16_gguf.name
    copy.parent.mkdir()
    shutil.copyfile(f16_gguf, copy)
    moved = pytester.runpytest(f"--llm-model={copy}@llamacpp", "-k", "france", "--snapshot-update")
    moved.stdout.fnmatch_lines([f"{name} (*): loaded 1x in *s (from cache); llama.cpp Q4_K_M*"])
    assert len([e for e in cache.list() if e["kind"] == KIND]) == 1

    other = pytester.runpytest(model, "-k", "france", "--llm-gguf-requant=q8_0", "--snapshot-update")
    other.stdout.fnmatch_lines([f"{name} (*): * llama.cpp Q8_0, * MiB, 1 thread; quantized from F16"])
    as_is = pytester.runpytest(model, "-k", "france", "--llm-gguf-requant=none", "--snapshot-update")
    as_is.stdout.fnmatch_lines([f"{name} (*): * llama.cpp F16, 258 MiB, 1 thread"])
    assert len([e for e in cache.list() if e["kind"] == KIND]) == 2

    bad = pytester.runpytest(model, "-k", "france", "--llm-gguf-requant=Q3")
    bad.assert_outcomes(errors=1)
    bad.stdout.fnmatch_lines(
        ["*LlamaCppError: --llm-gguf-requant: invalid value 'Q3'; allowed: Q4_K_M, Q4_K_S, Q4_0, *, none"]
    )


def test_no_cache_quantized_copy_is_removed_at_close(
    f16_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile

    from pytest_llmcheck.config.settings import Settings
    from pytest_llmcheck.engines.llamacpp import load_llamacpp

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    settings = Settings(threads=1, no_cache=True, cache_dir=tmp_path / "cache")
    engine = load_llamacpp(resolve(f"{f16_gguf}@llamacpp"), settings)
    assert engine.prepared.temporary
    assert engine.prepared.path.parent.parent == tmp_path
    assert engine.facts.quant == "Q4_K_M"
    engine.close()
    assert list(tmp_path.iterdir()) == []  # no leftover copy, and no cache entry either


def test_hub_repo_downloads_only_the_chosen_quant(
    pytester: pytest.Pytester, tmp_path: Path, hub_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(smollm2_path(), repo / "SmolLM2-135M-Instruct-Q4_1.gguf")
    (repo / "SmolLM2-135M-Instruct-Q8_0.gguf").write_bytes(b"GGUF not really" * 100)
    (repo / "README.md").write_text("two quants\n", encoding="utf-8")
    write_ini(pytester)
    with HubServer() as hub:
        hub.add_repo("org/SmolLM2-GGUF", repo)
        monkeypatch.setenv("LLMCHECK_HF_ENDPOINT", hub.url)
        result = pytester.runpytest(
            "--llm-model=hf:org/SmolLM2-GGUF@llamacpp",
            "--llm-gguf-quant=Q4_1",
            "-k",
            "france",
            "--snapshot-update",
        )
        files = [path for _method, path in hub.calls() if "/resolve/" in path]
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["SmolLM2-GGUF@llamacpp (hf:org/SmolLM2-GGUF): *llama.cpp Q4_1, 94 MiB, 1 thread*"]
    )
    assert {p.rsplit("/", 1)[-1] for p in files} == {"SmolLM2-135M-Instruct-Q4_1.gguf"}


def test_folder_with_several_ggufs_fails_each_test_with_one_line(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    folder = tmp_path / "quants"
    folder.mkdir()
    for name in ("a-Q4_1.gguf", "a-Q8_0.gguf"):
        (folder / name).symlink_to(smollm2_path())
    write_ini(pytester)
    result = pytester.runpytest(f"--llm-model={folder}@llamacpp")
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(
        [
            f"*LlamaCppError: {folder} holds 2 GGUF files; "
            "pick one with --llm-gguf-quant=<quant or file name>: "
            "a-Q4_1.gguf, a-Q8_0.gguf"
        ]
    )
    picked = pytester.runpytest(
        f"--llm-model={folder}@llamacpp", "--llm-gguf-quant=Q8_0", "-k", "france", "--snapshot-update"
    )
    picked.assert_outcomes(passed=1)
