"""The MySQL and MariaDB backend: PyMySQL, a small pool, InnoDB tables.

Claiming works as on PostgreSQL: due step rows are picked with ``FOR UPDATE
SKIP LOCKED`` (MySQL 8.0.1+, MariaDB 10.6+) and leased, their call counted,
in a transaction that commits before the call begins (a short one, or the
commit of the worker's previous call). The step call's
transaction then locks its row again and holds that lock until it commits,
so no other worker claims the step while it runs. Every connection runs at
READ COMMITTED, where InnoDB takes no gap locks for these reads, so workers
polling side by side do not deadlock on each other.

Crash recovery: when a worker process dies, its socket closes, the server
rolls its transaction back and the row lock goes with it; the step is due
again once the claim's lease (``lease_seconds``, counted from the claim) has
passed. If a worker's whole machine vanishes, the server keeps the lock
until it notices the dead connection, and the step waits that long: set the
server's TCP keepalive (MariaDB: ``tcp_keepalive_time``) well below
``wait_timeout``, which is 8 hours by default.

MySQL has no LISTEN/NOTIFY, so workers poll for due steps every
``poll_interval``; a job enqueued through the executor that runs the worker
wakes it at once.

What a step should know: MySQL commits implicitly around DDL, so a
``CREATE TABLE`` through ``exec_query()`` inside a step commits the step's
work early and drops its row lock; keep DDL out of steps. MySQL 8 stores
JSON in a binary form that turns integers beyond 64 bits into floats
(MariaDB keeps the text as written).

Driver and pool. 2,000 transactions of ``SELECT ... FOR UPDATE``, ``UPDATE``
and ``COMMIT`` on MariaDB 10.11 over loopback took 0.81 s with PyMySQL,
0.64 s with mysqlclient and 1.00 s with mysql-connector-python (medians of
nine runs); most of it is the server's commit. PyMySQL is pure Python and
installs without a compiler or the MySQL client headers, which mysqlclient
needs. The pool is written here, in about a hundred lines, because the
candidates did not fit: DBUtils runs a statement again after an
OperationalError, which PyMySQL raises for a deadlock too, unless the
transaction was opened through DBUtils' own ``begin()``; the statement would
then run on outside the rolled-back transaction. It also waits for a free
connection without a timeout. SQLAlchemy is a large dependency for its pool.
A connection idle for more than ``PING_AFTER_IDLE_SECS`` is pinged before it
is lent and replaced if dead; pinging on every loan made the same 2,000
transactions 25% slower (1.10 s against 0.89 s through this backend).
"""

from __future__ import annotations

import logging
import re
import socket
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Optional
from urllib.parse import parse_qsl, unquote, urlsplit

from ..errors import (
    ConfigurationError,
    DatabaseError,
    DatabaseUnavailableError,
    TransientDatabaseError,
)
from .base import SqlBackend
from .mysql_pool import (
    ConnectionPool,
    PooledConnection,
    tune_socket,
)
from .sql import INHERITED

try:
    import pymysql
    import pymysql.cursors
    from pymysql.constants import SERVER_STATUS
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ConfigurationError(
        "the MySQL backend needs PyMySQL; install threadjobs[mysql]"
    ) from exc

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_SECS = 5
"""How long opening a connection, or waiting for a free one, may take."""

WRITE_TIMEOUT_SECS = 60
"""How long sending one statement may take."""

SETUP_LOCK_WAIT_SECS = 60
"""How long table creation waits for another process creating them."""

# SKIP LOCKED needs MySQL 8.0.1+ / MariaDB 10.6+.
MIN_MYSQL = (8, 0, 1)
MIN_MARIADB = (10, 6, 0)

# Error numbers worth retrying on a fresh connection or transaction: lock
# wait timeout, deadlock, too many connections, server shutdown, connection
# killed (MariaDB), idle disconnect (MySQL 8.0.24+), and the client's own
# cannot-connect and lost-connection errors. Other server errors are not:
# PyMySQL raises OperationalError for any error number it does not map, such
# as 1054 (unknown column), and retrying those would repeat a broken step
# forever.
_TRANSIENT_ERRNOS = {1205, 1213, 1040, 1053, 1927, 4031, 2002, 2003, 2006, 2013}

