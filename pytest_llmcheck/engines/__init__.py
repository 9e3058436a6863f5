"""Engines: the objects that hold a loaded model and answer prompts."""

from __future__ import annotations

from pytest_llmcheck.engines.base import Answer, Engine, GenerationConfig, LoadFacts

__all__ = ["Answer", "Engine", "GenerationConfig", "LoadFacts"]
