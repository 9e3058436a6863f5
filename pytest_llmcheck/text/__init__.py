"""What people are shown, kept low so every layer shows things the same way: secrets redacted
from references, URLs and errors, and the plain-text tables of every ``llmcheck`` command."""
