"""The connection pool of the MySQL backend, and its connection class.

Written here rather than taken from a library; the MySQL backend's module
docstring gives the reasons and the figures.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, Optional

import pymysql

from ..errors import ConfigurationError, DatabaseError, DatabaseUnavailableError

logger = logging.getLogger(__name__)

DEADLOCK = 1213
"""InnoDB's deadlock error; it rolls the whole transaction back."""

# No read timeout by default: a read waits for a query's result, and a step's
# query or a lock wait may rightly take long. A read timeout would cut it
# off, and since a lost connection is transient, the step would run again
# and again. A vanished server is noticed through TCP instead: keepalive
# probes after 10 s of silence, 3 probes 5 s apart, and unacknowledged data
# for 25 s closes the connection (Linux option names; elsewhere OS defaults).
KEEPALIVE_OPTIONS = {
    "TCP_KEEPIDLE": 10,
    "TCP_KEEPINTVL": 5,
    "TCP_KEEPCNT": 3,
    "TCP_USER_TIMEOUT": 25_000,
}

PING_AFTER_IDLE_SECS = 1.0
"""A pooled connection idle longer than this is pinged before it is lent.

One that died sooner fails its first statement with a transient error, and
the transaction runs again on another connection.
"""


class PooledConnection(
    pymysql.connections.Connection,  # type: ignore[misc,unused-ignore]
):
    """A PyMySQL connection that knows whether a transaction is open.

    PyMySQL refreshes ``server_status`` only from OK packets, so the server's
    in-transaction flag is stale after a SELECT. With autocommit off every
    statement opens a transaction, so any statement since the last commit or
    rollback means one may be open.
    """

    in_transaction = False
    #: When the pool last took it back (time.monotonic()).
    idle_since = 0.0
    #: Close instead of pooling it: it holds a session-level lock.
    discard = False

    #: Set when InnoDB rolled the open transaction back on its own (a
    #: deadlock), so that a step which caught the error cannot commit the
    #: rest of its work as if nothing had happened.
    rolled_back_by_server = False

    def query(self, sql: Any, unbuffered: bool = False) -> int:
        self.in_transaction = True
        try:
            affected: int = super().query(sql, unbuffered)
        except pymysql.err.OperationalError as exc:
            if exc.args and exc.args[0] == DEADLOCK:
                self.rolled_back_by_server = True
            raise
        return affected

    def commit(self) -> None:
        super().commit()
        self.in_transaction = False

    def rollback(self) -> None:
        super().rollback()
        self.in_transaction = False
        self.rolled_back_by_server = False


def tune_socket(sock: socket.socket) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in KEEPALIVE_OPTIONS.items():
        option = getattr(socket, name, None)
        if option is None:
            continue
        try:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)
        except OSError:  # A kernel without the option keeps its default.
            logger.debug("cannot set %s on a MySQL socket", name, exc_info=True)


def _close_quietly(conn: PooledConnection) -> None:
    try:
        conn.close()
    except Exception:  # Already closed or broken: nothing left to free.
        logger.debug("closing a MySQL connection failed", exc_info=True)


class ConnectionPool:
    """At most ``max_size`` connections; idle ones are reused newest first.

    ``get()`` waits up to ``timeout`` seconds for a free connection and
    then raises DatabaseUnavailableError.
    """

    def __init__(self, connect: Callable[[], PooledConnection], max_size: int) -> None:
        if max_size < 1:
            raise ConfigurationError(f"pool_size must be >= 1, got {max_size!r}")
        self._connect = connect
        self.max_size = max_size
        # Protects _idle, _size and _closed; get() waits on it for a slot.
        self._cond = threading.Condition()
        self._idle: list[PooledConnection] = []
        self._size = 0  # Connections lent, idle, or being opened.
        self._closed = False

    def get(self, timeout: float) -> PooledConnection:
        """Lend a live connection, opening one if none is idle."""
        conn = self._reserve(timeout)
        if conn is not None:
            if time.monotonic() - conn.idle_since < PING_AFTER_IDLE_SECS:
                return conn
            try:
                conn.ping(reconnect=False)
                return conn
            except pymysql.err.Error as exc:
                logger.warning(
                    "a pooled MySQL connection is dead, opening another: %s",
                    exc,
                    extra={"action": "connection_replaced"},
                )
                _close_quietly(conn)
        try:
            return self._connect()
        except BaseException:
            self._forget_one()
            raise

    def _reserve(self, timeout: float) -> Optional[PooledConnection]:
        """An idle connection, or None with a slot kept for a new one."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._closed:
                if self._idle:
                    return self._idle.pop()
                if self._size < self.max_size:
                    self._size += 1
                    return None
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DatabaseUnavailableError(
                        f"cannot get a MySQL connection within {timeout:g}s: "
                        f"all {self.max_size} pooled connections stayed in "
                        "use; raise pool_size, or run fewer threads"
                    )
                self._cond.wait(remaining)
        raise DatabaseError("mysql: the connection pool is closed")

    def put(self, conn: PooledConnection) -> None:
        """Take a connection back; a broken or locked one is closed."""
        reuse = conn.open and not conn.in_transaction and not conn.discard
        with self._cond:
            if reuse and not self._closed:
                conn.idle_since = time.monotonic()
                self._idle.append(conn)
                self._cond.notify()
                return
        self._forget_one()
        _close_quietly(conn)

    def _forget_one(self) -> None:
        with self._cond:
            self._size -= 1
            self._cond.notify()

    def close(self) -> None:
        """Close the idle connections; lent ones close when given back."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._size -= len(idle)
            self._cond.notify_all()
        for conn in idle:
            _close_quietly(conn)
