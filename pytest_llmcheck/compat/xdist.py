"""pytest-xdist's private API (pinned in pyproject.toml's ``test`` extra; see
``tests/test_compat.py``).

``LoadScopeScheduling._split_scope(nodeid)`` names the work unit of a test; xdist's own
``loadfile`` and ``loadgroup`` schedulers are subclasses that override just it, and there
is no public hook for it. ``ScopeScheduling`` turns it into a public ``scope_of``.

Imported only when xdist runs (from ``pytest_llmcheck.distribution.xdist``).
"""

from __future__ import annotations

from xdist.scheduler import LoadScopeScheduling


class ScopeScheduling(LoadScopeScheduling):  # type: ignore[misc]  # xdist ships no types
    """xdist's ``loadscope`` scheduler with the work unit of a test given by ``scope_of``."""

    def scope_of(self, nodeid: str) -> str:
        """The work unit of ``nodeid``: tests of one unit run on one worker, in order."""
        raise NotImplementedError

    def _split_scope(self, nodeid: str) -> str:
        return self.scope_of(nodeid)