_VERSION = re.compile(r"(\d+)\.(\d+)\.(\d+)")

_URL_OPTIONS: dict[str, Callable[[str], Any]] = {
    "unix_socket": str,
    "ssl_ca": str,
    "ssl_cert": str,
    "ssl_key": str,
    "connect_timeout": float,
    "read_timeout": float,
    "write_timeout": float,
}


def _schema(collation: str) -> list[str]:
    """The tables; ``collation`` makes job names compare byte for byte.

    Indexes live inside CREATE TABLE because MySQL has no CREATE INDEX IF
    NOT EXISTS, and no partial indexes.
    """
    table = "ENGINE = InnoDB DEFAULT CHARSET = utf8mb4"
    name = f"VARCHAR(200) CHARACTER SET utf8mb4 COLLATE {collation} NOT NULL"
    return [
        f"CREATE TABLE IF NOT EXISTS threadjobs_schema (version INT NOT NULL) {table}",
        f"""CREATE TABLE IF NOT EXISTS threadjobs_jobs (
            id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
            name {name},
            dedup_key CHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
            params JSON NOT NULL,
            ctx JSON NOT NULL,
            shape JSON NOT NULL,
            current_step INT NOT NULL DEFAULT 0,
            created_at DOUBLE NOT NULL,
            updated_at DOUBLE NOT NULL,
            ended_at DOUBLE,
            UNIQUE KEY threadjobs_jobs_dedup (dedup_key),
            KEY threadjobs_jobs_name (name),
            KEY threadjobs_jobs_ended (ended_at)) {table}""",
        f"""CREATE TABLE IF NOT EXISTS threadjobs_steps (
            id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
            job_id BIGINT NOT NULL,
            job_name {name},
            step_index INT NOT NULL,
            member_index INT NOT NULL,
            run_at DOUBLE NOT NULL,
            done TINYINT NOT NULL DEFAULT 0,
            is_failed TINYINT NOT NULL DEFAULT 0,
            child_job_id BIGINT,
            claim_token VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin,
            claimed_by VARCHAR(300),
            claimed_until DOUBLE NOT NULL DEFAULT 0,
            calls INT NOT NULL DEFAULT 0,
            unfinished_calls INT NOT NULL DEFAULT 0,
            error MEDIUMTEXT,
            traceback MEDIUMTEXT,
            updated_at DOUBLE NOT NULL,
            UNIQUE KEY threadjobs_steps_member (job_id, step_index, member_index),
            KEY threadjobs_steps_due (done, is_failed, run_at),
            KEY threadjobs_steps_claim (claim_token),
            KEY threadjobs_steps_child (child_job_id),
            CONSTRAINT threadjobs_steps_job FOREIGN KEY (job_id)
                REFERENCES threadjobs_jobs (id) ON DELETE CASCADE) {table}""",
    ]


def name_collation(version: str) -> str:
    """The binary collation for job names on this server, from VERSION().

    It must not pad: under utf8mb4_bin ``'mail' = 'mail '`` is true, and a
    worker would claim steps of a job it has no definition for. Raises
    ConfigurationError for a server without SKIP LOCKED.
    """
    match = _VERSION.match(version)
    found = tuple(int(part) for part in match.groups()) if match else (0, 0, 0)
    mariadb = "mariadb" in version.lower()
    product, needed = ("MariaDB", MIN_MARIADB) if mariadb else ("MySQL", MIN_MYSQL)
    if found < needed:
        raise ConfigurationError(
            f"the server reports version {version!r}; threadjobs needs {product} "
            f"{'.'.join(map(str, needed))} or newer, for SELECT ... SKIP LOCKED"
        )
    if mariadb:
        return "utf8mb4_nopad_bin"
    return "utf8mb4_0900_bin" if found >= (8, 0, 17) else "utf8mb4_bin"


