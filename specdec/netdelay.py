"""Added network latency without netem (this kernel has none): a TCP proxy that holds every chunk for a fixed
delay in both directions, so a peer behind it looks `2 x delay` further away. Used by the benchmarks' network
scenarios and by the fault-injection tests (which also kill and revive it).
"""

from __future__ import annotations

import asyncio


class DelayProxy:
    """127.0.0.1:`port` -> `target_host`:`target_port`, holding every chunk `delay_s` in both directions (a slow
    network or a slow peer). `kill()` drops every connection and refuses new ones; `revive()` undoes it."""

    def __init__(self, target_port: int, delay_s: float = 0.0, target_host: str = "127.0.0.1") -> None:
        self.target_port = target_port
        self.target_host = target_host
        self.delay_s = delay_s
        self.dead = False
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> DelayProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.kill()
        assert self._server is not None
        self._server.close()
        for task in list(self._handlers):  # connections still open: end them here, not at interpreter exit
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def kill(self) -> None:
        self.dead = True
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def revive(self) -> None:
        self.dead = False

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)
        if self.dead:
            client_writer.transport.abort()
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            client_writer.transport.abort()
            return
        self._writers |= {client_writer, upstream_writer}
        try:
            await asyncio.gather(
                self._pipe(client_reader, upstream_writer),
                self._pipe(upstream_reader, client_writer),
                return_exceptions=True,
            )
        except asyncio.CancelledError:
            pass  # the proxy is closing: end quietly (asyncio would log a cancelled connection task as an error)
        finally:
            for writer in (client_writer, upstream_writer):
                self._writers.discard(writer)
                writer.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Forward every chunk `delay_s` after it arrived (a link's latency: chunks in flight together arrive
        together, they do not queue up behind each other's delay). The delay may change at any time."""
        loop = asyncio.get_running_loop()
        in_flight: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await in_flight.get()
                if not data or self.dead:
                    return
                if due > loop.time():
                    await asyncio.sleep(due - loop.time())
                writer.write(data)
                await writer.drain()

        delivering = asyncio.create_task(deliver())
        try:
            while data := await reader.read(65536):
                in_flight.put_nowait((loop.time() + self.delay_s, data))
            in_flight.put_nowait((0.0, b""))  # end of stream, after everything before it was delivered
            await delivering
        finally:
            delivering.cancel()
