"""Secrets out of the session transcripts claude leaves on the agent's volume (issue 7).

claude records every tool result in ``projects/<cwd>/<session>.jsonl`` (and, for sub-agents
and large outputs, files under ``projects/<cwd>/<session>/``), so a secret the agent printed
stays on the host's disk after the result and the log were redacted. After each run the
files of *its* session are rewritten with every form of every secret replaced
(:mod:`orchestrator.redaction`); other sessions may belong to runs still writing them.

The host never reads the volume. The rewrite runs inside a container, as the run's own
uid: in the run's container when it still runs (a normal end), else in a throwaway
container that mounts only the volume, with no network. The script walks the volume by
directory descriptors opened ``O_NOFOLLOW`` and skips symlinks, so a link planted in the
volume cannot make it touch a file outside it (say, the project's ``.env``); it rewrites
files in place, never creating one.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Mapping

import anyio
import anyio.to_thread

from orchestrator.errors import AdSandboxError
from orchestrator.redaction import redactor
from orchestrator.run.sandbox import (
    LABEL_LEASE,
    LABEL_OWNER,
    LABEL_RUN,
    SESSIONS_DIR,
    Owner,
    scope_labels,
    volume_name,
)
from orchestrator.runtime.base import ContainerSpec, Mount, Runtime

log = logging.getLogger(__name__)

SCRUB_DEADLINE_S = 60.0
MAX_FILE_BYTES = 64 * 1024 * 1024
"""A larger file is left as it is (and counted as skipped): the rewrite holds it in memory."""

SCRUB_SCRIPT = r"""
import json, os, re, stat, sys

job = json.load(sys.stdin)
session, limit = job["session"], job["limit"]
names = dict(job["pairs"])
pattern = re.compile("|".join(re.escape(form) for form, _ in job["pairs"]))
DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
counts = {"files": 0, "rewritten": 0, "skipped": 0}


def scrub(parent, name):
    fd = os.open(name, FILE, dir_fd=parent)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return
        if info.st_size > limit:
            counts["skipped"] += 1
            return
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        text = b"".join(chunks).decode("utf-8", "surrogateescape")
        counts["files"] += 1
        clean = pattern.sub(lambda match: names[match.group(0)], text)
        if clean == text:
            return
        data = clean.encode("utf-8", "surrogateescape")
        os.lseek(fd, 0, os.SEEK_SET)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.ftruncate(fd, len(data))
        counts["rewritten"] += 1
    finally:
        os.close(fd)


def walk(fd, depth, inside):
    for entry in os.scandir(fd):
        if entry.is_symlink():
            continue
        ours = inside or session in entry.name
        try:
            if entry.is_dir(follow_symlinks=False):
                if depth < 32:
                    sub = os.open(entry.name, DIR, dir_fd=fd)
                    try:
                        walk(sub, depth + 1, ours)
                    finally:
                        os.close(sub)
            elif ours and entry.is_file(follow_symlinks=False):
                scrub(fd, entry.name)
        except OSError:
            counts["skipped"] += 1


top = os.open(job["root"], DIR)
walk(top, 0, False)
print(json.dumps(counts))
"""
"""Run as ``python3 -I -c SCRIPT`` (isolated: no environment, no script directory on the
path); the job (root, session id, ``[form, marker]`` pairs, size limit) comes on stdin, so
no secret is ever in an argv or environment."""


async def scrub_session(
    runtime: Runtime,
    *,
    container_id: str | None,
    scope: str,
    agent_name: str,
    image: str,
    owner: Owner,
    session_id: str | None,
    secrets: Mapping[str, bytes],
    helper_allowed: bool = True,
) -> bool:
    """Rewrite the files of ``session_id`` on the agent's volume without any secret form.

    Uses ``container_id`` while it runs, else (with ``helper_allowed``) a throwaway
    container. False when that was not allowed, so the caller tries again later. Never
    raises: a failure is logged (the run's result does not depend on it).
    """
    pairs = redactor(secrets).pairs()
    if not pairs or not session_id:
        return True
    job = json.dumps({"root": SESSIONS_DIR, "session": session_id, "pairs": pairs,
                      "limit": MAX_FILE_BYTES}).encode()
    helper: str | None = None
    try:
        target = container_id
        state = await anyio.to_thread.run_sync(runtime.inspect, container_id) \
            if container_id else None
        if state is None or not state.running:
            if not helper_allowed:
                return False
            spec = helper_spec(scope=scope, agent_name=agent_name, image=image, owner=owner)
            helper = target = await anyio.to_thread.run_sync(runtime.create, spec)
        assert target is not None
        counts = await _run(runtime, target, owner, job)
        log.info("session %s of %s: transcripts scrubbed %s", session_id, agent_name, counts)
    except AdSandboxError as exc:
        log.warning("session %s of %s: transcripts not scrubbed: %s", session_id, agent_name,
                    exc.one_line())
    except Exception:
        log.exception("session %s of %s: transcripts not scrubbed", session_id, agent_name)
    finally:
        if helper is not None:
            with anyio.CancelScope(shield=True):
                try:
                    await anyio.to_thread.run_sync(runtime.remove, helper)
                except AdSandboxError as exc:
                    log.warning("scrub helper %s not removed: %s", helper[:12], exc.one_line())
    return True


async def _run(runtime: Runtime, container_id: str, owner: Owner, job: bytes) -> str:
    out: list[str] = []
    err: list[str] = []

    def scrub() -> int | None:
        result = runtime.exec(
            container_id, ["python3", "-I", "-c", SCRUB_SCRIPT], env={}, user=owner.user,
            workdir="/", stdin_file=None, on_stdout_line=out.append, on_stderr=err.append,
            stdin_data=job,
        )
        return result.exit_code

    with anyio.fail_after(SCRUB_DEADLINE_S):
        code = await anyio.to_thread.run_sync(scrub, abandon_on_cancel=True)
    if code != 0:
        raise AdSandboxError(
            f"the transcript scrub exited with {code}: {''.join(err).strip()[-300:]}",
            hint="Look for the session's files on the agent's volume and remove them.",
        )
    return out[-1] if out else ""


def helper_spec(*, scope: str, agent_name: str, image: str, owner: Owner) -> ContainerSpec:
    """A container that mounts only the agent's session volume: no project, no network."""
    return ContainerSpec(
        name=f"ads-scrub-{uuid.uuid4().hex[:12]}",
        image=image,
        user=owner.user,
        workdir="/",
        env={},
        labels={
            **scope_labels(scope, agent_name),
            LABEL_RUN: "",
            LABEL_OWNER: str(os.getpid()),
            LABEL_LEASE: str(int(time.time() + SCRUB_DEADLINE_S * 2)),
        },
        mounts=(Mount(volume_name(scope, agent_name), SESSIONS_DIR, read_only=False,
                      kind="volume"),),
        tmpfs={"/tmp": "size=16m,mode=1777"},
        network="none",
        cpus=0.5,
        memory_bytes=512 * 1024 * 1024,
        pids_limit=32,
    )
