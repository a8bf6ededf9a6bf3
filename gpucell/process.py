"""Process lifetimes on Linux: die with a parent, and own every process a cell starts (its session).

A worker leads its own session (the provisioners start it with setsid), so whatever user code starts there —
`multiprocessing` pools, DataLoader workers, `subprocess`, `!cmd`, and their orphans — stays a member
unless it calls setsid itself. The worker interrupts its members as a local kernel's interrupt would (a
kernel's process group gets the SIGINT), ends them when it stops, and a small guardian ends them when the
worker is killed outright (SIGKILL from a provisioner, or the kernel and broker dying before it).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import time

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """Linux: SIGKILL this process when the thread that started it exits, so no child is orphaned."""
    if _on_parent_death(signal.SIGKILL) and os.getppid() != parent_pid:
        os._exit(1)  # the parent died before prctl took effect


def _on_parent_death(sig: int) -> bool:
    """Ask Linux for `sig` when our parent (the thread that forked us) exits; False where that is not possible."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, sig) == 0
    except OSError:
        return False


class Members:
    """The processes this one owns: its session (or, where it cannot lead one, its process group)."""

    def __init__(self) -> None:
        self.leader = os.getpid()
        if os.getsid(0) != self.leader:
            with contextlib.suppress(OSError):
                os.setsid()  # fails for a process-group leader (a shell's job): then the group is ours
        self.field = 5 if os.getsid(0) == self.leader else 4 if os.getpgrp() == self.leader else 0
        self.spared: set[int] = set()   # the guardian: a member that must outlive the rest

    @property
    def owned(self) -> bool:
        return self.field != 0

    def pids(self) -> list[int]:
        """Live members, this process and the spared ones excepted."""
        if not self.owned:
            return []
        found = []
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            if pid == os.getpid() or pid in self.spared:
                continue
            try:
                with open(f"/proc/{pid}/stat", "rb") as stat:
                    # pid (comm) state ppid pgrp session ...; comm may hold spaces and parentheses
                    fields = stat.read().rsplit(b")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[0] != b"Z" and int(fields[self.field - 2]) == self.leader:
                found.append(pid)
        return found

    def signal(self, sig: int) -> list[int]:
        """Send `sig` to every member; returns the pids it reached."""
        reached = []
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
                reached.append(pid)
        return reached

    def end(self, grace_s: float = 1.0) -> None:
        """SIGTERM every member, then SIGKILL what is left after the grace; children of ours are reaped."""
        if not self.signal(signal.SIGTERM):
            return
        deadline = time.monotonic() + grace_s
        while self.pids() and time.monotonic() < deadline:
            _reap_children()
            time.sleep(0.02)  # polling exits with a deadline; members have no other way to tell us
        for _ in range(20):  # a member may fork while being killed: until none is left
            if not self.signal(signal.SIGKILL):
                break
            _reap_children()

    def guard(self) -> int:
        """Fork a guardian that ends every member once this process is gone, however it went (SIGKILL too).

        Call it before any thread starts. The guardian learns of our death through PR_SET_PDEATHSIG, not a
        pipe: a forked member (a multiprocessing child) would hold a pipe's end open after we died.
        """
        if not self.owned:
            return 0
        leader = os.getpid()
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
        pid = os.fork()
        if pid:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})
            self.spared.add(pid)
            return pid
        code = 0
        try:
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_IGN)   # what the members get is not for the guardian
            os.setpgid(0, 0)
            os.closerange(3, 1 << 16)
            if not _on_parent_death(signal.SIGUSR1):
                return 0  # not Linux: no way to learn of the death; the finally below exits
            if os.getppid() == leader:  # else the leader died before prctl took effect
                signal.sigwait({signal.SIGUSR1})
            self.spared = set()
            self.end()
        except BaseException:  # noqa: BLE001 - nothing to report to: the leader is gone
            code = 1
        finally:
            os._exit(code)


def _reap_children() -> None:
    """Collect exited direct children that nobody else will wait for (we are stopping)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def secret_pipe(secret: str) -> int:
    """An inheritable pipe end that holds `secret`: a child reads it from this fd, never from its environment
    (which /proc/PID/environ shows to the code the child runs). Close it here once the child has started."""
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, secret.encode())
    finally:
        os.close(write_end)
    os.set_inheritable(read_end, True)
    return read_end


def read_secret(fd: int) -> str:
    """What secret_pipe put in the pipe `fd` (closed after reading)."""
    chunks = []
    try:
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks).decode()
