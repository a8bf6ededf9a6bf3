"""A worker's credential leaves its environment before any cell runs: taken from a pipe (or the variable, then
scrubbed), and a process whose exec-time environment held it starts itself again without it."""

from __future__ import annotations

import os
import sys

from gpucell import settings
from gpucell.process import read_secret, secret_pipe
from gpucell.settings import ENV_WORKER_TOKEN

ENV_TOKEN_FD = settings.env_var("worker_token_fd")


def _exec_environ_holds(var: str) -> bool:
    """Whether /proc/self/environ (the environment this process was exec'd with, readable by its cells) has `var`."""
    try:
        with open("/proc/self/environ", "rb") as environ:
            return any(entry.startswith(var.encode() + b"=") for entry in environ.read().split(b"\0"))
    except OSError:
        return False


def take_worker_credential() -> str:
    """This worker's credential, gone from os.environ (and from /proc/self/environ) when this returns."""
    fd = settings.get("worker_token_fd")
    token = read_secret(fd) if fd >= 0 else settings.get("worker_token")
    os.environ.pop(ENV_WORKER_TOKEN, None)
    os.environ.pop(ENV_TOKEN_FD, None)
    if token and _exec_environ_holds(ENV_WORKER_TOKEN) and getattr(sys, "orig_argv", None):
        # Started by hand with the token in its environment: start again with it on a pipe instead, so that
        # /proc/self/environ, which user code can read, never shows it. Before any thread, so nothing is lost.
        env = dict(os.environ)
        env[ENV_TOKEN_FD] = str(secret_pipe(token))
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, sys.orig_argv, env)
    return token
