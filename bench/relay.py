"""A control for the proxy scenario: the cheapest relay this machine can run.

``python relay.py HOST PORT`` listens on a free port of 127.0.0.1, prints it on one line,
and relays every connection to HOST:PORT with ``splice(2)`` through a pipe, so the bytes
never enter user space. It parses nothing (TLS stays end to end, like a gateway's SNI
passthrough), so its throughput over a direct connection is what any relaying proxy can
hope for on this machine: the extra socket hop, the kernel's work and the third process
competing for the cores.

Standard library only (it runs under the upstream-client Python). Stops on SIGTERM.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import sys
import threading

#: Bytes moved per splice(2) call, and the pipe's capacity (F_SETPIPE_SZ).
CHUNK = 1 << 20
_F_SETPIPE_SZ = 1031


def _pump(src: socket.socket, dst: socket.socket) -> None:
    read_end, write_end = os.pipe()
    try:
        fcntl.fcntl(read_end, _F_SETPIPE_SZ, CHUNK)
        while True:
            moved = os.splice(src.fileno(), write_end, CHUNK)
            if moved == 0:
                break
            while moved:
                moved -= os.splice(read_end, dst.fileno(), moved)
    except OSError:
        pass  # either side went away: close both directions below
    finally:
        os.close(read_end)
        os.close(write_end)
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _serve(listener: socket.socket, target: tuple[str, int]) -> None:
    while True:
        downstream, _ = listener.accept()
        try:
            upstream = socket.create_connection(target)
        except OSError:
            downstream.close()
            continue
        for sock in (downstream, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for src, dst in ((downstream, upstream), (upstream, downstream)):
            threading.Thread(target=_pump, args=(src, dst), daemon=True).start()


def main() -> None:
    host, port = sys.argv[1], int(sys.argv[2])
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    print(listener.getsockname()[1], flush=True)
    _serve(listener, (host, port))


if __name__ == "__main__":
    main()
