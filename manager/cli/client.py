"""A small synchronous client for the manager's REST API (stdlib ``http.client``).

Every request is signed with Backend.AI's keypair HMAC (``manager.hmac_auth.sign_request``). The signed
``Host`` is exactly the ``host[:port]`` written in the endpoint URL, and that same value is sent as the Host
header, so the verifier recomputes the same signature. The signed path includes the query string.

Content types: ``application/json`` for JSON bodies, ``text/plain`` when there is no body (even on GET, as the
official client does), ``multipart/form-data; boundary=...`` for uploads (the signature covers the bare
``multipart/form-data``). JSON bodies also carry ``X-Moorage-Content-SHA256``, which the signature covers in place
of the empty-body hash, so a captured request cannot be resent with another body.

Errors: a non-2xx answer raises :class:`APIError`. RFC 7807 bodies (``application/problem+json``) give its
message from ``detail``, else ``msg``, else ``title``. Connection failures raise :class:`CLIError`.
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from manager.cli.connection import CLIError, Connection
from manager.hmac_auth import sign_request

USER_AGENT = "moorage-cli/0.1"
DEFAULT_TIMEOUT = 60.0
UPLOAD_CHUNK_SIZE = 256 * 1024
_MAX_ERROR_TEXT = 500


class APIError(CLIError):
    """The manager answered with an error status."""

    def __init__(self, status: int, message: str, title: str | None = None, body: Any = None):
        super().__init__(message)
        self.status = status
        self.title = title
        self.body = body


@dataclass(frozen=True)
class UploadFile:
    """One file to upload: ``dest`` is the path relative to the folder root (``/``-separated)."""

    source: str
    dest: str
    size: int


def quote_segment(value: str) -> str:
    """Percent-encode one path segment (``/`` included)."""
    return quote(value, safe="")


class Client:
    def __init__(self, connection: Connection, timeout: float | None = None):
        self.connection = connection
        parts = urlsplit(connection.endpoint)
        self.scheme = parts.scheme
        # netloc without userinfo: exactly host[:port] as written in the URL (IPv6 keeps its brackets).
        self.host = parts.netloc.rsplit("@", 1)[-1]
        self.base_path = parts.path.rstrip("/")
        self.hostname = parts.hostname or ""
        self.port = parts.port
        if timeout is None:
            try:
                timeout = float(os.environ.get("MOORAGE_TIMEOUT", DEFAULT_TIMEOUT))
            except ValueError:
                timeout = DEFAULT_TIMEOUT
        self.timeout = timeout

    # -- plumbing -------------------------------------------------------------------------------------------

    def _connect(self) -> http.client.HTTPConnection:
        if self.scheme == "https":
            return http.client.HTTPSConnection(self.hostname, self.port, timeout=self.timeout,
                                               context=ssl.create_default_context())
        return http.client.HTTPConnection(self.hostname, self.port, timeout=self.timeout)

    def _path_qs(self, path: str, params: Mapping[str, Any] | None) -> str:
        path_qs = self.base_path + path
        if params:
            query = urlencode({k: v for k, v in params.items() if v is not None}, quote_via=quote)
            if query:
                path_qs += "?" + query
        return path_qs

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, Any] | None = None,
        body: bytes | Iterable[bytes] | None = None,
        content_type: str | None = None,
        content_length: int | None = None,
    ) -> Any:
        """Send a signed request; return the decoded JSON (or ``None`` for an empty body)."""
        method = method.upper()
        path_qs = self._path_qs(path, params)
        if json_body is not None:
            body = json.dumps(json_body).encode()
            content_type = "application/json"
        if content_type is None:
            content_type = "text/plain"
        # Buffered bodies (JSON) are bound to the signature (X-Moorage-Content-SHA256); streamed uploads are not.
        hashed = body if isinstance(body, bytes) and not content_type.startswith("multipart/") else None
        headers = sign_request(self.connection.access_key, self.connection.secret_key, method, path_qs,
                               self.host, content_type, body=hashed)
        headers["Host"] = self.host
        headers["Accept"] = "application/json, application/problem+json"
        headers["User-Agent"] = USER_AGENT
        if isinstance(body, bytes):
            headers["Content-Length"] = str(len(body))
        elif body is not None:
            if content_length is None:
                raise ValueError("a streamed body needs content_length")
            headers["Content-Length"] = str(content_length)
        elif method in ("POST", "PUT", "PATCH", "DELETE"):
            headers["Content-Length"] = "0"
        where = self.connection.endpoint
        conn = self._connect()
        try:
            try:
                conn.request(method, path_qs, body=body, headers=headers)
            except (BrokenPipeError, ConnectionResetError):
                # The server may answer (e.g. 401/413) and close before the whole body was sent.
                pass
            try:
                response = conn.getresponse()
                status = response.status
                raw = response.read()
                response_type = response.getheader("Content-Type", "")
            except http.client.RemoteDisconnected:
                raise CLIError(f"the manager at {where} closed the connection without answering") from None
        except ssl.SSLError as exc:
            raise CLIError(f"TLS error talking to {where}: {exc}") from None
        except TimeoutError:
            raise CLIError(f"timed out waiting for the manager at {where}") from None
        except ConnectionRefusedError:
            raise CLIError(f"cannot connect to the manager at {where} (connection refused); "
                           "is it running? (`moorage up`)") from None
        except (OSError, http.client.HTTPException) as exc:
            raise CLIError(f"cannot talk to the manager at {where}: {exc}") from None
        finally:
            conn.close()
        return self._decode(status, raw, response_type)

    @staticmethod
    def _decode(status: int, raw: bytes, content_type: str) -> Any:
        text = raw.decode("utf-8", errors="replace")
        data: Any = None
        if raw.strip():
            try:
                data = json.loads(text)
            except json.JSONDecodeError:
                data = None
        if 200 <= status < 300:
            if not raw.strip():
                return None
            if data is None:
                raise CLIError(f"the manager answered {status} with a non-JSON body: {text[:_MAX_ERROR_TEXT]}")
            return data
        if isinstance(data, dict):
            message = data.get("detail") or data.get("msg") or data.get("title") or data.get("error")
            if isinstance(message, dict):  # e.g. {"error": {"message": ...}}
                message = message.get("message") or json.dumps(message)
            title = data.get("title") if isinstance(data.get("title"), str) else None
            if not message:
                message = f"HTTP {status}"
            raise APIError(status, str(message), title, data)
        snippet = text.strip()[:_MAX_ERROR_TEXT]
        raise APIError(status, f"HTTP {status}" + (f": {snippet}" if snippet else ""), None, text)

    # -- verbs ----------------------------------------------------------------------------------------------

    def get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        return self.request("GET", path, params=params)

    def post(self, path: str, json_body: Any = None) -> Any:
        return self.request("POST", path, json_body=json_body)

    def delete(self, path: str) -> Any:
        return self.request("DELETE", path)

    def upload(self, path: str, files: list[UploadFile]) -> Any:
        """``multipart/form-data`` upload, streamed from disk: one part named ``file`` per file, whose
        filename is the destination path relative to the folder, percent-encoded (UTF-8)."""
        boundary = "moorage-" + uuid.uuid4().hex
        length = multipart_length(files, boundary)
        return self.request("POST", path, body=iter_multipart(files, boundary), content_length=length,
                            content_type=f"multipart/form-data; boundary={boundary}")


# -- multipart ------------------------------------------------------------------------------------------------


def _quote_filename(name: str) -> str:
    """Percent-encode (UTF-8) the destination path, as aiohttp's own client does; the manager unquotes it.
    This round-trips any name, including ones holding quotes, ``%``, newlines or non-ASCII characters."""
    return quote(name, safe="/")


def _part_header(item: UploadFile, boundary: str) -> bytes:
    return (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{_quote_filename(item.dest)}"\r\n'
        "Content-Type: application/octet-stream\r\n"
        "\r\n"
    ).encode()


def _closing(boundary: str) -> bytes:
    return f"--{boundary}--\r\n".encode()


def multipart_length(files: list[UploadFile], boundary: str) -> int:
    return sum(len(_part_header(f, boundary)) + f.size + 2 for f in files) + len(_closing(boundary))


def iter_multipart(files: list[UploadFile], boundary: str,
                   chunk_size: int = UPLOAD_CHUNK_SIZE) -> Iterator[bytes]:
    """Yield the multipart body piece by piece; never more than ``chunk_size`` bytes of a file at once.

    Each file sends exactly the size measured when the upload was planned (so Content-Length holds); a file
    that shrank meanwhile is an error.
    """
    for item in files:
        yield _part_header(item, boundary)
        remaining = item.size
        try:
            handle = open(item.source, "rb")  # noqa: SIM115 - closed by the with block just below
        except OSError as exc:
            raise CLIError(f"cannot read {item.source}: {exc.strerror or exc}") from None
        with handle:
            while remaining > 0:
                chunk = handle.read(min(chunk_size, remaining))
                if not chunk:
                    raise CLIError(f"{item.source} changed while it was being uploaded")
                remaining -= len(chunk)
                yield chunk
        yield b"\r\n"
    yield _closing(boundary)
