"""TLS for the data path when the broker's port has it: a certificate per worker, pinned by its fingerprint.

With TLS configured (GPUCELL_TLS_CA), values over 1 MB must not cross the network in the clear. The
lane is simply off then (warm cells go through the broker's TLS port, see Started.lane_address), but
large values cannot go through gRPC messages of bounded size, so the data path stays and speaks TLS.

Whose certificate? Not one signed by the broker's CA: the broker holds a certificate, not its CA's key,
and a key handed to every worker would be readable by every cell. Each worker makes its own key and
self-signed certificate at start (openssl; the key never touches the disk past that moment) and
announces the certificate's SHA-256 in its data address (`;tls=FINGERPRINT`). That address reaches the
client only through the broker's authenticated TLS channel (`Transfer.address`, `Result.data_address`),
so a client that checks the fingerprint knows it talks to the worker the broker named, as a CA would
have told it, with nothing to distribute. Same-host shared memory (the abstract Unix socket) never
crosses a network and is unchanged.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import shutil
import socket
import ssl
import subprocess
import tempfile

from gpucell.errors import ConfigError


def fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def server_context() -> tuple[ssl.SSLContext, str]:
    """A TLS server context with a fresh self-signed certificate, and that certificate's fingerprint."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise ConfigError("TLS is configured (GPUCELL_TLS_CA) but this worker cannot make its data path's "
                          "certificate: openssl is not installed")
    with tempfile.TemporaryDirectory(prefix="gpucell-data-tls-") as directory:   # 0700
        key, cert = os.path.join(directory, "key.pem"), os.path.join(directory, "cert.pem")
        subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-days", "30", "-subj", "/CN=gpucell-worker", "-keyout", key, "-out", cert],
                       check=True, capture_output=True, timeout=30)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(cert, key)
        with open(cert) as f:
            der = ssl.PEM_cert_to_DER_cert(f.read())
    return context, fingerprint(der)


_CLIENT: ssl.SSLContext | None = None


def _client_context() -> ssl.SSLContext:
    global _CLIENT
    if _CLIENT is None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        # Trust comes from the pin below, not from a CA: the certificate is self-signed by design.
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        _CLIENT = context
    return _CLIENT


def client_wrap(sock: socket.socket, pin: str, address: str) -> ssl.SSLSocket:
    """`sock` under TLS, once the server's certificate is the one its address pins (else ConnectionError)."""
    tls = _client_context().wrap_socket(sock)
    der = tls.getpeercert(binary_form=True) or b""
    if not hmac.compare_digest(fingerprint(der), pin):
        tls.close()
        raise ConnectionError(f"the data server at {address} presented another certificate than its worker's")
    return tls