def connect_params(url: str) -> dict[str, Any]:
    """PyMySQL's connect() arguments for ``mysql://user:password@host/db``.

    Query options: unix_socket, ssl_ca, ssl_cert, ssl_key and the
    connect, read and write timeouts in seconds.
    """
    parts = urlsplit(url)
    database = unquote(parts.path.lstrip("/"))
    if not database:
        raise ConfigurationError(
            "the MySQL URL names no database; use mysql://user:password@host/dbname"
        )
    try:
        port = parts.port or 3306
    except ValueError as exc:
        raise ConfigurationError(f"the MySQL URL has a bad port: {exc}") from exc
    params: dict[str, Any] = {
        "host": parts.hostname or "localhost",
        "port": port,
        "user": unquote(parts.username) if parts.username else None,
        "password": unquote(parts.password or ""),
        "database": database,
        "charset": "utf8mb4",
        "autocommit": False,
        "connect_timeout": CONNECT_TIMEOUT_SECS,
        "write_timeout": WRITE_TIMEOUT_SECS,
        "init_command": "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
    }
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        convert = _URL_OPTIONS.get(key)
        if convert is None:
            raise ConfigurationError(
                f"the MySQL URL option {key!r} is unknown; the options are "
                f"{', '.join(_URL_OPTIONS)}"
            )
        try:
            params[key] = convert(value)
        except ValueError as exc:
            raise ConfigurationError(
                f"the MySQL URL option {key}={value!r} is not valid: {exc}"
            ) from exc
    return params


