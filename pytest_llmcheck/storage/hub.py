"""Model downloads from ModelScope and Hugging Face, through their own clients, into our cache.

A download is a cache entry of kind ``download`` keyed by (source, repo id, revision); the
model files are in ``<entry>/model`` and ``<entry>/download.json`` says where they came from.
Policy: a ready entry is used as is and the hub is not contacted at all -- for a pinned
revision because it cannot change, for an unpinned one because this is a per-machine
"download once, ever" cache (``llmcheck pull`` is the place to refresh). So a second test
session works with the hub down.

The clients keep process-wide state (ModelScope's default config, HF's constants read at
import), so every call passes the endpoint and cache folders explicitly and keeps the
clients' own caches and credentials inside our cache folder.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pytest_llmcheck.compat.modelscope import current_default_config, quiet_download_bars
from pytest_llmcheck.config.registry import REGISTRY, ModelRef, ModelRefError, parse_hub_id
from pytest_llmcheck.storage.cache import Cache, CacheEntry

KIND = "download"
MODEL_DIR = "model"
INFO_FILE = "download.json"
ENDPOINT_ENV = {"modelscope": "LLMCHECK_MODELSCOPE_ENDPOINT", "hf": "LLMCHECK_HF_ENDPOINT"}
OFFLINE_ENV = ("LLMCHECK_OFFLINE", "HF_HUB_OFFLINE")
HUB_NAMES = {"modelscope": "ModelScope", "hf": "Hugging Face"}

# ModelScope downloads swap the client's process-wide config; one at a time per process.
_MODELSCOPE_LOCK = threading.Lock()


class HubError(RuntimeError):
    """A download that cannot be done; the message is one line for the user."""


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def offline_from_env(env: Mapping[str, str] | None = None) -> bool:
    """True when ``LLMCHECK_OFFLINE`` or ``HF_HUB_OFFLINE`` asks for no network."""
    env = os.environ if env is None else env
    return any(_truthy(env.get(name)) for name in OFFLINE_ENV)


def default_endpoint(source: str) -> str | None:
    """``$LLMCHECK_<HUB>_ENDPOINT``, else None: the client's own default (the real hub)."""
    value = os.environ.get(ENDPOINT_ENV[source], "").strip()
    return value.rstrip("/") or None


def download_key(ref: ModelRef, patterns: Sequence[str] | None = None) -> dict[str, object]:
    """The cache key of a hub model: what identifies the files, not how we named the model.

    A download of only some files (``patterns``, e.g. one quant of a GGUF repo) is its own entry.
    """
    repo_id, revision = _checked(ref)
    slug = f"{ref.source}-{repo_id.replace('/', '--')}" + (f"-{revision}" if revision else "")
    key: dict[str, object] = {"name": slug, "source": ref.source, "repo": repo_id, "revision": revision}
    if patterns:
        key["patterns"] = sorted(set(patterns))
    return key


def cache_entry(ref: ModelRef, cache: Cache, patterns: Sequence[str] | None = None) -> CacheEntry:
    """The download entry of ``ref`` (ready or not), e.g. for ``llmcheck pull`` or a report."""
    return cache.entry(KIND, download_key(ref, patterns))


