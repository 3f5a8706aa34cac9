"""`companion run --workers N`: N server processes, each with its own listening socket on the same port.

Why not uvicorn's own ``workers=N``: its workers share one listening socket,
and whichever is first to ``accept()`` takes a burst of new connections.
Telegram keeps up to 40 keep-alive connections to a webhook and reuses them,
so one worker could end up with nearly all of them for as long as they live
(measured: 199–254 messages/s in some runs against 551 in others, on the
same code). With ``SO_REUSEPORT`` each worker listens on a socket of its
own and the kernel spreads new connections across them by their address
hash, evenly.

Each worker builds its own companion (``bot.http.app_from_env``) and runs
the outbox senders and the scheduler too: due rows and outbox rows are
claimed with ``FOR UPDATE SKIP LOCKED`` and leases, so the workers share
that work without doing any of it twice.

The parent only supervises: SIGINT or SIGTERM stops every worker gracefully;
a worker that exits on its own stops the others, and the parent exits with
an error, for the service manager to restart the whole service.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import signal
import socket
import sys
from types import FrameType
from typing import Final

GRACE_SECONDS: Final = 30


def supported() -> bool:
    return hasattr(socket, "SO_REUSEPORT")


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    return sock


def _worker(host: str, port: int, log_level: str) -> None:
    import uvicorn

    sock = _listen(host, port)
    config = uvicorn.Config("bot.http:app_from_env", factory=True, log_level=log_level, log_config=None)
    uvicorn.Server(config).run(sockets=[sock])


def serve(host: str, port: int, workers: int, log_level: str) -> int:
    """Run ``workers`` server processes until a signal or a worker's exit; returns the exit status."""
    _listen(host, port).close()  # fail here, once, if the address is taken or not ours
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_worker, args=(host, port, log_level), name=f"companion-worker-{n}")
        for n in range(workers)
    ]
    stopping = False

    def stop(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for process in processes:
            if process.is_alive() and process.pid is not None:
                process.terminate()  # SIGTERM: uvicorn finishes in-flight requests, then the lifespan

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop)
    for process in processes:
        process.start()
    sentinels = {process.sentinel: process for process in processes}
    status = 0
    while sentinels:
        for ready in multiprocessing.connection.wait(list(sentinels)):
            assert isinstance(ready, int)  # process sentinels are file descriptors
            process = sentinels.pop(ready)
            if not stopping:  # a worker died on its own: stop the rest, report failure
                sys.stderr.write(f"{process.name} exited with {process.exitcode}; stopping the others\n")
                status = 1
                stop(signal.SIGTERM, None)
    for process in processes:
        process.join(GRACE_SECONDS)
        if process.is_alive():
            process.kill()
    return status