class MysqlBackend(SqlBackend):
    """Jobs in MySQL 8.0.1+ or MariaDB 10.6+, shared by any number of workers.

    ``url`` is ``mysql://user:password@host:port/database`` (or
    ``mariadb://``); ``pool_size`` caps the connections this executor opens.
    """

    name = "mysql"
    holds_row_locks = True
    begins_implicitly = True
    # Epoch seconds computed in UTC: UNIX_TIMESTAMP(NOW(6)) converts from the
    # session time zone, which is ambiguous in the hour a DST change repeats.
    now_sql = "(TIMESTAMPDIFF(MICROSECOND, '1970-01-01', UTC_TIMESTAMP(6)) / 1e6)"
    # A backslash, spelled so that it also parses under NO_BACKSLASH_ESCAPES.
    like_escape = "ESCAPE CHAR(92 USING utf8mb4)"
    table_exists_sql = (
        "SELECT COUNT(*) FROM information_schema.tables "
        "WHERE table_schema = DATABASE() AND table_name = %s"
    )

    def __init__(self, url: str, *, pool_size: int = 10, **options: Any) -> None:
        super().__init__(**options)
        self.params = connect_params(url)
        self.pool = ConnectionPool(self._connect, pool_size)
        # Set by setup_lock() from the server's version, before the tables
        # are created.
        self._collation = "utf8mb4_bin"

    def after_fork(self) -> None:
        INHERITED.append(self.pool)
        self.pool = ConnectionPool(self._connect, self.pool.max_size)

    def _connect(self) -> PooledConnection:
        conn = PooledConnection(**self.params, defer_connect=True)
        if conn.unix_socket:
            conn.connect()
            return conn
        # Our own socket, so that it gets the keepalive options.
        try:
            sock = socket.create_connection(
                (conn.host, conn.port), conn.connect_timeout
            )
        except OSError as exc:
            raise pymysql.err.OperationalError(2003, str(exc)) from exc
        try:
            tune_socket(sock)
        except OSError as exc:
            sock.close()
            raise pymysql.err.OperationalError(2003, str(exc)) from exc
        conn.connect(sock)
        return conn

    @contextmanager
    def connection(self) -> Iterator[Any]:
        try:
            conn = self.pool.get(CONNECT_TIMEOUT_SECS)
        except pymysql.err.Error as exc:
            # Unreachable is reported at once (the connect timeout already
            # waited); a refusal such as a wrong password is no better later.
            kind = DatabaseUnavailableError if self.is_transient(exc) else DatabaseError
            raise kind(f"cannot connect to MySQL at {self._where()}: {exc}") from exc
        try:
            yield conn
        finally:
            if conn.in_transaction and conn.open:
                self._rollback_quietly(conn)
            self.pool.put(conn)

    def _where(self) -> str:
        params = self.params
        if params.get("unix_socket"):
            return str(params["unix_socket"])
        return f"{params['host']}:{params['port']}/{params['database']}"

    def close(self) -> None:
        self.pool.close()

    def begin(self, conn: Any) -> None:
        """Nothing to send: with autocommit off the first statement begins."""

    def driver_error(self) -> tuple[type[BaseException], ...]:
        return (pymysql.err.Error,)

    def is_transient(self, exc: BaseException) -> bool:
        # PyMySQL raises InterfaceError for a connection it already closed.
        if isinstance(exc, pymysql.err.InterfaceError):
            return True
        if isinstance(exc, pymysql.err.OperationalError) and exc.args:
            return exc.args[0] in _TRANSIENT_ERRNOS
        return False

    def setup_lock(self, cur: Any) -> None:
        cur.execute("SELECT VERSION()")
        self._collation = name_collation(cur.fetchone()[0])
        # A named lock belongs to the session, not the transaction, so it
        # survives the implicit commits of CREATE TABLE. The connection is
        # closed afterwards instead of pooled, which releases it. One name
        # per database; a name over 64 characters is refused, and a cut one
        # that two databases share only makes their setups take turns.
        cur.connection.discard = True
        lock = f"threadjobs_setup:{self.params['database']}"[:64]
        cur.execute("SELECT GET_LOCK(%s, %s)", (lock, SETUP_LOCK_WAIT_SECS))
        if cur.fetchone()[0] != 1:
            raise DatabaseError(
                f"mysql: another process has been creating the threadjobs "
                f"tables for {SETUP_LOCK_WAIT_SECS}s (lock {lock!r}); check "
                "for a stuck process and try again"
            )

    def schema_statements(self) -> list[str]:
        return _schema(self._collation)

    def insert_jobs(self, cur: Any, rows: Sequence[Sequence[Any]]) -> dict[str, int]:
        """One statement per row: MySQL has no INSERT ... RETURNING."""
        inserted = {}
        for row in rows:
            job_id = self._insert_job(cur, row)
            if job_id is not None:
                inserted[row[1]] = job_id
        return inserted

    def _insert_job(self, cur: Any, values: Sequence[Any]) -> Optional[int]:
        # On a duplicate dedup_key nothing changes and the insert id is 0; the
        # affected-row count would also depend on the CLIENT_FOUND_ROWS flag.
        self.execute(
            cur,
            "INSERT INTO threadjobs_jobs (name, dedup_key, params, ctx, shape, "
            "created_at, updated_at) VALUES (%s, %s, {json}, {json}, {json}, "
            "{now}, {now}) ON DUPLICATE KEY UPDATE id = id",
            values,
        )
        return int(cur.lastrowid) if cur.lastrowid else None

    def check_transaction_intact(self, conn: Any) -> None:
        if getattr(conn, "rolled_back_by_server", False):
            raise TransientDatabaseError(
                "MySQL rolled the step call's transaction back after a deadlock "
                "that the step caught; the step runs again"
            )

    def check_connection_type(self, conn: Any) -> None:
        if not isinstance(conn, pymysql.connections.Connection):
            raise ConfigurationError(
                "connection= must be a PyMySQL Connection for the MySQL "
                f"backend, got {type(conn).__name__}"
            )
        if issubclass(conn.cursorclass, pymysql.cursors.DictCursorMixin):
            raise ConfigurationError(
                "connection= makes dict cursors; threadjobs reads rows as "
                "tuples, so open it with the default cursorclass"
            )
        # In autocommit mode only BEGIN opens a transaction, and its OK
        # packet updates server_status, so the flag is exact here.
        status: int = conn.server_status  # type: ignore[attr-defined,unused-ignore]
        in_transaction = status & SERVER_STATUS.SERVER_STATUS_IN_TRANS
        if conn.get_autocommit() and not in_transaction:
            raise ConfigurationError(
                "connection= is in autocommit mode with no transaction open, "
                "so the job and its first step would commit separately; call "
                "connection.begin() first, or connect with autocommit=False"
            )


__all__ = ["ConnectionPool", "MysqlBackend", "PooledConnection", "connect_params"]
