"""The one cattrs converter: round trips for every model class, strict structuring, errors with paths."""

from __future__ import annotations

import json
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vmpod import convert, model
from vmpod.errors import SpecError, SpecErrors
from vmpod.testing import strategies as vs

MODEL_CLASSES = sorted((obj for obj in vars(model).values() if isinstance(obj, type) and attrs.has(obj)),
                       key=lambda cls: cls.__name__)


def _errors(error: SpecError) -> tuple[SpecError, ...]:
    return error.errors if isinstance(error, SpecErrors) else (error,)


def _only_plain_data(data: Any) -> None:
    """Unstructured data is JSON data only: no model objects, enums, tuples or bytes left."""
    if isinstance(data, dict):
        for key, value in data.items():
            assert type(key) is str
            _only_plain_data(value)
    elif isinstance(data, list):
        for item in data:
            _only_plain_data(item)
    else:
        assert data is None or type(data) in (str, int, float, bool), repr(data)


def test_every_model_class_has_a_strategy() -> None:
    assert set(vs.MODEL_STRATEGIES) == set(MODEL_CLASSES)


@pytest.mark.parametrize("cls", MODEL_CLASSES, ids=lambda cls: cls.__name__)
def test_unstructure_then_structure_is_the_identity(cls: type) -> None:
    @settings(max_examples=15 if cls is not model.VMPod else 20,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(vs.MODEL_STRATEGIES[cls]())
    def check(obj: Any) -> None:
        assert type(obj) is cls
        data = convert.unstructure(obj)
        _only_plain_data(data)
        assert convert.structure(data, cls) == obj
        assert convert.from_json(convert.to_json(obj), cls) == obj
        assert convert.from_yaml(convert.to_yaml(obj), cls) == obj

    check()


@settings(max_examples=10, suppress_health_check=[HealthCheck.too_slow])
@given(vs.vm_pods())
def test_structure_then_unstructure_is_the_identity(pod: model.VMPod) -> None:
    data = json.loads(convert.to_json(pod))
    assert convert.unstructure(convert.structure(data, model.VMPod)) == data


def test_unions_are_tagged_with_kind_first() -> None:
    pod = model.VMPod(
        name="p", container=model.Container(name="c", image="i", readiness_probe=model.Probe(
            handler=model.TCPSocketAction(port=22))),
        volumes=(model.HostPathVolume("v", "/x"),
                 model.FlexVolume("f", model.Qcow2FlexOptions(capacity=5))),
    )
    data = convert.unstructure(pod)
    assert data["volumes"][0] == {"kind": "hostPath", "name": "v", "path": "/x", "type": ""}
    assert next(iter(data["volumes"][1])) == "kind"
    assert data["volumes"][1]["options"] == {"kind": "qcow2", "capacity": 5, "part": None}
    assert data["container"]["readiness_probe"]["handler"]["kind"] == "tcpSocket"


def test_quantities_uuids_and_bytes_are_strings() -> None:
    settings_ = model.VMSettings(system_uuid=__import__("uuid").UUID(int=1))
    assert convert.unstructure(settings_)["system_uuid"] == "00000000-0000-0000-0000-000000000001"
    resources = model.ResourceList(memory=model.Quantity.parse("4Gi"))
    assert convert.unstructure(resources)["memory"] == "4Gi"
    obj = model.DataObject(kind=model.DataKind.SECRET, name="s", binary_data={"k": b"\x00\xff"})
    assert convert.unstructure(obj)["binary_data"] == {"k": "AP8="}


_POD = {"name": "p", "container": {"name": "c", "image": "i"}}


@pytest.mark.parametrize(
    ("data", "cls", "path", "message"),
    [
        ({**_POD, "bogus": 1}, model.VMPod, "", "unknown keys"),
        ({**_POD, "container": {"name": "c", "image": "i", "imagee": "x"}}, model.VMPod, "container", "unknown keys"),
        ({**_POD, "vm": {"vcpu_count": 2, "vcpus": 2}}, model.VMPod, "vm", "unknown keys"),
        ({**_POD, "volumes": [{"kind": "hostPath", "name": "v", "path": "/", "extra": 1}]}, model.VMPod,
         "volumes[0]", "unknown keys"),
        ({**_POD, "volumes": [{"kind": "flexVolume", "name": "v", "options": {"kind": "raw", "path": "/dev/x",
                                                                              "size": 1}}]},
         model.VMPod, "volumes[0].options", "unknown keys"),
        ({"name": "p"}, model.VMPod, "container", "required field is missing"),
        ({**_POD, "container": {"name": "c", "image": "i", "resources": {"limits": {"memory": "lots"}}}},
         model.VMPod, "container.resources.limits.memory", "not a quantity"),
        ({**_POD, "vm": {"vcpu_count": "2"}}, model.VMPod, "vm.vcpu_count", "expected an integer"),
        ({**_POD, "vm": {"disk_driver": "ide"}}, model.VMPod, "vm.disk_driver", "not a valid DiskDriver"),
        ({**_POD, "vm": {"ssh_keys": "ssh-rsa AAA"}}, model.VMPod, "vm.ssh_keys", "expected a list"),
        ({**_POD, "labels": {"a": 1}}, model.VMPod, "labels['a']", "expected a string"),
        ({**_POD, "volumes": [{"kind": "nfs", "name": "v"}]}, model.VMPod, "volumes[0].kind", "unknown kind"),
        ({**_POD, "volumes": [{"name": "v"}]}, model.VMPod, "volumes[0].kind", "required field is missing"),
        ({**_POD, "volumes": "v"}, model.VMPod, "volumes", "expected a list"),
        ({**_POD, "vm": {"cloud_init_user_data": {"a": {1: 2}}}}, model.VMPod, "vm.cloud_init_user_data.a",
         "mapping keys must be strings"),
        ({**_POD, "vm": {"system_uuid": "x"}}, model.VMPod, "vm.system_uuid", "not a UUID"),
        ({**_POD, "container": "c"}, model.VMPod, "container", "expected a mapping for Container"),
        ([1, 2], model.VMSettings, "", "expected a mapping for VMSettings"),
    ],
)
def test_bad_data_gives_errors_with_paths(data: Any, cls: type, path: str, message: str) -> None:
    with pytest.raises(SpecError) as info:
        convert.structure(data, cls)
    errors = _errors(info.value)
    assert [(e.path, e.message) for e in errors if e.path == path and message in e.message], \
        [(e.path, e.message) for e in errors]


def test_several_problems_are_all_reported() -> None:
    data = {"name": 1, "container": {"name": "c", "image": 2, "tty": "yes"}, "vm": {"vcpu_count": "x"}}
    with pytest.raises(SpecErrors) as info:
        convert.structure(data, model.VMPod)
    assert sorted(e.path for e in info.value.errors) == ["container.image", "container.tty", "name", "vm.vcpu_count"]


def test_unknown_keys_error_lists_the_fields() -> None:
    with pytest.raises(SpecError) as info:
        convert.structure({"name": "a", "valu": "b"}, model.EnvVar)
    assert info.value.value == ["valu"]
    assert "name, value" in (info.value.accepted or "")


def test_invalid_json_and_yaml_are_spec_errors() -> None:
    with pytest.raises(SpecError, match="invalid JSON"):
        convert.from_json("{", model.VMPod)
    with pytest.raises(SpecError, match="invalid YAML"):
        convert.from_yaml("a: [", model.VMPod)


@pytest.mark.parametrize("cls", MODEL_CLASSES, ids=lambda cls: cls.__name__)
def test_structuring_junk_raises_only_spec_errors(cls: type) -> None:
    junk = st.one_of(
        vs.json_values(20),
        # A valid object's data with one value replaced by junk: the errors are deep inside.
        vs.MODEL_STRATEGIES[cls]().map(convert.unstructure).flatmap(
            lambda data: st.sampled_from(sorted(data) if isinstance(data, dict) and data else ["x"]).flatmap(
                lambda key: vs.json_values(6).map(lambda value: {**data, key: value}) if isinstance(data, dict)
                else st.just(data))),
    )

    @settings(max_examples=10, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(junk)
    def check(data: Any) -> None:
        try:
            result = convert.structure(data, cls)
        except SpecError as exc:
            for error in _errors(exc):
                assert isinstance(error.path, str)
                assert error.message
        else:
            assert type(result) is cls

    check()


def test_deeply_nested_junk_is_a_spec_error() -> None:
    data: Any = "x"
    for _ in range(5000):
        data = {"a": data}
    with pytest.raises(SpecError):
        convert.structure({**_POD, "vm": {"cloud_init_user_data": data}}, model.VMPod)
