"""Who may talk to whom: TLS on the gateway-cloud link, a bearer token the cloud requires, API
keys the gateway may require of end devices.

- TLS: the cloud serves HTTPS from ``tls_cert_file``/``tls_key_file`` (and, with
  ``tls_client_ca_file``, accepts only clients whose certificate that CA signed: mutual TLS);
  the gateway reaches an ``https://`` ``cloud_url`` verifying the cloud's certificate against
  ``cloud_ca_file`` (else the system's trust store), its host name included, and presents
  ``cloud_client_cert_file``/``cloud_client_key_file`` when the cloud asks for one. Contexts are
  the standard library's :mod:`ssl`, through aiohttp's ``ssl`` arguments.
- Tokens: a server with tokens answers every request but ``GET /health`` and ``GET /ready``
  (what orchestrators probe; they translate nothing) with **401** and ``WWW-Authenticate:
  Bearer`` unless it carries ``Authorization: Bearer <one of them>``, compared in constant time.
  The cloud's token is one secret shared with its gateways (``token_file``/``token_env``), which
  send it (``cloud_token_file``/``cloud_token_env``); a gateway's ``api_keys_file`` (one key a
  line) or ``api_keys_env`` (comma-separated) are the end devices' keys.
- Secrets come from a file or an environment variable named in the config, never from the YAML
  itself, and appear in no log line, error, ``/v1/models`` or ``/metrics``: they are read by
  :func:`read_secret` at start and kept only here.
- A server asked to listen on an address other than loopback without a token or API keys refuses
  to start (the config validation fails), unless ``allow_unauthenticated: true`` says that
  someone else (a firewall, a private network) keeps strangers out
  (:func:`cnmt.serving.settings.check_exposure`).
"""

from __future__ import annotations

import hmac
import os
import ssl
from collections.abc import Collection
from pathlib import Path
from typing import Any

from aiohttp import web

from cnmt.errors import ConfigError
from cnmt.serving.protocol import Handler, json_response

# Paths a probe may read without credentials: they translate nothing and say only "alive".
OPEN_PATHS = frozenset({"/health", "/ready"})
# A secret file is a token or a few keys, not a document.
MAX_SECRET_BYTES = 64 * 1024


def read_secret(file: str | None, env: str | None, what: str) -> str | None:
    """The secret in ``file`` (surrounding whitespace removed) or in environment variable
    ``env``; None when neither is set; ConfigError naming the file or variable (never the
    secret) when it is missing or empty."""
    if file is not None:
        path = Path(file)
        try:
            data = path.read_bytes()[: MAX_SECRET_BYTES + 1]
        except OSError as exc:
            raise ConfigError(f"{what}: cannot read {path}: {exc.strerror or exc}") from None
        if len(data) > MAX_SECRET_BYTES:
            raise ConfigError(f"{what}: {path} is larger than {MAX_SECRET_BYTES} bytes")
        try:
            value = data.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise ConfigError(f"{what}: {path} is not UTF-8 text") from None
        if not value:
            raise ConfigError(f"{what}: {path} is empty; write the secret into it")
        return value
    if env is not None:
        value = os.environ.get(env, "").strip()
        if not value:
            raise ConfigError(f"{what}: the environment variable {env} is not set or empty")
        return value
    return None


def read_keys(file: str | None, env: str | None, what: str) -> frozenset[str]:
    """Several secrets: one a line in ``file`` (``#`` comments and blank lines skipped) or
    comma-separated in ``env``."""
    raw = read_secret(file, env, what)
    if raw is None:
        return frozenset()
    if file is not None:
        items = [line.strip() for line in raw.splitlines()]
        keys = frozenset(item for item in items if item and not item.startswith("#"))
    else:
        keys = frozenset(item.strip() for item in raw.split(",") if item.strip())
    if not keys:
        raise ConfigError(f"{what}: no key in it")
    return keys


def authorized(header: str | None, tokens: Collection[str]) -> bool:
    if header is None or not header.startswith("Bearer "):
        return False
    offered = header[len("Bearer ") :].strip().encode("utf-8")
    # Every token compared, in constant time: neither which nor how much matched leaks.
    matched = False
    for token in tokens:
        matched |= hmac.compare_digest(offered, token.encode("utf-8"))
    return matched


def bearer_auth(tokens: Collection[str], realm: str) -> Any:
    """An aiohttp middleware answering 401 to a request without one of ``tokens``."""
    accepted = frozenset(tokens)

    @web.middleware
    async def require_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS or authorized(request.headers.get("Authorization"), accepted):
            return await handler(request)
        return json_response(
            {
                "error": f"missing or wrong credentials; send `Authorization: Bearer <token>` "
                f"with a token {realm} accepts"
            },
            status=401,
            headers={"WWW-Authenticate": f'Bearer realm="{realm}"'},
        )

    return require_token


def server_ssl_context(
    cert_file: str, key_file: str, client_ca_file: str | None = None
) -> ssl.SSLContext:
    """TLS for a server; with ``client_ca_file`` only clients with a certificate it signed."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert_file, key_file)
        if client_ca_file is not None:
            context.load_verify_locations(client_ca_file)
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cloud TLS: cannot load the certificate or key: {exc}") from None
    return context


def client_ssl_context(
    ca_file: str | None, cert_file: str | None = None, key_file: str | None = None
) -> ssl.SSLContext:
    """TLS for the gateway's client: the cloud verified (host name included) against
    ``ca_file`` or the system's trust store; a client certificate when given."""
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
        if cert_file is not None:
            context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"gateway TLS: cannot load a CA or client certificate: {exc}") from None
    return context
