"""The harness refuses non-loopback connections without ever sending a packet."""

import socket

import pytest

from pathasst.testing import network_guard


@pytest.mark.parametrize("address, allowed", [
    (("127.0.0.1", 80), True),
    (("::1", 80, 0, 0), True),
    (("localhost", 8080), True),
    (("192.0.2.10", 443), False),       # documentation range: never reached, only judged
    (("example.invalid", 443), False),  # names other than localhost would need DNS
    ("/tmp/some.sock", True),
])
def test_is_allowed(address, allowed):
    assert network_guard.is_allowed(address) is allowed


def test_guard_blocks_and_records_before_the_real_connect(monkeypatch):
    called = []
    monkeypatch.setitem(network_guard._original, "connect", lambda sock, addr: called.append(addr))
    guarded = network_guard._guarded("connect")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        with pytest.raises(network_guard.NetworkBlocked):
            guarded(sock, ("192.0.2.10", 443))
        guarded(sock, ("127.0.0.1", 9))
    finally:
        sock.close()
    assert called == [("127.0.0.1", 9)]  # only the loopback call reached the real connect
    assert network_guard.take_violations() == ["connect to ('192.0.2.10', 443)"]


def test_guard_is_installed_for_the_suite():
    assert socket.socket.connect.__name__ == "connect" and network_guard._original


def test_loopback_still_works():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = socket.create_connection(server.getsockname(), timeout=2)
    client.close()
    server.close()
