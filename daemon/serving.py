"""The daemon as a whole: endpoint lock, ROUTER socket, scheduler thread and socket loop, and its exit code.

    Daemon(config).serve() -> exit code      # blocks; `moed serve` runs it on the main thread, tests on another

Order at start: access (a tcp endpoint without CURVE keys exits 2; access.py) -> private runtime folder -> lock
(exit 3 if another daemon holds it) -> bind -> the scheduler thread starts loading the model (status says
`loading`, then `ready`) -> the socket loop serves. With `http` set, the HTTP gateway (http_gateway.py; its config
is checked before the lock is taken; on tcp it connects with a key of its own, role client) starts right after the
bind, before the model loads, and stops once the socket loop has finished. At the end: drain, save the cache statistics
(scheduler), stop the gateway, close the socket (LINGER 0), remove the socket file and the lock.

Threads: the caller's thread runs the socket loop (it owns the ZeroMQ socket); `moed-scheduler` owns MLX; the
expert reader has its own pool; with `http`, `moed-gateway` runs the gateway's event loop.
"""

from __future__ import annotations

import errno
import logging
import os
import threading

import zmq

from moed.clients.endpoints import check_ipc_endpoint, default_endpoint, ipc_path

from moed.clients.keys import KeyFileError

from . import http_gateway
from .access import Access
from .budget_policy import BudgetPolicy
from .config import ConfigError, DaemonConfig
from .governing import GovernedBudget, Governing
from .handover import Handover
from .logs import event
from .liveness import ServiceReporter  # systemd notifications (sdnotify.py)
from .runtime import EndpointInUse, EndpointLock, prepare_endpoint_dir
from .scheduler import Loader, Scheduler
from .sdnotify import Notifier
from .server import SOCKET_MAX_FRAME, Server

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FATAL, EXIT_CONFIG, EXIT_IN_USE = 0, 1, 2, 3


