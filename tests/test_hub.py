"""Downloads through the real ModelScope and Hugging Face clients, against a stand-in hub."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from pytest_llmcheck.config.registry import ModelRef, resolve
from pytest_llmcheck.storage.cache import Cache
from pytest_llmcheck.storage.hub import HubError, cache_entry, download
from tests.hubserver import HF_REPO, MS_REPO, HubServer

pytest_plugins = ["tests.conftest_hub"]

SPECS = {"modelscope": f"modelscope:{MS_REPO}", "hf": f"hf:{HF_REPO}"}
SOURCES = sorted(SPECS)


@pytest.fixture(autouse=True)
def _fast_modelscope_integrity_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """ModelScope waits 1 s + 2 s before re-fetching a bad file; not needed against a stub."""
    import modelscope_hub._download as ms_download

    monkeypatch.setattr(ms_download, "DOWNLOAD_INTEGRITY_RETRY_BACKOFF", 0.01, raising=False)


def ref(source: str, revision: str | None = None) -> ModelRef:
    return resolve(SPECS[source] + (f"@{revision}" if revision else ""))


def tree(folder: Path) -> dict[str, str]:
    """relative path -> sha256 of every file under ``folder``."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def assert_no_entry(llm_cache: Cache, model: ModelRef) -> None:
    entry = cache_entry(model, llm_cache)
    assert not entry.ready
    assert not entry.path.exists()
    assert entry.temp_folders() == []
    assert all(not item["ready"] for item in llm_cache.list())


@pytest.mark.parametrize("source", SOURCES)
def test_download_is_byte_identical(
    source: str, hub_server: HubServer, llm_cache: Cache, hub_model_dir: Path
) -> None:
    path = download(ref(source), llm_cache, endpoint=hub_server.url)
    assert tree(path) == tree(hub_model_dir)  # nothing missing, nothing extra (client metadata removed)
    assert cache_entry(ref(source), llm_cache).ready
    assert path == cache_entry(ref(source), llm_cache).path / "model"


@pytest.mark.parametrize("source", SOURCES)
def test_second_download_uses_cache_without_requests(
    source: str, hub_server: HubServer, llm_cache: Cache
) -> None:
    first = download(ref(source), llm_cache, endpoint=hub_server.url)
    seen = len(hub_server.requests)
    assert seen > 0
    again = download(ref(source), Cache(llm_cache.root), endpoint=hub_server.url)  # a new session
    assert again == first
    assert len(hub_server.requests) == seen


