"""pytest-llmcheck: regression tests for local LLMs.

Import-light on purpose: pytest imports the plugin in every session of every project
that installs it, so torch and transformers load only when a model is needed.
"""

from __future__ import annotations

from pytest_llmcheck.engines.base import Answer, Engine, GenerationConfig, LoadFacts

__all__ = ["Answer", "Engine", "GenerationConfig", "LoadFacts", "__version__"]
__version__ = "0.1.0"
