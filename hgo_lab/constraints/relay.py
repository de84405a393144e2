"""A device's latency: :class:`DelayRelay`, a TCP relay that holds each piece of data.

The kernel here has no ``netem``, so latency is application-level: the relay listens on
the host end of a device's veth, dials the server on loopback and delays every piece it
forwards by the device's one-way latency in each direction, on an asyncio loop in a
daemon thread of the lab's process. The propagation delay of a device's link in HGO
(Boubouh et al., SRDS 2022, §3-§4.2), made real (issue 21, item 3).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

from .common import RELAY_BUFFER, RELAY_READ, ConstraintError

# ---------------------------------------------------------------------------------- latency


class DelayRelay:
    """A TCP relay that holds each piece of data ``delay_ms`` in each direction.

    The stand-in for ``netem delay`` (unavailable in this kernel): it listens on
    ``listen`` (the host end of a device's veth) and forwards to ``target``. It runs on an
    asyncio loop in a daemon thread of the lab's process, so it never outlives the lab.
    Order is kept; a direction holding ``RELAY_BUFFER`` pieces stops reading until it
    drains, so a slow consumer slows the producer as TCP would.
    """

    def __init__(self, listen: tuple[str, int], target: tuple[str, int], delay_ms: float) -> None:
        self.listen = listen
        self.target = target
        self.delay_s = delay_ms / 1000.0
        self.port = 0
        self.bytes = {"up": 0, "down": 0}
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread = threading.Thread(target=self._main, name=f"hgo-relay-{listen[0]}", daemon=True)

    def start(self) -> DelayRelay:
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise ConstraintError(f"cannot start the delay relay on {self.listen}: {self._error}")
        if not self.port:
            raise ConstraintError(f"the delay relay on {self.listen} did not start")
        return self

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._server = self._loop.run_until_complete(
                asyncio.start_server(self._client, self.listen[0], self.listen[1])
            )
            self.port = int(self._server.sockets[0].getsockname()[1])
        except OSError as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        self._loop.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        pumps = [
            asyncio.create_task(self._pump(reader, up_w, "up")),
            asyncio.create_task(self._pump(up_r, writer, "down")),
        ]
        try:
            # Each direction ends on its own EOF (half-close is forwarded); a reset in one
            # ends both.
            await asyncio.wait(pumps, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for t in pumps:
                t.cancel()
            for w in (writer, up_w):
                w.close()

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, key: str) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(RELAY_BUFFER)

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    with contextlib.suppress(OSError):
                        dst.write_eof()
                    return
                wait = due - self._loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                dst.write(data)
                self.bytes[key] += len(data)
                await dst.drain()

        sender = asyncio.create_task(deliver())
        try:
            while True:
                data = await src.read(RELAY_READ)
                await queue.put((self._loop.time() + self.delay_s, data))
                if not data:
                    break
            await sender
        finally:
            sender.cancel()

    def close(self) -> None:
        if not self._thread.is_alive():
            return

        def stop() -> None:
            if self._server is not None:
                self._server.close()
            for task in asyncio.all_tasks(self._loop):
                task.cancel()
            self._loop.call_later(0.05, self._loop.stop)

        self._loop.call_soon_threadsafe(stop)
        self._thread.join(5)
