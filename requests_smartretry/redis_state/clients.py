"""Building the redis-py client: from a URL, or from a client's settings (which travel
through pickle), for a plain server, a Cluster or a Sentinel-managed master."""

from __future__ import annotations

from typing import Any, Callable, Optional

__all__ = ["build_client", "describe_client", "open_connections"]

# Connection settings of a client that may travel through pickle (the rest — retry
# objects, credential providers, event dispatchers — hold locks or callables).
_PLAIN = (str, int, float, bool, type(None))


def _plain(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if isinstance(v, _PLAIN)}


def describe_client(client: Any) -> dict[str, Any]:
    """A picklable description of a redis-py client's connection settings."""
    names = [c.__module__ + "." + c.__name__ for c in type(client).__mro__]
    if "redis.cluster.RedisCluster" in names:
        nodes = sorted({(n.host, int(n.port)) for n in client.get_nodes()})
        manager = getattr(client, "nodes_manager", None)
        kwargs = _plain(dict(getattr(manager, "connection_kwargs", {}) or {}))
        return {"kind": "cluster", "hosts": nodes, "kwargs": kwargs}
    if not any(n.startswith("redis.") and n.endswith(".Redis") for n in names) \
            or any(n.startswith("redis.asyncio.") for n in names) \
            or not hasattr(client, "connection_pool"):
        raise TypeError(
            "state / target must be a Redis URL, a redis.Redis or a redis.cluster.RedisCluster"
            f" client, got an unsupported client of type {type(client).__module__}."
            f"{type(client).__qualname__}")
    pool = client.connection_pool
    kwargs = _plain(dict(pool.connection_kwargs))
    manager = getattr(pool, "sentinel_manager", None)
    if manager is not None and getattr(pool, "service_name", None):
        sentinels = [(s.connection_pool.connection_kwargs.get("host", "127.0.0.1"),
                      int(s.connection_pool.connection_kwargs.get("port", 26379)))
                     for s in manager.sentinels]
        kwargs.pop("host", None)
        kwargs.pop("port", None)
        return {"kind": "sentinel", "hosts": sentinels, "service": pool.service_name,
                "kwargs": kwargs}
    return {"kind": "pool", "connection_class": pool.connection_class, "kwargs": kwargs}


def build_client(spec: dict[str, Any], url: Optional[str], socket_timeout: float) -> Any:
    """A redis-py client for ``spec`` (:func:`~.urls.parse_target`'s, or
    :func:`describe_client`'s), with bounded reads and no client-side retry loop."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    # Bounded time per read, no client-side retry loop with backoff: the time budget
    # bounds the request, these bound the background thread.
    timeouts: dict[str, Any] = {"socket_timeout": socket_timeout,
                                "socket_connect_timeout": socket_timeout}
    kind = spec["kind"]
    client: Any
    if kind == "url" and url is not None:
        client = redis.Redis.from_url(url, retry=Retry(NoBackoff(), 0),
                                      health_check_interval=0, **timeouts)
    elif kind == "pool":
        merged = {**spec["kwargs"], "retry": Retry(NoBackoff(), 0)}
        for name, value in timeouts.items():
            if merged.get(name) is None:
                merged[name] = value
        pool = redis.ConnectionPool(connection_class=spec["connection_class"], **merged)
        client = redis.Redis(connection_pool=pool)
    elif kind == "cluster":
        import redis.cluster

        cluster: Any = redis.cluster
        options = _auth_options(spec)
        client = cluster.RedisCluster(
            startup_nodes=[cluster.ClusterNode(h, p) for h, p in spec["hosts"]], **options,
            **{k: v for k, v in timeouts.items() if options.get(k) is None})
    else:
        import redis.sentinel

        sentinels: Any = redis.sentinel
        options = _auth_options(spec)
        options.pop("db", None)
        timeouts = {k: v for k, v in timeouts.items() if options.get(k) is None}
        sentinel = sentinels.Sentinel(spec["hosts"], sentinel_kwargs=dict(timeouts), **timeouts)
        client = sentinel.master_for(spec["service"], db=_db(spec),
                                     retry=Retry(NoBackoff(), 0), **options)
    return client


def open_connections(client: Any, count: int,
                     opened: Optional[Callable[[], None]] = None) -> None:
    """Open ``count`` connections in each connection pool of ``client`` (a plain or
    Sentinel client's pool, a Cluster's primaries' pools) and give them back idle, so that
    the first ``count`` concurrent commands find one each instead of each opening its own
    (TCP, the handshake's commands) in the time it has for its answer.  ``opened()`` is
    called after each one (Redis answered again)."""
    nodes = client.get_primaries() if hasattr(client, "get_primaries") else [None]
    for node in nodes:
        redis = client if node is None else node.redis_connection
        pool = getattr(redis, "connection_pool", None)
        if pool is None:
            continue
        taken = []
        try:
            for _ in range(count):
                taken.append(_take(pool))
                if opened is not None:
                    opened()
        finally:
            for connection in taken:
                pool.release(connection)


def _take(pool: Any) -> Any:
    try:
        connection = pool.get_connection()  # redis-py 5.3+ (a name there is deprecated)
    except TypeError:  # redis-py 4.2 to 5.2: the command's name is required
        connection = pool.get_connection("PING")
    try:
        connection.connect()  # (a pool hands out a connected one; an older one may not)
        # A round trip: before redis-py 5 the connection sends nothing when it connects,
        # and a Redis at maxclients says so ("max number of clients reached") only in
        # reply to the first command, the script it would have failed later.
        connection.send_command("PING")
        connection.read_response()
    except BaseException:
        connection.disconnect()
        pool.release(connection)
        raise
    return connection


def _db(spec: dict[str, Any]) -> int:
    return int(spec.get("db", spec.get("kwargs", {}).get("db", 0)) or 0)


def _auth_options(spec: dict[str, Any]) -> dict[str, Any]:
    if "kwargs" in spec:  # from a client: its own settings
        allowed = ("username", "password", "socket_timeout", "socket_connect_timeout",
                   "ssl", "ssl_cert_reqs", "ssl_ca_certs", "client_name")
        options = {k: v for k, v in spec["kwargs"].items() if k in allowed}
        if spec["kind"] == "sentinel":
            options["db"] = spec["kwargs"].get("db", 0)
        return options
    options = {k: spec[k] for k in ("username", "password") if spec.get(k)}
    if spec.get("ssl"):
        options["ssl"] = True
    return options