def download_info(model_dir: Path) -> dict[str, Any] | None:
    """What ``download.json`` records for a download's model folder (source, revision, the hub's
    ``commit``, ...); None when the folder is no download (a local model) or the record is unreadable."""
    info = model_dir.parent / INFO_FILE
    if model_dir.name != MODEL_DIR or not info.is_file():
        return None
    try:
        data = json.loads(info.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _checked(ref: ModelRef) -> tuple[str, str | None]:
    """Re-validate the repo id and revision: they become URL parts and folder names."""
    if ref.source not in HUB_NAMES:
        raise HubError(f"{ref.spec} is not a hub model (source {ref.source!r}); nothing to download")
    rest = ref.location + (f"@{ref.revision}" if ref.revision else "")
    try:
        return parse_hub_id(ref.source, rest)
    except ModelRefError as exc:
        raise HubError(str(exc)) from None


def _pull_hint(ref: ModelRef) -> str:
    """What to type to fetch the model: the alias when it means this model, else the spec."""
    alias = REGISTRY.get(ref.name)
    if alias is not None and alias.target == f"{ref.source}:{ref.location}" and not ref.revision:
        return ref.name
    return ref.spec


def download(
    ref: ModelRef,
    cache: Cache,
    *,
    offline: bool = False,
    endpoint: str | None = None,
    progress: bool = False,
    patterns: Sequence[str] | None = None,
) -> Path:
    """Return a local folder with the files of hub model ``ref``, downloading it once.

    ``patterns`` (glob patterns, as the hub clients take them) limit the download to the
    files that match any of them.

    ``endpoint`` defaults to ``$LLMCHECK_MODELSCOPE_ENDPOINT`` / ``$LLMCHECK_HF_ENDPOINT``,
    else the client's default hub. Offline (argument or env) only the cache is used.
    A failed or corrupted download raises HubError and leaves no ready entry.
    """
    repo_id, revision = _checked(ref)
    patterns = sorted(set(patterns)) if patterns else None
    entry = cache_entry(ref, cache, patterns)
    model_dir = entry.path / MODEL_DIR
    if entry.ready:
        return model_dir
    if offline or offline_from_env():
        raise HubError(
            f"offline: {ref.spec} is not in the cache {cache.root}; "
            f"run 'llmcheck pull {_pull_hint(ref)}' while online"
        )
    endpoint = (endpoint or "").strip().rstrip("/") or default_endpoint(ref.source)
    with entry.build() as tmp:
        if tmp is None:  # another process finished it while we waited
            return model_dir
        target = tmp / MODEL_DIR
        target.mkdir()
        started = time.time()
        if ref.source == "modelscope":
            commit = _download_modelscope(ref, repo_id, revision, target, cache, endpoint, progress, patterns)
        else:
            commit = _download_hf(ref, repo_id, revision, target, cache, endpoint, progress, patterns)
        info = {
            "source": ref.source,
            "repo": repo_id,
            "revision": revision,
            "commit": commit,
            "endpoint": endpoint,
            "downloaded_at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "seconds": round(time.time() - started, 3),
        }
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=1) + "\n", encoding="utf-8")
    return model_dir


def _where(source: str, endpoint: str | None) -> str:
    return endpoint or f"the {HUB_NAMES[source]} hub"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0].strip() if text else type(exc).__name__


@contextlib.contextmanager
def _patched_env(values: Mapping[str, str]) -> Iterator[None]:
    old = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in old.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _download_modelscope(
    ref: ModelRef,
    repo_id: str,
    revision: str | None,
    target: Path,
    cache: Cache,
    endpoint: str | None,
    progress: bool,
    patterns: list[str] | None = None,
) -> str | None:
    """Fetch into ``target`` with ``modelscope.snapshot_download`` (it checks size and sha256);
    returns the commit the files are at (see ``_modelscope_commit``), None when unknown."""
    import requests
    from modelscope import snapshot_download
    from modelscope_hub import config as ms_config
    from modelscope_hub import errors as ms_errors

    home = cache.scratch("modelscope")
    # The client's own cache/lock folder and its credentials/session file stay in our cache.
    dirs = {"MODELSCOPE_CACHE": str(home / "cache"), "MODELSCOPE_HOME": str(home / "home")}
    with _MODELSCOPE_LOCK, _patched_env(dirs), quiet_download_bars(progress):
        previous = current_default_config()
        # The default config is captured on first use (endpoint, folders); use a fresh one.
        ms_config.set_default_config(
            ms_config.HubConfig(endpoint=endpoint, cache_dir=home / "cache", config_dir=home / "home")
        )
        try:
            snapshot_download(
                repo_id,
                revision=revision,
                local_dir=str(target),  # never {cache}/<owner>/<name>: that is taken as an old cache
                endpoint=endpoint,
                allow_patterns=patterns,
            )
            commit = _modelscope_commit(repo_id, revision, target, patterns)
        except (ms_errors.NotExistError, requests.HTTPError) as exc:
            status = getattr(getattr(exc, "response", None), "status_code", None)
            if isinstance(exc, ms_errors.NotExistError) or status == 404:
                raise HubError(
                    f"model {ref.spec} not found on {_where('modelscope', endpoint)} (404)"
                ) from exc
            raise HubError(
                f"download of {ref.spec} from {_where('modelscope', endpoint)} failed: {_first_line(exc)}"
            ) from exc
        except ms_errors.FileDownloadError as exc:
            failed = getattr(exc, "failed_files", None) or {}
            detail = "; ".join(f"{path}: {_first_line(err)}" for path, err in list(failed.items())[:2])
            raise HubError(
                f"download of {ref.spec} from {_where('modelscope', endpoint)} failed: "
                f"{len(failed) or 'some'} file(s) bad or missing ({detail or _first_line(exc)})"
            ) from exc
        except ms_errors.NetworkError as exc:
            reason = "connection refused" if "refused" in str(exc) else "network error"
            raise HubError(
                f"cannot download {ref.spec} from {_where('modelscope', endpoint)}: {reason}"
            ) from exc
        except Exception as exc:
            raise HubError(
                f"download of {ref.spec} from {_where('modelscope', endpoint)} failed: "
                f"{type(exc).__name__}: {_first_line(exc)}"
            ) from exc
        finally:
            ms_config.set_default_config(previous)
    return commit


