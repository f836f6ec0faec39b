"""``vmpod get [POD] [-o wide|json|yaml]``: list pods like ``kubectl get pods``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from vmpod.cli._runtime import add_namespace, age, open_runtime, phase
from vmpod.errors import NotFoundError

if TYPE_CHECKING:
    from vmpod.runtime import PodRecord, Runtime

__all__ = ["pod_object", "probe_object", "register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``get``."""
    parser = subparsers.add_parser("get", help="list pods", description="List VM pods (kubectl get pods style).")
    parser.add_argument("names", nargs="*", metavar="POD", help="only these pods")
    parser.add_argument("-o", "--output", choices=("wide", "json", "yaml", "name"), default=None)
    parser.add_argument("-l", "--selector", default=None, help="label selector (app=web,tier!=db)")
    parser.add_argument("-A", "--all-namespaces", action="store_true", help="pods of every namespace")
    add_namespace(parser)
    parser.set_defaults(handler=_get)


def _ts(ns: int) -> str | None:
    from vmpod.runtime.logs import timestamp  # noqa: PLC0415

    return timestamp(ns) if ns else None


def probe_object(runtime: Runtime, record: PodRecord) -> dict[str, Any] | None:
    """The pod's probes and their last results (``vmpod.probes`` of ``-o json``); None without probes."""
    status = runtime.probe_status(record)
    if status is None:
        return None
    result: dict[str, Any] = {"run": {"startedAt": _ts(status.started_at)}, "updatedAt": _ts(status.updated_at)}
    if status.restart_pending:
        result["restartPending"] = True
    for kind, view in (("readiness", status.readiness), ("liveness", status.liveness)):
        if view is None:
            continue
        entry: dict[str, Any] = {"probe": view.summary, "supported": view.supported}
        state = view.state
        if state is not None:
            entry.update(result=str(state.result), lastResult=state.last or None, lastMessage=state.last_message,
                         lastProbeTime=_ts(state.last_probe_at), lastTransitionTime=_ts(state.last_transition_at),
                         consecutive=state.run, probes=state.probes, onHold=state.on_hold)
        elif not view.supported:
            entry["result"] = "unsupported"
        result[kind] = entry
    result["events"] = [{"type": e.type, "reason": e.reason, "message": e.message, "count": e.count,
                         "firstTimestamp": _ts(e.first), "lastTimestamp": _ts(e.last)} for e in status.events]
    return result


def pod_object(runtime: Runtime, record: PodRecord) -> dict[str, Any]:
    """The pod as a Kubernetes-style object (``-o json``/``yaml``), with vmpod's own details under ``vmpod``."""
    from vmpod.runtime.states import ContainerState  # noqa: PLC0415

    container = record.container
    status: dict[str, Any] = {"phase": phase(record)}
    if record.pod_ip:
        status["podIP"] = record.pod_ip
        status["podIPs"] = [{"ip": record.pod_ip}]
    vmpod: dict[str, Any] = {"backend": record.backend, "machine": record.machine_name,
                             "sandbox": {"state": record.state.name, "createdAt": record.created_at},
                             "logPath": record.log_path}
    if record.operation:
        vmpod["operation"] = record.operation
    probes = probe_object(runtime, record)
    if probes is not None:
        vmpod["probes"] = probes
    if container is not None:
        ready = runtime.ready(record)
        status["conditions"] = [{"type": kind, "status": "True" if ready else "False"}
                                for kind in ("Ready", "ContainersReady")]
        state: dict[str, Any]
        if container.state is ContainerState.RUNNING:
            state = {"running": {"startedAt": _ts(container.started_at)}}
        elif container.state is ContainerState.EXITED:
            state = {"terminated": {"exitCode": container.exit_code, "reason": container.reason,
                                    "message": container.message, "startedAt": _ts(container.started_at),
                                    "finishedAt": _ts(container.finished_at)}}
        else:
            state = {"waiting": {"reason": phase(record)}}
        status["containerStatuses"] = [{
            "name": container.name, "containerID": f"vmpod://{container.id}", "image": container.image,
            "imageID": container.image_ref, "ready": ready,
            "restartCount": container.restart_count, "state": state}]
        vmpod["container"] = {"id": container.id, "state": container.state.name, "createdAt": container.created_at,
                              "startedAt": container.started_at, "finishedAt": container.finished_at,
                              "exitCode": container.exit_code, "reason": container.reason}
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": record.name, "namespace": record.namespace, "uid": record.uid,
                     "labels": dict(record.labels), "annotations": dict(record.annotations),
                     "creationTimestamp": _ts(record.created_at)},
        "status": status,
        "vmpod": vmpod,
    }


def _select(runtime: Runtime, args: argparse.Namespace) -> list[PodRecord]:
    namespace = None if args.all_namespaces else args.namespace
    pods = runtime.list(args.selector, namespace=namespace)
    if args.names:
        by_name = {p.name: p for p in pods}
        missing = [n for n in args.names if n not in by_name]
        if missing:
            raise NotFoundError("; ".join(f'pod "{n}" not found in namespace "{args.namespace}"' for n in missing))
        pods = [by_name[n] for n in args.names]
    return pods


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("   ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                     for row in rows)


def _get(args: argparse.Namespace) -> int:
    import yaml  # noqa: PLC0415

    runtime = open_runtime(args, write=False)
    if runtime is None:
        if args.names:
            raise NotFoundError(f'pod "{args.names[0]}" not found in namespace "{args.namespace}"')
        print("No resources found.", file=sys.stderr)
        return 0
    with runtime:
        pods = _select(runtime, args)
        if args.output in ("json", "yaml"):
            objects = [pod_object(runtime, p) for p in pods]
            data: Any = objects[0] if len(args.names) == 1 else {"apiVersion": "v1", "kind": "List",
                                                                  "items": objects}
            if args.output == "json":
                print(json.dumps(data, indent=2))
            else:
                print(yaml.safe_dump(data, sort_keys=False), end="")
            return 0
        if args.output == "name":
            for pod in pods:
                print(f"pod/{pod.name}")
            return 0
        if not pods:
            print("No resources found." if args.all_namespaces else
                  f"No resources found in {args.namespace} namespace.", file=sys.stderr)
            return 0
        header = ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
        if args.all_namespaces:
            header.insert(0, "NAMESPACE")
        if args.output == "wide":
            header += ["IP", "BACKEND", "MACHINE"]
        rows = [header]
        for pod in pods:
            container = pod.container
            ready = "1/1" if runtime.ready(pod) else "0/1"
            row = [pod.name, ready, phase(pod), str(container.restart_count if container else 0),
                   age(pod.created_at)]
            if args.all_namespaces:
                row.insert(0, pod.namespace)
            if args.output == "wide":
                row += [pod.pod_ip or "<none>", pod.backend, pod.machine_name]
            rows.append(row)
        print(_table(rows))
        if args.output == "wide":
            print(f"# new pods go to backend {runtime.backend_name}: {runtime.backend_reason}", file=sys.stderr)
    return 0
