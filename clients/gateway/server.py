"""Running the gateway: Gateway (start/stop on a running loop), run() for the command line, and start_in_thread()
for a process that has other work (e.g. `moed serve --http`): its own event loop on a thread, behind a handle.

aiohttp cancels a handler whose client disconnected (handler_cancellation), so a client that goes away while its
request is queued, prefilling or being collected for a non-streamed answer cancels the request on the daemon too,
not only one that goes away mid-stream (which the next write would notice).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from aiohttp import web

from .app import build_app
from .config import GatewayConfig
from .upstream import Upstream

log = logging.getLogger("moed.gateway")

_SHUTDOWN_TIMEOUT_S = 2.0  # streams still open at stop are cut (and cancelled on the daemon) after this


class Gateway:
    """One HTTP gateway to one daemon. `await start()` binds (raises OSError if the address is taken)."""

    def __init__(self, config: GatewayConfig) -> None:
        self.config = config
        self._runner: web.AppRunner | None = None
        self._upstream: Upstream | None = None
        self.host, self.port = config.host, config.port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        self._upstream = Upstream(self.config)
        app = build_app(self.config, self._upstream)
        self._runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=_SHUTDOWN_TIMEOUT_S)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port)
        try:
            await site.start()
        except BaseException:
            await self.stop()
            raise
        address = self._runner.addresses[0]
        self.port = address[1]  # the real one when port 0 was asked for
        log.info("moed gateway: serving %s for the daemon at %s", self.url, self._upstream.client.endpoint)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._upstream is not None:
            await self._upstream.close()
            self._upstream = None


def run(config: GatewayConfig) -> int:
    """Serve until SIGINT or SIGTERM (for the command line). Returns 0; raises OSError when it cannot bind."""

    async def main() -> None:
        gateway = Gateway(config)
        await gateway.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            await gateway.stop()

    asyncio.run(main())
    return 0


class GatewayHandle:
    """A gateway serving on its own thread and event loop; `stop()` ends it. Also a context manager."""

    def __init__(self, config: GatewayConfig) -> None:
        self.gateway = Gateway(config)
        self._loop = asyncio.new_event_loop()
        self._stopped = asyncio.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="moed-gateway", daemon=True)

    @property
    def url(self) -> str:
        return self.gateway.url

    @property
    def port(self) -> int:
        return self.gateway.port

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        finally:
            self._ready.set()
            self._loop.close()

    async def _serve(self) -> None:
        try:
            await self.gateway.start()
        except BaseException as e:
            self._error = e
            return
        self._ready.set()
        try:
            await self._stopped.wait()
        finally:
            await self.gateway.stop()

    def start(self, timeout: float = 30.0) -> GatewayHandle:
        """Start serving; returns once bound. Raises what binding raised (e.g. OSError), or TimeoutError."""
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError(f"the gateway did not start within {timeout} s")
        if self._error is not None:
            raise self._error
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop serving (open streams are cut and cancelled on the daemon) and join the thread. Idempotent."""
        if self._thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop already closed
                self._loop.call_soon_threadsafe(self._stopped.set)
            self._thread.join(timeout)

    def __enter__(self) -> GatewayHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_in_thread(config: GatewayConfig, timeout: float = 30.0) -> GatewayHandle:
    """Run a gateway on a background thread with its own event loop; returns its handle once it is bound.

    Raises GatewayConfigError (via config), OSError when the address is taken, TimeoutError."""
    return GatewayHandle(config).start(timeout)
