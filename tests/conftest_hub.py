"""Pytest fixtures around the stand-in hub; load with ``pytest_plugins = ["tests.conftest_hub"]``.

``hub_server`` is a started :class:`tests.hubserver.HubServer` serving ``hub_model_dir`` as
``qwen/Tiny`` (ModelScope shape) and ``org/Tiny`` (HF shape). ``hub_env`` isolates the
process: loopback-only sockets, no offline/endpoint variables from the outside, a fake HOME.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pytest_llmcheck.storage.cache import Cache
from tests.hubserver import HF_REPO, MS_REPO, HubServer

_LOOPBACK = {"127.0.0.1", "::1", "localhost"}
_CLEARED_ENV = (
    "LLMCHECK_OFFLINE",
    "HF_HUB_OFFLINE",
    "LLMCHECK_CACHE_DIR",
    "LLMCHECK_MODELSCOPE_ENDPOINT",
    "LLMCHECK_HF_ENDPOINT",
    "MODELSCOPE_ENDPOINT",
    "MODELSCOPE_DOMAIN",
    "MODELSCOPE_API_TOKEN",
    "MODELSCOPE_CREDENTIALS_PATH",
    "HF_ENDPOINT",
    "HF_TOKEN",
)


def make_tiny_model(folder: Path) -> Path:
    """config.json, a binary weight file (LFS on HF) and a file in a subfolder."""
    (folder / "sub").mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text('{"model_type": "tiny", "hidden_size": 8}\n', encoding="utf-8")
    (folder / "model.bin").write_bytes(bytes(range(256)) * 16 + b"\x00\xff" * 100)
    (folder / "sub" / "tokenizer.txt").write_text("hello world\n", encoding="utf-8")
    return folder


def _host(address: Any) -> str | None:
    if isinstance(address, tuple) and address:
        return str(address[0])
    return None  # AF_UNIX and friends


@pytest.fixture
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any connection or name lookup that would leave 127.0.0.1."""
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def check(address: Any) -> None:
        host = _host(address)
        if host is not None and host not in _LOOPBACK:
            raise OSError(f"test network guard: refusing to connect to {address!r}")

    def connect(self: socket.socket, address: Any) -> None:
        check(address)
        real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        check(address)
        return real_connect_ex(self, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host is not None and str(host) not in _LOOPBACK:
            raise OSError(f"test network guard: refusing to resolve {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


@pytest.fixture
def hub_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, loopback_only: None) -> Path:
    """A clean environment for downloads; returns the fake HOME (clients must not write there)."""
    for name in _CLEARED_ENV:
        monkeypatch.delenv(name, raising=False)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    return home


@pytest.fixture
def hub_model_dir(tmp_path: Path) -> Path:
    return make_tiny_model(tmp_path / "tiny-model")


@pytest.fixture
def hub_server(hub_model_dir: Path, hub_env: Path) -> Iterator[HubServer]:
    """A running stand-in hub with the tiny model under both hubs' names."""
    server = HubServer()
    server.add_repo(MS_REPO, hub_model_dir)
    server.add_repo(HF_REPO, hub_model_dir)
    with server:
        yield server


@pytest.fixture
def llm_cache(tmp_path: Path) -> Cache:
    """An empty llmcheck cache in tmp_path (not named ``cache``: pytest has that fixture)."""
    return Cache(tmp_path / "cache")
