"""The cloud-init generator, rule by rule: goldens for hand-written pods plus explicit checks of each rule."""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import attrs
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

import vmpod
import vmpod.cloudinit
from tests.support.cloudinit_cases import (
    CASES,
    CNI_BRIDGE,
    CONFIGDRIVE,
    KEY_A,
    KEY_B,
    KEY_C,
    NOCLOUD,
    Case,
    config_map,
    manifest,
)
from vmpod.cloudinit import (
    MAX_SEED_BYTES,
    DiskMap,
    SeedDocuments,
    default_disk_map,
    from_cni_result,
    generate_seed,
    render_user_data,
)
from vmpod.cloudinit.disks import (
    MAX_DISKS,
    GuestDisk,
    by_id_path,
    data_disk_volumes,
    disk_serial,
)
from vmpod.cloudinit.generate import _flow, _make_dumper, _render_user_data
from vmpod.cloudinit.scripts import DISK_LOOKUP_FUNCTION, BlockMount, NinePMount, mount_script, symlink_script
from vmpod.errors import SpecError, VmpodError
from vmpod.manifest import load_manifest_text
from vmpod.model import (
    CloudInitImageType,
    DiskDriver,
    EnvVar,
    FlexVolume,
    HostPathVolume,
    PersistentVolumeClaimVolume,
    Qcow2FlexOptions,
    SourceEncoding,
    VMPod,
    VolumeDevice,
    VolumeMount,
)
from vmpod.plugins import get_plugin_manager
from vmpod.testing.strategies import vm_pods


def _case_id(item: tuple[str, CloudInitImageType]) -> str:
    return f"{item[0]}.{item[1].value}"


_GOLDEN_CASES = [(name, kind) for name, case in CASES.items() for kind in case.types]


@pytest.mark.parametrize("item", _GOLDEN_CASES, ids=[_case_id(i) for i in _GOLDEN_CASES])
def test_case_matches_golden(item: tuple[str, CloudInitImageType], golden: Any) -> None:
    name, kind = item
    case = CASES[name]
    documents = generate_seed(case.pod(), case.network(), image_type=kind)
    golden.check(f"cloudinit/cases/{name}.{kind.value}.txt", documents.text())


def _seed(case: Case, kind: CloudInitImageType = NOCLOUD) -> SeedDocuments:
    return generate_seed(case.pod(), case.network(), image_type=kind)


def _user_data(case: Case) -> dict[str, Any]:
    text = _seed(case).user_data
    assert text.startswith("#cloud-config\n")
    data = yaml.safe_load(text)
    return data if data is not None else {}


def _pod(**kwargs: Any) -> VMPod:
    return Case(manifest(**kwargs)).pod()


# --------------------------------------------------------------------------- meta-data


def test_meta_data_identity_and_keys() -> None:
    documents = _seed(CASES["ssh-keys"])
    assert documents.meta_data == {"instance-id": "keys-vm.default", "local-hostname": "keys-vm",
                                   "public-keys": [KEY_C, KEY_A, KEY_B]}
    # Virtlet wrote Go's compact JSON: no spaces, keys sorted.
    assert documents.files()["meta-data"] == json.dumps(
        documents.meta_data, sort_keys=True, separators=(",", ":")).encode()


def test_overwrite_replaces_source_keys_with_annotation_keys() -> None:
    assert _seed(CASES["ssh-keys-overwrite"]).meta_data["public-keys"] == [KEY_A]


def test_no_keys_no_public_keys() -> None:
    assert _seed(CASES["plain"]).meta_data == {"instance-id": "plain-vm.default", "local-hostname": "plain-vm"}


def test_meta_data_annotation_replaces_generated_keys() -> None:
    meta = _seed(CASES["meta-data-override"]).meta_data
    assert meta == {"instance-id": "custom-id", "local-hostname": "custom-host", "public-keys": [KEY_A],
                    "availability-zone": "zone-a", "extra": {"a": 1, "b": ["x", "y"]}}


def test_pod_hostname_is_the_local_hostname() -> None:
    assert _seed(CASES["hostname"]).meta_data["local-hostname"] == "myhost"


def test_configdrive_meta_data_has_uuid_hostname_and_openstack_public_keys() -> None:
    documents = _seed(CASES["ssh-keys"], CONFIGDRIVE)
    meta = json.loads(documents.files()["openstack/latest/meta_data.json"])
    assert meta == {"instance-id": "keys-vm.default", "local-hostname": "keys-vm", "uuid": "keys-vm.default",
                    "hostname": "keys-vm", "public-keys": [KEY_C, KEY_A, KEY_B],
                    "public_keys": {"key-0": KEY_C, "key-1": KEY_A, "key-2": KEY_B}}
    overridden = _seed(CASES["meta-data-override"], CONFIGDRIVE).meta_data
    # The override wins over derived keys too; uuid stays what was generated unless overridden.
    assert overridden["local-hostname"] == "custom-host"
    assert overridden["hostname"] == "meta-vm"
    assert overridden["public_keys"] == {"key-0": KEY_A}


