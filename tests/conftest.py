from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]


@pytest.fixture
def fake(pytester: pytest.Pytester) -> pytest.Pytester:
    """A pytester whose inner sessions use the fake engine and a private cache."""
    from tests import fake_engine

    fake_engine.LOADS.clear()
    fake_engine.EVENTS.clear()
    pytester.makeini(
        f"""
        [pytest]
        addopts = -p tests.fake_engine -p no:cacheprovider
        llmcheck_cache_dir = {pytester.path / "cache"}
        filterwarnings = ignore::pytest.PytestAssertRewriteWarning
        """
    )
    return pytester
