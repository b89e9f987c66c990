"""The TLS context of every HTTP client in the process, built in a worker thread from the
moment the command line starts: loading the CA bundle takes about 0.1 s, which otherwise
every mount's start would wait for. OpenSSL parses the bundle without the GIL, so it runs
beside the imports. Any thread may call context()."""

from __future__ import annotations

import concurrent.futures
import os
import ssl
import threading

import certifi

_built: concurrent.futures.Future[ssl.SSLContext] = concurrent.futures.Future()
_started = threading.Lock()


def prewarm() -> None:
    """Start building the context, once per process."""
    if _started.acquire(blocking=False):
        threading.Thread(target=_build, name="osufs-tls", daemon=True).start()


def context() -> ssl.SSLContext:
    """The context httpx would make by default (SSL_CERT_FILE, SSL_CERT_DIR, else certifi)."""
    prewarm()
    return _built.result()


def _build() -> None:
    try:
        if cafile := os.environ.get("SSL_CERT_FILE"):
            built = ssl.create_default_context(cafile=cafile)
        elif capath := os.environ.get("SSL_CERT_DIR"):
            built = ssl.create_default_context(capath=capath)
        else:
            built = ssl.create_default_context(cafile=certifi.where())
    except BaseException as error:  # a bad SSL_CERT_FILE: raised where the context is wanted
        _built.set_exception(error)
    else:
        _built.set_result(built)