def _modelscope_commit(
    repo_id: str, revision: str | None, target: Path, patterns: list[str] | None
) -> str | None:
    """The commit the downloaded files are at, from the hub's file listing (one more request).

    ``snapshot_download`` returns only a folder. Each listed file carries ``Revision``, the commit
    id of that file (the commit that last changed it); the newest of them (``CommittedDate``) is
    a commit in which every downloaded file is as downloaded. None when the listing names no
    commit, its commits cannot be ordered, or its sizes do not match the files on disk (a push
    between the download and the listing). The commit is information for fingerprints: a
    listing that fails leaves it unknown and does not fail the download.
    """
    from modelscope_hub import HubApi

    try:  # the default config (endpoint, folders) is the one the download just used
        listing = HubApi().legacy.list_repo_files(repo_id, "model", revision=revision or "master")
    except Exception:  # informational only, see above
        return None
    newest: dict[str, float] = {}  # commit -> its date
    undated = False
    for item in listing:
        path = str(item.get("Path") or "")
        if not path or item.get("Type") == "tree" or (
            patterns and not any(fnmatch.fnmatch(path, p) for p in patterns)
        ):
            continue
        commit, size, file = item.get("Revision"), item.get("Size"), target / path
        if not isinstance(commit, str) or not commit or not file.is_file():
            return None
        if isinstance(size, int) and file.stat().st_size != size:
            return None
        date = item.get("CommittedDate")
        undated |= not isinstance(date, (int, float))
        newest[commit] = max(newest.get(commit, 0.0), float(date) if isinstance(date, (int, float)) else 0.0)
    if len(newest) == 1:
        return next(iter(newest))
    if not newest or undated:
        return None
    latest = max(newest.values())
    commits = [commit for commit, date in newest.items() if date == latest]
    return commits[0] if len(commits) == 1 else None


