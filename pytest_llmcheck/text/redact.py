"""Credentials never leave the request: what is shown to people is redacted here.

A model reference or server URL may carry a secret (``http://user:pass@host/v1``,
``...?api_key=...``). Everything the plugin shows or writes about a model (progress
lines, errors, the terminal summary, reports, JUnit properties, benchmark extra_info,
snapshot fingerprints, test ids) goes through ``redact``: the userinfo of any URL and
the value of any credential-like query parameter become ``***``. It works on free text
(a whole error message), so a URL anywhere in it is covered. Imports nothing of the
package, so every module can use it.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import unquote

MASK = "***"

# scheme://userinfo@ : everything up to the last '@' before the host's end is userinfo.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)[^/?#\s]*@")
# ?name=value / &name=value / ;name=value in a query (stops at the next separator or fragment).
_PARAM = re.compile(r"(?P<lead>[?&;](?P<name>[^=&;?#\s'\"<>]+)=)(?P<value>[^&;#\s'\"<>]*)")
# Names whose value is a credential: key, api_key, api-key, token, access_token, secret,
# password, sig, signature, auth, X-Amz-Credential, ... (case-insensitive, by suffix).
_SECRET_NAME = re.compile(
    r"(?:key|token|secret|passw(?:or)?d|pwd|sig|signature|credentials?|auth|authorization|session)$",
    re.IGNORECASE,
)


def is_secret_name(name: str) -> bool:
    """Whether a query parameter (or environment variable) name holds a credential."""
    return bool(_SECRET_NAME.search(unquote(name).strip()))


def redact(text: str) -> str:
    """``text`` with URL userinfo and credential-like query values replaced by ``***``."""
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)

    def param(match: re.Match[str]) -> str:
        if match["value"] and match["value"] != MASK and is_secret_name(match["name"]):
            return f"{match['lead']}{MASK}"
        return match[0]

    return _PARAM.sub(param, text)


def has_credentials(text: str) -> bool:
    """Whether ``text`` carries URL userinfo or a credential-like query value."""
    return redact(text) != text


def redact_data(value: Any) -> Any:
    """``redact`` applied to every string in a JSON-like value (a fingerprint, engine facts)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: redact_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_data(v) for v in value)
    return value
