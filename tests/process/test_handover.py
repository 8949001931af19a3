"""The handover's socket tools on real loopback sockets (Linux /proc)."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys

import pytest

from lockgate.process import handover
from lockgate.process.handover import close_listeners, hand_over, open_connections
from tests.waiting import until

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")


def _listener(reuse_port: bool = False) -> socket.socket:
    sock = socket.socket()
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    return sock


def test_connections_on_the_port_are_counted_until_closed() -> None:
    with _listener() as listener:
        port = listener.getsockname()[1]
        assert open_connections(port) == 0  # a listener is not a connection
        client = socket.create_connection(("127.0.0.1", port))
        served, _ = listener.accept()
        assert open_connections(port) == 1  # the client's end has another local port
        served.close()
        client.close()
        assert open_connections(port) == 0


OTHER_WORKER = """
import socket, sys
sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
sock.bind(("127.0.0.1", int(sys.argv[1])))
sock.listen(64)
print("listening", flush=True)
accepted = []
for _ in range(int(sys.argv[2])):
    accepted.append(sock.accept()[0])
print(len(accepted), flush=True)
"""


def test_a_closed_listener_leaves_new_connections_to_the_other_workers() -> None:
    with _listener(reuse_port=True) as ours:
        port = ours.getsockname()[1]
        other = subprocess.Popen(
            [sys.executable, "-c", OTHER_WORKER, str(port), "20"],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert other.stdout is not None and other.stdout.readline() == "listening\n"
            assert close_listeners(port) == 1
            clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(20)]
            other.wait(timeout=10)  # it exits once it has accepted all 20
            assert other.stdout.read() == "20\n"  # every one reached the other worker
            for client in clients:
                client.close()
            assert close_listeners(port) == 0  # ours listens no more
        finally:
            other.kill()
            other.wait()


def test_hand_over_waits_for_the_last_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []  # what each of the hand-over's polls counted

    def counted(port: int) -> int:
        seen.append(open_connections(port))
        return seen[-1]

    monkeypatch.setattr(handover, "open_connections", counted)

    async def scenario() -> None:
        with _listener() as listener:
            port = listener.getsockname()[1]
            client = socket.create_connection(("127.0.0.1", port))
            served, _ = listener.accept()
            waiting = asyncio.create_task(hand_over(port, timeout=120, poll=0.02))
            # five polls have seen the connection open (other processes' connections on the
            # same port number count too), and none of them ended the hand-over
            await until(lambda: len(seen) >= 5, "five polls")
            assert min(seen[:5]) >= 1 and not waiting.done()
            served.close()
            client.close()
            assert await asyncio.wait_for(waiting, 60) is True  # done once it is gone

    asyncio.run(scenario())


def test_hand_over_gives_up_after_its_timeout() -> None:
    with _listener() as listener:
        port = listener.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        served, _ = listener.accept()
        try:
            assert asyncio.run(hand_over(port, timeout=0.2, poll=0.02)) is False
        finally:
            served.close()
            client.close()
