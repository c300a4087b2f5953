"""Which llama-servers are ours: the markers a server is started with, finding it again after a
restart (to adopt it), and ending the strays no record claims."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Container, Mapping
from typing import Any

import psutil

from llamaman.instances.launch_policy import child_environment

log = logging.getLogger(__name__)

ENV_INSTANCE_ID = "LLAMAMAN_INSTANCE_ID"
ENV_OWNER = "LLAMAMAN_OWNER"


def server_environment(
    instance_id: str, owner: str, environ: Mapping[str, str], extra: Mapping[str, str]
) -> dict[str, str]:
    """Only what llama.cpp and the GPU runtimes need, plus the markers that let a later LlamaMan
    adopt the server (its key is added per run by LlamaProcess)."""
    return child_environment(environ, {ENV_INSTANCE_ID: instance_id, ENV_OWNER: owner, **extra})


def instance_environment(
    instance_id: str, owner: str, gpu_devices: str | None, settings: Any
) -> dict[str, str]:
    """``server_environment`` with what the launch settings and LlamaMan's settings add."""
    extra = {}
    if gpu_devices:
        extra["CUDA_VISIBLE_DEVICES"] = gpu_devices
    if settings.pass_hf_token and settings.hf_token:
        extra["HF_TOKEN"] = settings.hf_token
    return server_environment(instance_id, owner, os.environ, extra)


def is_our_server(pid: int, instance_id: str, owner: str) -> bool:
    """Whether ``pid`` is the llama-server this LlamaMan (``owner``) started for ``instance_id``."""
    try:
        env = psutil.Process(pid).environ()
    except psutil.Error:
        return False
    return env.get(ENV_INSTANCE_ID) == instance_id and env.get(ENV_OWNER) == owner


def kill_strays(owner: str, keep: Container[int | None]) -> None:
    """Kill servers an earlier run of this LlamaMan left behind that no record claims."""
    for p in psutil.process_iter(["pid"]):
        if p.pid in keep or p.pid == os.getpid():
            continue
        try:
            env = p.environ()
        except psutil.Error:
            continue
        if env.get(ENV_OWNER) != owner or ENV_INSTANCE_ID not in env:
            continue
        log.warning("killing stray llama-server pid %s (instance %s)", p.pid, env.get(ENV_INSTANCE_ID))
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p.pid, signal.SIGKILL)


def end_process_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(psutil.Error):
        psutil.Process(pid).wait(5)
