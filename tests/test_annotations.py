"""The annotation codec: every Virtlet annotation, its accepted values, its errors and its round trip."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from hypothesis import given, settings

from vmpod.annotations import ANNOTATIONS, annotation_for_field, format_annotations, parse_annotations
from vmpod.errors import SpecError, SpecErrors
from vmpod.manifest import load_manifest_text
from vmpod.model import (
    CloudInitImageType,
    CPUFeature,
    CPUModel,
    CPUModelMode,
    CPUTopology,
    DataKind,
    DataSourceRef,
    DiskDriver,
    LibvirtCPU,
    SourceEncoding,
    VMSettings,
)
from vmpod.testing import strategies as vs

KEYS = [spec.key for spec in ANNOTATIONS]

# --------------------------------------------------------------------------- one wrong value per annotation

#: key -> (a wrong value, words the error must show: the accepted values).
WRONG: dict[str, tuple[Any, tuple[str, ...]]] = {
    "VirtletVCPUCount": ("two", ("1", "255")),
    "VirtletDiskDriver": ("ide", ('"scsi"', '"virtio"')),
    "VirtletCloudInitImageType": ("iso", ('"nocloud"', '"configdrive"')),
    "VirtletCloudInitMetaData": ("[1, 2]", ("mapping",)),
    "VirtletCloudInitUserData": ("- a\n- b", ("mapping",)),
    "VirtletCloudInitUserDataOverwrite": ("yes", ('"true"', '"false"')),
    "VirtletCloudInitUserDataScript": (42, ("any text", "a string")),
    "VirtletCloudInitUserDataSource": ("volume/x", ('"configmap/NAME"', '"secret/NAME"')),
    "VirtletCloudInitUserDataSourceKey": (["k"], ("a key of the merged user-data", "a string")),
    "VirtletCloudInitUserDataSourceEncoding": ("base32", ('"plain"', '"base64"')),
    "VirtletSSHKeys": ({"key": "ssh-rsa AAA"}, ("SSH public keys, one per line", "a string")),
    "VirtletSSHKeySource": ("configmap", ('"configmap/NAME[/KEY]"', '"secret/NAME[/KEY]"')),
    "VirtletRootVolumeSize": ("4GB", ("Ki Mi Gi Ti Pi Ei", "k M G T P E")),
    "VirtletCPUModel": ("host-passthrough", ('"host-model"',)),
    "VirtletLibvirtCPUSetting": ("mode: turbo", ('"custom"', '"host-model"', '"host-passthrough"', '"maximum"')),
    "VirtletSystemUUID": ("not-a-uuid", ("a UUID",)),
    "VirtletForceDHCPNetworkConfig": ("True", ('"true"', '"false"')),
    "VirtletChown9pfsMounts": ("1", ('"true"', '"false"')),
    "VirtletFilesFromDataSource": ("secret", ('"configmap/NAME"', '"secret/NAME"')),
}


def test_every_annotation_has_a_wrong_value_test() -> None:
    assert sorted(WRONG) == sorted(KEYS)


@pytest.mark.parametrize("key", KEYS)
def test_wrong_value_names_the_annotation_and_the_accepted_values(key: str) -> None:
    value, accepted_words = WRONG[key]
    with pytest.raises(SpecError) as info:
        parse_annotations({key: value})
    error = info.value
    assert not isinstance(error, SpecErrors)
    assert error.path == f"metadata.annotations.{key}"
    # The value shown is the bad one: the whole annotation, or the bad part of a YAML one.
    assert error.value == value or (isinstance(value, str) and str(error.value) in value)
    shown = f"{error.message} {error.accepted}"
    for word in accepted_words:
        assert word in shown, f"{word!r} missing from {shown!r}"


@pytest.mark.parametrize("key", KEYS)
def test_wrong_value_in_a_workload_gives_the_full_path(key: str) -> None:
    value, _ = WRONG[key]
    manifest = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "d"},
        "spec": {
            "template": {
                "metadata": {"annotations": {"kubernetes.io/target-runtime": "virtlet.cloud", key: value}},
                "spec": {"containers": [{"name": "vm", "image": "virtlet.cloud/cirros"}]},
            }
        },
    }
    with pytest.raises(SpecError) as info:
        load_manifest_text(json.dumps(manifest), "d.json")
    errors = info.value.errors if isinstance(info.value, SpecErrors) else (info.value,)
    assert [e.path for e in errors] == [f"spec.template.metadata.annotations.{key}"]
    assert str(errors[0]).startswith(f"d.json: spec.template.metadata.annotations.{key}: ")


@pytest.mark.parametrize(("key", "value"), [(k, v) for k, vs_ in vs.BAD_ANNOTATION_VALUES.items() for v in vs_])
def test_known_bad_values_are_refused(key: str, value: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_annotations({key: value})
    assert info.value.path == f"metadata.annotations.{key}"
    assert info.value.accepted


def test_every_bad_value_is_reported_at_once() -> None:
    with pytest.raises(SpecErrors) as info:
        parse_annotations(
            {
                "VirtletVCPUCount": "0",
                "VirtletDiskDriver": "ide",
                "VirtletRootVolumeSize": "x",
                "VirtletChown9pfsMounts": "yes",
            }
        )
    assert sorted(e.path.rsplit(".", 1)[1] for e in info.value.errors) == [
        "VirtletChown9pfsMounts",
        "VirtletDiskDriver",
        "VirtletRootVolumeSize",
        "VirtletVCPUCount",
    ]


@pytest.mark.parametrize("value", [2, True, None, 1.5])
def test_unquoted_values_are_refused_with_a_hint(value: object) -> None:
    with pytest.raises(SpecError) as info:
        parse_annotations({"VirtletVCPUCount": value})
    assert info.value.message == "annotation values must be strings"
    assert "quote numbers and booleans" in (info.value.accepted or "")
    assert "1 to 255" in (info.value.accepted or "")


# --------------------------------------------------------------------------- accepted values


def test_defaults_are_virtlets() -> None:
    settings_ = parse_annotations({})
    assert settings_ == VMSettings()
    assert settings_.vcpu_count == 1
    assert settings_.disk_driver is DiskDriver.SCSI
    assert settings_.cloud_init_image_type is CloudInitImageType.NOCLOUD
    assert settings_.cloud_init_user_data_source_encoding is SourceEncoding.PLAIN
    assert settings_.root_volume_size is None
    assert not settings_.force_dhcp_network_config


def test_unknown_annotations_are_ignored() -> None:
    assert (
        parse_annotations(
            {"cni": "calico,flannel", "example.com/x": "1", "kubernetes.io/target-runtime": "virtlet.cloud"}
        )
        == VMSettings()
    )


@pytest.mark.parametrize(
    ("key", "text", "field", "value"),
    [
        ("VirtletVCPUCount", "2", "vcpu_count", 2),
        ("VirtletVCPUCount", " 4 ", "vcpu_count", 4),
        ("VirtletVCPUCount", "255", "vcpu_count", 255),
        ("VirtletVCPUCount", "+1", "vcpu_count", 1),
        ("VirtletDiskDriver", "virtio", "disk_driver", DiskDriver.VIRTIO),
        ("VirtletCloudInitImageType", "ConfigDrive", "cloud_init_image_type", CloudInitImageType.CONFIGDRIVE),
        ("VirtletCloudInitMetaData", '{"hostname": "h"}', "cloud_init_meta_data", {"hostname": "h"}),
        (
            "VirtletCloudInitUserData",
            "runcmd: [a]\nday: 2024-01-01",
            "cloud_init_user_data",
            {"runcmd": ["a"], "day": "2024-01-01"},
        ),
        ("VirtletCloudInitUserData", "", "cloud_init_user_data", None),
        ("VirtletCloudInitUserDataOverwrite", "true", "cloud_init_user_data_overwrite", True),
        ("VirtletCloudInitUserDataOverwrite", "false", "cloud_init_user_data_overwrite", False),
        ("VirtletCloudInitUserDataOverwrite", "", "cloud_init_user_data_overwrite", False),
        (
            "VirtletCloudInitUserDataScript",
            "#!/bin/sh\necho hi\n",
            "cloud_init_user_data_script",
            "#!/bin/sh\necho hi\n",
        ),
        (
            "VirtletCloudInitUserDataSource",
            "Secret/s",
            "cloud_init_user_data_source",
            DataSourceRef(DataKind.SECRET, "s"),
        ),
        ("VirtletCloudInitUserDataSourceKey", "script", "cloud_init_user_data_source_key", "script"),
        (
            "VirtletCloudInitUserDataSourceEncoding",
            "base64",
            "cloud_init_user_data_source_encoding",
            SourceEncoding.BASE64,
        ),
        (
            "VirtletSSHKeys",
            "ssh-rsa A a@b\r\n\n  ssh-ed25519 B c@d  \n",
            "ssh_keys",
            ("ssh-rsa A a@b", "ssh-ed25519 B c@d"),
        ),
        (
            "VirtletSSHKeySource",
            "configmap/keys",
            "ssh_key_source",
            DataSourceRef(DataKind.CONFIGMAP, "keys", "authorized_keys"),
        ),
        ("VirtletSSHKeySource", "secret/keys/mykey", "ssh_key_source", DataSourceRef(DataKind.SECRET, "keys", "mykey")),
        ("VirtletRootVolumeSize", "1Gi", "root_volume_size", 1073741824),
        ("VirtletRootVolumeSize", "4Gi", "root_volume_size", 4294967296),
        ("VirtletRootVolumeSize", "2e9", "root_volume_size", 2 * 10**9),
        ("VirtletRootVolumeSize", "0", "root_volume_size", None),
        ("VirtletCPUModel", "host-model", "cpu_model", CPUModel.HOST_MODEL),
        ("VirtletCPUModel", "", "cpu_model", None),
        (
            "VirtletSystemUUID",
            "123e4567-e89b-12d3-a456-426614174000",
            "system_uuid",
            uuid.UUID("123e4567-e89b-12d3-a456-426614174000"),
        ),
        ("VirtletForceDHCPNetworkConfig", "true", "force_dhcp_network_config", True),
        ("VirtletChown9pfsMounts", "true", "chown_9pfs_mounts", True),
        (
            "VirtletFilesFromDataSource",
            "configmap/files",
            "files_from_data_source",
            DataSourceRef(DataKind.CONFIGMAP, "files"),
        ),
    ],
)
def test_accepted_value(key: str, text: str, field: str, value: object) -> None:
    assert getattr(parse_annotations({key: text}), field) == value
    assert annotation_for_field(field) == key


def test_libvirt_cpu_setting_of_the_virtlet_example() -> None:
    text = "mode: custom\nmodel:\n  value: Westmere\nfeatures:\n- name: avx\n  policy: disable\n"
    assert parse_annotations({"VirtletLibvirtCPUSetting": text}).libvirt_cpu_setting == LibvirtCPU(
        mode=CPUModelMode.CUSTOM, model="Westmere", features=(CPUFeature("avx", "disable"),)
    )


def test_libvirt_cpu_setting_field_names_are_case_insensitive() -> None:
    text = (
        "Mode: host-passthrough\nMatch: exact\nModel: {Value: Skylake, Fallback: forbid, VendorID: GenuineIntel}\n"
        "Topology: {Sockets: 1, Cores: 2, Threads: 2}\nFeatures: [{Name: vmx}]\n"
    )
    assert parse_annotations({"VirtletLibvirtCPUSetting": text}).libvirt_cpu_setting == LibvirtCPU(
        mode=CPUModelMode.HOST_PASSTHROUGH,
        match="exact",
        model="Skylake",
        model_fallback="forbid",
        topology=CPUTopology(1, 2, 2),
        features=(CPUFeature("vmx", "require"),),
        model_vendor_id="GenuineIntel",
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("mode: custom\nMode: custom", "given twice"),
        ("topology: {cores: 0}", "positive integer"),
        ("features: 3", "features must be a list"),
        ("model: [1]", "model must be a string or a mapping"),
        ("match: loose", "unsupported CPU match"),
        ("cache: {mode: passthrough}", "unknown field cache"),
    ],
)
def test_libvirt_cpu_setting_is_checked(text: str, message: str) -> None:
    with pytest.raises(SpecError, match=message) as info:
        parse_annotations({"VirtletLibvirtCPUSetting": text})
    assert info.value.path == "metadata.annotations.VirtletLibvirtCPUSetting"


@pytest.mark.parametrize(
    ("text", "where"),
    [("users: [{1: a}]", "users[0]"), ("a: {b: .inf}", "a.b"), ("true: 1", "the top level")],
)
def test_user_data_must_be_json_data(text: str, where: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_annotations({"VirtletCloudInitUserData": text})
    assert where in info.value.message
    assert info.value.path == "metadata.annotations.VirtletCloudInitUserData"


@pytest.mark.parametrize("text", ["0", "-1", "-100"])
def test_vcpu_count_below_one_is_an_error_not_clamped(text: str) -> None:
    with pytest.raises(SpecError, match="at least 1"):
        parse_annotations({"VirtletVCPUCount": text})


def test_vcpu_count_above_255_is_an_error() -> None:
    with pytest.raises(SpecError, match="too big, max is 255"):
        parse_annotations({"VirtletVCPUCount": "256"})
    with pytest.raises(SpecError, match="too big"):
        parse_annotations({"VirtletVCPUCount": "9" * 5000})


def test_negative_root_volume_size_is_an_error() -> None:
    with pytest.raises(SpecError, match="must not be negative"):
        parse_annotations({"VirtletRootVolumeSize": "-1Gi"})


# --------------------------------------------------------------------------- round trip


@settings(max_examples=80)
@given(vs.vm_settings())
def test_parse_of_format_is_the_identity(value: VMSettings) -> None:
    annotations = format_annotations(value)
    assert all(isinstance(v, str) for v in annotations.values())
    assert set(annotations) <= set(KEYS)
    assert parse_annotations(annotations) == value


@settings(max_examples=40)
@given(vs.annotation_maps())
def test_format_of_parse_is_stable(annotations: dict[str, str]) -> None:
    once = format_annotations(parse_annotations(annotations))
    assert format_annotations(parse_annotations(once)) == once


def test_format_writes_only_what_differs_from_the_defaults() -> None:
    assert format_annotations(VMSettings()) == {}
    assert format_annotations(VMSettings(vcpu_count=2, force_dhcp_network_config=True)) == {
        "VirtletVCPUCount": "2",
        "VirtletForceDHCPNetworkConfig": "true",
    }


@settings(max_examples=40)
@given(vs.annotation_maps(valid=False))
def test_maps_with_a_bad_value_are_refused(annotations: dict[str, str]) -> None:
    with pytest.raises(SpecError):
        parse_annotations(annotations)
