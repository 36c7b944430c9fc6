"""What an acceptable email and password are (pure functions, unit-tested)."""

from __future__ import annotations

import re
import unicodedata

MAX_EMAIL_LENGTH = 254
MAX_PASSWORD_LENGTH = 1024
# Short of RFC 5322's full grammar on purpose: one `@`, a plain local part, a dotted domain of
# letters, digits and hyphens (IDNs arrive as punycode or as Unicode letters).
_LOCAL = re.compile(r"^[^\s@\"(),:;<>\[\]\\]{1,64}$")
_LABEL = re.compile(r"^(?!-)[^\W_](?:[\w-]{0,61}[^\W_])?$")
# Fewer distinct characters than this is a pattern, not a password ("aaaaaaaaaaaa").
MIN_DISTINCT_CHARS = 5


def normalise_email(raw: str) -> str | None:
    """The stored form (NFC, trimmed, lowercase), or None if it is not a plausible address."""
    email = unicodedata.normalize("NFC", raw).strip().lower()
    if not email or len(email) > MAX_EMAIL_LENGTH or any(unicodedata.category(c)[0] == "C" for c in email):
        return None
    local, at, domain = email.rpartition("@")
    if not at or not _LOCAL.match(local) or local.startswith(".") or local.endswith(".") or ".." in local:
        return None
    labels = domain.split(".")
    if len(labels) < 2 or not all(_LABEL.match(label) for label in labels):
        return None
    if labels[-1].isdigit():
        return None
    return email


def password_problem(password: str, *, email: str | None, min_length: int) -> str | None:
    """Why `password` is refused, or None (NIST SP 800-63B: length over composition rules)."""
    if len(password) < min_length:
        return f"the password must have at least {min_length} characters"
    if len(password) > MAX_PASSWORD_LENGTH:
        return f"the password may have at most {MAX_PASSWORD_LENGTH} characters"
    if not password.strip():
        return "the password must not be blank"
    if len(set(password)) < MIN_DISTINCT_CHARS:
        return f"the password must use at least {MIN_DISTINCT_CHARS} different characters"
    if email is not None:
        lowered = password.lower()
        local = email.partition("@")[0]
        if lowered == email or (len(local) >= 4 and local in lowered):
            return "the password must not contain the email address"
    return None