def test_configdrive_public_keys_follow_an_overridden_public_keys_list() -> None:
    pod = _pod(annotations={"VirtletSSHKeys": KEY_A, "VirtletCloudInitMetaData": f"public-keys: [{KEY_B}]"})
    meta = generate_seed(pod, image_type=CONFIGDRIVE).meta_data
    assert meta["public_keys"] == {"key-0": KEY_B}
    explicit = _pod(annotations={"VirtletCloudInitMetaData": f"public_keys: {{mine: {KEY_C}}}"})
    assert generate_seed(explicit, image_type=CONFIGDRIVE).meta_data["public_keys"] == {"mine": KEY_C}


def test_meta_data_that_json_cannot_hold_names_the_annotation() -> None:
    pod = _pod()
    for value in (float("nan"), object()):
        bad = attrs.evolve(pod, vm=attrs.evolve(pod.vm, cloud_init_meta_data={"value": value}))
        with pytest.raises(SpecError) as info:
            generate_seed(bad)
        assert info.value.path == "metadata.annotations.VirtletCloudInitMetaData"
    dated = attrs.evolve(pod, vm=attrs.evolve(pod.vm, cloud_init_meta_data={"when": datetime.date(2024, 1, 2)}))
    assert json.loads(generate_seed(dated).files()["meta-data"])["when"] == "2024-01-02"


# --------------------------------------------------------------------------- user-data


def test_empty_user_data_is_an_empty_mapping() -> None:
    # Virtlet wrote just the header, which cloud-init's schema check refuses ("not a YAML dict").
    assert _seed(CASES["plain"]).user_data == "#cloud-config\n{}\n"
    assert render_user_data({}) == "#cloud-config\n{}\n"


def test_source_then_annotation_merge() -> None:
    data = _user_data(CASES["user-data-merge"])
    assert data["runcmd"] == ["echo from-source", "echo from-annotation", ["touch", "/tmp/from annotation"]]
    assert data["ssh_pwauth"] is True  # the annotation wins for scalars
    assert data["packages"] == ["curl", "jq"]
    assert data["write_files"] == [{"path": "/etc/source", "content": "from source"},
                                   {"path": "/etc/motd", "content": "annotation wins\n"}]


def test_overwrite_drops_the_source() -> None:
    assert _user_data(CASES["user-data-overwrite"]) == {"runcmd": ["echo only-annotation"]}


def test_users_are_written_as_cloud_init_reads_them() -> None:
    users = _user_data(CASES["users-normalized"])["users"]
    assert users == ["default",
                     {"name": "testuser", "primary_group": "testuser", "lock_passwd": False,
                      "ssh_authorized_keys": [KEY_A]},
                     {"name": "other", "ssh_authorized_keys": [KEY_B]}]


def test_environment_file_sources_back_to_the_exact_values(tmp_path: Path) -> None:
    case = CASES["env"]
    entry = _user_data(case)["write_files"][-1]
    assert entry["path"] == "/etc/cloud/environment"
    assert entry["permissions"] == "0644"
    env_file = tmp_path / "environment"
    env_file.write_text(entry["content"])
    expected = {e.name: e.value for e in case.pod().container.env}
    shells = [s for s in ("dash", "bash", "busybox") if shutil.which(s)]
    assert "dash" in shells
    for shell in shells:
        argv = [shell, "sh"] if shell == "busybox" else [shell]
        script = f". {env_file}\n" + "".join(f"printf '%s\\0' \"${name}\"\n" for name in expected)
        out = subprocess.run([*argv, "-c", script], capture_output=True, check=True).stdout.decode()
        assert out.split("\0")[:-1] == list(expected.values()), shell


def test_env_names_that_sh_cannot_read_are_refused() -> None:
    pod = _pod()
    bad = attrs.evolve(pod, container=attrs.evolve(pod.container, env=(EnvVar("OK", "1"), EnvVar("A.B", "x"))))
    with pytest.raises(SpecError) as info:
        generate_seed(bad)
    assert info.value.path == "spec.containers[0].env[1].name"
    nul = attrs.evolve(pod, container=attrs.evolve(pod.container, env=(EnvVar("A", "x\0y"),)))
    with pytest.raises(SpecError, match="NUL"):
        generate_seed(nul)


def test_configmap_and_secret_volumes_honour_items_modes_and_optional() -> None:
    files = {e["path"]: e for e in _user_data(CASES["configmap-secret-volumes"])["write_files"]}
    # Secrets first, then ConfigMaps; every file base64 with its mode.
    assert list(files) == ["/etc/creds/db/password", "/etc/creds/token", "/etc/app/app.conf", "/etc/app/level",
                           "/etc/partial/app.conf"]
    assert base64.b64decode(files["/etc/creds/db/password"]["content"]) == b"s3cr3t\x00\xff"
    assert files["/etc/creds/db/password"]["permissions"] == "0400"
    assert files["/etc/creds/token"]["permissions"] == "0644"
    assert files["/etc/app/app.conf"]["permissions"] == "0600"
    assert all(e["encoding"] == "b64" for e in files.values())
    assert base64.b64decode(files["/etc/app/level"]["content"]) == b"debug"


