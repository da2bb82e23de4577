"""A throwaway PostgreSQL cluster on 127.0.0.1 for the multi-host tests (Debian's postgresql binaries).

PostgreSQL refuses to run as root, so as root the cluster runs as the `postgres` user. If the server cannot be
installed or started, the tests that need it skip with the reason (never silently); `.ci/run` installs it.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests._support.processes import free_port


def _bindir() -> Path | None:
    found = shutil.which("initdb") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))), None)
    return Path(found).resolve().parent if found else None


@dataclass
class Postgres:
    bindir: Path
    root: Path
    port: int
    password: str
    user: str = "senet"

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, db: str, driver: str = "") -> str:
        """The database's URL; plain `postgresql://` (psycopg 3, as users type it) unless a driver is named."""
        scheme = f"postgresql+{driver}" if driver else "postgresql"
        return f"{scheme}://{self.user}:{self.password}@127.0.0.1:{self.port}/{db}"

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        env = {**os.environ, "PGPASSWORD": self.password}
        return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, check=False)

    def _ctl(self, action: str) -> None:
        opts = f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.root}"
        # A throwaway cluster: no flush to disk per commit (MLflow's schema migration commits hundreds of times).
        # A killed server still loses nothing it acknowledged; only a crash of the machine itself could.
        opts += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        out = self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-o", opts, "-w", action)
        if out.returncode != 0:
            raise RuntimeError(f"pg_ctl {action} failed: {out.stderr.strip() or out.stdout.strip()}")

    def start(self) -> None:
        self._ctl("start")

    def restart(self) -> None:
        self._ctl("restart")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "stop")

    def admin(self, sql: str) -> list[tuple]:
        """Run `sql` as the cluster's superuser, from the `postgres` database, outside any transaction."""
        import sqlalchemy as sa

        engine = sa.create_engine(self.url("postgres", "psycopg"), isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                result = conn.execute(sa.text(sql))
                return [tuple(r) for r in result] if result.returns_rows else []
        finally:
            engine.dispose()

    def terminate(self, db: str) -> int:
        """End every session on database `db` at once (as a server restart, a pooler or an idle timeout would, one
        database at a time); returns how many there were."""
        return len(self.admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'"))

    def createdb(self, name: str, driver: str = "") -> str:
        out = self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, name)
        if out.returncode != 0:
            raise RuntimeError(f"createdb failed: {out.stderr.strip()}")
        return self.url(name, driver)


def start_postgres() -> tuple[Postgres | None, str]:
    """A running cluster, or None and the reason it could not be had."""
    bindir = _bindir()
    if bindir is None:
        return None, "PostgreSQL is not installed (apt-get install postgresql; .ci/run does this)"
    try:
        import psycopg  # noqa: F401
        import psycopg2  # noqa: F401
    except ImportError:
        return None, "psycopg and psycopg2 are not installed (pip install -e '.[dev]')"
    root = Path(tempfile.mkdtemp(prefix="senet-pg-"))
    pg = Postgres(bindir, root, free_port(), secrets.token_hex(8))
    pwfile = root / "pw"
    pwfile.write_text(pg.password)
    if os.geteuid() == 0:
        uid = pwd.getpwnam("postgres").pw_uid
        os.chown(root, uid, -1)
        os.chown(pwfile, uid, -1)
    out = pg._run("initdb", "-D", str(pg.data), "-U", pg.user, f"--pwfile={pwfile}", "--auth-local=trust",
                  "--auth-host=scram-sha-256")  # fmt: skip
    if out.returncode != 0:
        return None, f"initdb failed: {out.stderr.strip()[:200]}"
    try:
        pg.start()
    except RuntimeError as err:
        return None, str(err)[:200]
    return pg, ""
