"""Credentials out of what is shown: ``mask_url`` for a backend URL or DSN, ``mask_text`` for a message.

Every place that shows a store's URL (``describe()``, ``repr``, CLI output and errors, log lines)
passes it through ``mask_url``, which replaces with ``***``:

* the password of ``scheme://user:password@host/...``, also when it holds an unescaped ``@``, ``/``
  or ``?`` (the user info ends at the last ``@`` before the host);
* the value of query parameters that name a secret (``password``, ``sslpassword``, ``secret``,
  ``token``, ``aws_secret_access_key``, ... any name containing one of ``_SECRET_WORDS``), and the
  passwords of URLs nested in a query value (e.g. an S3 store's ``index=postgresql://...``);
* in a libpq keyword DSN (``host=h password=p``), the values of those same keys.

A driver's own error message may quote parts of the DSN it was given; ``mask_text(message, url)``
removes that URL's secrets from it, wherever they appear.
"""

from __future__ import annotations

import re

MASK = "***"
# a parameter whose name contains one of these holds a secret
_SECRET_WORDS = ("pass", "pwd", "secret", "token", "signature", "credential", "api_key", "apikey", "private")
# scheme:// [user] : password @ host [/?# rest]; the password is tried without '/?#' first, then with
_USERINFO = (
    re.compile(r"^(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/?#]*:)(?P<password>[^/?#]*?)@(?P<tail>[^@/?#]*(?:[/?#].*)?)$",
               re.S),
    re.compile(r"^(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/?#]*:)(?P<password>.*?)@(?P<tail>[^@/?#]*(?:[/?#].*)?)$",
               re.S),
)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"]+")
_PORT = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^:/?#@]*:[0-9]{1,5}(?:[/?#]|$)")
_KEYWORD = re.compile(r"(?P<key>[A-Za-z_][A-Za-z0-9_]*)\s*=\s*(?P<value>'(?:[^'\\]|\\.)*'|[^\s'&]+)")


def is_secret_name(name: str) -> bool:
    """Whether a URL query parameter or DSN keyword of this name holds a secret."""
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_WORDS)


def _split_userinfo(url: str) -> re.Match[str] | None:
    match = _USERINFO[0].match(url)
    if match is None and not _PORT.match(url):  # (host:5432/db?x=a@b has a port, not a password)
        match = _USERINFO[1].match(url)
    return match


def _mask_query(query: str) -> str:
    from urllib.parse import unquote  # (here, not at the top: `import spark_ckpt` stays fast)

    parts = []
    for part in re.split(r"([&;])", query):
        name, sep, value = part.partition("=")
        if sep and is_secret_name(unquote(name)):
            value = MASK
        elif sep and "://" in unquote(value):
            nested = unquote(value)
            masked = mask_url(nested)
            value = value if masked == nested else masked
        parts.append(name + sep + value)
    return "".join(parts)


def mask_url(url: str) -> str:
    """``url`` with its password and secret parameters replaced by ``***`` (see the module docstring)."""
    if not isinstance(url, str):
        return url
    if not _SCHEME.match(url):
        if "=" not in url:
            return url
        # a libpq keyword DSN: host=h user=u password=p
        return _KEYWORD.sub(lambda m: f"{m['key']}={MASK}" if is_secret_name(m["key"]) else m[0], url)
    match = _split_userinfo(url)
    if match is not None:
        url = f"{match['head']}{MASK}@{match['tail']}"
    head, sep, rest = url.partition("?")
    if not sep:
        return url
    query, hash_sep, fragment = rest.partition("#")
    return f"{head}?{_mask_query(query)}{hash_sep}{fragment}"


def mask_urls(text: str) -> str:
    """Free text (a backend's description, a message) with every URL in it masked."""
    return _URL_IN_TEXT.sub(lambda m: mask_url(m[0]), text) if isinstance(text, str) else text


def secrets_of(url: str) -> list[str]:
    """The secret strings in ``url`` (its password, secret parameter values, as written and decoded)."""
    from urllib.parse import parse_qsl, quote, unquote

    if not isinstance(url, str):
        return []
    found: list[str] = []
    match = _split_userinfo(url) if "://" in url else None
    if match is not None and match["password"]:
        found.append(match["password"])
    if "://" in url:
        query = url.partition("?")[2].partition("#")[0]
        for name, value in parse_qsl(query, keep_blank_values=True):
            if is_secret_name(name) and value:
                found.append(value)
            elif "://" in value:
                found.extend(secrets_of(value))
    else:
        for keyword in _KEYWORD.finditer(url):
            if is_secret_name(keyword["key"]):
                found.append(keyword["value"].strip("'"))
    variants = set()
    for secret in found:
        variants.update({secret, unquote(secret), quote(unquote(secret), safe=""), quote(secret, safe="")})
    # longest first, so a secret is replaced whole before any part of it that is another variant
    return sorted((v for v in variants if len(v) >= 3), key=len, reverse=True)


def mask_text(text: str, *urls: str | None) -> str:
    """``text`` (e.g. a driver's error message) with the secrets of ``urls`` and the URLs themselves masked."""
    for url in urls:
        if not url:
            continue
        text = text.replace(url, mask_url(url))
        for secret in secrets_of(url):
            text = text.replace(secret, MASK)
    return text


def userinfo_quoted(url: str) -> str:
    """``url`` with the user name and password percent-encoded, so a parser that splits the user
    info at the first ``@`` (libpq does) reads a password holding an unescaped ``@`` whole."""
    from urllib.parse import quote, unquote

    match = _split_userinfo(url)
    if match is None:
        return url
    scheme, _, user = match["head"][:-1].partition("://")
    encode = lambda part: quote(unquote(part), safe="")  # noqa: E731  (unquote first: never encode twice)
    return f"{scheme}://{encode(user)}:{encode(match['password'])}@{match['tail']}"
