"""Observe a running tcasm producer: its snapshots as read-only, zero-copy numpy arrays."""
from os import PathLike
from typing import Optional

import numpy as np

class TcasmError(Exception):
    """A tcasm operation failed; the message says why."""

class ProducerGone(TcasmError):
    """The producer exited; snapshots already taken stay readable."""

def attach(name: str, timeout: float = 10.0) -> Observer:
    """Attaches to the producer `name`, waiting up to `timeout` seconds for it to appear and
    publish its first version; after a second of waiting it says so, once, on sys.stderr
    ('tcasm: waiting up to 10 s for producer "heat" to appear ...', as the tcasm commands
    do). Endpoints are looked up in $TCASM_DIR, else $XDG_RUNTIME_DIR/tcasm, else
    /tmp/tcasm-$UID."""

def read_checkpoint(dir: str | PathLike[str], version: Optional[int] = None, global_: bool = False) -> dict[str, np.ndarray]:
    """Reads checkpoint `version` (the newest complete one when None) from a directory
    written by `tcasm checkpoint`: {region name: numpy array}. `dir` may list the levels,
    "LOCAL:PERSISTENT": the first holding the version intact is read. Every chunk read is
    checked. `global_=True`: `dir` is an MPI job's persistent directory (`tcasm checkpoint
    --all ... --flush-to DIR`), and the ranks' tiles of global version `version` are
    assembled into one array per region (placed by their `global_shape` and `offset`)."""

def list_checkpoints(dir: str | PathLike[str]) -> list[int]:
    """The versions of the complete checkpoints in `dir`, ascending."""

class Observer:
    """A connection to one producer (from `tcasm.attach`)."""

    @property
    def name(self) -> str: ...
    @property
    def regions(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        """{name: (numpy dtype string, shape)}"""
    @property
    def latest_version(self) -> int:
        """The newest version published (without pinning it)."""
    @property
    def producer_gone(self) -> bool: ...
    def latest(self) -> Snapshot:
        """Pins the newest version and returns it."""
    def wait_newer(self, version: int, timeout: Optional[float] = None) -> Optional[int]:
        """Waits until a version newer than `version` exists and returns the newest; None
        when `timeout` seconds pass first (None: no limit). Raises ProducerGone."""

class Snapshot:
    """One pinned version. `snapshot[name]` is a read-only numpy array sharing the
    snapshot's memory; the version stays pinned while the snapshot or any array lives."""

    @property
    def version(self) -> int: ...
    @property
    def regions(self) -> list[str]: ...
    def __getitem__(self, name: str) -> np.ndarray: ...
    def __contains__(self, name: str) -> bool: ...
    def __len__(self) -> int: ...
    def arrays(self) -> dict[str, np.ndarray]: ...
    def changed_since(self, since: int) -> list[tuple[int, int]]:
        """Pages of the page space written after version `since`: [(first, end), ...]."""
