"""pytest's private API (pinned in pyproject.toml; see ``tests/test_compat.py``).

``Parser._groups`` and ``Parser._anonymous``: the option groups registered so far. pytest
checks a new option's names only against its own group, and a clash with another
plugin's option surfaces later as an argparse error naming neither; nothing public lists
the options registered so far.
"""

from __future__ import annotations

import pytest


def option_names(parser: pytest.Parser) -> set[str]:
    """Every option string (``--llm-model``, ``-x``) registered on ``parser`` so far."""
    groups = [*getattr(parser, "_groups", []), getattr(parser, "_anonymous", None)]
    return {name for group in groups if group is not None for opt in group.options for name in opt.names()}
