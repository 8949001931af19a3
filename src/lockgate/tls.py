"""TLS for the listeners and for lockgate's own HTTP clients (the CLI's and the retrain worker's
calls to the admin API and /metrics)."""

from __future__ import annotations

import ssl
import urllib.request
from pathlib import Path

from lockgate.config import TLSConfig
from lockgate.errors import invalid


def tls_config(cert: str | None, key: str | None, client_ca: str | None) -> TLSConfig | None:
    """The listeners' TLS from the serve flags, with every file checked now: a bad file is a
    clear error at start, not a failed handshake later."""
    if not cert and not key:
        if client_ca:
            raise invalid("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if not cert or not key:
        raise invalid("TLS needs both --tls-cert and --tls-key")
    config = TLSConfig(Path(cert), Path(key), Path(client_ca) if client_ca else None)
    server_context(config)
    return config


def server_context(config: TLSConfig) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(config.cert, config.key)
        if config.client_ca is not None:
            context.load_verify_locations(cafile=config.client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise invalid(f"cannot use the TLS files: {exc}") from None
    return context


def client_context(
    ca: str | None, cert: str | None = None, key: str | None = None
) -> ssl.SSLContext:
    """What lockgate's clients trust (`ca`, else the system's store) and, for mutual TLS, the
    certificate they present."""
    try:
        context = ssl.create_default_context(cafile=ca)
        if cert:
            context.load_cert_chain(cert, key or None)
    except (OSError, ssl.SSLError) as exc:
        raise invalid(f"cannot use the client TLS files: {exc}") from None
    return context


def install_client_tls(context: ssl.SSLContext) -> None:
    """Make every urllib call of this process (admin client, metrics scrapes) use `context`."""
    urllib.request.install_opener(
        urllib.request.build_opener(urllib.request.HTTPSHandler(context=context))
    )
