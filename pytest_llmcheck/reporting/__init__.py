"""Reporting: session results, the terminal summary, report files, CI gates, shard merge and
the recorded answers read back from reports."""
