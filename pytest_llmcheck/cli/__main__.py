"""``python -m pytest_llmcheck.cli``: the same as the ``llmcheck`` command."""

from __future__ import annotations

from pytest_llmcheck.cli import main

raise SystemExit(main())
