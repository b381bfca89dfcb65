"""A real PostgreSQL server on 127.0.0.1 for the tests that share an Optuna study between processes.

Debian's `postgresql` package (`.ci/run` installs it when missing): `initdb` makes a fresh cluster in a temporary
folder, `pg_ctl` starts `postgres` on a free loopback port (its unix socket in that folder, nothing else listens),
every local connection is trusted, and one database is made for the test. Leaving the block stops the server, and
removes its folder, however the test ended.

    with PostgresServer(tmp_path) as server:
        server.url                        # postgresql://distrinews@127.0.0.1:PORT/distrinews
        server.create_database("other")   # another database on the same server: its URL

Without the binaries a test is skipped with the command that installs them, except under CI (CI=true), where
`.ci/run` has installed them, so a missing server is a failure rather than a silent skip.

`postgres` refuses to run as root: as root (CI's container), the server runs as the unprivileged `postgres` user
the Debian package creates (`nobody` where there is none), through `runuser`, in a folder under the system's
temporary directory that user can reach (pytest's own temporary folders are private to root).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from conftest import free_port

USER = "distrinews"
DATABASE = "distrinews"
REQUIRED = ("initdb", "pg_ctl", "postgres", "createdb")
INSTALL_HINT = "apt-get install postgresql (Debian's server: initdb, pg_ctl and postgres)"


def skip_or_fail(reason: str):
    """Skip outside CI; under CI, where `.ci/run` installs PostgreSQL, fail with the same reason."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason} (CI installs it: .ci/run)", pytrace=False)
    pytest.skip(reason)


def find_bin_dir() -> Path | None:
    """The folder holding initdb, pg_ctl, postgres and createdb: the one `pg_ctl` on PATH lives in (links
    followed), else the newest /usr/lib/postgresql/<version>/bin."""
    candidates = []
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    versions = Path("/usr/lib/postgresql").glob("*/bin")
    candidates += sorted(versions, key=lambda path: _version_key(path.parent.name), reverse=True)
    for folder in candidates:
        if all(os.access(folder / name, os.X_OK) for name in REQUIRED):
            return folder
    return None


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def _server_account() -> pwd.struct_passwd | None:
    """The unprivileged account the server runs as when the tests run as root; None when they do not."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    skip_or_fail("the tests run as root, which postgres refuses, and there is no 'postgres' or 'nobody' user")


class PostgresServer:
    """A throwaway PostgreSQL server; see the module docstring."""

    def __init__(self, tmp_path: Path, start_timeout: float = 60):
        self.tmp_path = Path(tmp_path)
        self.start_timeout = start_timeout
        self.bin_dir: Path | None = None
        self.folder: Path | None = None
        self.port: int | None = None
        self.account: pwd.struct_passwd | None = None
        self.url = ""

    def __enter__(self) -> "PostgresServer":
        self.bin_dir = find_bin_dir()
        if self.bin_dir is None:
            skip_or_fail(f"no PostgreSQL server binaries on PATH or in /usr/lib/postgresql/*/bin: {INSTALL_HINT}")
        self.account = _server_account()
        # A short path in the system's temporary folder: a unix socket path must stay under ~100 characters,
        # and as root the server's own account must be able to reach it.
        self.folder = Path(tempfile.mkdtemp(prefix="distrinews-pg-"))
        try:
            self._start()
            self.url = self.create_database(DATABASE)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        if self.folder is None:
            return
        if (self.folder / "data" / "postmaster.pid").exists():
            self._run("pg_ctl", "stop", "-D", str(self.folder / "data"), "-m", "immediate", "-w", check=False)
        log = self.folder / "postgres.log"
        if log.is_file() and self.tmp_path.is_dir():  # kept for a failed test's reader: the folder itself goes
            shutil.copyfile(log, self.tmp_path / "postgres.log")
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder = None

    def create_database(self, name: str) -> str:
        """A new empty database on this server; its URL."""
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, name)
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{name}"

    def _start(self) -> None:
        if self.account is not None:
            os.chown(self.folder, self.account.pw_uid, self.account.pw_gid)
        data = self.folder / "data"
        self._run("initdb", "-D", str(data), "-U", USER, "--auth=trust", "--no-sync", "-E", "UTF8",
                  "--locale=C")
        for attempt in range(3):  # the free port may be taken between choosing it and binding it
            self.port = free_port()
            options = (f"-c listen_addresses=127.0.0.1 -c port={self.port} "
                       f"-c unix_socket_directories={self.folder} -c fsync=off -c full_page_writes=off")
            started = self._run("pg_ctl", "start", "-D", str(data), "-l", str(self.folder / "postgres.log"),
                                "-o", options, "-w", "-t", str(int(self.start_timeout)), check=False)
            if started.returncode == 0:
                return
        log = (self.folder / "postgres.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"PostgreSQL did not start (pg_ctl exit {started.returncode}):\n{started.stdout}"
                           f"{started.stderr}\n{log}")

    def _run(self, program: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        command = [str(self.bin_dir / program), *args]
        if self.account is not None:
            command = ["runuser", "-u", self.account.pw_name, "--", *command]
        result = subprocess.run(command, cwd=self.folder, capture_output=True, text=True,
                                timeout=self.start_timeout + 30)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}{result.stderr}")
        return result
