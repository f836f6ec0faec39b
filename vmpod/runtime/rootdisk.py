"""The runtime's side of a persistent root disk: which device, what is on it, writing the image.

A pod whose container has a ``volumeDevices`` entry with ``devicePath: /`` boots from that
volume's raw block device instead of a qcow2 overlay (:mod:`vmpod.persistentroot` has the
on-device layout).  The runtime calls :func:`plan_pod_root` once the volumes are attached (it
reads the device, writes nothing: a device too small for the image is refused here), gives the
plan to :func:`~vmpod.runtime.builder.build_machine`, and calls :func:`write_pod_root` only after
the backend accepted the machine (the libvirt backend checks the device against its
``allowed_devices`` in ``create``), so that a refused device is never written.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from vmpod.hookspecs import VolumeAttachment
from vmpod.machine import DiskFormat
from vmpod.model import VMPod
from vmpod.persistentroot import RootPlan, plan_root, write_root
from vmpod.runtime.builder import persistent_root_device

__all__ = ["plan_pod_root", "write_pod_root"]


def plan_pod_root(pod: VMPod, attachments: Mapping[str, VolumeAttachment], *, image_digest: str,
                  virtual_size: int) -> RootPlan | None:
    """The plan for ``pod``'s persistent root; ``None`` when it has none.

    Also ``None`` when the root volume did not become exactly one raw disk: the machine builder
    then refuses the pod with the field to blame.

    :raises SpecError: the device is too small for the image, or not a device or file.
    :raises PersistentRootError: the device cannot be read, or has a header vmpod cannot read.
    """
    found = persistent_root_device(pod)
    if found is None:
        return None
    index, name = found
    attachment = attachments.get(name)
    if attachment is None or len(attachment.disks) != 1 or attachment.disks[0].format is not DiskFormat.RAW:
        return None
    return plan_root(name, attachment.disks[0].path, image_digest=image_digest, virtual_size=virtual_size,
                     where=f"spec.containers[0].volumeDevices[{index}].name")


def write_pod_root(plan: RootPlan | None, image: Path, image_format: str) -> str | None:
    """Write the image when the plan says so; an event message saying what happened (``None``: no plan).

    :raises PersistentRootError: the write failed (the device is left without a header).
    """
    if plan is None:
        return None
    if write_root(plan, image, image_format):
        return (f"wrote image sha256:{plan.image_sha256[:12]} to the persistent root device {plan.device} "
                f"(volume {plan.volume})")
    return (f"kept the persistent root on {plan.device} (volume {plan.volume}): it already holds image "
            f"sha256:{plan.image_sha256[:12]}")
