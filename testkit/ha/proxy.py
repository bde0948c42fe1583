"""A fault-injecting TCP proxy on loopback: the network partition of the nemesis, without iptables.

Members of a proxied stack reach each other's Postgres and REST API, and etcd, only through these proxies
(see `MemberPlan`'s connect ports), while clients connect to the servers directly. Cutting a proxy acts
like dropped packets: bytes in flight are held, not refused, so connections stall until the peers' own
timeouts fire; new connections are accepted by the kernel and then hang. Healing releases what was held.
All proxies run on one asyncio loop in a daemon thread of the process that owns them.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterable


class _Proxy:
    def __init__(self, name: str, listen_port: int, target_port: int):
        self.name = name
        self.listen_port = listen_port
        self.target_port = target_port
        self.open = asyncio.Event()
        self.open.set()
        self.server: asyncio.AbstractServer | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.listen_port, reuse_address=True)

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        self.writers.add(client_w)
        try:
            await self.open.wait()  # a connection made during a cut hangs, as a SYN into a partition would
            try:
                server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
            except OSError:
                return
            self.writers.add(server_w)
            try:
                await asyncio.gather(self._pump(client_r, server_w), self._pump(server_r, client_w))
            finally:
                server_w.close()
                self.writers.discard(server_w)
        finally:
            client_w.close()
            self.writers.discard(client_w)
            self.tasks.discard(task)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                await self.open.wait()  # held while cut, delivered after the heal
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(OSError):
            writer.write_eof()

    async def stop(self) -> None:
        """Close the listener and every connection (aborting, not cancelling: the pumps end on their own)."""
        if self.server is not None:
            self.server.close()
        self.open.set()
        for writer in list(self.writers):
            writer.transport.abort()
        await asyncio.wait(list(self.tasks), timeout=5.0) if self.tasks else None


class ProxyNet:
    """Named proxies (``listen port -> target port`` on 127.0.0.1) that can be cut and healed by name."""

    def __init__(self, routes: dict[str, tuple[int, int]]):
        self._loop = asyncio.new_event_loop()
        self._proxies = {name: _Proxy(name, listen, target) for name, (listen, target) in routes.items()}
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxies", daemon=True)

    def _call(self, coro_fn, timeout: float = 10.0):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro_fn(), self._loop).result(timeout)

    def start(self) -> ProxyNet:
        self._thread.start()

        async def start_all() -> None:
            for proxy in self._proxies.values():
                await proxy.start()

        self._call(start_all)
        return self

    @property
    def names(self) -> list[str]:
        return sorted(self._proxies)

    def cut(self, names: Iterable[str]) -> None:
        for name in names:
            self._loop.call_soon_threadsafe(self._proxies[name].open.clear)

    def heal(self, names: Iterable[str] | None = None) -> None:
        for name in self._proxies if names is None else names:
            self._loop.call_soon_threadsafe(self._proxies[name].open.set)

    def stop(self) -> None:
        async def stop_all() -> None:
            for proxy in self._proxies.values():
                await proxy.stop()

        with contextlib.suppress(Exception):
            self._call(stop_all)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> ProxyNet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
