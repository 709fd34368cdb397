"""A TCP proxy for attacks on the database connection: it forwards bytes until told to
blackhole them (connections stay open, nothing passes either way: a dead peer without an RST),
or to cut a connection right after a client message that contains a given marker has been
forwarded (the request reaches the server; its reply never reaches the client)."""

from __future__ import annotations

import asyncio
import contextlib


class FaultProxy:
    """Forwards ``127.0.0.1:<port>`` to ``target`` with faults on demand."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self.blackholed = False
        #: bytes that, once forwarded to the server, get the connection cut (reply lost)
        self.cut_after: bytes | None = None
        #: how many connections were cut that way
        self.cuts = 0
        #: bytes that blackhole everything once seen in a client message, which is forwarded
        #: first when ``deliver_trigger`` (the server runs it, its reply is lost) and swallowed
        #: otherwise (the server never sees it)
        self.blackhole_at: bytes | None = None
        self.deliver_trigger = True
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()

    async def start(self) -> None:
        """Listen on a free port."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    def blackhole(self) -> None:
        """From now on nothing passes in either direction; connections stay open."""
        self.blackholed = True
        self._flowing.clear()

    def heal(self) -> None:
        """Cut every connection that was blackholed (as a peer's restart would) and forward
        new ones again."""
        self.blackholed = False
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        self._flowing.set()

    async def close(self) -> None:
        """Stop listening and cut every connection."""
        self.heal()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        await self._flowing.wait()
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.add(up_writer)
        await asyncio.gather(
            self._pipe(reader, up_writer, client=writer),
            self._pipe(up_reader, writer),
            return_exceptions=True,
        )

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        client: asyncio.StreamWriter | None = None,
    ) -> None:
        """Forward ``reader`` to ``writer``; ``client``: set on the client-to-server pipe."""
        try:
            while data := await reader.read(65536):
                if self.blackholed:
                    await asyncio.Event().wait()  # swallowed: never forwarded, never closed
                trigger = self.blackhole_at
                if client is not None and trigger is not None and trigger in data:
                    self.blackhole_at = None
                    if self.deliver_trigger:
                        writer.write(data)
                    self.blackhole()
                    continue
                marker = self.cut_after
                cut = client is not None and marker is not None and marker in data
                if cut:
                    assert client is not None
                    self.cut_after = None
                    self.cuts += 1
                    client.transport.abort()  # the client never sees the reply
                writer.write(data)
                await writer.drain()
                if cut:
                    await asyncio.sleep(0.2)  # the server runs it and answers into the void
                    return
        finally:
            self._writers.discard(writer)
            writer.transport.abort()
            with contextlib.suppress(OSError, ConnectionError):
                await writer.wait_closed()
