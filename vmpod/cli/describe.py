"""``vmpod describe POD``: status, machine and events of one pod."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from vmpod.cli._runtime import add_namespace, age, open_runtime, phase
from vmpod.errors import NotFoundError

if TYPE_CHECKING:
    from vmpod.runtime import PodRecord, Runtime

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``describe``."""
    parser = subparsers.add_parser("describe", help="show a pod in detail",
                                   description="Show a pod's status, its machine and its events.")
    parser.add_argument("name", metavar="POD")
    add_namespace(parser)
    parser.set_defaults(handler=_describe)


def _line(label: str, value: object, indent: int = 0) -> str:
    return f"{' ' * indent}{label + ':':<{22 - indent}}{value}"


def _map(values: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(values.items())) or "<none>"


def _probe_lines(runtime: Runtime, record: PodRecord) -> list[str]:
    """kubectl's ``Liveness:``/``Readiness:`` lines, each followed by its last result."""
    status = runtime.probe_status(record)
    if status is None:
        return []
    lines: list[str] = []
    for label, view in (("Liveness", status.liveness), ("Readiness", status.readiness)):
        if view is None:
            continue
        lines.append(_line(label, view.summary, 2))
        state = view.state
        if not view.supported:
            result = "unsupported: exec probes need a guest agent" + (
                " (never ready)" if label == "Readiness" else " (ignored)")
        elif state is None or state.probes == 0:
            result = "not probed yet"
        else:
            result = (f"{state.result} (last: {state.last} {age(state.last_probe_at)} ago, {state.run} in a row, "
                      f"{state.probes} probes)" + (f": {state.last_message}" if state.last_message else ""))
            if state.on_hold:
                result += "; restarting"
        lines.append(_line("  Result", result, 2))
    return lines


def _describe(args: argparse.Namespace) -> int:
    from vmpod.runtime.logs import timestamp  # noqa: PLC0415

    runtime = open_runtime(args, write=False)
    if runtime is None:
        raise NotFoundError(f'pod "{args.name}" not found in namespace "{args.namespace}"')
    with runtime:
        record = runtime.get(args.name, args.namespace)
        lines = [
            _line("Name", record.name), _line("Namespace", record.namespace), _line("UID", record.uid),
            _line("Labels", _map(dict(record.labels))), _line("Backend", record.backend),
            _line("Created", timestamp(record.created_at)), _line("Status", phase(record)),
            _line("Sandbox", record.state.name), _line("IP", record.pod_ip or "<none>"),
        ]
        if record.operation:
            lines.append(_line("Unfinished", record.operation))
        container = record.container
        lines.append("Container:")
        if container is None:
            lines.append("  <not created>")
        else:
            lines += [
                _line("Name", container.name, 2), _line("Container ID", container.id, 2),
                _line("Image", container.image, 2), _line("Image ID", container.image_ref, 2),
                _line("State", container.state.name, 2),
            ]
            if container.started_at:
                lines.append(_line("Started", timestamp(container.started_at), 2))
            if container.finished_at:
                lines.append(_line("Finished", timestamp(container.finished_at), 2))
            if container.reason:
                lines += [_line("Reason", container.reason, 2), _line("Exit Code", container.exit_code, 2)]
            if container.message:
                lines.append(_line("Message", container.message, 2))
            lines += [_line("Ready", "True" if runtime.ready(record) else "False", 2),
                      _line("Restart Count", container.restart_count, 2)]
            lines += _probe_lines(runtime, record)
            lines.append(_line("Log", record.log_path, 2))
        machine = runtime.machine(record)
        lines.append("Machine:")
        if machine is None:
            lines.append("  <none>")
        else:
            lines += [_line("Name", machine.name, 2), _line("UUID", machine.uuid, 2),
                      _line("Memory", f"{machine.memory_bytes // (1024 * 1024)} MiB", 2),
                      _line("vCPUs", machine.vcpus, 2), _line("Disk bus", machine.disk_bus, 2)]
            if machine.cpu_tune is not None:
                tune = machine.cpu_tune
                lines.append(_line("CPU tune", f"shares={tune.shares} period={tune.period} quota={tune.quota}", 2))
            lines.append("  Disks:")
            for disk in machine.disks:
                flags = ",".join(f for f, on in (("ro", disk.read_only), ("cdrom", disk.cdrom),
                                                   ("block", disk.block)) if on)
                lines.append(f"    {disk.role:<7}{disk.name:<16}{disk.format:<6}{disk.path}"
                             + (f" ({flags})" if flags else ""))
            for share in machine.filesystems:
                lines.append(f"  Share:  {share.tag} -> {share.source}{' (ro)' if share.read_only else ''}")
            for nic in machine.nics:
                lines.append(f"  NIC:    {nic.mac} {nic.mode}")
        lines.append("Events:")
        events = [(e.timestamp, e.type, e.reason, age(e.timestamp), e.message) for e in runtime.events(record)]
        status = runtime.probe_status(record)
        if status is not None:  # the prober's events (it never writes the store but through the runtime)
            events += [(e.last, e.type, e.reason,
                        age(e.last) if e.count == 1 else f"{age(e.last)} (x{e.count} over {age(e.first)})",
                        e.message) for e in status.events]
        if not events:
            lines.append("  <none>")
        else:
            events.sort(key=lambda e: e[0])
            width = max(7, *(len(e[3]) + 2 for e in events))
            lines.append(f"  {'Type':<9}{'Reason':<17}{'Age':<{width}}Message")
            lines += [f"  {kind:<9}{reason:<17}{when:<{width}}{message}" for _, kind, reason, when, message in events]
        print("\n".join(lines))
    return 0
