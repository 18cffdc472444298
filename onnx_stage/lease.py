"""One conversion per (source model file, conversion settings) at a time, across processes, workers and API replicas.

The flow holds this lease from "is there a twin already?" to the twin's completion marker, so two runs started at
once for one version (a webhook, a sweep, a person pressing Run) convert it once: the second waits, then finds
the finished twin.

- With a Prefect server (PREFECT_API_URL set): a Prefect global concurrency limit of one slot per key, held with a
  lease the client renews; a holder that dies stops renewing and the server frees the slot when the lease expires
  (`lease_seconds`).
- On the embedded defaults (Prefect's ephemeral server: each process starts its own, so a lease held in one
  server's memory is invisible to the others): an exclusive `flock` on a file beside the embedded stores; the kernel
  releases it when the holder dies.
"""
from __future__ import annotations

import fcntl
import hashlib
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from onnx_stage.errors import StageError
from onnx_stage.tracking import stage_home

POLL_SECONDS = 0.5


class LeaseTimeout(StageError):
    pass


def lease_name(key: str) -> str:
    """A concurrency-limit name that stays readable (the model name) and unique (a hash of the whole key)."""
    readable = re.sub(r"[^0-9A-Za-z_.-]+", "-", key)[:48]
    return f"onnx-stage-{readable}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


@contextmanager
def conversion_lease(key: str, wait_seconds: float, lease_seconds: float) -> Iterator[None]:
    """Hold the lease named by `key` for the block; wait up to `wait_seconds` for another holder to finish.

    Raises:
        LeaseTimeout: another run held the lease for longer than `wait_seconds`.
    """
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        with _prefect_lease(lease_name(key), wait_seconds, lease_seconds):
            yield
    else:
        with _file_lease(stage_home() / "leases" / f"{lease_name(key)}.lock", wait_seconds):
            yield


def start_ephemeral_prefect() -> None:
    """Start this process's Prefect ephemeral server now, one process at a time (a file lock in PREFECT_HOME), when
    no PREFECT_API_URL is set; the flow then reuses it. Each process of the embedded defaults starts its own server
    on the one sqlite database in PREFECT_HOME: two starting at once race its migrations and time out (measured:
    two `onnx-stage convert` started together, both "Timed out while attempting to connect to ephemeral Prefect API
    server")."""
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME

    if PREFECT_API_URL.value():
        return
    with _file_lease(Path(PREFECT_HOME.value()) / "onnx-stage-server-start.lock", wait_seconds=600):
        SubprocessASGIServer().start()


@contextmanager
def _prefect_lease(name: str, wait_seconds: float, lease_seconds: float) -> Iterator[None]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.concurrency.services import ConcurrencySlotAcquisitionWithLeaseService
    from prefect.concurrency.sync import concurrency
    from prefect.exceptions import ObjectAlreadyExists

    with get_client(sync_client=True) as client:
        try:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
        except ObjectAlreadyExists:
            pass  # made by an earlier or a concurrent run of the same key
    try:
        with concurrency(name, occupy=1, timeout_seconds=wait_seconds, lease_duration=lease_seconds, strict=True):
            yield
    except TimeoutError:
        raise LeaseTimeout(f"another run has been converting the same model for over {wait_seconds:.0f} s (Prefect "
                           f"concurrency limit {name!r}); wait for it, or raise registry.lease_wait_seconds") from None
    finally:
        # Prefect keeps one acquisition service per set of limit names for the life of the process: a thread, an
        # event loop task and an HTTP client with its socket. Each conversion's lease has its own name, so a
        # long-lived worker would keep one more of each per run (benchmarks/worker_memory.py): stop it.
        ConcurrencySlotAcquisitionWithLeaseService.instance(frozenset([name])).drain()


@contextmanager
def _file_lease(path: Path, wait_seconds: float) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_seconds
    with path.open("a") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise LeaseTimeout(f"another process has been converting the same model for over "
                                       f"{wait_seconds:.0f} s (lock {path}); wait for it, or raise "
                                       "registry.lease_wait_seconds") from None
                time.sleep(POLL_SECONDS)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
