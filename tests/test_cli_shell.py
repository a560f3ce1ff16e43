"""``agent-manager shell`` in a real pseudo-terminal against a real server: raw mode, resize on
SIGWINCH, Ctrl-] to detach, reattach, and the remote exit code as its own."""

from __future__ import annotations

import fcntl
import os
import re
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

from conftest import LiveServer


class Pty:
    def __init__(self, *args: str, server: LiveServer) -> None:
        self.master, slave = os.openpty()
        self.resize(100, 30)
        env = {**os.environ, "AGENT_MANAGER_HOME": str(server.home)}
        self.proc = subprocess.Popen([sys.executable, "-m", "agent_manager", "--url", server.url, "shell", *args],
                                     stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True)
        os.close(slave)
        self.out = b""

    def resize(self, cols: int, rows: int) -> None:
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def expect(self, pattern: str, timeout: float = 20) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.out.decode(errors="replace"))
            if found:
                return found
            import select
            if select.select([self.master], [], [], 0.1)[0]:
                try:
                    self.out += os.read(self.master, 65536)
                except OSError:
                    break
        raise AssertionError(f"no {pattern!r}; got {self.out.decode(errors='replace')[-1500:]!r}")

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def wait(self) -> int:
        try:
            self.expect(r"\Z.^", timeout=0.5)  # drain
        except AssertionError:
            pass
        code = self.proc.wait(20)
        os.close(self.master)
        return code


def test_shell_detach_reattach_resize_exit(live_server: LiveServer, tmp_path: Path) -> None:
    first = Pty("--backend", "local", server=live_server)
    first.expect(r"Ctrl-\] detaches")
    first.send(b"echo cli-$((6*7)); stty size\r")
    first.expect(r"cli-42\r\n30 100")
    first.resize(120, 40)
    first.proc.send_signal(signal.SIGWINCH)
    for _ in range(20):  # the resize travels CLI → service → PTY while we ask
        first.send(b"stty size\r")
        try:
            first.expect(r"40 120", timeout=1)
            break
        except AssertionError:
            continue
    first.expect(r"40 120")
    first.send(b"sleep 30\r")
    time.sleep(0.3)
    first.send(b"\x03")  # raw mode: Ctrl-C goes to the remote job, not to the CLI
    first.send(b"echo still-here\r")
    first.expect(r"\rstill-here")
    first.send(b"\x1d")  # Ctrl-]
    match = first.expect(r"agent-manager shell --attach (term_\w+)")
    assert first.wait() == 0
    second = Pty("--attach", match.group(1), server=live_server)
    second.expect(r"still-here")  # scroll-back
    second.send(b"exit 7\r")
    assert second.wait() == 7
    gone = subprocess.run([sys.executable, "-m", "agent_manager", "--url", live_server.url, "shell", "--attach",
                           match.group(1)], env={**os.environ, "AGENT_MANAGER_HOME": str(live_server.home)},
                          capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert gone.returncode == 1 and "not found" in gone.stderr


def test_shell_with_piped_input(live_server: LiveServer) -> None:
    env = {**os.environ, "AGENT_MANAGER_HOME": str(live_server.home)}
    done = subprocess.run([sys.executable, "-m", "agent_manager", "--url", live_server.url, "shell", "--backend",
                           "sandbox"], input="echo piped-$((2*21)); id -u; exit 5\n", env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 5, done.stderr
    assert "piped-42" in done.stdout and "65534" in done.stdout
