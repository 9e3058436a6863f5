"""Distribution: pytest-xdist scheduling (one worker per model) and ``--llm-shard`` parts."""
