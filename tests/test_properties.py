"""Property tests: whatever the input, loading gives VM pods or a SpecError, never another exception."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from vmpod import convert, datasources
from vmpod.annotations import parse_annotations
from vmpod.errors import SpecError, SpecErrors
from vmpod.manifest import LoadResult, load_manifest_text
from vmpod.model import VMPod, VMSettings
from vmpod.testing import strategies as vs

SLOW = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]


def _load_or_spec_error(text: str) -> LoadResult | SpecError:
    try:
        return load_manifest_text(text, "fuzz.yaml")
    except SpecError as exc:
        return exc


def _check_error(error: SpecError) -> None:
    errors = error.errors if isinstance(error, SpecErrors) else (error,)
    assert errors
    for each in errors:
        assert each.source is not None
        assert each.source.startswith("fuzz.yaml")
        assert isinstance(each.path, str)
        assert each.message
        str(each)  # renders without failing, whatever the value


@settings(max_examples=150, suppress_health_check=SLOW)
@given(vs.hostile_manifests())
@example("")
@example("\ufeff")
@example("--- !!python/object/apply:os.system ['true']\n")
@example("kind: List\nitems: &i [*i]\n")
@example("kind: Pod\nmetadata: {name: p, annotations: {kubernetes.io/target-runtime: virtlet.cloud}}\n"
         "spec: {containers: [{name: vm, image: i, ports: [{containerPort: 1e400}]}]}")
def test_hostile_manifests_give_pods_or_a_spec_error(text: str) -> None:
    outcome = _load_or_spec_error(text)
    if isinstance(outcome, SpecError):
        _check_error(outcome)
    else:
        for pod in outcome.pods:
            assert isinstance(pod, VMPod)
            assert convert.structure(convert.unstructure(pod), VMPod) == pod


@settings(max_examples=40, suppress_health_check=SLOW)
@given(vs.manifest_cases(), st.sampled_from(["yaml", "json"]))
def test_valid_manifests_load_to_the_pods_they_describe(case: vs.ManifestCase, style: str) -> None:
    result = load_manifest_text(case.text(style=style), "case.yaml")
    assert len(result.pods) == len(case.pod_names)
    for pod, name in zip(result.pods, case.pod_names, strict=True):
        if not name.startswith("?"):
            assert pod.name == name
        assert pod.vm == case.vm
        # A pod that loads is valid: every reference resolves.
        datasources.merged_user_data(pod)
        datasources.user_data_script(pod)
        datasources.ssh_keys(pod)
        datasources.injected_files(pod)
        assert {e.name: e.value for e in pod.container.env}.get("POD_NAME", pod.name) == pod.name


@settings(max_examples=60, suppress_health_check=SLOW)
@given(vs.raw_manifests(valid=False))
def test_invalid_manifests_are_refused(text: str) -> None:
    outcome = _load_or_spec_error(text)
    assert isinstance(outcome, SpecError), text[:2000]
    _check_error(outcome)


@settings(max_examples=150, suppress_health_check=SLOW)
@given(vs.hostile_annotation_maps())
def test_hostile_annotation_maps_give_settings_or_a_spec_error(annotations: dict[Any, Any]) -> None:
    try:
        result = parse_annotations(annotations)
    except SpecError as exc:
        errors = exc.errors if isinstance(exc, SpecErrors) else (exc,)
        for error in errors:
            assert error.path.startswith("metadata.annotations.")
            assert error.path.removeprefix("metadata.annotations.") in annotations
            assert error.accepted
    else:
        assert isinstance(result, VMSettings)


@settings(max_examples=30, suppress_health_check=SLOW)
@given(vs.vm_pods())
def test_generated_pods_are_valid(pod: VMPod) -> None:
    """The public strategy keeps its promise: every reference of a generated pod resolves."""
    volume_names = [v.name for v in pod.volumes]
    assert len(set(volume_names)) == len(volume_names)
    assert {m.name for m in pod.container.volume_mounts} <= set(volume_names)
    assert sum(d.device_path == "/" for d in pod.container.volume_devices) <= 1
    assert parse_annotations(pod.annotations) == pod.vm
    datasources.merged_user_data(pod)
    datasources.user_data_script(pod)
    datasources.ssh_keys(pod)
    datasources.injected_files(pod)


@pytest.mark.parametrize("depth", [199, 200, 201, 30_000])
def test_nesting_limit(depth: int) -> None:
    text = "kind: Pod\nmetadata: {name: p, annotations: {kubernetes.io/target-runtime: virtlet.cloud}}\n" \
           "spec: {containers: [{name: vm, image: i}]}\nextra: " + "[" * depth + "]" * depth + "\n"
    outcome = _load_or_spec_error(text)
    if depth + 1 > 200:
        assert isinstance(outcome, SpecError)
        assert "nested too deeply" in str(outcome)
    else:
        assert isinstance(outcome, LoadResult)
