"""A TCP forwarder on 127.0.0.1 that a test can cut and restore, to stand between a client and a
service (S3, MLflow) and make the service briefly, or for good, unreachable.

``TcpProxy(target_port)`` listens on a free loopback port and copies bytes both ways between each
accepted connection and a new connection to the target, one thread per direction.
``pause()`` resets every open connection (``SO_LINGER`` 0, so the peer sees ``ECONNRESET``, not a
clean end) and then either closes the listening socket (``mode="refuse"``: new connections get
``ECONNREFUSED``, as from a host whose service is down) or keeps it and resets each new connection
as soon as it is accepted (``mode="reset"``: counted, so a test sees its client's retries).
``resume()`` forwards again on the same port. ``stop()`` ends everything. Counters: connections
``forwarded``, open ones ``cut`` by a pause, new ones ``dropped`` while paused in reset mode.
"""

from __future__ import annotations

import select
import socket
import struct
import threading
import time

__all__ = ["TcpProxy"]

_CHUNK = 65536
_POLL_S = 0.05


def _reset(sock: socket.socket) -> None:
    """Close ``sock`` with an RST instead of a FIN (the peer reads ECONNRESET)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


class _Link:
    """One forwarded connection: its two sockets, and whether it was cut."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client, self.upstream = client, upstream
        self.cut = threading.Event()
        self._ended = 0
        self._lock = threading.Lock()

    def one_way_done(self) -> bool:
        """Note that one direction ended; True when that was the second."""
        with self._lock:
            self._ended += 1
            return self._ended == 2


class TcpProxy:
    """Forward ``127.0.0.1:<port>`` to ``target_host:target_port`` until paused or stopped."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self._lock = threading.Lock()
        self._links: set[_Link] = set()  # the open connections
        self._listener: socket.socket | None = None
        self._accepting: threading.Thread | None = None
        self.forwarded = 0  # connections accepted and joined to the target
        self.cut = 0  # open connections reset by pause() / stop()
        self.dropped = 0  # connections reset on arrival while paused in "reset" mode
        self._dropping = False
        self.port = self._listen(0)

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``: the address clients are given instead of the target's."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def paused(self) -> bool:
        return self._listener is None or self._dropping

    def _listen(self, port: int) -> int:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        deadline = time.monotonic() + 10
        while True:  # the old listener's port can take a moment to be free again
            try:
                sock.bind(("127.0.0.1", port))
                break
            except OSError:
                if time.monotonic() > deadline:
                    sock.close()
                    raise
                time.sleep(0.05)
        sock.listen(64)
        self._listener = sock
        self._accepting = threading.Thread(target=self._accept, args=(sock,), name="proxy-accept", daemon=True)
        self._accepting.start()
        return sock.getsockname()[1]

    def _accept(self, listener: socket.socket) -> None:
        listener.settimeout(_POLL_S)  # a blocked accept() is not woken by close() from another thread
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:  # closed by pause() / stop()
                return
            if self._dropping:
                with self._lock:
                    self.dropped += 1
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                if self._listener is not listener or self._dropping:  # paused between accept and here
                    _reset(client)
                    _reset(upstream)
                    continue
                link = _Link(client, upstream)
                self._links.add(link)
                self.forwarded += 1
            upstream.settimeout(None)
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(link, src, dst), name="proxy-pipe", daemon=True).start()

    def _pipe(self, link: "_Link", src: socket.socket, dst: socket.socket) -> None:
        """Copy ``src`` to ``dst`` until ``src`` ends (the end is passed on) or the link is cut (both
        sockets are reset). A blocked recv() is not woken by close(), hence the short polls."""
        while not link.cut.is_set():
            try:
                if not select.select([src], [], [], _POLL_S)[0]:
                    continue
                data = src.recv(_CHUNK)
            except (OSError, ValueError):  # reset, or closed by the other direction
                break
            if not data:
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                if link.one_way_done():  # both ways ended cleanly
                    self._drop(link, clean=True)
                return
            try:
                dst.sendall(data)
            except OSError:
                break
        self._drop(link, clean=False)

    def _drop(self, link: "_Link", clean: bool) -> None:
        link.cut.set()
        for sock in (link.client, link.upstream):
            if clean:
                sock.close()
            else:
                _reset(sock)
        with self._lock:
            self._links.discard(link)

    def pause(self, mode: str = "refuse") -> None:
        """Reset the open connections and refuse (``"refuse"``) or reset (``"reset"``) new ones,
        until :meth:`resume`."""
        if mode not in ("refuse", "reset"):
            raise ValueError(f"pause mode {mode!r}: use 'refuse' or 'reset'")
        with self._lock:
            self._dropping = mode == "reset"
            listener = None
            if mode == "refuse":
                listener, self._listener = self._listener, None
            links, self._links = self._links, set()
            self.cut += len(links)
        if listener is not None:
            listener.close()
        for link in links:
            link.cut.set()
        time.sleep(2 * _POLL_S)  # the pipes notice within one poll and reset their sockets

    def resume(self) -> None:
        """Accept and forward again, on the same port."""
        self._dropping = False
        if self._listener is None:
            self._listen(self.port)

    def stop(self) -> None:
        """Cut everything for good."""
        self.pause()

    def __enter__(self) -> "TcpProxy":
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()
