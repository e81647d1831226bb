"""Fail any test that opens a non-loopback connection.

Why not pytest-socket: it raises inside the code under test, and code that catches connection
errors (hub clients falling back to offline mode, retry loops) would swallow that and let the test
pass. This guard also records every attempt, and the pytest plugin fails the test afterwards.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

_violations: list[str] = []
_original: dict[str, Any] = {}


class NetworkBlocked(ConnectionRefusedError):
    """Raised instead of connecting to a non-loopback address in tests."""


def is_allowed(address: Any) -> bool:
    """True for loopback IP addresses, Unix sockets and 'localhost'; False for anything else."""
    if isinstance(address, (str, bytes)):  # AF_UNIX path
        return True
    if not isinstance(address, tuple) or not address:
        return False
    host = address[0]
    if isinstance(host, bytes):
        host = host.decode()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False  # a host name other than localhost would need DNS: not allowed either


def _guarded(name: str):
    original = _original[name]

    def method(sock, address, *args, **kwargs):
        family = getattr(sock, "family", None)
        if family in (socket.AF_INET, socket.AF_INET6) and not is_allowed(address):
            _violations.append(f"{name} to {address!r}")
            raise NetworkBlocked(f"tests may only connect to loopback addresses, not {address!r}")
        return original(sock, address, *args, **kwargs)

    method.__name__ = name
    return method


def install() -> None:
    """Patch socket connect/connect_ex/sendto; idempotent."""
    if _original:
        return
    for name in ("connect", "connect_ex"):
        _original[name] = getattr(socket.socket, name)
        setattr(socket.socket, name, _guarded(name))
    original_sendto = socket.socket.sendto
    _original["sendto"] = original_sendto

    def sendto(sock, data, *args):
        address = args[-1]
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not is_allowed(address):
            _violations.append(f"sendto to {address!r}")
            raise NetworkBlocked(f"tests may only send to loopback addresses, not {address!r}")
        return original_sendto(sock, data, *args)

    socket.socket.sendto = sendto


def uninstall() -> None:
    for name, fn in _original.items():
        setattr(socket.socket, name, fn)
    _original.clear()


def take_violations() -> list[str]:
    """Return and clear the attempts recorded since the last call."""
    out = list(_violations)
    _violations.clear()
    return out
