"""Opening a gRPC channel to the broker the same way everywhere (client, worker): TLS when a CA is set."""

from __future__ import annotations

from typing import Any

import grpc

from gpucell import settings
from gpucell.settings import ENV_TLS_CA
from gpucell.errors import ConfigError


def open_channel(address: str, options: list[tuple[str, Any]], tls_ca: str | None = None) -> grpc.Channel:
    """TLS when a CA is given (argument or GPUCELL_TLS_CA), plaintext otherwise (loopback brokers)."""
    ca_path = tls_ca or settings.get("tls_ca")
    if not ca_path:
        return grpc.insecure_channel(address, options=options)
    try:
        with open(ca_path, "rb") as handle:
            root = handle.read()
    except OSError as exc:
        raise ConfigError(f"{ENV_TLS_CA}={ca_path!r}: {exc.strerror}") from None
    return grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=root), options=options)
