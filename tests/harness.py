"""Real processes for the tests and the benchmarks: the sandbox, and the
servers a crawl talks to, each on a free loopback port.

The sandbox is started as users start it (``python -m tmapi_crawler.sandbox
--port 0``) and the URL line it prints is read, so there are no sleeps and no
port races.  Nothing here is used by a crawl, and nothing here is in the
package: ``scrapyd-deploy``'s egg holds no test servers.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Self

ROOT = Path(__file__).resolve().parent.parent
#: The token the sandbox is started with unless told otherwise.
TOKEN = "test-token-5f1c9e"


def terminate(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM, and SIGKILL if it is still there 10 s later; its pipes (if
    any) read to the end."""
    proc.terminate()
    try:
        proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()


def free_port() -> int:
    """A loopback port free now (a server given it may still lose a race:
    callers try again)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SandboxProcess:
    """``python -m tmapi_crawler.sandbox --port 0`` in a child process; *args*
    are its flags, *prefix* a command to run it under (``taskset -c 0``)."""

    def __init__(self, *args: str, token: str = TOKEN, prefix: Sequence[str] = ()):
        cmd = [*prefix, sys.executable, "-m", "tmapi_crawler.sandbox", "--port", "0", "--token", token, *args]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.startswith("http://"):
            self.proc.kill()
            _, err = self.proc.communicate()
            raise RuntimeError(f"the sandbox did not start: {line!r} {err}")
        self.url = line
        self.token = token

    def admin(self, action: str, method: str = "GET") -> dict[str, Any]:
        req = urllib.request.Request(f"{self.url}/__admin/{action}", method=method)
        with urllib.request.urlopen(req, timeout=10) as resp:
            doc: dict[str, Any] = json.load(resp)
            return doc

    def stats(self) -> dict[str, Any]:
        return self.admin("stats")

    def reset(self) -> None:
        self.admin("reset", "POST")

    def topup(self, calls: int) -> None:
        self.admin(f"topup?calls={calls}", "POST")

    def revise(self, share: float, delist: float = 0.0) -> dict[str, Any]:
        """Change *share* of the generated products' prices and stock, and
        delist a *delist* share of them (the catalog between two crawls)."""
        return self.admin(f"revise?share={share}&delist={delist}", "POST")

    def get(self, path: str, **params: Any) -> tuple[int, dict[str, Any]]:
        """A raw call: (HTTP status, parsed body)."""
        params.setdefault("apiToken", self.token)
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        return self._open(urllib.request.Request(f"{self.url}{path}?{query}"))

    def post(self, path: str, body: Any, token: str | None = None) -> tuple[int, dict[str, Any]]:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        req = urllib.request.Request(
            f"{self.url}{path}?apiToken={token or self.token}",
            data=data,
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        return self._open(req)

    @staticmethod
    def _open(req: urllib.request.Request) -> tuple[int, dict[str, Any]]:
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, json.load(resp)
        except urllib.error.HTTPError as err:
            return err.code, json.load(err)

    def stop(self) -> None:
        terminate(self.proc)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RedisServer:
    """A real ``redis-server`` on a free loopback port: in memory only, or,
    with *persist*, with its append-only file (fsynced at every write), so
    that it comes back with the same data after :meth:`kill` and
    :meth:`restart`."""

    def __init__(self, workdir: Path, *args: str, password: str | None = None, persist: bool = False):
        self.workdir = workdir
        self.args = args
        self.password = password
        self.persist = persist
        for _ in range(5):
            self.port = free_port()
            if self._start():
                return
        raise RuntimeError("redis-server did not start")

    def _start(self) -> bool:
        server = shutil.which("redis-server")
        if server is None:
            raise RuntimeError("redis-server is not installed: scripts/test installs it (apt-get install redis-server)")
        aof = ["--appendonly", "yes", "--appendfsync", "always"] if self.persist else ["--appendonly", "no"]
        cmd = [server, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", *aof]
        cmd += ["--dir", str(self.workdir), "--protected-mode", "yes", *self.args]
        if self.password:
            cmd += ["--requirepass", self.password]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # its log: wait for "Ready to accept connections"
            if "Ready to accept connections" in line:
                self.url = f"redis://{f':{self.password}@' if self.password else ''}127.0.0.1:{self.port}/0"
                self._drain = threading.Thread(target=self.proc.stdout.read, daemon=True)
                self._drain.start()
                return True
        self.proc.wait()  # the port was taken meanwhile: another one
        self.proc.stdout.close()
        return False

    def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer would."""
        self._end(self.proc.kill)

    def restart(self) -> None:
        """Start it again on the same port and directory (its data back
        from the append-only file when it keeps one)."""
        deadline = time.monotonic() + 30
        while not self._start():  # the port is still in TIME_WAIT: again
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start again on port {self.port}")
            time.sleep(0.2)

    def client(self) -> Any:
        import redis  # only where a test or benchmark talks to Redis

        return redis.Redis.from_url(self.url)

    def dump(self) -> dict[bytes, list[bytes]]:
        """Every key and the values it holds (hashes: their values)."""
        r = self.client()
        readers = {
            b"string": lambda k: [r.get(k)],
            b"hash": r.hvals,
            b"set": lambda k: list(r.smembers(k)),
            b"zset": lambda k: r.zrange(k, 0, -1),
            b"list": lambda k: r.lrange(k, 0, -1),
        }
        return {key: readers[r.type(key)](key) for key in r.scan_iter()}

    def stop(self) -> None:
        self._end(self.proc.terminate)

    def _end(self, signal: Callable[[], None]) -> None:
        """Send the server *signal* (terminate or kill) and wait for it to go."""
        signal()
        self.proc.wait(timeout=10)
        self._drain.join(timeout=10)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


