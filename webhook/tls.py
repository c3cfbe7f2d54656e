"""A server TLS context whose certificate follows the files on disk, without a restart.

The listening socket keeps one SSLContext for its whole life. Its SNI callback, which OpenSSL
calls for every handshake (with or without a server name), switches the connection to the most
recently loaded context. A watcher thread builds each new context completely (certificate and key
both loaded and matching) before publishing it with a single assignment, so a handshake sees
either the old pair or the new pair, never a half-written mix; files caught mid-write are retried
on the next tick.
"""

from __future__ import annotations

import logging
import ssl
import threading
from pathlib import Path

log = logging.getLogger(__name__)

FileStamp = tuple[tuple[int, int, int, int], ...]


def load_server_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    context.set_alpn_protocols(["http/1.1"])
    return context


class ReloadingTLS:
    def __init__(self, cert_file: Path, key_file: Path, interval: float = 1.0) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self.interval = interval
        self._stamp = self._file_stamp()
        self._current = load_server_context(cert_file, key_file)
        self._failed_stamp: FileStamp | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.server_context = load_server_context(cert_file, key_file)
        self.server_context.sni_callback = self._select_current

    @property
    def current(self) -> ssl.SSLContext:
        return self._current

    def _select_current(
        self, connection: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext
    ) -> None:
        connection.context = self._current

    def _file_stamp(self) -> FileStamp:
        stamps = []
        for path in (self.cert_file, self.key_file):
            # stat() follows symlinks, so the `..data` swap of a mounted Secret is seen too.
            info = path.stat()
            stamps.append((info.st_dev, info.st_ino, info.st_mtime_ns, info.st_size))
        return tuple(stamps)

    def reload_if_changed(self) -> bool:
        """Load the files if they changed since the last load; True when a new pair is served."""
        try:
            stamp = self._file_stamp()
        except OSError as error:
            log.warning("cannot stat certificate files: %s", error)
            return False
        if stamp == self._stamp:
            return False
        try:
            context = load_server_context(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as error:
            if stamp != self._failed_stamp:
                log.warning("certificate files changed but do not load yet (%s); retrying", error)
                self._failed_stamp = stamp
            return False
        self._current = context
        self._stamp = stamp
        log.info("serving the reloaded certificate from %s", self.cert_file)
        return True

    def start(self) -> None:
        self._thread = threading.Thread(target=self._watch, name="cert-reload", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            self.reload_if_changed()
