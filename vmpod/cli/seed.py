"""``vmpod seed``: write a pod's cloud-init seed ISO, or print its documents.

Examples::

    vmpod seed pod.yaml -o seed.iso
    vmpod seed pod.yaml --pod cirros-vm --type configdrive -o seed.iso
    vmpod seed pod.yaml --print
    vmpod seed pod.yaml --cni-result result.json --print

The documents pass through every plugin's ``vmpod_adjust_seed`` first.
Nothing is written when anything fails.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from vmpod.cloudinit import NetworkDescription, from_cni_result, generate_seed, write_seed
from vmpod.errors import SpecError
from vmpod.manifest import load_manifest_files
from vmpod.model import CloudInitImageType, VMPod
from vmpod.plugins import get_plugin_manager

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add the ``seed`` subcommand."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "seed",
        help="write a pod's cloud-init seed ISO (or print its documents)",
        description="Generate the cloud-init documents of a VM pod (meta-data, user-data, network "
                    "config) and write them as a NoCloud or ConfigDrive ISO image, or print them.",
    )
    parser.add_argument("file", metavar="FILE", type=Path, help="manifest file (YAML or JSON)")
    parser.add_argument("--pod", metavar="NAME", help="the pod to use when FILE has several")
    output = parser.add_mutually_exclusive_group(required=True)
    output.add_argument("-o", "--output", metavar="ISO", type=Path, help="write the seed ISO image here")
    output.add_argument("--print", dest="print_documents", action="store_true",
                        help="print the documents instead of writing an image")
    parser.add_argument("--type", dest="image_type", choices=[t.value for t in CloudInitImageType],
                        help="seed layout (default: the pod's VirtletCloudInitImageType, else nocloud)")
    parser.add_argument("--cni-result", metavar="JSON", type=Path,
                        help="a CNI result (JSON) describing the guest's network; without it the seed "
                             "has no network configuration and the guest uses DHCP")
    parser.set_defaults(handler=run)


def _pick(pods: tuple[VMPod, ...], name: str | None, source: str) -> VMPod:
    if name is not None:
        for pod in pods:
            if pod.name == name:
                return pod
        raise SpecError("--pod", f"no pod named {name!r} in {source}", value=name,
                        accepted=", ".join(p.name for p in pods) or "(the input has no VM pods)")
    if len(pods) != 1:
        raise SpecError("--pod", f"{source} has {len(pods)} VM pods: say which one",
                        accepted=", ".join(p.name for p in pods) or "(the input has no VM pods)")
    return pods[0]


def _network(path: Path | None) -> NetworkDescription | None:
    if path is None:
        return None
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise SpecError("--cni-result", f"cannot read {path}: {exc.strerror}", value=str(path)) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SpecError("--cni-result", f"{path} is not JSON: {exc}", value=str(path)) from None
    return from_cni_result(data, path=str(path))


def run(args: argparse.Namespace) -> int:
    """Generate the seed of the chosen pod; write it to ``--output`` or print it."""
    result = load_manifest_files([args.file])
    pod = _pick(result.pods, args.pod, str(args.file))
    network = _network(args.cni_result)
    image_type = CloudInitImageType(args.image_type) if args.image_type else None
    manager = get_plugin_manager()
    documents = generate_seed(pod, network, image_type=image_type, adjust=manager.adjust_seed)
    if args.print_documents:
        sys.stdout.write(documents.text())
        return 0
    output: Path = args.output
    try:
        write_seed(documents, output)
    except OSError as exc:
        raise SpecError("--output", f"cannot write {output}: {exc.strerror}") from None
    print(f"wrote {output} ({documents.image_type.value}, label {documents.volume_label})")
    return 0