@pytest.mark.parametrize("source", SOURCES)
def test_offline_uses_cache_with_server_stopped(source: str, hub_server: HubServer, llm_cache: Cache) -> None:
    expected = tree(download(ref(source), llm_cache, endpoint=hub_server.url))
    url = hub_server.url
    hub_server.stop()
    assert tree(download(ref(source), llm_cache, offline=True, endpoint=url)) == expected
    # a ready entry needs no server even when online: "download once, ever"
    assert tree(download(ref(source), llm_cache, endpoint=url)) == expected


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("how", ["argument", "LLMCHECK_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_not_cached_names_the_model(
    source: str, how: str, hub_server: HubServer, llm_cache: Cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    if how != "argument":
        monkeypatch.setenv(how, "1")
    with pytest.raises(HubError, match=r"^offline: ") as info:
        download(ref(source), llm_cache, offline=how == "argument", endpoint=hub_server.url)
    message = str(info.value)
    assert SPECS[source] in message
    assert str(llm_cache.root) in message
    assert f"llmcheck pull {SPECS[source]}" in message
    assert "\n" not in message
    assert hub_server.requests == []


def test_offline_hint_uses_the_alias(llm_cache: Cache) -> None:
    with pytest.raises(HubError, match=r"run 'llmcheck pull qwen' while online"):
        download(resolve("qwen"), llm_cache, offline=True)


@pytest.mark.parametrize("source", SOURCES)
def test_missing_repo_is_a_one_line_error(source: str, hub_server: HubServer, llm_cache: Cache) -> None:
    hub_server.missing.add(MS_REPO if source == "modelscope" else HF_REPO)
    with pytest.raises(HubError) as info:
        download(ref(source), llm_cache, endpoint=hub_server.url)
    assert str(info.value) == f"model {SPECS[source]} not found on {hub_server.url} (404)"
    assert_no_entry(llm_cache, ref(source))


@pytest.mark.parametrize("source", SOURCES)
def test_corrupted_file_leaves_no_entry(source: str, hub_server: HubServer, llm_cache: Cache) -> None:
    repo = MS_REPO if source == "modelscope" else HF_REPO
    hub_server.corrupt.add((repo, "model.bin"))
    with pytest.raises(HubError, match=r"model\.bin") as info:
        download(ref(source), llm_cache, endpoint=hub_server.url)
    assert "\n" not in str(info.value)
    assert_no_entry(llm_cache, ref(source))
    # once the server is fixed the same cache downloads cleanly
    hub_server.corrupt.clear()
    assert cache_entry(ref(source), llm_cache).ready is False
    download(ref(source), llm_cache, endpoint=hub_server.url)
    assert cache_entry(ref(source), llm_cache).ready


@pytest.mark.parametrize("source", SOURCES)
def test_missing_file_leaves_no_entry(source: str, hub_server: HubServer, llm_cache: Cache) -> None:
    repo = MS_REPO if source == "modelscope" else HF_REPO
    hub_server.missing_files.add((repo, "sub/tokenizer.txt"))
    with pytest.raises(HubError, match=r"tokenizer\.txt|missing"):
        download(ref(source), llm_cache, endpoint=hub_server.url)
    assert_no_entry(llm_cache, ref(source))


def test_hf_server_down_is_a_hub_error(hub_server: HubServer, llm_cache: Cache) -> None:
    url = hub_server.url
    hub_server.stop()
    with pytest.raises(HubError, match=rf"^cannot download hf:{HF_REPO} from {url}: .*refused"):
        download(ref("hf"), llm_cache, endpoint=url)
    assert_no_entry(llm_cache, ref("hf"))


def test_request_sequence_per_client(hub_server: HubServer, llm_cache: Cache, hub_model_dir: Path) -> None:
    """Pin the endpoints each client calls: a client upgrade that changes them fails here."""
    files = sorted(tree(hub_model_dir))

    download(ref("modelscope"), llm_cache, endpoint=hub_server.url)
    ms = list(hub_server.requests)
    listing = f"/api/v1/models/{MS_REPO}/repo/files"
    assert [(r.method, r.path) for r in ms[:2]] == [
        ("GET", listing),
        ("GET", "/api/v1/repos/internalAccelerationInfo"),
    ]
    assert ms[0].query == {"Revision": "master", "Recursive": "True"}
    # last, ours: the listing again, for the commit the files are at (download.json's "commit")
    assert (ms[-1].method, ms[-1].path, ms[-1].query) == ("GET", listing, ms[0].query)
    per_file = ms[2:-1]
    assert {(r.method, r.path) for r in per_file} == {("GET", f"/api/v1/models/{MS_REPO}/repo")}
    assert sorted(r.query["FilePath"] for r in per_file) == files
    assert all(r.query["Revision"] == "master" for r in per_file)

    hub_server.requests.clear()
    download(ref("hf"), llm_cache, endpoint=hub_server.url)
    hf = list(hub_server.requests)
    sha = hub_server.repos[HF_REPO].sha
    assert [(r.method, r.path) for r in hf[:2]] == [
        ("GET", f"/api/models/{HF_REPO}/revision/main"),
        ("GET", f"/api/models/{HF_REPO}/tree/{sha}"),
    ]
    assert hf[1].query.get("recursive") == "true"
    resolve_prefix = f"/{HF_REPO}/resolve/{sha}/"
    calls = [(r.method, r.path) for r in hf[2:]]
    assert sorted(calls) == sorted((m, resolve_prefix + f) for f in files for m in ("GET", "HEAD"))
    for name in files:  # each file: metadata HEAD first, then the GET
        assert calls.index(("HEAD", resolve_prefix + name)) < calls.index(("GET", resolve_prefix + name))


@pytest.mark.parametrize("source", SOURCES)
def test_pinned_revision_is_sent_and_cached_separately(
    source: str, hub_server: HubServer, llm_cache: Cache
) -> None:
    unpinned = download(ref(source), llm_cache, endpoint=hub_server.url)
    hub_server.requests.clear()
    pinned = download(ref(source, "v1.0"), llm_cache, endpoint=hub_server.url)
    assert pinned != unpinned
    if source == "modelscope":
        assert {r.query.get("Revision") for r in hub_server.requests if r.path.endswith("/repo")} == {"v1.0"}
    else:
        assert hub_server.requests[0].path == f"/api/models/{HF_REPO}/revision/v1.0"


def test_endpoint_from_environment(
    hub_server: HubServer, llm_cache: Cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMCHECK_MODELSCOPE_ENDPOINT", hub_server.url)
    monkeypatch.setenv("LLMCHECK_HF_ENDPOINT", hub_server.url + "/")
    download(ref("modelscope"), llm_cache)
    download(ref("hf"), llm_cache)
    paths = {r.path for r in hub_server.requests}
    assert f"/api/v1/models/{MS_REPO}/repo/files" in paths
    assert f"/api/models/{HF_REPO}/revision/main" in paths


def test_clients_keep_their_files_in_our_cache(
    hub_server: HubServer, llm_cache: Cache, hub_env: Path
) -> None:
    download(ref("modelscope"), llm_cache, endpoint=hub_server.url)
    download(ref("hf"), llm_cache, endpoint=hub_server.url)
    assert list(hub_env.iterdir()) == []  # nothing in ~/.modelscope, ~/.cache/...
    assert (llm_cache.scratch("modelscope") / "home" / "credentials" / "session").is_file()
    assert [item["kind"] for item in llm_cache.list()] == ["download", "download"]  # scratch is no entry


@pytest.mark.parametrize("source", SOURCES)
def test_progress_bars_off_by_default(
    source: str, hub_server: HubServer, llm_cache: Cache, capfd: pytest.CaptureFixture[str]
) -> None:
    download(ref(source), llm_cache, endpoint=hub_server.url)
    err = capfd.readouterr().err
    assert "%|" not in err  # tqdm's bar drawing
    llm_cache.clear()
    download(ref(source), llm_cache, endpoint=hub_server.url, progress=True)
    # with progress=True the clients draw again (shows the switch above is what silenced them)
    assert "%|" in capfd.readouterr().err


def test_local_models_are_not_downloaded(llm_cache: Cache, hub_model_dir: Path) -> None:
    with pytest.raises(HubError, match="not a hub model"):
        download(resolve(str(hub_model_dir)), llm_cache)
