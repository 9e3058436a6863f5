"""A model reference, resolved: the value both registries share.

``config/registry.py`` (aliases and reference parsing) makes these and ``engines/registry.py``
(the engine axis) loads them; both import this module and neither imports the other back.
It holds only what a ``ModelRef`` needs to exist: its error, its default engine and the
hub schemes that no engine may claim.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pytest_llmcheck.errors import LlmcheckError
from pytest_llmcheck.text.redact import redact

DEFAULT_ENGINE = "transformers"
HUB_SCHEMES = ("modelscope", "hf", "ms", "huggingface")
SOURCES = ("embedded", "gguf", "local", "modelscope", "hf", "plugin")


class ModelRefError(LlmcheckError, ValueError):
    """A model reference that cannot be used; the message is one line for the user
    (credentials in it masked, see ``LlmcheckError``)."""


@dataclass(frozen=True)
class ModelRef:
    """A resolved model reference: where the weights come from and how to call it."""

    name: str  # short name used in test ids and reports
    source: str  # one of SOURCES
    location: str  # repo id, folder or file path
    revision: str | None = None
    gguf_file: str | None = None  # file name inside ``location`` for GGUF sources
    trust_remote_code: bool = False  # allowed by the user (never by the registry alone)
    engine: str = DEFAULT_ENGINE  # ``name@engine``, --llm-engine, or the owner of its scheme
    description: str = ""
    extra: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def spec(self) -> str:
        """The reference as a user would write it again, as shown to people (progress lines,
        errors, reports, fingerprints): credentials masked (``redact``); ``location`` keeps
        the text the engine needs."""
        if self.source in ("modelscope", "hf"):
            rev = f"@{self.revision}" if self.revision else ""
            return redact(f"{self.source}:{self.location}{rev}")
        if self.source == "embedded":
            return self.name
        if self.source == "gguf" and self.gguf_file:
            return redact(str(Path(self.location) / self.gguf_file))
        return redact(self.location)
