"""send_100mb_s[tcp] and send_100mb_s[tls]: what TLS on the data path costs, on the network path both times.

Each variant runs a broker of its own in this process (with tls_cert/tls_key for [tls]), a worker on the
local provisioner and a client session, with GPUCELL_SHM=0 so that values take the TCP data path a
worker on another host would use; the only difference between the two is TLS (docs/protocol.md).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from gpucell.broker.config import load_config
from gpucell.broker.server import BrokerThread
from gpucell.client import BrokerClient
from gpucell.client.session import CellOptions, Session
from gpucell.client.sink import Sink

POOL = "[pools.cpu]\nsimulate = true\nmax_workers = 1\nidle_timeout = 300\n"


def _certificate(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


def send_seconds(nbytes: int, repeats: int, tls: bool) -> list[float]:
    """Seconds for a warm %%gpu-equivalent cell that reads a fresh `nbytes` array, `repeats` times."""
    if tls and shutil.which("openssl") is None:
        raise RuntimeError("openssl is needed for the TLS variant")
    directory = Path(tempfile.mkdtemp(prefix="gpucell-bench-tls-"))
    previous = os.environ.get("GPUCELL_SHM")
    os.environ["GPUCELL_SHM"] = "0"   # the workers inherit it: TCP, as across hosts
    try:
        broker_lines = "[broker]\nhost = \"127.0.0.1\"\nport = 0\n"
        cert = None
        if tls:
            cert, key = _certificate(directory)
            broker_lines += f'tls_cert = "{cert}"\ntls_key = "{key}"\n'
        config_path = directory / "gpucell.toml"
        config_path.write_text(broker_lines + POOL)
        config = load_config(config_path)
        config.state_dir = str(directory / "state")
        broker = BrokerThread(config).start()
        client = BrokerClient(broker.address, broker.token, tls_ca=str(cert) if cert else None)
        session = Session(client)
        try:
            ns: dict[str, object] = {}
            session.run_cell("import numpy as np\n", ns, CellOptions(hardware="cpu"), Sink())
            base = np.ones(nbytes, dtype=np.uint8)   # touched once, before any timing
            out = []
            for i in range(repeats):
                base[0] = i   # new content: sent again, not found in the worker's cache
                ns["payload"] = base
                started = time.perf_counter()
                session.run_cell("n = int(payload.nbytes)\n", ns, CellOptions(hardware="cpu"), Sink())
                out.append(time.perf_counter() - started)
                if ns["n"] != nbytes:
                    raise RuntimeError(f"the worker saw {ns['n']} bytes, not {nbytes}")
            return out
        finally:
            session.close()
            client.close()
            broker.stop()
    finally:
        if previous is None:
            os.environ.pop("GPUCELL_SHM", None)
        else:
            os.environ["GPUCELL_SHM"] = previous
        shutil.rmtree(directory, ignore_errors=True)