def test_file_like_mounts_become_single_files() -> None:
    files = {e["path"]: e for e in _user_data(CASES["file-like-mounts"])["write_files"]}
    assert list(files) == ["/etc/app.conf", "/root/.netrc", "/opt/conf/app.conf", "/opt/conf/level"]
    assert base64.b64decode(files["/root/.netrc"]["content"]).startswith(b"machine example.com")
    assert files["/root/.netrc"]["permissions"] == "0600"
    assert files["/opt/conf/level"]["permissions"] == "0640"


def test_missing_configmap_or_key_is_an_error_unless_optional() -> None:
    pod = CASES["configmap-secret-volumes"].pod()
    without = attrs.evolve(pod, data_objects=tuple(o for o in pod.data_objects if o.name != "app-creds"))
    with pytest.raises(SpecError) as info:
        generate_seed(without)
    assert info.value.path == "spec.volumes[1].secret"
    text = manifest("v", container={"volumeMounts": [{"name": "c", "mountPath": "/c", "subPath": "nope"}]},
                    volumes=[{"name": "c", "configMap": {"name": "cm"}}], objects=[config_map("cm", {"a": "b"})])
    with pytest.raises(SpecError) as info:
        generate_seed(Case(text).pod())
    assert info.value.path == "spec.containers[0].volumeMounts[0].subPath"


def test_flexvolume_mounts_follow_the_partition_rule() -> None:
    data = _user_data(CASES["flexvolumes"])
    assert data["mounts"] == [
        ["/dev/disk/by-id/scsi-0QEMU_QEMU_HARDDISK_data-part1", "/var/lib/data"],
        ["/dev/disk/by-id/scsi-0QEMU_QEMU_HARDDISK_whole", "/mnt/whole disk"],
        ["/dev/disk/by-id/scsi-0QEMU_QEMU_HARDDISK_third-part3", "/mnt/third", "auto", "defaults,nofail,ro"],
    ]
    assert data["runcmd"] == ["/etc/cloud/mount-volumes.sh",
                              "ln -sf /etc/cloud/mount-volumes.sh /var/lib/cloud/scripts/per-boot/"]
    script = data["write_files"][-1]
    assert script["path"] == "/etc/cloud/mount-volumes.sh"
    assert script["permissions"] == "0755"
    assert "mount \"$vmpod_dev\"1 /var/lib/data;" in script["content"]
    assert "mount \"$vmpod_dev\" '/mnt/whole disk';" in script["content"]  # quoted, unlike Virtlet
    assert "mount -o ro \"$vmpod_dev\"3 /mnt/third;" in script["content"]


def test_directory_volumes_are_9p_mounts() -> None:
    data = _user_data(CASES["ninep-mounts"])
    assert data["mounts"] == [["m0-scratch", "/scratch", "9p", "trans=virtio"],
                              ["m1-host", "/host/data", "9p", "trans=virtio,ro"],
                              ["m2-shared", "/srv/shared", "9p", "trans=virtio"],
                              ["m3-shared", "/srv/sub", "9p", "trans=virtio"]]
    # cloud-init (22.4) ignores a mounts entry whose device is a 9p tag, so the mount script runs from runcmd.
    assert data["runcmd"][0] == "/etc/cloud/mount-volumes.sh"
    assert "mount -t 9p -o trans=virtio,ro m1-host /host/data;" in data["write_files"][-1]["content"]


def test_block_devices_keep_the_users_runcmd_and_fix_its_mounts() -> None:
    data = _user_data(CASES["block-devices"])
    # Virtlet replaced the user's runcmd here (list type mismatch in its merge); vmpod appends.
    assert data["runcmd"] == ["echo user command", ["ls", "-l", "/dev/testpvc"], "/etc/cloud/symlink-devs.sh",
                              "ln -sf /etc/cloud/symlink-devs.sh /var/lib/cloud/scripts/per-boot/"]
    assert data["mounts"] == [["/dev/disk/by-id/scsi-0QEMU_QEMU_HARDDISK_testpvc", "/mnt"], ["/dev/other", "/other"]]
    script = data["write_files"][-1]["content"]
    assert "vmpod_dev=$(vmpod_disk scsi testpvc) && ln -fs \"$vmpod_dev\" /dev/testpvc\n" in script
    assert "ln -fs \"$vmpod_dev\" '/dev/disks/second one'\n" in script


def test_virtio_disks_use_virtio_by_id_paths() -> None:
    data = _user_data(CASES["block-devices-virtio"])
    assert data["mounts"] == [["/dev/disk/by-id/virtio-data-part1", "/data"]]
    assert [e["path"] for e in data["write_files"]] == ["/etc/cloud/symlink-devs.sh", "/etc/cloud/mount-volumes.sh"]
    assert data["runcmd"] == [
        "/etc/cloud/symlink-devs.sh", "ln -sf /etc/cloud/symlink-devs.sh /var/lib/cloud/scripts/per-boot/",
        "/etc/cloud/mount-volumes.sh", "ln -sf /etc/cloud/mount-volumes.sh /var/lib/cloud/scripts/per-boot/"]


