"""Every hook a vmpod plugin can implement.

A plugin is a module (or object) with functions decorated by
``@vmpod.hookimpl`` whose names match the specs below.  Distributions
register plugins under the ``vmpod`` entry-point group; vmpod's own built-in
behaviour is registered the same way, first, so a third party can add to it
or adjust it.  An implementation may accept fewer arguments than the spec
lists (pluggy's opt-in arguments), so specs can gain arguments without
breaking plugins.

Registration hooks (``vmpod_backends``, ``vmpod_volume_handlers``,
``vmpod_image_sources``) yield frozen records; names must be unique across
all plugins (a duplicate raises :class:`~vmpod.errors.PluginConflictError`).
Adjustment hooks (``vmpod_adjust_seed``, ``vmpod_adjust_machine``) are
applied one after another, each plugin seeing the previous one's result, in
registration order: vmpod's built-ins first, then entry points, so a plugin
can override what vmpod did (``tryfirst``/``trylast`` move an implementation
to the front/back).

``docs/reference/hooks.md`` is generated from the docstrings below
(``python -m vmpod.docgen_hooks``); a test keeps the two equal.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from vmpod._markers import hookspec
from vmpod.backend import Backend, BackendConfig

if TYPE_CHECKING:
    from vmpod.machine import Disk, Filesystem, Machine
    from vmpod.model import DiskDriver, VMPod, Volume, VolumeDevice, VolumeMount

__all__ = [
    "BackendSpec",
    "ImageSourceSpec",
    "PodEvent",
    "VolumeAttachment",
    "VolumeContext",
    "VolumeHandler",
    "VolumeHandlerSpec",
    "vmpod_adjust_machine",
    "vmpod_adjust_seed",
    "vmpod_backends",
    "vmpod_image_sources",
    "vmpod_pod_event",
    "vmpod_volume_handlers",
]


# --------------------------------------------------------------------------- records


@attrs.frozen
class BackendSpec:
    """A hypervisor backend a plugin provides.

    :param name: lower-case name users select with ``--backend`` (``libvirt``, ``qemu``, ``fake``).
    :param factory: builds the backend for a state directory and options.
    :param description: one line for ``vmpod plugins``.
    :param priority: among available backends with no explicit choice, the highest priority is
        the default.
    """

    name: str
    factory: Callable[[BackendConfig], Backend]
    description: str = ""
    priority: int = 0


@attrs.frozen
class VolumeContext:
    """What a volume handler gets: the pod, the volume, how the container uses it, and where to work.

    :param work_dir: a directory private to this pod where the handler may create files
        (ephemeral disks); the runtime deletes it with the pod.
    """

    pod: VMPod
    volume: Volume
    mounts: tuple[VolumeMount, ...]
    devices: tuple[VolumeDevice, ...]
    work_dir: Path
    disk_bus: DiskDriver


@attrs.frozen
class VolumeAttachment:
    """What a volume becomes in the machine: disks and/or shared directories (or nothing)."""

    disks: tuple[Disk, ...] = ()
    filesystems: tuple[Filesystem, ...] = ()


class VolumeHandler(Protocol):
    """Turns one pod volume into disks or filesystems of the machine, and cleans up after it.

    Both methods must be idempotent: the runtime calls them again after a crash.
    """

    def attach(self, context: VolumeContext) -> VolumeAttachment:
        """Prepare the volume (create files, check devices) and describe its attachment."""
        ...

    def detach(self, context: VolumeContext) -> None:
        """Remove what :meth:`attach` created (never user data on persistent volumes)."""
        ...


@attrs.frozen
class VolumeHandlerSpec:
    """A volume handler for one volume kind (a class from :mod:`vmpod.model`, e.g. ``EmptyDirVolume``)."""

    name: str
    volume_type: type
    handler: VolumeHandler


@attrs.frozen
class ImageSourceSpec:
    """A way to fetch VM disk images.

    :param schemes: URL schemes it handles (``https``, ``file``, ``oci``...).
    :param fetch: ``fetch(url, dest)`` writes the image bytes to the file ``dest``; it raises
        :class:`~vmpod.errors.VmpodError` subclasses on failure.
    """

    name: str
    schemes: tuple[str, ...]
    fetch: Callable[[str, Path], None]


@attrs.frozen
class PodEvent:
    """A lifecycle event of a pod (as ``kubectl describe`` shows them).

    :param reason: ``Created``, ``Started``, ``Stopped``, ``Killing``, ``Deleted``, ``Adopted``,
        ``Failed``, ``Reconciled``...
    :param timestamp: nanoseconds since the epoch.
    """

    namespace: str
    pod: str
    uid: str
    reason: str
    message: str
    timestamp: int
    type: str = "Normal"


# --------------------------------------------------------------------------- hooks


@hookspec
def vmpod_backends() -> Iterable[BackendSpec]:  # type: ignore[empty-body]
    """Register hypervisor backends.

    Called when the plugin manager collects backends (``vmpod plugins``, opening the runtime).

    :return: the :class:`BackendSpec` records this plugin provides.

    Example::

        @vmpod.hookimpl
        def vmpod_backends():
            yield BackendSpec(name="mybackend", factory=MyBackend, description="My hypervisor")

    .. versionadded:: 0.1
    """


@hookspec
def vmpod_volume_handlers() -> Iterable[VolumeHandlerSpec]:  # type: ignore[empty-body]
    """Register handlers for pod volume kinds.

    Called when the runtime builds a machine.  One handler per volume type: a plugin's handler
    for a type vmpod's built-in plugin handles replaces vmpod's; two plugins handling the same
    type are a conflict (:class:`~vmpod.errors.PluginConflictError`).

    :return: the :class:`VolumeHandlerSpec` records this plugin provides.

    Example::

        class TmpfsHandler:
            def attach(self, context):
                return VolumeAttachment(filesystems=(Filesystem(tag=context.volume.name, source="/dev/shm"),))

            def detach(self, context):
                pass

        @vmpod.hookimpl
        def vmpod_volume_handlers():
            yield VolumeHandlerSpec(name="tmpfs", volume_type=TmpfsVolume, handler=TmpfsHandler())

    .. versionadded:: 0.1
    """


@hookspec
def vmpod_image_sources() -> Iterable[ImageSourceSpec]:  # type: ignore[empty-body]
    """Register ways to fetch VM images (by URL scheme).

    Called when an image is pulled.  A plugin's source for a scheme vmpod's built-in plugin
    handles (``file``...) replaces vmpod's; two plugins handling one scheme are a conflict.

    :return: the :class:`ImageSourceSpec` records this plugin provides.

    Example::

        def fetch_s3(url, dest):
            bucket, _, key = url.removeprefix("s3://").partition("/")
            boto3.client("s3").download_file(bucket, key, str(dest))

        @vmpod.hookimpl
        def vmpod_image_sources():
            yield ImageSourceSpec(name="s3", schemes=("s3",), fetch=fetch_s3)

    .. versionadded:: 0.1
    """


@hookspec
def vmpod_adjust_seed(pod: VMPod, documents: Any) -> Any | None:
    """Adjust the cloud-init documents of ``pod`` just before the seed ISO is written.

    Called once per pod creation, after vmpod generated the documents.  Plugins run one after
    another, each seeing the previous result.

    :param pod: the VM pod.
    :param documents: the :class:`vmpod.cloudinit.SeedDocuments` generated so far.
    :return: replacement documents (use ``attrs.evolve``), or None to keep them.

    Example::

        @vmpod.hookimpl
        def vmpod_adjust_seed(pod, documents):
            if pod.labels.get("example.com/network") == "image-defaults":
                return attrs.evolve(documents, network_config=None)  # let the image configure its network
            return None

    .. versionadded:: 0.1
    """


@hookspec
def vmpod_adjust_machine(pod: VMPod, machine: Machine) -> Machine | None:
    """Adjust the resolved :class:`~vmpod.machine.Machine` just before the backend creates it.

    Called once per pod creation.  Plugins run one after another, each seeing the previous result.

    :param pod: the VM pod.
    :param machine: the machine built so far.
    :return: a replacement machine (use ``attrs.evolve``), or None to keep it.

    Example::

        @vmpod.hookimpl
        def vmpod_adjust_machine(pod, machine):
            if "example.com/big" in pod.annotations:
                return attrs.evolve(machine, memory_bytes=machine.memory_bytes * 2)
            return None

    .. versionadded:: 0.1
    """


@hookspec
def vmpod_pod_event(event: PodEvent) -> None:
    """Observe a pod lifecycle event (created, started, stopped, deleted, adopted, failed...).

    Called after the event is recorded in the store.  Exceptions raised here are logged and
    ignored: an observer cannot break the runtime.

    :param event: the event.

    Example::

        @vmpod.hookimpl
        def vmpod_pod_event(event):
            if event.type == "Warning":
                logging.getLogger("audit").warning("%s/%s: %s", event.namespace, event.pod, event.message)

    .. versionadded:: 0.1
    """
