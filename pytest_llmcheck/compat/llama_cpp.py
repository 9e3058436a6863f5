"""llama-cpp-python, reached the public way where there is one (pinned in pyproject.toml's
``llamacpp`` extra; see ``tests/test_compat.py``).

The engine needs the raw llama.cpp context and vocabulary (thread count, end-of-generation
tokens, its perf counters), a token's text (the chat template's BOS/EOS) and quiet loading.
``Llama._ctx``, ``Llama._model`` and ``llama_cpp._logger`` give them privately; the public
``Llama.ctx`` and ``Llama.model`` properties with llama.cpp's own C API
(``llama_model_get_vocab``, ``llama_vocab_get_text``) give the same pointers, and the log
callback llama-cpp-python installs consults the standard logger named ``LOGGER``.

Imported by the llamacpp engine; ``llama_cpp`` is imported only inside the functions.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

LOGGER = "llama-cpp-python"  # the logging.Logger whose level llama.cpp's log callback obeys


def context(llama: Any) -> Any:
    """The ``llama_context_p`` of a ``llama_cpp.Llama``."""
    return llama.ctx


def vocab(llama: Any) -> Any:
    """The ``llama_vocab_p`` of a ``llama_cpp.Llama``'s model."""
    import llama_cpp

    return llama_cpp.llama_model_get_vocab(llama.model)


def token_text(llama: Any, token: int) -> str:
    """A token's text as the vocabulary stores it (what a chat template's BOS/EOS are)."""
    import llama_cpp

    return bytes(llama_cpp.llama_vocab_get_text(vocab(llama), token)).decode("utf-8")


@contextlib.contextmanager
def quiet_logger() -> Iterator[None]:
    """llama.cpp's log lines that pass through llama-cpp-python's callback: errors only, inside
    the block (what ``Llama(verbose=False)`` does at load)."""
    logger = logging.getLogger(LOGGER)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
