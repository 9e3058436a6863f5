"""Running: the session object, the model pool, the ``llm`` fixture's case, collection of suite
files and the pytest-benchmark bridge."""