class Daemon:
    def __init__(self, config: DaemonConfig, *, loader: Loader | None = None,
                 budget_policy: BudgetPolicy | None = None):
        """`loader` and `budget_policy` replace the scheduler's defaults (see Scheduler)."""
        self.config = config
        self.endpoint = config.server.endpoint or default_endpoint()
        self._loader, self._budget_policy = loader, budget_policy
        self._server: Server | None = None
        self._started = threading.Event()
        self._lock = threading.RLock()  # re-entrant: a signal handler may run while the main thread holds it
        self._pending_stop: tuple[str, bool] | None = None
        self.http_url: str | None = None  # where the HTTP gateway serves, once it does

    def serve(self) -> int:
        """Run until shut down. Returns 0 (clean), 1 (fatal error), 2 (bad runtime folder, HTTP, governor
        settings or CURVE keys), 3 (endpoint in use)."""
        try:
            gateway = http_gateway.gateway_config(self.config, self.endpoint)
        except ConfigError as e:
            log.error("%s", e)
            return EXIT_CONFIG
        try:
            access = Access.for_endpoint(self.config, self.endpoint)
        except KeyFileError as e:
            log.error("%s", e)
            return EXIT_CONFIG
        if gateway is not None:
            gateway = gateway.replace(curve=access.guest_key())
        try:
            governing = self._governing()
        except (OSError, ValueError) as e:  # a missing or malformed sensor trace, an unreadable store
            log.error("governor: %s", e)
            return EXIT_CONFIG
        lock = EndpointLock(self.endpoint)
        try:
            check_ipc_endpoint(self.endpoint)  # the default path too: $XDG_RUNTIME_DIR may be long
            prepare_endpoint_dir(self.endpoint)
            lock.acquire()
        except EndpointInUse as e:
            log.error("%s", e)
            return EXIT_IN_USE
        except (OSError, ValueError) as e:  # a runtime folder we may not use, or cannot create
            log.error("cannot use %s: %s", self.endpoint, e)
            return EXIT_CONFIG
        try:
            return self._serve_locked(gateway, governing, access)
        finally:
            access.stop()
            if governing is not None:
                governing.stop()
            lock.release()
            event(log, logging.INFO, "stopped", endpoint=self.endpoint)

    def _governing(self) -> Governing | None:
        """The governor, unless it is off (or a test replaced the budget policy)."""
        if self._budget_policy is not None or self.config.governor.governor == "off":
            return None
        from .store.format import read_manifest

        return Governing.create(self.config, read_manifest(self.config.engine.store))

    def _serve_locked(self, gateway: http_gateway.GatewayConfig | None = None,
                      governing: Governing | None = None, access: Access | None = None) -> int:
        access = access or Access()
        ctx: zmq.Context = zmq.Context.instance()
        sock = ctx.socket(zmq.ROUTER)
        try:
            self._configure(sock)
            access.secure(sock)
            try:
                sock.bind(self.endpoint)
            except zmq.ZMQError as e:
                log.error("cannot listen on %s: %s", self.endpoint, e)
                return EXIT_IN_USE if e.errno == errno.EADDRINUSE else EXIT_FATAL
            path = ipc_path(self.endpoint)
            if path is not None:
                os.chmod(path, 0o600)  # the folder is 0700 already; this is belt and braces
            sc = self.config.scheduler
            policy = GovernedBudget() if governing is not None else self._budget_policy
            observer = governing.observe if governing is not None else None
            server = Server(sock, lambda emit, on_exit: Scheduler(self.config, emit, on_exit, self._loader, policy,
                                                                    observer),
                            slow_bytes=self.config.server.slow_client_bytes,
                            slow_s=self.config.server.slow_client_s, drain_timeout_s=sc.drain_timeout_s,
                            governor=governing, access=access)
            if governing is not None:
                governing.start(server.controls)
            with self._lock:
                self._server, pending = server, self._pending_stop
            if pending is not None:
                server.request_shutdown(*pending)
            self._started.set()
            event(log, logging.INFO, "listening", endpoint=self.endpoint, pid=os.getpid())
            http = self._start_gateway(gateway)
            if http is False:
                return EXIT_IN_USE
            reporter = ServiceReporter(Notifier.from_env(), self.endpoint)  # READY / WATCHDOG / STOPPING for systemd
            reporter.start()
            try:
                return server.run()
            finally:
                reporter.stop()
                if http is not None:
                    http.stop(http_gateway.STOP_TIMEOUT_S)
        finally:
            self._started.set()
            sock.close(linger=0)

    def _start_gateway(self, config: http_gateway.GatewayConfig | None) -> http_gateway.GatewayHandle | None | bool:
        """Start the HTTP gateway if configured: its handle, None when not configured, False when it could not
        bind (logged; the daemon then exits without loading the model)."""
        if config is None:
            return None
        try:
            handle = http_gateway.start(config)
        except (OSError, TimeoutError) as e:
            log.error("cannot serve HTTP on %s:%d: %s", config.host, config.port, e)
            return False
        self.http_url = handle.url
        event(log, logging.INFO, "http", url=handle.url, auth=config.api_key is not None)
        return handle

    def _configure(self, sock: zmq.Socket) -> None:
        sc = self.config.server
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # unroutable -> EHOSTUNREACH (client gone), not a silent drop
        sock.setsockopt(zmq.SNDHWM, sc.send_hwm)
        sock.setsockopt(zmq.MAXMSGSIZE, SOCKET_MAX_FRAME)
        sock.setsockopt(zmq.LINGER, 0)
        ivl = int(sc.heartbeat_s * 1000)
        sock.setsockopt(zmq.HEARTBEAT_IVL, ivl)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 3 * ivl)
        sock.setsockopt(zmq.HEARTBEAT_TTL, 3 * ivl)

    def shutdown(self, reason: str = "requested", immediate: bool = False) -> None:
        """Begin a graceful shutdown from any thread (or a signal handler)."""
        with self._lock:
            server = self._server
            if server is None:
                self._pending_stop = (reason, immediate)
                return
        server.request_shutdown(reason, immediate)

    def wait_started(self, timeout: float | None = None) -> bool:
        """True once the socket is bound (or serve() gave up)."""
        return self._started.wait(timeout)

    @property
    def scheduler(self) -> Scheduler | None:
        return self._server.scheduler if self._server is not None else None

    @property
    def controls(self) -> Handover | None:
        """The controls interface (limits, drain, status) once serving; None before the socket is bound."""
        return self._server.controls if self._server is not None else None
