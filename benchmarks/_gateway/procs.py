"""Starting, watching and stopping the benchmark's servers (each in its own process group)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    port: int
    started: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 8) -> str:
        try:
            text = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " / ".join(line.strip() for line in text[-lines:])


class Servers:
    """Every process started, so that all of them are stopped whatever happens."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.servers: list[Server] = []

    def start(self, name: str, cmd: list[str], port: int, env: dict[str, str] | None = None) -> Server:
        log = self.workdir / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.workdir,
                start_new_session=True,  # its own process group: stop() kills it and its children
            )
        server = Server(name, proc, log, port)
        self.servers.append(server)
        return server

    def stop(self, server: Server, grace_s: float = 10.0) -> None:
        if server.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                server.proc.wait(timeout=grace_s)
        # children that outlived their leader are in the same group
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(server.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.proc.wait(timeout=5)
        if server in self.servers:
            self.servers.remove(server)

    def stop_all(self) -> None:
        for server in list(reversed(self.servers)):
            self.stop(server)


def wait_listening(server: Server, timeout_s: float) -> str:
    """``""`` once the port accepts connections, else why not (the process died, or the time ran out)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not server.alive():
            return f"{server.name} exited with code {server.proc.returncode}: {server.log_tail()}"
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", server.port)) == 0:
                return ""
        time.sleep(0.2)
    return f"{server.name} was not listening on port {server.port} after {timeout_s:.0f} s: {server.log_tail()}"


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def rss_mb(pid: int) -> float:
    """VmRSS of ``pid`` and all its descendants, in MiB (0 when it is gone)."""
    tree = _children()
    todo, total_kb = [pid], 0
    while todo:
        p = todo.pop()
        todo.extend(tree.get(p, []))
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
                    break
        except OSError:
            continue
    return total_kb / 1024
