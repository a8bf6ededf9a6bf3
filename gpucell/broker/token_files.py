"""Token files (users_file, worker_tokens_file): TOML `[NAME]` tables holding only a token's SHA-256, re-read on change.

`gpucell user add NAME [--admin] --file PATH` and `gpucell worker-token add ID --file PATH` write them (0600) and
print the token once; the broker never stores a token, only its digest, and compares digests with compare_digest.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from gpucell.errors import ConfigError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def digest(token: str) -> str:
    """The hex SHA-256 a token file stores for `token`."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Entry:
    name: str
    token_sha256: str
    admin: bool = False


def parse(text: str, where: str) -> dict[str, Entry]:
    """The entries of a token file; ConfigError naming the file and the entry when one is malformed."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    entries: dict[str, Entry] = {}
    for name, table in doc.items():
        sha = table.get("token_sha256") if isinstance(table, dict) else None
        if not NAME.match(name) or not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha.lower()):
            raise ConfigError(f"{where}: [{name}] needs a name of letters, digits, _.- and a hex token_sha256")
        entries[name] = Entry(name, sha.lower(), bool(table.get("admin", False)))
    return entries


class TokenFile:
    """One token file, re-read whenever its size or mtime changes (adding or revoking needs no restart)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._stamp: tuple[int, int, int] | None = None
        self.entries: dict[str, Entry] = {}
        self.refresh()

    def refresh(self) -> None:
        try:
            st = os.stat(self.path)
        except OSError as exc:
            if self._stamp is None:
                raise ConfigError(f"token file {self.path}: {exc.strerror}") from None
            self.entries, self._stamp = {}, (0, 0, 0)   # removed: nobody gets in by it any more
            return
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp == self._stamp:
            return
        try:
            self.entries = parse(Path(self.path).read_text(), self.path)
        except ConfigError:
            if self._stamp is None:
                raise
            self.entries = {}   # a half-written file lets nobody in until it parses again
        self._stamp = stamp

    def find(self, token: str) -> Entry | None:
        """The entry whose digest is the token's (every entry compared, in constant time each)."""
        self.refresh()
        wanted = digest(token)
        found = None
        for entry in self.entries.values():
            if hmac.compare_digest(entry.token_sha256, wanted):
                found = entry
        return found


def add_entry(path: str, name: str, admin: bool | None) -> str:
    """Generate a token for `name`, write its entry (replacing an old one) with mode 0600, and return the token."""
    if not NAME.match(name):
        raise ConfigError(f"{name!r}: a name is letters, digits and _.- (at most 64)")
    file = Path(path)
    entries = parse(file.read_text(), path) if file.exists() else {}
    token = secrets.token_urlsafe(32)
    entries[name] = Entry(name, digest(token), bool(admin))
    lines = []
    for entry in entries.values():
        lines.append(f"[{entry.name}]\ntoken_sha256 = \"{entry.token_sha256}\"")
        if admin is not None:
            lines.append(f"admin = {'true' if entry.admin else 'false'}")
        lines.append("")
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_name(f".{file.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("\n".join(lines))
    os.chmod(tmp, 0o600)
    os.replace(tmp, file)   # the broker sees the old file or the new one, never half of it
    return token
