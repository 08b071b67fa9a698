"""Talking to one exec'd process: its attached socket, its output, its exit code.

docker-py's ``exec_start`` leaves the HTTP response (and so the socket) open, and gives a
60 s read timeout to a stream that may be quiet for minutes; these helpers start the exec
with the client's own session instead, and close what they open. Errors are raised as
Docker/transport errors; the caller translates them.
"""

from __future__ import annotations

import codecs
import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Any, cast

import docker
import requests
from docker.errors import create_api_error_from_http_exception
from docker.utils.socket import frames_iter as _untyped_frames_iter

from orchestrator.runtime.base import LineCallback
from orchestrator.runtime.docker_calls import Gone, call

STDOUT, STDERR = 1, 2
HELPER_DEADLINE = 30.0  # a helper (file write, counter read) that takes longer is broken
EXIT_CODE_DEADLINE = 5.0
MAX_LINE_CHARS = 16 * 1024**2
"""A longer stdout line is passed on in pieces of this size (not JSON: ignored)."""

frames_iter = cast(Callable[[Any, bool], Iterator[tuple[int, bytes]]], _untyped_frames_iter)


@contextmanager
def attached(api: docker.APIClient, exec_id: str) -> Iterator[Any]:
    """Start the exec and yield its attached (hijacked) socket; close it afterwards.

    No read timeout: ``kill`` of the container is what ends a run, and it ends the
    stream at once.
    """
    url = f"{api.base_url}/v{api.api_version}/exec/{exec_id}/start"
    response = api.post(
        url,
        data=json.dumps({"Detach": False, "Tty": False}),
        headers={"Content-Type": "application/json", "Connection": "Upgrade", "Upgrade": "tcp"},
        stream=True,
        timeout=None,
    )
    try:
        try:
            response.raise_for_status()
        except requests.HTTPError as exc:
            create_api_error_from_http_exception(exc)  # raises the matching docker error
        # The same path docker-py takes to the socket under the HTTP response.
        raw: Any = response.raw
        yield raw._fp.fp.raw
    finally:
        response.close()


def stream_output(
    api: docker.APIClient, exec_id: str, on_stdout_line: LineCallback, on_stderr: LineCallback,
    *, stdin: bytes | None = None, on_attached: Callable[[Any], None] | None = None,
) -> None:
    """Start the exec; stdout goes out line by line (no newline), stderr in chunks.
    ``on_attached`` gets the attached socket (so another thread can shut it).

    ``stdin`` is fed by a thread of its own while the output is read, so a process that
    answers as it reads (``cat``) cannot deadlock against a full socket buffer.
    """
    out_decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    err_decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending = ""
    with attached(api, exec_id) as sock:
        if on_attached is not None:
            on_attached(sock)
        if stdin is not None:
            threading.Thread(target=_feed, args=(sock, stdin), daemon=True,
                             name=f"exec-stdin-{exec_id[:8]}").start()
        for stream_id, data in frames_iter(sock, False):
            if stream_id == STDOUT:
                # Split only the new text: re-splitting a long pending line at every frame
                # is quadratic, and the container decides how long its lines are.
                text = out_decoder.decode(data)
                if "\n" not in text:
                    pending += text
                else:
                    first, *lines, rest = text.split("\n")
                    on_stdout_line(pending + first)
                    for line in lines:
                        on_stdout_line(line)
                    pending = rest
                if len(pending) > MAX_LINE_CHARS:  # an endless line must not fill memory
                    on_stdout_line(pending)
                    pending = ""
            elif stream_id == STDERR:
                on_stderr(err_decoder.decode(data))
    pending += out_decoder.decode(b"", final=True)
    if pending:
        on_stdout_line(pending)


def _feed(sock: Any, data: bytes) -> None:
    raw: socket.socket = getattr(sock, "_sock", sock)  # under the SocketIO of unix sockets
    try:
        raw.sendall(data)
        raw.shutdown(socket.SHUT_WR)  # EOF on the process's stdin
    except OSError:
        pass  # the process ended (or was killed) before reading it all: its exit tells


def collect(api: docker.APIClient, exec_id: str, stdin: bytes | None) -> tuple[bytes, str]:
    """Start a short helper exec, feed it ``stdin``, return (stdout, stderr) at its end."""
    received = bytearray()
    with attached(api, exec_id) as sock:
        raw: socket.socket = getattr(sock, "_sock", sock)
        raw.settimeout(HELPER_DEADLINE)
        if stdin is not None:
            raw.sendall(stdin)
            raw.shutdown(socket.SHUT_WR)  # EOF on the process's stdin
        deadline = time.monotonic() + HELPER_DEADLINE
        while chunk := raw.recv(65536):
            received += chunk
            if time.monotonic() > deadline:
                raise TimeoutError("a helper process in the container took too long")
    streams = demux(bytes(received))
    return streams.get(STDOUT, b""), streams.get(STDERR, b"").decode("utf-8", errors="replace")


def exit_code(api: docker.APIClient, exec_id: str) -> int | None:
    """The exec's exit code; None if the engine no longer knows the exec."""
    # The output stream can end a moment before the engine records the exit code.
    deadline = time.monotonic() + EXIT_CODE_DEADLINE
    while True:
        try:
            info = call("inspect exec", partial(api.exec_inspect, exec_id))
        except Gone:
            return None
        if not info.get("Running"):
            code = info.get("ExitCode")
            return int(code) if code is not None else None
        if time.monotonic() > deadline:
            return None
        time.sleep(0.01)


def demux(buffer: bytes) -> dict[int, bytes]:
    """Split the engine's multiplexed stream (8-byte frame headers) by stream number."""
    streams: dict[int, bytes] = {}
    offset = 0
    while offset + 8 <= len(buffer):
        stream, size = struct.unpack(">BxxxL", buffer[offset : offset + 8])
        streams[stream] = streams.get(stream, b"") + buffer[offset + 8 : offset + 8 + size]
        offset += 8 + size
    return streams
