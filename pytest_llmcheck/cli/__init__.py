"""The ``llmcheck`` command: cache, env, review, rescore and report subcommands.

``main`` is the console script's entry point (``pytest_llmcheck.cli:main``); the commands
live in ``commands`` and are imported only when the command runs."""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """Run ``llmcheck`` with ``argv`` (the process arguments when None); the exit status."""
    from pytest_llmcheck.cli.commands import main as run

    return run(argv)
