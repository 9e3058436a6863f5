"""modelscope-hub's private API (pinned in pyproject.toml; see ``tests/test_compat.py``).

- ``modelscope_hub._download.tqdm``: the progress bar class its downloads create. There is
  no switch for the bars, and tqdm reads ``TQDM_DISABLE`` only when it is imported.
- ``modelscope_hub.config._default_config``: the client's default config as it is, read so
  that it can be put back after a download with the plugin's own. The public
  ``get_default_config()`` would instead create one, from the environment the download
  patched.

modelscope-hub is imported inside the functions: it is heavy and only downloads need it.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from typing import Any

DOWNLOAD_MODULE = "modelscope_hub._download"


@contextlib.contextmanager
def quiet_download_bars(enabled: bool) -> Iterator[None]:
    """No ModelScope progress bars inside the block unless ``enabled``."""
    if enabled:
        yield
        return
    ms_download: Any = importlib.import_module(DOWNLOAD_MODULE)
    original = getattr(ms_download, "tqdm", None)
    if original is None:
        yield
        return

    class Silent(original):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    ms_download.tqdm = Silent
    try:
        yield
    finally:
        ms_download.tqdm = original


def current_default_config() -> Any:
    """The client's default config as it stands (None before its first use); give it back
    to ``modelscope_hub.config.set_default_config`` afterwards."""
    from modelscope_hub import config as ms_config

    return getattr(ms_config, "_default_config", None)