class ScrapydServer:
    """A real scrapyd on a free loopback port, every directory of its own in
    *workdir*; *env* is its environment (where the token goes)."""

    def __init__(self, workdir: Path, env: dict[str, str]):
        workdir.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            self.port = free_port()
            conf = [
                "[scrapyd]",
                "bind_address = 127.0.0.1",
                f"http_port = {self.port}",
                "poll_interval = 0.2",
                "max_proc = 2",
            ]
            for name in ("eggs_dir", "logs_dir", "items_dir", "dbs_dir", "jobs_dir"):
                (workdir / name).mkdir(exist_ok=True)
                conf.append(f"{name} = {workdir / name}")
            (workdir / "scrapyd.conf").write_text("\n".join(conf) + "\n")
            self.workdir = workdir
            self.url = f"http://127.0.0.1:{self.port}/"
            scrapyd = Path(sys.executable).parent / "scrapyd"
            self.log = (workdir / "scrapyd.log").open("wb")
            self.proc = subprocess.Popen(
                [str(scrapyd)], cwd=workdir, env=env, stdout=self.log, stderr=subprocess.STDOUT
            )
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    if self.call("daemonstatus.json").get("status") == "ok":
                        return
                except OSError:
                    time.sleep(0.1)
            self.stop()  # the port was taken meanwhile, or it failed: again
        raise RuntimeError(f"scrapyd did not start: {(workdir / 'scrapyd.log').read_text()[-2000:]}")

    def call(self, endpoint: str, data: dict[str, str] | list[tuple[str, str]] | None = None) -> dict[str, Any]:
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        with urllib.request.urlopen(self.url + endpoint, data=body, timeout=10) as resp:
            doc: dict[str, Any] = json.load(resp)
            return doc

    def wait(self, project: str, job: str, timeout: float = 120) -> dict[str, Any]:
        """The job once it is finished."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for done in self.call(f"listjobs.json?project={project}").get("finished", []):
                if done["id"] == job:
                    return done
            time.sleep(0.2)
        raise TimeoutError(f"scrapyd job {job} did not finish in {timeout} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            terminate(self.proc)
        self.log.close()


def _postgres_bin(name: str) -> str:
    """A PostgreSQL server program: on PATH, or where Debian puts it."""
    found = shutil.which(name)
    if found:
        return found
    for version in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (version / name).exists():
            return str(version / name)
    raise RuntimeError(f"PostgreSQL's {name} is not installed: scripts/test installs it (apt-get install postgresql)")


class PostgresServer:
    """A throwaway PostgreSQL cluster: ``initdb`` and ``pg_ctl`` run as the
    ``postgres`` user (when run as root) in a temporary directory, listening
    on a free loopback port with password authentication; removed by
    :meth:`stop`.  ``url`` is a database ``tmapi`` owned by user ``tmapi``."""

    USER = "tmapi"
    PASSWORD = "catalog-pw-31d8"

    def __init__(self) -> None:
        import os
        import pwd
        import tempfile

        self.root = Path(tempfile.mkdtemp(prefix="tmapi-pg-"))
        self._as: list[str] = []
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        self.data = self.root / "data"
        pwfile = self.root / "pw"
        self._run(["sh", "-c", f"umask 077 && echo {self.PASSWORD} > {pwfile}"])
        initdb = [_postgres_bin("initdb"), "-D", str(self.data), "-U", "postgres", "--pwfile", str(pwfile)]
        self._run([*initdb, "--auth-host=scram-sha-256", "--auth-local=trust", "-E", "UTF8", "--locale=C.UTF-8"])
        for _ in range(5):
            self.port = free_port()
            if self.pg_ctl("start").returncode == 0:
                break
        else:
            raise RuntimeError(f"PostgreSQL did not start: {(self.root / 'log').read_text()[-2000:]}")
        self.psql(f"CREATE USER {self.USER} PASSWORD '{self.PASSWORD}'")
        self.psql(f"CREATE DATABASE {self.USER} OWNER {self.USER}")
        self.url = f"postgresql://{self.USER}:{self.PASSWORD}@127.0.0.1:{self.port}/{self.USER}"

    def pg_ctl(self, *action: str) -> subprocess.CompletedProcess[str]:
        """``pg_ctl`` on this cluster (``start``, ``stop -m fast``,
        ``restart -m fast``), waiting for it to be done."""
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        pg_ctl = [*self._as, _postgres_bin("pg_ctl"), "-D", str(self.data), "-o", options, "-w", "-t", "60"]
        return subprocess.run(
            [*pg_ctl, "-l", str(self.root / "log"), *action], capture_output=True, text=True, check=False
        )

    def _run(self, cmd: list[str]) -> str:
        done = subprocess.run([*self._as, *cmd], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{cmd[0]} failed: {done.stderr.strip()[-2000:]}")
        return done.stdout

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run *sql* as the superuser over the cluster's socket."""
        psql = _postgres_bin("psql")
        where = ["-h", str(self.root), "-p", str(self.port), "-U", "postgres", "-d", database]
        return self._run([psql, *where, "-v", "ON_ERROR_STOP=1", "-Atqc", sql])

    def database(self, name: str) -> str:
        """A new empty database owned by the test user: its URL."""
        self.psql(f"CREATE DATABASE {name} OWNER {self.USER}")
        return f"postgresql://{self.USER}:{self.PASSWORD}@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        subprocess.run(
            [*self._as, _postgres_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop"],
            capture_output=True,
            check=False,
        )
        shutil.rmtree(self.root, ignore_errors=True)
