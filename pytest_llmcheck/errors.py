"""The plugin's own error and warning classes.

``LlmcheckError`` marks errors the user caused or can fix (a bad reference, a missing
environment, a recipe that does not fit): they are shown as one line. Anything else
is a bug somewhere and keeps its traceback.
"""

from __future__ import annotations


class LlmcheckError(Exception):
    """A problem the user can fix; ``str()`` is the one line to show.

    ``details`` may hold more lines (say, a worker process's last log lines): they are
    attached to the test's report, not shown in the one line.
    """

    details: str = ""


class LlmcheckWarning(UserWarning):
    """Something the user should see but that need not stop the session."""
