"""The plugin's own error and warning classes.

``LlmcheckError`` marks errors the user caused or can fix (a bad reference, a missing
environment, a recipe that does not fit): they are shown as one line. Anything else
is a bug somewhere and keeps its traceback. Their messages go through ``redact``: a
URL's ``user:pass@`` or ``api_key=...`` in one is masked.
"""

from __future__ import annotations

from pytest_llmcheck.text.redact import redact


class LlmcheckError(Exception):
    """A problem the user can fix; ``str()`` is the one line to show.

    ``details`` may hold more lines (say, a worker process's last log lines): they are
    attached to the test's report, not shown in the one line.
    """

    details: str = ""

    def __init__(self, *args: object) -> None:
        # The one line is shown and written (terminal, reports): never with a credential in it.
        super().__init__(*(redact(a) if isinstance(a, str) else a for a in args))


class LlmcheckWarning(UserWarning):
    """Something the user should see but that need not stop the session."""
