"""Helpers shared by the runtime tests: a small real disk image and VM pods that use it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import attrs

from vmpod.manifest import load_manifest_text
from vmpod.model import VMPod

POD_YAML = """
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {namespace}
  labels: {{app: {app}, index: "{index}"}}
  annotations:
    kubernetes.io/target-runtime: virtlet.cloud
    VirtletRootVolumeSize: 128Mi
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: vm
    image: {image}
    resources:
      limits: {{memory: 256Mi, cpu: 500m}}
{mounts}
{volumes}
"""

VOLUMES_MOUNTS = """    volumeMounts:
    - {name: scratch, mountPath: /scratch}
    - {name: data, mountPath: /data}"""

VOLUMES = """  volumes:
  - name: scratch
    emptyDir: {}
  - name: data
    flexVolume:
      driver: virtlet/flexvolume_driver
      options: {type: qcow2, capacity: 64MB}
  - name: config
    configMap: {name: settings}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {greeting: hello}"""


def make_image(directory: Path, name: str = "base.qcow2", size: str = "64M") -> Path:
    """A real (empty) qcow2 disk image made by ``qemu-img create``."""
    path = directory / name
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), size], check=True)
    return path


def make_pod(image: Path, index: int, *, volumes: bool = False, namespace: str = "default",
             app: str = "web") -> VMPod:
    """VM pod ``vm<index>`` booting ``image`` (with an emptyDir, a qcow2 flexvolume and a configMap when asked)."""
    text = POD_YAML.format(name=f"vm{index}", namespace=namespace, app=app, index=index, image=image,
                           mounts=VOLUMES_MOUNTS if volumes else "", volumes=VOLUMES if volumes else "")
    pod = load_manifest_text(text).pods[0]
    return attrs.evolve(pod, uid=f"{index:08x}-0000-4000-8000-{index:012x}")