def _download_hf(
    ref: ModelRef,
    repo_id: str,
    revision: str | None,
    target: Path,
    cache: Cache,
    endpoint: str | None,
    progress: bool,
    patterns: list[str] | None = None,
) -> str | None:
    """Fetch into ``target`` with ``huggingface_hub.snapshot_download``, then verify the files.

    The HF client checks sizes only, so sha256 (LFS files) and git blob ids (others) are
    checked here against the tree listing the client saved in ``target/.cache``.
    """
    import importlib

    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    # the module, not the ``tqdm`` class that ``huggingface_hub.utils`` exports under that name
    bars: Any = importlib.import_module("huggingface_hub.utils.tqdm")
    where = _where("hf", endpoint)
    quiet = not progress and not bars.are_progress_bars_disabled()
    if quiet:
        bars.disable_progress_bars()
    try:
        snapshot_download(
            repo_id,
            revision=revision,
            local_dir=str(target),
            cache_dir=str(cache.scratch("hf")),
            endpoint=endpoint,
            max_workers=4,
            allow_patterns=patterns,
        )
    except RepositoryNotFoundError as exc:
        raise HubError(f"model {ref.spec} not found on {where} (404)") from exc
    except RevisionNotFoundError as exc:
        raise HubError(f"revision {revision or 'main'} of {ref.spec} not found on {where} (404)") from exc
    except OfflineModeIsEnabled as exc:
        raise HubError(
            f"offline: huggingface_hub was imported with HF_HUB_OFFLINE set; cannot fetch {ref.spec}"
        ) from exc
    except LocalEntryNotFoundError as exc:  # connection refused, timeouts, repeated 5xx
        cause = exc.__cause__ or exc
        raise HubError(f"cannot download {ref.spec} from {where}: {_first_line(cause)}") from exc
    except EntryNotFoundError as exc:
        raise HubError(
            f"download of {ref.spec} from {where} failed: a file is missing ({_first_line(exc)})"
        ) from exc
    except Exception as exc:
        raise HubError(
            f"download of {ref.spec} from {where} failed: {type(exc).__name__}: {_first_line(exc)}"
        ) from exc
    finally:
        if quiet:
            bars.enable_progress_bars()
    return _verify_hf(ref, repo_id, revision, target, endpoint, patterns)


def _git_blob_id(path: Path) -> str:
    digest = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    _feed(digest, path)
    return digest.hexdigest()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    _feed(digest, path)
    return digest.hexdigest()


def _feed(digest: Any, path: Path) -> None:
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)


def _hf_listing(
    repo_id: str, revision: str | None, target: Path, endpoint: str | None
) -> tuple[str | None, dict[str, dict[str, Any]]]:
    """(commit, {path: {size, blob_id, lfs_sha256}}) from the client's saved tree listing.

    Falls back to asking the hub again if a client upgrade changed that file.
    """
    trees = sorted((target / ".cache" / "huggingface" / "trees").glob("*.json"))
    if len(trees) == 1:
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(trees[0].read_text(encoding="utf-8"))
            files = data.get("files") if isinstance(data, dict) else None
            if isinstance(files, dict) and all(isinstance(v, dict) and "size" in v for v in files.values()):
                return trees[0].stem, files
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    listing: dict[str, dict[str, Any]] = {}
    for item in HfApi(endpoint=endpoint).list_repo_tree(repo_id, revision=revision, recursive=True):
        if isinstance(item, RepoFile):
            listing[item.path] = {
                "size": item.size,
                "blob_id": item.blob_id,
                "lfs_sha256": item.lfs.sha256 if item.lfs is not None else None,
            }
    return None, listing


def _verify_hf(
    ref: ModelRef,
    repo_id: str,
    revision: str | None,
    target: Path,
    endpoint: str | None,
    patterns: list[str] | None = None,
) -> str | None:
    """Check every listed file (that ``patterns`` asked for) by size and hash, then drop the
    client's metadata folder."""
    commit, listing = _hf_listing(repo_id, revision, target, endpoint)
    where = _where("hf", endpoint)
    for rel, meta in sorted(listing.items()):
        if patterns and not any(fnmatch.fnmatch(rel, p) for p in patterns):
            continue
        path = target / rel
        if not path.is_file():
            raise HubError(f"download of {ref.spec} from {where} is incomplete: {rel} is missing")
        size = meta.get("lfs_size") or meta.get("size")
        if size is not None and path.stat().st_size != int(size):
            raise HubError(
                f"download of {ref.spec} from {where} is corrupted: {rel} has "
                f"{path.stat().st_size} bytes, expected {size}"
            )
        expected = meta.get("lfs_sha256")
        actual = _sha256(path) if expected else _git_blob_id(path)
        expected = expected or meta.get("blob_id")
        if expected and actual != expected:
            kind = "sha256" if meta.get("lfs_sha256") else "git blob id"
            raise HubError(f"download of {ref.spec} from {where} is corrupted: {rel} {kind} mismatch")
    shutil.rmtree(target / ".cache" / "huggingface", ignore_errors=True)
    with contextlib.suppress(OSError):
        (target / ".cache").rmdir()  # only if the repo itself had nothing there
    return commit
