"""Redis URLs: the forms accepted (plain, TLS, unix, Cluster, Sentinel), checked at
construction, and shown without their credentials."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

__all__ = ["SCHEMES", "parse_target", "shown_url"]

#: URL schemes: plain (``redis``, ``rediss``, ``unix``), Cluster and Sentinel.
SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster", "redis+sentinel",
           "rediss+sentinel")


def shown_url(url: str) -> str:
    """A Redis URL as logs, errors and ``repr`` show it: everything up to the last ``@``
    masked (a password may hold an unencoded ``/``, which ``urlsplit`` would take for the
    start of the path), the query (``?password=``) dropped."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "<not a URL>"
    credentials = ""
    if "@" in rest:
        credentials, rest = "***@", rest.rsplit("@", 1)[1]
    for mark in ("?", "#"):
        rest = rest.split(mark, 1)[0]
    return f"{scheme}://{credentials}{rest}"


def _hosts(netloc: str, default_port: int, shown: str) -> list[tuple[str, int]]:
    hosts = []
    for item in netloc.split(","):
        host, _, port = item.rpartition(":") if item.rfind(":") > item.rfind("]") \
            else (item, "", "")
        host = host.strip("[]") or "127.0.0.1"
        try:
            number = int(port) if port else default_port
        except ValueError:
            raise ValueError(f"bad port {port!r} in Redis URL {shown!r}") from None
        if not 0 < number < 65536:
            raise ValueError(f"bad port {number} in Redis URL {shown!r}")
        hosts.append((host, number))
    return hosts


def parse_target(url: str) -> dict[str, Any]:
    """Check a Redis URL at construction; returns what building its client needs.

    Forms: ``redis://[[user]:password@]host[:port][/db]`` (also ``rediss://``,
    ``unix:///path``), ``redis+cluster://[[user]:password@]host:port[,host:port...]`` and
    ``redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]`` (also
    with ``rediss+``).  A password must be percent-encoded.
    """
    shown = shown_url(url)
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in SCHEMES:
        raise ValueError(f"state must be a Redis URL ({', '.join(s + '://' for s in SCHEMES)}),"
                         f" got {shown!r}")
    if "@" in rest:
        userinfo = rest.rsplit("@", 1)[0]
        if any(mark in userinfo for mark in "/?#"):
            raise ValueError(
                f"the credentials in Redis URL {shown!r} contain an unencoded '/', '?' or '#':"
                " percent-encode the password (urllib.parse.quote(password, safe=''))")
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    spec: dict[str, Any] = {"kind": scheme.split("+")[-1] if "+" in scheme else "url",
                            "ssl": scheme.startswith("rediss"),
                            "username": unquote(parts.username) if parts.username else None,
                            "password": unquote(parts.password) if parts.password else None}
    path = [p for p in parts.path.split("/") if p]
    if scheme == "unix":
        if not parts.path:
            raise ValueError(f"a unix:// Redis URL needs a socket path, got {shown!r}")
        return spec
    default = 26379 if spec["kind"] == "sentinel" else 6379
    spec["hosts"] = _hosts(netloc, default, shown)
    if spec["kind"] == "url" and len(spec["hosts"]) > 1:
        raise ValueError(f"several hosts in Redis URL {shown!r}: use redis+cluster:// or "
                         "redis+sentinel://")
    if spec["kind"] == "sentinel":
        if not path:
            raise ValueError(f"a redis+sentinel:// URL names the service: "
                             f"redis+sentinel://host:26379/mymaster[/db], got {shown!r}")
        spec["service"] = unquote(path[0])
        path = path[1:]
    if len(path) > 1 or (path and not path[0].isdigit()):
        raise ValueError(f"the database in Redis URL {shown!r} must be a number")
    spec["db"] = int(path[0]) if path else 0
    if spec["kind"] == "cluster" and spec["db"] != 0:
        raise ValueError(f"Redis Cluster has only database 0, got the URL {shown!r}")
    return spec
