"""Database and server URLs: checked before anything is written, with passwords kept out of every message.

One home for three facts: how a URL is shown (`redact`), which URLs the ledger and the tracking store accept
(`check_url`), and which driver a plain `postgresql://` URL gets (`with_driver`: SQLAlchemy 2.1 maps it to
psycopg 3; where only psycopg2 is installed we say so in the URL instead of failing on import).
"""

from __future__ import annotations

import importlib.util
import re
import urllib.parse

from ablations.errors import SenetError

_SECRET_PARAMS = re.compile(r"pass(word|wd)?|pwd|secret|token|api[_-]?key|sslpassword", re.IGNORECASE)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_USER_PASSWORD = re.compile(r"(?<=:)[^:/@\s]+(?=@)")  # the `pw` of `user:pw@host`, however mangled the URL
DATABASES = ("postgresql", "mysql", "sqlite", "mssql")  # SQLAlchemy dialects, each with an optional +driver


def redact(url: str) -> str:
    """`url` with the password of its user part and of any password-like query parameter replaced by ***."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparseable URL>"
    if not secrets_of(url):
        return _USER_PASSWORD.sub("***", url)  # as typed (urlunsplit would drop a slash of sqlite:////abs/path)
    netloc = parts.netloc
    if "@" in netloc:
        creds, _, host = netloc.rpartition("@")
        user, sep, _ = creds.partition(":")
        netloc = f"{user}:***@{host}" if sep else netloc
    query = parts.query
    if query:
        pairs = urllib.parse.parse_qsl(query, keep_blank_values=True)
        query = "&".join(f"{k}={'***' if _SECRET_PARAMS.fullmatch(k) else v}" for k, v in pairs)
    return _USER_PASSWORD.sub("***", urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query)))


def secrets_of(url: str) -> list[str]:
    """The password-like strings in `url` (user password, secret query values), longest first."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return []
    found = [parts.password] if parts.password else []
    found += [v for k, v in urllib.parse.parse_qsl(parts.query) if _SECRET_PARAMS.fullmatch(k) and v]
    return sorted({s for s in found if s}, key=len, reverse=True)


def scrub(text: str, url: str) -> str:
    """`text` (e.g. a server's error message) with every secret of `url` replaced by ***."""
    for secret in secrets_of(url):
        text = text.replace(secret, "***").replace(urllib.parse.quote(secret, safe=""), "***")
    return text


def looks_like_url(value: str) -> bool:
    """A scheme, or credentials: what a file path would not hold (`postgresql:/u:pw@h/db` is a typo)."""
    return bool(_SCHEME.match(value)) or "@" in value


def scheme(url: str) -> str:
    """The dialect of a database URL, without its driver: `postgresql+psycopg2://...` → `postgresql`."""
    return url.split("://", 1)[0].split("+", 1)[0].lower()


def check_url(value: str, option: str, allowed: tuple[str, ...]) -> None:
    """Refuse a URL whose scheme is not `allowed`, or a typo that would otherwise become a file name."""
    if "://" in value:
        if scheme(value) not in allowed:
            raise SenetError(f"{option}: {redact(value)} has an unknown scheme; allowed: {', '.join(allowed)}")
        return
    if looks_like_url(value):
        raise SenetError(
            f"{option}: {_USER_PASSWORD.sub('***', value)} looks like a URL without "
            "'://'; write e.g. postgresql://user@host/db (a password belongs in the environment)"
        )


def with_driver(url: str, option: str) -> str:
    """A plain `postgresql://` URL as SQLAlchemy will open it: psycopg 3 if installed, else psycopg2 spelled out.

    Raises:
        SenetError: no PostgreSQL driver is installed.
    """
    head = url.split("://", 1)[0].lower()
    if head not in ("postgresql", "postgres"):
        return url
    rest = url.split("://", 1)[1]
    if importlib.util.find_spec("psycopg") is not None:
        return f"postgresql+psycopg://{rest}"
    if importlib.util.find_spec("psycopg2") is not None:
        return f"postgresql+psycopg2://{rest}"
    raise SenetError(f"{option}: {redact(url)} needs a PostgreSQL driver; pip install 'senet-ablate[postgres]'")
