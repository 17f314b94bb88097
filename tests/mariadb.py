"""A real MariaDB server for the tests: Debian's `mariadb-server`, started once per session and stopped after.

The server gets a throw-away data folder, a private socket inside it and a free loopback port, and runs as the
current user (`--user=root` when that is root, as in CI); root logs in without a password. The tests that use it
are skipped, with the reason shown, only when no server binary is installed (`.ci/run` installs it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ports import free_port
from tests.processes import stop

DATABASE = "buildsys_test"


def _binary(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name) or next(
            (str(p) for p in (Path("/usr/sbin") / name, Path("/usr/bin") / name) if p.exists()), None
        )
        if found:
            return found
    return None


@pytest.fixture(scope="session")
def mariadb_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An SQLAlchemy URL (PyMySQL) of an empty database on a private MariaDB server."""
    server = _binary("mariadbd", "mysqld")
    install = _binary("mariadb-install-db", "mysql_install_db")
    if server is None or install is None:
        pytest.skip("MariaDB is not installed (apt-get install mariadb-server; .ci/run does this)")
    folder = tmp_path_factory.mktemp("mariadb")
    datadir, as_root = folder / "data", (["--user=root"] if os.geteuid() == 0 else [])
    subprocess.run(
        [install, "--no-defaults", f"--datadir={datadir}", "--auth-root-authentication-method=normal",
         "--skip-test-db", *as_root],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    port = free_port()
    process = subprocess.Popen(
        [server, "--no-defaults", f"--datadir={datadir}", f"--socket={folder / 'mysqld.sock'}",
         "--bind-address=127.0.0.1", f"--port={port}", f"--pid-file={folder / 'mysqld.pid'}",
         f"--log-error={folder / 'error.log'}", "--innodb-buffer-pool-size=64M", *as_root],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait_and_create(port, process, folder / "error.log")
        yield f"mysql+pymysql://root@127.0.0.1:{port}/{DATABASE}"
    finally:
        stop(process, timeout_s=30)


def _wait_and_create(port: int, process: subprocess.Popen, log: Path) -> None:
    import pymysql

    deadline = time.monotonic() + 60
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"mariadbd exited with {process.returncode}: {log.read_text()[-2000:]}")
        try:
            connection = pymysql.connect(host="127.0.0.1", port=port, user="root", connect_timeout=2)
            break
        except pymysql.err.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    with connection:
        connection.cursor().execute(f"CREATE DATABASE {DATABASE}")


@pytest.fixture
def mariadb(mariadb_url: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh, empty database on the session's server, dropped after the test."""
    import sqlalchemy

    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name)[:50].lower()
    server = sqlalchemy.create_engine(mariadb_url)
    with server.begin() as connection:
        connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
        connection.exec_driver_sql(f"CREATE DATABASE {name}")
    yield mariadb_url.rsplit("/", 1)[0] + f"/{name}"
    with server.begin() as connection:
        connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
    server.dispose()
