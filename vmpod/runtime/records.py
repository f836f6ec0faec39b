"""What the store holds and the runtime returns: pods, containers, operations, artefacts, events.

All timestamps are nanoseconds since the Unix epoch (CRI's unit); 0 means "not yet".
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping

import attrs

from vmpod.runtime.states import ContainerState, SandboxState

__all__ = [
    "Artefact",
    "ArtefactKind",
    "ContainerRecord",
    "EventRecord",
    "ImageRecord",
    "Operation",
    "OperationKind",
    "PodRecord",
]


@attrs.frozen
class ContainerRecord:
    """The VM container of a pod, as CRI sees it.

    :param id: the CRI container id (the machine UUID, as in Virtlet).
    :param image_ref: ``sha256:<hex>`` of the image the machine runs.

    The :class:`~vmpod.machine.Machine` given to the backend is kept beside it in the store
    (:meth:`vmpod.runtime.Runtime.machine`), off the listing path.
    """

    pod_uid: str
    id: str
    name: str
    image: str
    image_ref: str
    state: ContainerState
    created_at: int
    started_at: int = 0
    finished_at: int = 0
    exit_code: int = 0
    reason: str = ""
    message: str = ""
    restart_count: int = 0


@attrs.frozen
class PodRecord:
    """One pod sandbox and (once created) its container.

    The :class:`~vmpod.model.VMPod` it was created from is kept beside it in the store
    (:meth:`vmpod.runtime.Runtime.pod_spec`): listing pods never reads or parses it.
    """

    uid: str
    namespace: str
    name: str
    labels: Mapping[str, str]
    annotations_json: str
    backend: str
    machine_name: str
    state: SandboxState
    created_at: int
    log_path: str
    container: ContainerRecord | None = None
    operation: str = ""
    pod_ip: str = ""
    """The address the pod's VM owns on its CNI network (``""`` in ``user`` network mode)."""

    @property
    def full_name(self) -> str:
        """``namespace/name``."""
        return f"{self.namespace}/{self.name}"

    @property
    def annotations(self) -> dict[str, str]:
        """The pod's annotations, exactly as given (parsed on demand: listing does not need them)."""
        parsed: dict[str, str] = json.loads(self.annotations_json)
        return parsed


class OperationKind(enum.StrEnum):
    """An operation whose steps have side effects that reconcile may need to finish or undo."""

    CREATE = "create"
    """create_container: rolled back when interrupted (the client retries)."""
    STOP = "stop"
    """stop_container: the outcome is read back from the backend."""
    DELETE = "delete"
    """remove_container / remove_sandbox / delete_pod: always rolled forward."""


@attrs.frozen
class Operation:
    """An operation that was started and not yet finished (the store's intent record)."""

    id: int
    pod_uid: str
    kind: OperationKind
    step: str
    started_at: int
    keep_log: bool = False


class ArtefactKind(enum.StrEnum):
    """What an artefact path is; the runtime removes each kind in its own way."""

    DIR = "dir"
    """A directory the runtime made (removed when empty, after its contents)."""
    FILE = "file"
    """A file the runtime writes (root overlay, seed ISO)."""
    TREE = "tree"
    """A directory whose contents belong to someone else (a volume handler, the backend)."""
    LOG = "log"
    """The console log; survives a delete with ``keep_log``."""


@attrs.frozen
class Artefact:
    """A path under the state directory (or a log path given by a CRI client) that a pod owns.

    Recorded before the path is created; ``retained`` logs outlive their pod.
    """

    pod_uid: str
    kind: ArtefactKind
    path: str
    retained: bool = False


@attrs.frozen
class EventRecord:
    """A pod event, as ``vmpod describe`` lists them."""

    pod_uid: str
    namespace: str
    name: str
    type: str
    reason: str
    message: str
    timestamp: int


@attrs.frozen
class ImageRecord:
    """An image in the content-addressed store.

    :param digest: ``sha256:<hex>`` of the file's bytes.
    :param format: ``qcow2`` or ``raw``.
    :param virtual_size: the disk size the image describes, in bytes.
    :param size: the file's size in bytes.
    """

    digest: str
    path: str
    format: str
    virtual_size: int
    size: int
    created_at: int
