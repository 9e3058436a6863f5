"""Checks: suite files, expectations, snapshot tolerance and the local-model judge."""
