"""Binding the listening sockets, and the one line an operator reads when that fails."""

from __future__ import annotations

import errno
import os
import socket


class ListenError(Exception):
    """A listening address could not be bound: the operator's to fix (another process on
    it, a port below 1024 without privilege, an address this machine does not have). The
    message is the one line ``satsrelay serve`` exits with."""


# Errors from bind() that name a mistake in the configuration or the machine's state,
# not a fault of the relay.
_LISTEN_ERRNOS = frozenset((errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL))


def listen_error(host: str, port: int, exc: OSError, *, setting: str, hint: str) -> ListenError | None:
    """The one-line ListenError for a failed bind of ``host:port`` (configured by
    ``setting``), or None when ``exc`` is not the operator's to fix."""
    if exc.errno not in _LISTEN_ERRNOS:
        return None
    reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
    more = f" ({hint})" if exc.errno == errno.EADDRINUSE else ""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return ListenError(f"cannot listen on {where}{setting}: {reason}{more}")


METRICS_IN_USE_HINT = "another relay's metrics? give each relay its own server.metrics_listen, or empty for none"


def bind_listening_socket(host: str, port: int, *, setting: str, hint: str) -> socket.socket:
    """One listening TCP socket on ``host:port`` WITHOUT SO_REUSEPORT: a process that binds
    it and hands it to its children (``--workers``) is then the only one serving that
    address; any other process's bind fails instead of silently joining the kernel's load
    balancing. ``ListenError`` when the address is taken."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        # SO_REUSEADDR as asyncio sets it: a restart may bind while old connections sit in
        # TIME_WAIT; on Linux it never lets two listeners share a port.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        error = listen_error(host, port, exc, setting=setting, hint=hint)
        if error is None:
            raise
        raise error from None
    return sock
