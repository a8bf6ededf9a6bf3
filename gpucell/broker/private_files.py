"""Files the broker writes are its own: directories 0700, files 0600, whatever the umask; job file names checked.

A broker's state (the journal, job notebooks and their output, worker logs) holds other people's code and
output; on a shared host the process umask (often 022) would leave all of it readable by every local user.
Modes are set at creation (os.open's mode, then fchmod, since the umask only ever removes bits) rather than
fixed afterwards, so there is no moment at which the file is open to others.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

DIR_MODE = 0o700
FILE_MODE = 0o600
_SEPARATORS = ("/", "\\", "\0")


def private_dir(path: str | os.PathLike[str]) -> Path:
    """`path` as a directory; each one created here (parents too) is 0700. An existing one is left as it is
    (it may be a directory the user chose and shares on purpose)."""
    directory = Path(path)
    missing: list[Path] = []
    while not directory.exists():
        missing.append(directory)
        if directory.parent == directory:
            break
        directory = directory.parent
    for created in reversed(missing):
        try:
            os.mkdir(created, DIR_MODE)
        except FileExistsError:
            continue   # made by another thread meanwhile: its maker sets its mode
        os.chmod(created, DIR_MODE)
    return Path(path)


def _open(path: str | os.PathLike[str], flags: int) -> int:
    fd = os.open(path, flags | os.O_CLOEXEC | os.O_NOFOLLOW, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_private(path: str | os.PathLike[str], data: bytes) -> None:
    private_dir(Path(path).parent)
    with os.fdopen(_open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "wb") as out:
        out.write(data)


def open_private_append(path: str | os.PathLike[str]) -> BinaryIO:
    """A log file to append to (a child process's stdout, say), 0600."""
    private_dir(Path(path).parent)
    return os.fdopen(_open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND), "ab")


def private_file(path: str | os.PathLike[str]) -> None:
    """Create `path` empty as 0600 if it is not there (before SQLite opens it: SQLite gives its -wal and -shm
    files the database's mode), and make it 0600 if it is."""
    private_dir(Path(path).parent)
    os.close(_open(path, os.O_RDWR | os.O_CREAT))


def job_file_name(notebook_name: str) -> str:
    """The file a job's notebook is written to: the last part of the name it was submitted under. A name
    that has no such part (".", "..", ending in a separator) or hides one ("a\\b") is refused."""
    if not notebook_name:
        return "notebook.ipynb"
    name = notebook_name.rsplit("/", 1)[-1]
    if name in ("", ".", "..") or any(sep in name for sep in _SEPARATORS):
        raise ValueError(f"the notebook name {notebook_name!r} does not end in a file name "
                         "(not '.', '..', nor a name with a separator)")
    return name