def test_user_data_script_gets_the_mount_script_in_place_of_the_marker() -> None:
    documents = _seed(CASES["script-mount-marker"])
    assert documents.user_data.startswith("#!/bin/sh\necho before\n#!/bin/sh\n")
    assert documents.user_data.endswith("\necho after\n")
    assert "@virtlet-mount-script@" not in documents.user_data
    assert documents.user_data.count("vmpod_disk() {") == 1
    assert "ln -fs \"$vmpod_dev\" /dev/blk\n" in documents.user_data
    assert "mount -t 9p -o trans=virtio m1-tmp /t;" in documents.user_data
    assert not documents.is_cloud_config
    assert _seed(CASES["script-no-volumes"]).user_data == "#!/bin/sh\necho  none\n"


def test_script_from_a_source_key_is_taken_verbatim() -> None:
    expected = "#!/bin/sh\necho 'hello from a script'\necho \"second line\"\n"
    # Virtlet parsed the value as YAML first: "#!" became a comment and the lines were folded into one.
    assert _seed(CASES["source-key-plain"]).user_data == expected
    assert _seed(CASES["source-key-base64"]).user_data == expected


# --------------------------------------------------------------------------- network config


def test_network_config_for_nocloud_and_configdrive() -> None:
    nocloud = _seed(CASES["network"])
    assert nocloud.network_config == {"version": 1, "config": [
        {"type": "physical", "name": "eth0", "mac_address": "0a:58:0a:f4:01:05",
         "subnets": [{"type": "static", "address": "10.244.1.5", "netmask": "255.255.255.0",
                      "gateway": "10.244.1.1",
                      "routes": [{"network": "10.96.0.0", "netmask": "255.240.0.0", "gateway": "10.244.1.1"}]}]},
        {"type": "nameserver", "address": ["10.96.0.10"],
         "search": ["default.svc.cluster.local", "svc.cluster.local"]}]}
    assert nocloud.files()["network-config"].startswith(b"version: 1\nconfig:\n")
    configdrive = _seed(CASES["network"], CONFIGDRIVE)
    data = json.loads(configdrive.files()["openstack/latest/network_data.json"])
    assert data["links"] == [{"id": "eth0", "type": "phy", "ethernet_mac_address": "0a:58:0a:f4:01:05"}]
    assert data["networks"][0]["routes"][0] == {"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": "10.244.1.1"}
    assert data["services"] == [{"type": "dns", "address": "10.96.0.10",
                                 "search": ["default.svc.cluster.local", "svc.cluster.local"]}]


@pytest.mark.parametrize("name", ["persistent-root", "force-dhcp"])
def test_no_network_config_for_a_persistent_root_or_forced_dhcp(name: str) -> None:
    for kind in (NOCLOUD, CONFIGDRIVE):
        documents = _seed(CASES[name], kind)
        assert documents.network_config is None
        assert set(documents.files()) == ({"meta-data", "user-data"} if kind is NOCLOUD else
                                          {"openstack/latest/meta_data.json", "openstack/latest/user_data"})


def test_no_network_description_means_no_network_file() -> None:
    assert _seed(CASES["plain"]).network_config is None
    assert generate_seed(CASES["plain"].pod(), from_cni_result({"cniVersion": "1.0.0"})).network_config is None


# --------------------------------------------------------------------------- bad input


def _spec_error(pod: VMPod) -> SpecError:
    with pytest.raises(SpecError) as info:
        generate_seed(pod)
    return info.value


def test_user_data_and_meta_data_must_be_mappings() -> None:
    pod = _pod()
    for field, annotation in (("cloud_init_user_data", "VirtletCloudInitUserData"),
                              ("cloud_init_meta_data", "VirtletCloudInitMetaData")):
        bad = attrs.evolve(pod, vm=attrs.evolve(pod.vm, **{field: ["not", "a", "mapping"]}))
        error = _spec_error(bad)
        assert error.path == f"metadata.annotations.{annotation}", error
    # The manifest reader refuses them first, naming the annotation too.
    with pytest.raises(SpecError) as info:
        load_manifest_text(manifest(annotations={"VirtletCloudInitUserData": "- a list"}))
    assert "VirtletCloudInitUserData" in info.value.path


def test_generated_lists_need_list_user_data_keys() -> None:
    pod = _pod(annotations={"VirtletCloudInitUserData": "write_files: {path: /x}"})
    error = _spec_error(pod)
    assert error.path == "metadata.annotations.VirtletCloudInitUserData"
    assert "'write_files' must be a list" in error.message


def test_invalid_base64_script_names_the_encoding_annotation() -> None:
    pod = CASES["source-key-base64"].pod()
    source = pod.data_objects[0]
    broken = attrs.evolve(pod, data_objects=(attrs.evolve(source, data={"script": "not base64!"}, binary_data={}),))
    error = _spec_error(broken)
    assert error.path == "metadata.annotations.VirtletCloudInitUserDataSourceEncoding"
    assert "invalid base64" in error.message


def test_missing_source_key_names_the_key_annotation() -> None:
    pod = CASES["source-key-plain"].pod()
    missing = attrs.evolve(pod, vm=attrs.evolve(pod.vm, cloud_init_user_data_source_key="nope"))
    error = _spec_error(missing)
    assert error.path == "metadata.annotations.VirtletCloudInitUserDataSourceKey"
    assert "not found under the key" in error.message
    plain = attrs.evolve(missing, vm=attrs.evolve(missing.vm,
                                                  cloud_init_user_data_source_encoding=SourceEncoding.PLAIN))
    assert _spec_error(plain).path == "metadata.annotations.VirtletCloudInitUserDataSourceKey"


