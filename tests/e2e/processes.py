"""Real processes for tests: `edge emulate` (a virtual radio) and `edge run` (the daemon)."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

EDGE = [sys.executable, "-m", "edge"]
ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


class Emulator:
    """`edge emulate ...` in its own process; survives the gateway being killed."""

    def __init__(self, *args: str, cwd: Path) -> None:
        self.proc = subprocess.Popen(
            [*EDGE, "emulate", *args, "--hci", "tcp-server:127.0.0.1:0"],
            cwd=cwd,
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.port = self._wait_ready()

    def _wait_ready(self, timeout: float = 30.0) -> int:
        lines: queue.Queue[str] = queue.Queue()

        def pump() -> None:  # keeps draining stderr so the emulator never blocks on it
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                lines.put(line)

        threading.Thread(target=pump, daemon=True).start()
        seen = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            seen.append(line)
            if line.startswith("READY "):
                return int(line.split()[1])
        raise RuntimeError(f"emulator did not start: {''.join(seen)}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_daemon(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [*EDGE, "run", "--config", str(config)],
            cwd=config.parent,
            env=_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def count_lines(path: Path) -> int:
    if not path.exists():
        return 0
    with path.open("rb") as handle:
        return sum(1 for _ in handle)
