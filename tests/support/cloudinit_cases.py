"""Hand-written VM pods covering every cloud-init rule, shared by the generator, schema and ISO tests.

Each :class:`Case` is a manifest (a Pod plus the ConfigMaps, Secrets and
claims it refers to), an optional CNI result and the seed layouts to check.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from vmpod.cloudinit import NetworkDescription, from_cni_result
from vmpod.manifest import load_manifest_text
from vmpod.model import CloudInitImageType, VMPod

NOCLOUD = CloudInitImageType.NOCLOUD
CONFIGDRIVE = CloudInitImageType.CONFIGDRIVE

KEY_A = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBYlF1mM7yRaP2X4dFSwsJQ9tQCh5Ub0NCfr0mZ4Z3Jk alice@example"
KEY_B = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAAAgQC7kOa9Y2d3dW5hbWUgYm9iIGtleSBmb3IgdGVzdHM= bob@example"
KEY_C = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHNvdXJjZSBrZXkgZnJvbSBhIGNvbmZpZ21hcCEhIQ carol@example"

#: A CNI 0.3.1 result as the bridge plugin returns it: host bridge and veth, then the pod's interface.
CNI_BRIDGE: dict[str, Any] = {
    "cniVersion": "0.3.1",
    "interfaces": [
        {"name": "cni0", "mac": "0a:58:0a:f4:01:01"},
        {"name": "veth3c9e1a2b", "mac": "ce:3b:6f:02:aa:10"},
        {"name": "eth0", "mac": "0A:58:0A:F4:01:05", "sandbox": "/var/run/netns/cni-1234"},
    ],
    "ips": [{"version": "4", "address": "10.244.1.5/24", "gateway": "10.244.1.1", "interface": 2}],
    "routes": [{"dst": "0.0.0.0/0"}, {"dst": "10.96.0.0/12", "gw": "10.244.1.1"}],
    "dns": {"nameservers": ["10.96.0.10"], "search": ["default.svc.cluster.local", "svc.cluster.local"],
            "options": ["ndots:5"]},
}

#: A CNI 1.0.0 result with two interfaces, IPv4 and IPv6, extra and unreachable routes.
CNI_TWO_NICS: dict[str, Any] = {
    "cniVersion": "1.0.0",
    "interfaces": [
        {"name": "eth0", "mac": "52:54:00:aa:00:01", "sandbox": "/var/run/netns/p"},
        {"name": "net1", "mac": "52:54:00:aa:00:02", "sandbox": "/var/run/netns/p"},
    ],
    "ips": [
        {"address": "10.1.0.10/16", "gateway": "10.1.0.1", "interface": 0},
        {"address": "fd00:10::a/64", "gateway": "fd00:10::1", "interface": 0},
        {"address": "192.168.50.7/24", "interface": 1},
    ],
    "routes": [
        {"dst": "0.0.0.0/0", "gw": "10.1.0.1"},
        {"dst": "::/0", "gw": "fd00:10::1"},
        {"dst": "172.16.0.0/12", "gw": "192.168.50.1"},
        {"dst": "0.0.0.0/0", "gw": "192.168.50.1"},
        {"dst": "203.0.113.0/24", "gw": "198.51.100.1"},
        {"dst": "10.2.0.0/16"},
    ],
    "dns": {"nameservers": ["10.1.0.2", "fd00:10::2"], "domain": "example.internal"},
}


@dataclass(frozen=True)
class Case:
    """One hand-written pod and what to check about its seed."""

    manifest: str
    cni: Mapping[str, Any] | None = None
    types: tuple[CloudInitImageType, ...] = (NOCLOUD,)

    def pod(self) -> VMPod:
        """The (single) VM pod of the manifest."""
        (pod,) = load_manifest_text(self.manifest, "case").pods
        return pod

    def network(self) -> NetworkDescription | None:
        """The network description from the CNI result, if the case has one."""
        return None if self.cni is None else from_cni_result(self.cni)


def manifest(
    name: str = "vm",
    *,
    annotations: Mapping[str, str] | None = None,
    container: Mapping[str, Any] | None = None,
    volumes: list[Mapping[str, Any]] | None = None,
    spec: Mapping[str, Any] | None = None,
    objects: list[Mapping[str, Any]] | None = None,
) -> str:
    """A Pod manifest (plus ``objects``) as YAML text."""
    pod: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "default",
            "annotations": {"kubernetes.io/target-runtime": "virtlet.cloud", **(annotations or {})},
        },
        "spec": {
            "containers": [{"name": "vm", "image": "virtlet.cloud/cirros", **(container or {})}],
            **({"volumes": volumes} if volumes else {}),
            **(spec or {}),
        },
    }
    return yaml.safe_dump_all([*(objects or []), pod], sort_keys=False)


def config_map(name: str, data: Mapping[str, str]) -> dict[str, Any]:
    """A ConfigMap object."""
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "default"},
            "data": dict(data)}


def secret(name: str, data: Mapping[str, bytes]) -> dict[str, Any]:
    """A Secret object (values base64-encoded, as in ``data``)."""
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": "default"},
            "data": {k: base64.b64encode(v).decode() for k, v in data.items()}}


def claim(name: str, mode: str, pv_source: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """A claim and its bound volume."""
    pvc = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name, "namespace": "default"},
           "spec": {"volumeMode": mode, "accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": "1Gi"}}}}
    pv = {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": f"{name}-pv"},
          "spec": {"volumeMode": mode, "capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteOnce"],
                   "claimRef": {"name": name, "namespace": "default"},
                   **(pv_source or {"local": {"path": f"/var/lib/vmpod/{name}"}})}}
    return [pvc, pv]


def _user_data(data: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(data), sort_keys=False)


_FLEX = {"driver": "virtlet/flexvolume_driver"}
_SCRIPT = "#!/bin/sh\necho 'hello from a script'\necho \"second line\"\n"

CASES: dict[str, Case] = {
    "plain": Case(manifest("plain-vm"), types=(NOCLOUD, CONFIGDRIVE)),
    "ssh-keys": Case(manifest(
        "keys-vm",
        annotations={"VirtletSSHKeys": f"{KEY_A}\n\n  {KEY_B}  \n", "VirtletSSHKeySource": "configmap/keys"},
        objects=[config_map("keys", {"authorized_keys": f"{KEY_C}\n"})],
    ), types=(NOCLOUD, CONFIGDRIVE)),
    "ssh-keys-overwrite": Case(manifest(
        "keys-vm",
        annotations={"VirtletSSHKeys": KEY_A, "VirtletSSHKeySource": "secret/keys/mykeys",
                     "VirtletCloudInitUserDataOverwrite": "true"},
        objects=[secret("keys", {"mykeys": f"{KEY_C}\n".encode()})],
    )),
    "meta-data-override": Case(manifest(
        "meta-vm",
        annotations={"VirtletSSHKeys": KEY_A,
                     "VirtletCloudInitMetaData": "instance-id: custom-id\nlocal-hostname: custom-host\n"
                                                 "availability-zone: zone-a\nextra: {a: 1, b: [x, y]}\n"},
    ), types=(NOCLOUD, CONFIGDRIVE)),
    "hostname": Case(manifest("named-vm", spec={"hostname": "myhost", "subdomain": "sub"}),
                     types=(NOCLOUD, CONFIGDRIVE)),
    "user-data-merge": Case(manifest(
        "merge-vm",
        annotations={
            "VirtletCloudInitUserDataSource": "configmap/user-data",
            "VirtletCloudInitUserData": _user_data({
                "runcmd": ["echo from-annotation", ["touch", "/tmp/from annotation"]],
                "ssh_pwauth": True,
                "bootcmd": ["echo annotation-bootcmd"],
                "write_files": [{"path": "/etc/motd", "content": "annotation wins\n"}],
            }),
        },
        objects=[config_map("user-data", {
            "runcmd": "- echo from-source\n",
            "ssh_pwauth": "false",
            "packages": "[curl, jq]",
            "write_files": "- {path: /etc/source, content: from source}\n",
        })],
    )),
    "user-data-overwrite": Case(manifest(
        "overwrite-vm",
        annotations={
            "VirtletCloudInitUserDataSource": "configmap/user-data",
            "VirtletCloudInitUserDataOverwrite": "true",
            "VirtletCloudInitUserData": _user_data({"runcmd": ["echo only-annotation"]}),
        },
        objects=[config_map("user-data", {"runcmd": "- echo from-source\n", "packages": "[curl]"})],
    )),
    "users-normalized": Case(manifest(
        "users-vm",
        annotations={"VirtletCloudInitUserData": (
            "users:\n"
            "- default\n"
            "- name: testuser\n"
            "  primary-group: testuser\n"
            "  lock-passwd: false\n"
            f"  ssh-authorized-keys: {KEY_A}\n"
            "- name: other\n"
            "  ssh_authorized_keys: {one: " + KEY_B + "}\n"
        )},
    )),
    "env": Case(manifest(
        "env-vm",
        container={"env": [
            {"name": "PLAIN", "value": "value"},
            {"name": "SPACES", "value": "a value with  spaces"},
            {"name": "QUOTES", "value": "it's \"quoted\""},
            {"name": "MULTILINE", "value": "line one\nline two\n"},
            {"name": "SHELLY", "value": "$HOME `id` $(id) \\ ;|&"},
            {"name": "EMPTY", "value": ""},
        ]},
    )),
    "configmap-secret-volumes": Case(manifest(
        "volumes-vm",
        container={"volumeMounts": [
            {"name": "config", "mountPath": "/etc/app"},
            {"name": "creds", "mountPath": "/etc/creds", "readOnly": True},
            {"name": "maybe", "mountPath": "/etc/maybe"},
            {"name": "partial", "mountPath": "/etc/partial"},
        ]},
        volumes=[
            {"name": "config", "configMap": {"name": "app-config", "defaultMode": 0o600}},
            {"name": "creds", "secret": {"secretName": "app-creds", "items": [
                {"key": "password", "path": "db/password", "mode": 0o400},
                {"key": "token", "path": "token"}]}},
            {"name": "maybe", "configMap": {"name": "not-there", "optional": True}},
            {"name": "partial", "configMap": {"name": "app-config", "optional": True, "items": [
                {"key": "app.conf", "path": "app.conf"}, {"key": "missing-key", "path": "nothing"}]}},
        ],
        objects=[
            config_map("app-config", {"app.conf": "[main]\nkey = value\n", "level": "debug"}),
            secret("app-creds", {"password": b"s3cr3t\x00\xff", "token": b"tok", "unused": b"x"}),
        ],
    )),
    "file-like-mounts": Case(manifest(
        "files-vm",
        container={"volumeMounts": [
            {"name": "config", "mountPath": "/etc/app.conf", "subPath": "app.conf"},
            {"name": "creds", "mountPath": "/root/.netrc", "subPath": "netrc"},
            {"name": "nested", "mountPath": "/opt/conf", "subPath": "conf"},
        ]},
        volumes=[
            {"name": "config", "configMap": {"name": "app-config"}},
            {"name": "creds", "secret": {"secretName": "creds", "defaultMode": 0o600}},
            {"name": "nested", "configMap": {"name": "app-config", "items": [
                {"key": "app.conf", "path": "conf/app.conf"}, {"key": "level", "path": "conf/level", "mode": 0o640},
                {"key": "level", "path": "elsewhere"}]}},
        ],
        objects=[
            config_map("app-config", {"app.conf": "[main]\nkey = value\n", "level": "debug"}),
            secret("creds", {"netrc": b"machine example.com login me password pw\n"}),
        ],
    )),
    "flexvolumes": Case(manifest(
        "flex-vm",
        container={"volumeMounts": [
            {"name": "data", "mountPath": "/var/lib/data"},
            {"name": "whole", "mountPath": "/mnt/whole disk"},
            {"name": "third", "mountPath": "/mnt/third", "readOnly": True},
        ]},
        volumes=[
            {"name": "data", "flexVolume": {**_FLEX, "options": {"type": "qcow2", "capacity": "1GiB"}}},
            {"name": "whole", "flexVolume": {**_FLEX, "options": {"type": "qcow2", "part": "0"}}},
            {"name": "third", "flexVolume": {**_FLEX, "options": {"type": "raw", "path": "/dev/loop3", "part": "3"}}},
            {"name": "an-unmounted-disk-with-a-long-name",
             "flexVolume": {**_FLEX, "options": {"type": "qcow2"}}},
        ],
    )),
    "ninep-mounts": Case(manifest(
        "ninep-vm",
        container={"volumeMounts": [
            {"name": "scratch", "mountPath": "/scratch"},
            {"name": "host", "mountPath": "/host/data", "readOnly": True},
            {"name": "shared", "mountPath": "/srv/shared"},
            {"name": "shared", "mountPath": "/srv/sub", "subPath": "sub/dir"},
        ]},
        volumes=[
            {"name": "scratch", "emptyDir": {}},
            {"name": "host", "hostPath": {"path": "/var/data", "type": "Directory"}},
            {"name": "shared", "persistentVolumeClaim": {"claimName": "shared-claim"}},
        ],
        objects=claim("shared-claim", "Filesystem", {"nfs": {"server": "10.0.0.1", "path": "/export"}}),
    )),
    "block-devices": Case(manifest(
        "block-vm",
        annotations={"VirtletCloudInitUserData": _user_data({
            "mounts": [["/dev/testpvc", "/mnt"], ["/dev/other", "/other"]],
            "runcmd": ["echo user command", ["ls", "-l", "/dev/testpvc"]],
        })},
        container={"volumeDevices": [{"name": "testpvc", "devicePath": "/dev/testpvc"},
                                     {"name": "second", "devicePath": "/dev/disks/second one"}]},
        volumes=[{"name": "testpvc", "persistentVolumeClaim": {"claimName": "block-claim"}},
                 {"name": "second", "persistentVolumeClaim": {"claimName": "second-claim"}}],
        objects=claim("block-claim", "Block") + claim("second-claim", "Block"),
    )),
    "block-devices-virtio": Case(manifest(
        "block-vm",
        annotations={"VirtletDiskDriver": "virtio"},
        container={"volumeDevices": [{"name": "testpvc", "devicePath": "/dev/testpvc"}],
                   "volumeMounts": [{"name": "data", "mountPath": "/data"}]},
        volumes=[{"name": "testpvc", "persistentVolumeClaim": {"claimName": "block-claim"}},
                 {"name": "data", "flexVolume": {**_FLEX, "options": {"type": "qcow2"}}}],
        objects=claim("block-claim", "Block"),
    )),
    "persistent-root": Case(manifest(
        "persistent-vm",
        container={"volumeDevices": [{"name": "root", "devicePath": "/"}]},
        volumes=[{"name": "root", "persistentVolumeClaim": {"claimName": "root-claim"}}],
        objects=claim("root-claim", "Block"),
    ), cni=CNI_BRIDGE, types=(NOCLOUD, CONFIGDRIVE)),
    "force-dhcp": Case(manifest("dhcp-vm", annotations={"VirtletForceDHCPNetworkConfig": "true"}),
                       cni=CNI_BRIDGE, types=(NOCLOUD, CONFIGDRIVE)),
    "network": Case(manifest("net-vm"), cni=CNI_BRIDGE, types=(NOCLOUD, CONFIGDRIVE)),
    "network-two-nics": Case(manifest("multi-vm"), cni=CNI_TWO_NICS, types=(NOCLOUD, CONFIGDRIVE)),
    "script-mount-marker": Case(manifest(
        "script-vm",
        annotations={"VirtletCloudInitUserDataScript": "#!/bin/sh\necho before\n@virtlet-mount-script@\necho after\n",
                     "VirtletDiskDriver": "virtio"},
        container={"volumeMounts": [{"name": "data", "mountPath": "/data"}, {"name": "tmp", "mountPath": "/t"}],
                   "volumeDevices": [{"name": "blk", "devicePath": "/dev/blk"}]},
        volumes=[{"name": "data", "flexVolume": {**_FLEX, "options": {"type": "qcow2"}}},
                 {"name": "tmp", "emptyDir": {}},
                 {"name": "blk", "persistentVolumeClaim": {"claimName": "blk"}}],
        objects=claim("blk", "Block"),
    )),
    "script-no-volumes": Case(manifest(
        "script-vm", annotations={"VirtletCloudInitUserDataScript": "#!/bin/sh\necho @virtlet-mount-script@ none\n"},
        container={"env": [{"name": "IGNORED", "value": "scripts get no write_files"}]},
    )),
    "source-key-plain": Case(manifest(
        "source-script-vm",
        annotations={"VirtletCloudInitUserDataSource": "configmap/scripts",
                     "VirtletCloudInitUserDataSourceKey": "script"},
        objects=[config_map("scripts", {"script": _SCRIPT})],
    )),
    "source-key-base64": Case(manifest(
        "source-script-vm",
        annotations={"VirtletCloudInitUserDataSource": "secret/scripts",
                     "VirtletCloudInitUserDataSourceKey": "script",
                     "VirtletCloudInitUserDataSourceEncoding": "base64"},
        objects=[secret("scripts", {"script": base64.b64encode(_SCRIPT.encode())})],
    )),
    "configdrive-everything": Case(manifest(
        "everything-vm",
        annotations={"VirtletCloudInitImageType": "configdrive", "VirtletSSHKeys": KEY_A,
                     "VirtletCloudInitUserData": _user_data({"runcmd": ["echo hi"]})},
        container={"env": [{"name": "GREETING", "value": "hello world"}],
                   "volumeMounts": [{"name": "config", "mountPath": "/etc/app"},
                                    {"name": "data", "mountPath": "/data"}]},
        volumes=[{"name": "config", "configMap": {"name": "cfg"}},
                 {"name": "data", "flexVolume": {**_FLEX, "options": {"type": "qcow2"}}}],
        objects=[config_map("cfg", {"a": "b"})],
    ), cni=CNI_BRIDGE, types=(CONFIGDRIVE,)),
}

