"""The reference docs cannot drift from the code: generated pages match, hand-written ones mention everything."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from vmpod.annotations import ANNOTATIONS
from vmpod.docgen import GENERATED_PAGES, annotations_markdown
from vmpod.manifest import FLEXVOLUME_TYPES, KEPT_KINDS, VOLUME_KINDS, WORKLOAD_KINDS

ANNOTATIONS_PAGE = REPO / "docs" / "reference" / "annotations.md"
MANIFESTS_PAGE = REPO / "docs" / "reference" / "manifests.md"
DIFFERENCES_PAGE = REPO / "docs" / "differences-from-virtlet.md"


@pytest.mark.parametrize("relative", sorted(GENERATED_PAGES))
def test_generated_page_is_up_to_date(relative: str) -> None:
    committed = (REPO / relative).read_text(encoding="utf-8")
    assert committed == GENERATED_PAGES[relative](), f"{relative} is stale: run python3 -m vmpod.docgen"


def test_docgen_check_mode() -> None:
    run = subprocess.run([sys.executable, "-m", "vmpod.docgen", "--check", "--root", str(REPO)],
                         capture_output=True, text=True, check=False)
    assert (run.returncode, run.stderr) == (0, "")


def test_docgen_writes_and_detects_stale_pages(tmp_path: Path) -> None:
    root = tmp_path
    stale = subprocess.run([sys.executable, "-m", "vmpod.docgen", "--check", "--root", str(root)],
                           capture_output=True, text=True, check=False)
    assert stale.returncode == 1
    assert "docs/reference/annotations.md: stale" in stale.stderr
    subprocess.run([sys.executable, "-m", "vmpod.docgen", "--root", str(root)], check=True, capture_output=True)
    assert (root / "docs/reference/annotations.md").read_text() == annotations_markdown()


def test_annotation_page_has_every_annotation_with_its_facts() -> None:
    page = annotations_markdown()
    for spec in ANNOTATIONS:
        section = page.split(f"\n## {spec.key}\n", 1)[1].split("\n## ", 1)[0]
        assert f"`VMSettings.{spec.field}`" in section
        assert f"Accepted: {spec.accepted}" in section
        assert f"Default: {spec.default}" in section
        assert spec.summary in section
        assert f"Differs from Virtlet: {spec.virtlet_difference or 'no.'}" in section
        assert f"[`{spec.key}`](#{spec.key.lower()})" in page


def test_manifest_page_mentions_every_kind_and_volume() -> None:
    page = MANIFESTS_PAGE.read_text(encoding="utf-8")
    for kind in (*WORKLOAD_KINDS, *KEPT_KINDS, "List", "Service"):
        assert re.search(rf"`{kind}`", page), kind
    for volume in VOLUME_KINDS:
        assert f"| `{volume}` |" in page, volume
    for flex in FLEXVOLUME_TYPES:
        assert f"`{flex}`" in page, flex
    for word in ("NAME-0", "hostname", "subdomain", "serviceName", "Ignored", "--accept-non-vm",
                 "exactly one container", "initContainers"):
        assert word in page, word


def test_differences_page_covers_every_annotation_difference() -> None:
    page = DIFFERENCES_PAGE.read_text(encoding="utf-8")
    assert "## The model: manifests and annotations" in page
    for spec in ANNOTATIONS:
        if spec.virtlet_difference:
            assert f"`{spec.key}`" in page, spec.key
    for words in ('Booleans other than `"true"` and `"false"` are errors', "vCPU count below 1 is an error",
                  "Source values that are not YAML are errors", "source-key script is kept verbatim",
                  "exactly one container", "not a VM pod"):
        assert words in page, words


def test_docs_link_to_existing_pages() -> None:
    for page in (ANNOTATIONS_PAGE, MANIFESTS_PAGE, DIFFERENCES_PAGE):
        for target in re.findall(r"\]\(([^)#:]+\.md)\)", page.read_text(encoding="utf-8")):
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"