def test_a_seed_over_64_mib_names_the_annotation_that_made_it_big() -> None:
    script = "#!/bin/sh\n# " + "x" * MAX_SEED_BYTES
    pod = _pod(annotations={"VirtletCloudInitUserDataScript": "#!/bin/sh\n"})
    big_script = attrs.evolve(pod, annotations={**pod.annotations, "VirtletCloudInitUserDataScript": script},
                              vm=attrs.evolve(pod.vm, cloud_init_user_data_script=script))
    error = _spec_error(big_script)
    assert error.path == "metadata.annotations.VirtletCloudInitUserDataScript"
    assert "over the 64 MiB limit" in error.message
    volume_pod = _pod(container={"volumeMounts": [{"name": "big", "mountPath": "/big"}]},
                      volumes=[{"name": "big", "configMap": {"name": "big"}}],
                      objects=[config_map("big", {"blob": "small"})])
    blob = "y" * (MAX_SEED_BYTES // 4 * 3 + 10)
    big_volume = attrs.evolve(volume_pod, data_objects=(attrs.evolve(volume_pod.data_objects[0],
                                                                     data={"blob": blob}),))
    assert _spec_error(big_volume).path == "spec.volumes[0]"
    just_below = attrs.evolve(volume_pod, data_objects=(attrs.evolve(volume_pod.data_objects[0],
                                                                     data={"blob": "y" * (MAX_SEED_BYTES // 2)}),))
    assert len(generate_seed(just_below).user_data) < MAX_SEED_BYTES


@pytest.mark.parametrize("name", list(CASES))
def test_libyaml_and_pure_python_emitters_write_the_same_user_data(name: str) -> None:
    case = CASES[name]
    documents = generate_seed(case.pod(), case.network())
    if documents.is_cloud_config:
        data = yaml.safe_load(documents.user_data) or {}
        if "mounts" in data:
            data["mounts"] = [_flow(entry) for entry in data["mounts"]]
        assert _render_user_data(data, _make_dumper(yaml.SafeDumper)) == documents.user_data


def test_impossible_volume_uses_are_errors() -> None:
    flex_sub = _pod(container={"volumeMounts": [{"name": "d", "mountPath": "/d", "subPath": "x"}]},
                    volumes=[{"name": "d", "flexVolume": {"driver": "virtlet/flexvolume_driver",
                                                          "options": {"type": "qcow2"}}}])
    assert _spec_error(flex_sub).path == "spec.containers[0].volumeMounts[0].subPath"
    pod = _pod()
    block_claim = PersistentVolumeClaimVolume(name="b", claim_name="b", volume_mode="Block")
    block_mount = attrs.evolve(pod, volumes=(block_claim,),
                               container=attrs.evolve(pod.container, volume_mounts=(VolumeMount("b", "/b"),)))
    assert "block volume" in _spec_error(block_mount).message
    file_mount = attrs.evolve(pod, volumes=(HostPathVolume(name="f", path="/etc/hosts", type="File"),),
                              container=attrs.evolve(pod.container, volume_mounts=(VolumeMount("f", "/f"),)))
    assert "cannot be shared" in _spec_error(file_mount).message
    unknown = attrs.evolve(pod, container=attrs.evolve(pod.container, volume_mounts=(VolumeMount("gone", "/g"),)))
    assert _spec_error(unknown).path == "spec.containers[0].volumeMounts[0].name"
    device = attrs.evolve(pod, volumes=(block_claim,),
                          container=attrs.evolve(pod.container, volume_devices=(VolumeDevice("b", "/dev/b"),)))
    with pytest.raises(SpecError, match="no guest disk"):
        generate_seed(device, disks=DiskMap())


# --------------------------------------------------------------------------- blank qcow2 flexvolumes


def _flex(name: str, **options: str) -> dict[str, Any]:
    return {"name": name, "flexVolume": {"driver": "virtlet/flexvolume_driver", "options": options}}


def _user_data_map(pod: VMPod) -> dict[str, Any]:
    data = yaml.safe_load(generate_seed(pod).user_data)
    assert isinstance(data, dict)
    return data


def test_qcow2_flexvolumes_are_partitioned_and_formatted_by_the_guest() -> None:
    pod = _pod(container={"volumeMounts": [{"name": "data", "mountPath": "/data"}]},
               volumes=[_flex("data", type="qcow2"), _flex("one", type="qcow2", part="1"),
                        _flex("whole", type="qcow2", part="0"), _flex("third", type="qcow2", part="3"),
                        _flex("dev", type="raw", path="/dev/loop0")])
    data = _user_data_map(pod)
    path = {disk.volume: disk.path for disk in default_disk_map(pod).disks}
    mbr = {"table_type": "mbr", "layout": [100], "overwrite": False}
    assert data["disk_setup"] == {path["data"]: mbr, path["one"]: mbr}
    assert data["fs_setup"] == [{"device": path[name], "filesystem": "ext4", "partition": "any", "overwrite": False}
                                for name in ("data", "one", "whole")]
    assert data["mounts"] == [[path["data"] + "-part1", "/data"]]


def test_the_users_own_disk_setup_and_fs_setup_win() -> None:
    path = by_id_path(DiskDriver.SCSI, "data")
    user = {"disk_setup": {path: {"table_type": "gpt", "layout": [50, 50]}, "/dev/vdz": {"layout": True}},
            "fs_setup": [{"device": path, "partition": 2, "filesystem": "xfs"}]}
    pod = _pod(annotations={"VirtletCloudInitUserData": yaml.safe_dump(user)},
               volumes=[_flex("data", type="qcow2"), _flex("more", type="qcow2")])
    data = _user_data_map(pod)
    more = by_id_path(DiskDriver.SCSI, "more")
    assert data["disk_setup"] == {**user["disk_setup"],
                                  more: {"table_type": "mbr", "layout": [100], "overwrite": False}}
    assert data["fs_setup"] == [*user["fs_setup"],
                                {"device": more, "filesystem": "ext4", "partition": "any", "overwrite": False}]


@pytest.mark.parametrize(("key", "value"), [("disk_setup", ["x"]), ("fs_setup", {"x": 1})])
def test_disk_setup_and_fs_setup_of_the_wrong_type_are_errors(key: str, value: object) -> None:
    pod = _pod(annotations={"VirtletCloudInitUserData": yaml.safe_dump({key: value})},
               volumes=[_flex("data", type="qcow2")])
    error = _spec_error(pod)
    assert error.path == "metadata.annotations.VirtletCloudInitUserData"
    assert key in error.message
    without_flexvolumes = _pod(annotations={"VirtletCloudInitUserData": yaml.safe_dump({key: value})})
    assert _user_data_map(without_flexvolumes)[key] == value  # nothing to merge: passed through


def test_no_disk_setup_without_qcow2_flexvolumes_or_with_a_script() -> None:
    assert "disk_setup" not in _user_data_map(_pod(volumes=[_flex("third", type="qcow2", part="3")]))
    assert "fs_setup" not in _user_data_map(_pod(volumes=[_flex("third", type="qcow2", part="3")]))
    script = _pod(annotations={"VirtletCloudInitUserDataScript": "#!/bin/sh\n@virtlet-mount-script@\n"},
                  container={"volumeMounts": [{"name": "data", "mountPath": "/data"}]},
                  volumes=[_flex("data", type="qcow2")])
    user_data = generate_seed(script).user_data
    assert "disk_setup" not in user_data
    assert "has no partition 1 (a blank disk?)" in user_data


def test_the_mount_script_skips_a_blank_disk_and_mounts_the_rest(tmp_path: Path) -> None:
    """On a blank disk (no partition 1) the script says so and goes on; with the partition it mounts it."""
    _fake_sysfs(tmp_path)  # virtio serial "data" is /dev/vdb
    disk = GuestDisk("data", DiskDriver.VIRTIO, "data", by_id_path(DiskDriver.VIRTIO, "data"))
    text = mount_script([BlockMount(disk, 1, "/data"), NinePMount("tag", "/shared")])
    assert text is not None
    # Stubs: nothing is mounted, every device node is missing except those listed in $VMPOD_NODES.
    stubs = ('mountpoint() { return 1; }\nmkdir() { :; }\nmount() { echo "mount $*"; }\n'
             'test() { case " $VMPOD_NODES " in *" $2 "*) return 0;; esac; return 1; }\n')
    body = text.replace("[ -b ", "test -b ").replace(" ] ||", " ||")
    script = tmp_path / "mount.sh"
    script.write_text(body.replace("#!/bin/sh\n", "#!/bin/sh\n" + stubs, 1))
    for shell in ["dash"] + (["busybox sh"] if shutil.which("busybox") else []):
        env = {"VMPOD_SYSFS": str(tmp_path), "PATH": "/usr/bin:/bin", "VMPOD_NODES": ""}
        blank = subprocess.run([*shell.split(), str(script)], capture_output=True, text=True, check=False, env=env)
        assert blank.stdout == "mount -t 9p -o trans=virtio tag /shared\n", shell
        assert blank.stderr == "vmpod: /dev/vdb has no partition 1 (a blank disk?), not mounting /data\n"
        env["VMPOD_NODES"] = "/dev/vdb1"
        ready = subprocess.run([*shell.split(), str(script)], capture_output=True, text=True, check=False, env=env)
        assert ready.stdout == "mount /dev/vdb1 /data\nmount -t 9p -o trans=virtio tag /shared\n", shell
        assert ready.stderr == ""


# --------------------------------------------------------------------------- the disk map


def test_disk_map_order_serials_and_paths() -> None:
    pod = CASES["flexvolumes"].pod()
    assert data_disk_volumes(pod) == ("an-unmounted-disk-with-a-long-name", "data", "third", "whole")
    disks = default_disk_map(pod).disks
    digest = hashlib.sha256(b"an-unmounted-disk-with-a-long-name").hexdigest()[:8]
    assert [d.serial for d in disks] == [f"an-unmounte-{digest}", "data", "third", "whole"]
    assert len(disks[0].serial) == 20
    assert disk_serial("a" * 40) != disk_serial("a" * 39)
    assert by_id_path(DiskDriver.VIRTIO, "data") == "/dev/disk/by-id/virtio-data"
    assert by_id_path(DiskDriver.SCSI, "data") == "/dev/disk/by-id/scsi-0QEMU_QEMU_HARDDISK_data"
    block = default_disk_map(CASES["block-devices-virtio"].pod())
    assert [(d.volume, d.bus, d.path) for d in block.disks] == [
        ("testpvc", DiskDriver.VIRTIO, "/dev/disk/by-id/virtio-testpvc"),
        ("data", DiskDriver.VIRTIO, "/dev/disk/by-id/virtio-data")]
    assert GuestDisk("v", DiskDriver.VIRTIO, "v", "/p").partition_path(0) == "/p"


def test_disk_map_tags_are_unique_and_short() -> None:
    long_name = "a-volume-with-a-name-much-longer-than-a-9p-tag-may-be"
    pod = _pod(container={"volumeMounts": [{"name": long_name, "mountPath": f"/m{i}"} for i in range(12)]},
               volumes=[{"name": long_name, "emptyDir": {}}])
    tags = [f.tag for f in default_disk_map(pod).filesystems]
    assert len(set(tags)) == 12
    assert all(len(tag) <= 31 for tag in tags)
    assert tags[11] == "m11-" + long_name[:27]


@pytest.mark.parametrize(("bus", "limit"), [(DiskDriver.SCSI, 26), (DiskDriver.VIRTIO, 21)])
def test_too_many_disks_for_the_bus(bus: DiskDriver, limit: int) -> None:
    assert MAX_DISKS[bus] == limit
    pod = _pod(annotations={"VirtletDiskDriver": bus.value})

    def with_disks(count: int) -> VMPod:
        volumes = tuple(FlexVolume(name=f"d{i}", options=Qcow2FlexOptions()) for i in range(count))
        return attrs.evolve(pod, volumes=volumes)

    assert len(default_disk_map(with_disks(limit - 2)).disks) == limit - 2
    with pytest.raises(SpecError, match=f"too many {bus.value} block devices"):
        default_disk_map(with_disks(limit - 1))


# --------------------------------------------------------------------------- the scripts


def _all_scripts() -> list[str]:
    scripts = []
    for case in CASES.values():
        pod = case.pod()
        documents = generate_seed(pod, case.network())
        if not documents.is_cloud_config:
            scripts.append(documents.user_data)
            continue
        for entry in (yaml.safe_load(documents.user_data) or {}).get("write_files") or []:
            if entry["path"].endswith(".sh"):
                scripts.append(entry["content"])
    return scripts


def test_generated_scripts_are_valid_sh_for_dash_and_busybox(tmp_path: Path) -> None:
    scripts = _all_scripts()
    assert len(scripts) >= 8
    shells = [["dash", "-n"]] + ([["busybox", "sh", "-n"]] if shutil.which("busybox") else [])
    for index, script in enumerate(scripts):
        path = tmp_path / f"script{index}.sh"
        path.write_text(script)
        for shell in shells:
            result = subprocess.run([*shell, str(path)], capture_output=True, text=True, check=False)
            assert result.returncode == 0, (shell, result.stderr, script)


def _fake_sysfs(root: Path) -> None:
    (root / "block" / "vda").mkdir(parents=True)
    (root / "block" / "vda" / "serial").write_text("vmpod_root")
    (root / "block" / "vdb").mkdir()
    (root / "block" / "vdb" / "serial").write_text("data\n")
    for name, serial in (("sda", b"testpvc"), ("sdb", b"second one"), ("sr0", b"vmpod_seed")):
        (root / "block" / name / "device").mkdir(parents=True)
        (root / "block" / name / "device" / "vpd_pg80").write_bytes(b"\x00\x80\x00" + bytes([len(serial)]) + serial)


@pytest.mark.parametrize(("bus", "serial", "device"), [
    ("virtio", "data", "/dev/vdb"), ("virtio", "vmpod_root", "/dev/vda"),
    ("scsi", "testpvc", "/dev/sda"), ("scsi", "second one", "/dev/sdb"), ("scsi", "vmpod_seed", "/dev/sr0")])
def test_disk_lookup_by_serial_in_sysfs(tmp_path: Path, bus: str, serial: str, device: str) -> None:
    _fake_sysfs(tmp_path)
    for shell in ["dash"] + (["busybox sh"] if shutil.which("busybox") else []):
        argv = [*shell.split(), "-c", DISK_LOOKUP_FUNCTION + 'vmpod_disk "$1" "$2"', "sh", bus, serial]
        result = subprocess.run(argv, capture_output=True, text=True, check=False,
                                env={"VMPOD_SYSFS": str(tmp_path), "PATH": "/usr/bin:/bin"})
        assert (result.returncode, result.stdout) == (0, device + "\n"), (shell, result.stderr)


def test_disk_lookup_fails_loudly(tmp_path: Path) -> None:
    _fake_sysfs(tmp_path)
    result = subprocess.run(["dash", "-c", DISK_LOOKUP_FUNCTION + "vmpod_disk virtio testpvc"], capture_output=True,
                            text=True, check=False, env={"VMPOD_SYSFS": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 1
    assert result.stderr == "vmpod: no virtio disk with serial testpvc\n"


def test_scripts_quote_every_path_and_are_absent_without_volumes() -> None:
    disk = GuestDisk("v", DiskDriver.SCSI, "v", "/dev/disk/by-id/x")
    text = mount_script([BlockMount(disk, 1, "/a b/$(reboot)"), NinePMount("t;x", "/c'd")])
    assert text is not None
    assert "mountpoint -q '/a b/$(reboot)'; then mkdir -p '/a b/$(reboot)' &&" in text
    assert "mount \"$vmpod_dev\"1 '/a b/$(reboot)'; fi" in text
    assert "mount -t 9p -o trans=virtio 't;x' '/c'\"'\"'d'; fi" in text
    assert mount_script([]) is None
    assert symlink_script([]) is None
    assert DISK_LOOKUP_FUNCTION not in (mount_script([NinePMount("t", "/t")]) or "")


# --------------------------------------------------------------------------- the plugin hook


def test_adjust_replaces_the_documents_before_the_size_check() -> None:
    pod = CASES["plain"].pod()

    def add_runcmd(seen_pod: VMPod, documents: SeedDocuments) -> SeedDocuments:
        assert seen_pod is pod
        assert documents.user_data == "#cloud-config\n{}\n"
        return attrs.evolve(documents, user_data=render_user_data({"runcmd": ["echo adjusted"]}))

    assert yaml.safe_load(generate_seed(pod, adjust=add_runcmd).user_data) == {"runcmd": ["echo adjusted"]}

    def too_big(_: VMPod, documents: SeedDocuments) -> SeedDocuments:
        return attrs.evolve(documents, user_data="#" * (MAX_SEED_BYTES + 1))

    with pytest.raises(SpecError) as info:
        generate_seed(pod, adjust=too_big)
    assert info.value.path == "seed"
    with pytest.raises(VmpodError, match="returned dict"):
        generate_seed(pod, adjust=lambda _pod, _docs: {})  # type: ignore[arg-type,return-value]


class _HostsPlugin:
    @vmpod.hookimpl
    def vmpod_adjust_seed(self, documents: SeedDocuments) -> SeedDocuments:
        return attrs.evolve(documents, meta_data={**documents.meta_data, "order": ["hosts"]})


class _LaterPlugin:
    @vmpod.hookimpl
    def vmpod_adjust_seed(self, pod: VMPod, documents: SeedDocuments) -> SeedDocuments | None:
        if pod.name != "plain-vm":
            return None
        order = [*documents.meta_data["order"], "later"]
        return attrs.evolve(documents, meta_data={**documents.meta_data, "order": order})


def test_plugin_managers_adjust_seed_chains_plugins_in_registration_order() -> None:
    manager = get_plugin_manager(load_entrypoints=False)
    manager.register(_HostsPlugin(), name="hosts")
    manager.register(_LaterPlugin(), name="later")
    documents = generate_seed(CASES["plain"].pod(), adjust=manager.adjust_seed)
    assert documents.meta_data["order"] == ["hosts", "later"]


# --------------------------------------------------------------------------- determinism


def test_same_pod_same_bytes_and_independent_of_input_order() -> None:
    case = CASES["configdrive-everything"]
    first = generate_seed(case.pod(), case.network())
    again = generate_seed(case.pod(), from_cni_result(json.loads(json.dumps(CNI_BRIDGE))))
    assert first.files() == again.files()
    assert first == again
    pod = case.pod()
    shuffled = attrs.evolve(pod, data_objects=tuple(reversed(pod.data_objects)))
    assert generate_seed(shuffled, case.network()).files() == first.files()



# --------------------------------------------------------------------------- any pod


@settings(max_examples=30, deadline=None)
@given(pod=vm_pods(), kind=st.sampled_from(CloudInitImageType), cni=st.sampled_from([None, CNI_BRIDGE]))
def test_any_pod_gives_documents_or_a_spec_error(pod: VMPod, kind: CloudInitImageType,
                                                 cni: dict[str, Any] | None) -> None:
    network = from_cni_result(cni) if cni is not None else None
    try:
        documents = generate_seed(pod, network, image_type=kind)
    except SpecError as error:
        refusal: SpecError | None = error
    else:
        refusal = None
    if refusal is not None:
        assert refusal.path  # every refusal names what is wrong
        return
    files = documents.files()
    assert documents.volume_label in ("cidata", "config-2")
    assert generate_seed(pod, network, image_type=kind).files() == files  # deterministic
    if documents.is_cloud_config:
        assert isinstance(yaml.safe_load(documents.user_data), dict)
    meta_name = "openstack/latest/meta_data.json" if kind is CONFIGDRIVE else "meta-data"
    assert json.loads(files[meta_name]) == documents.meta_data


def test_public_api_is_exported() -> None:
    package = vmpod.cloudinit
    assert package.__all__ == sorted(package.__all__, key=lambda n: (not n.isupper(), n))
    for name in package.__all__:
        assert getattr(package, name) is not None, name
    defined_here = {name for name, value in vars(package).items()
                    if not name.startswith("_") and str(getattr(value, "__module__", "")).startswith("vmpod.cloudinit")}
    assert defined_here <= set(package.__all__)
