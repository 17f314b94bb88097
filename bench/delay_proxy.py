"""A loopback TCP proxy that adds a propagation delay, for the benches that move objects to or from a store: on
this machine every store is on loopback, where a round trip costs nothing, and it is the round trips that decide
whether fetching objects one at a time or several at once pays."""

import asyncio
import threading

from tests.ports import free_port


class DelayProxy:
    """A loopback TCP proxy that holds each chunk for `delay` seconds in each direction, on its own thread."""

    def __init__(self, target_port: int, delay: float) -> None:
        self.target_port, self.delay, self.port = target_port, delay, free_port()
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        threading.Thread(target=self._run, args=(started,), daemon=True).start()
        started.wait()

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.loop.run_until_complete(asyncio.start_server(self._connection, "127.0.0.1", self.port))
        started.set()
        self.loop.run_forever()
        self.loop.close()

    async def _connection(self, client_reader, client_writer) -> None:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        try:
            await asyncio.gather(
                self._pump(client_reader, server_writer), self._pump(server_reader, client_writer),
                return_exceptions=True,  # a side that hangs up ends its direction only
            )  # fmt: skip
        except asyncio.CancelledError:
            pass  # stop() closes the connections still open
        finally:
            client_writer.close()
            server_writer.close()

    async def _pump(self, reader, writer) -> None:
        """Chunks go out in order, each `delay` after it arrived (a pipe of that length, without a window)."""
        queue: asyncio.Queue = asyncio.Queue()

        async def deliver() -> None:
            while (item := await queue.get()) is not None:
                due, data = item
                await asyncio.sleep(max(0.0, due - self.loop.time()))
                writer.write(data)
                await writer.drain()
            writer.write_eof()

        delivering = asyncio.ensure_future(deliver())
        try:
            while data := await reader.read(1 << 16):
                queue.put_nowait((self.loop.time() + self.delay, data))
            queue.put_nowait(None)
            await delivering
        finally:
            delivering.cancel()

    def stop(self) -> None:
        """Closes the listener and every connection still open (the caches' kept-alive ones), then the loop."""

        async def shut_down() -> None:
            self.server.close()
            tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shut_down(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
