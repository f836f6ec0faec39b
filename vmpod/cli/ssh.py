"""``vmpod ssh [USER@]POD [-i KEY] [-o OPTION]... [-- COMMAND...]``: the system ssh client into a pod's VM.

As ``virtletctl ssh``: guest port 22 is forwarded to a free local port (see
:mod:`vmpod.cli._reach`; a pod with a pod IP is relayed to it), then ``ssh`` runs with
``-p <port>``, ``StrictHostKeyChecking=no`` and ``UserKnownHostsFile=/dev/null`` (a VM's host
key is new on every boot), the key, the options and ``[USER@]127.0.0.1``; what follows
``--`` is the remote command.  vmpod exits with ssh's status and removes the forward.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import subprocess

from vmpod.errors import SpecError, VmpodError

__all__ = ["register", "ssh_argv"]

#: Options every session gets (the VM's host key changes with every boot and pod).
SSH_OPTIONS = ("-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR")


def _add_options(parser: argparse.ArgumentParser) -> None:
    """The options; they may also follow ``[USER@]POD`` (see :func:`_split_rest`)."""
    parser.add_argument("-i", "--identity", metavar="KEY", default=None, help="private key file (ssh -i)")
    parser.add_argument("-o", "--ssh-option", action="append", metavar="OPTION", default=[],
                        help="an ssh -o option (repeatable)")
    parser.add_argument("--port", type=int, metavar="PORT", default=22, help="the guest's ssh port (default 22)")
    parser.add_argument("-n", "--namespace", metavar="NAMESPACE", default="default",
                        help="the pod's namespace (default: default)")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``ssh``."""
    parser = subparsers.add_parser(
        "ssh", help="ssh into a pod's VM",
        description="Run the system ssh client against a running pod's VM (virtletctl ssh style): guest port 22 "
                    "is forwarded to a free local port for the session.",
        epilog="Options may also follow [USER@]POD; what follows -- is the remote command.")
    parser.add_argument("target", metavar="[USER@]POD")
    _add_options(parser)
    parser.add_argument("rest", nargs=argparse.REMAINDER, metavar="-- COMMAND",
                        help="the remote command (after --)")
    parser.set_defaults(handler=_ssh)


#: Options that may follow ``[USER@]POD``, each with its value: flag -> attribute.
_LATER_OPTIONS = {"-i": "identity", "--identity": "identity", "-o": "ssh_option", "--ssh-option": "ssh_option",
                  "--port": "port", "-n": "namespace", "--namespace": "namespace"}


def _split_rest(args: argparse.Namespace) -> tuple[str, ...]:
    """Read options after ``[USER@]POD`` into ``args``; return the remote command.

    The command is what follows ``--``, or else everything from the first word that is not
    one of the options.
    """
    rest: list[str] = list(args.rest)
    while rest:
        word = rest.pop(0)
        if word == "--":
            return tuple(rest)
        flag, equals, value = word.partition("=")
        attribute = _LATER_OPTIONS.get(flag) if flag.startswith("-") else None
        if attribute is None:
            return (word, *rest)
        if not equals:
            if not rest:
                raise SpecError(flag, "needs a value")
            value = rest.pop(0)
        if attribute == "ssh_option":
            args.ssh_option = [*args.ssh_option, value]
        elif attribute == "port":
            try:
                args.port = int(value)
            except ValueError:
                raise SpecError("--port", "not a port number", value=value, accepted="1 to 65535") from None
        else:
            setattr(args, attribute, value)
    return ()


def ssh_argv(port: int, user: str, *, identity: str | None = None, options: tuple[str, ...] = (),
             command: tuple[str, ...] = (), binary: str = "ssh") -> list[str]:
    """The ssh command line reaching ``127.0.0.1:port`` as ``user`` (``""``: ssh's default user)."""
    argv = [binary, "-p", str(port), *SSH_OPTIONS]
    if identity:
        argv += ["-i", identity]
    for option in options:
        argv += ["-o", option]
    argv.append(f"{user}@127.0.0.1" if user else "127.0.0.1")
    if command:
        argv += ["--", *command]
    return argv


def _ssh(args: argparse.Namespace) -> int:
    from vmpod.cli._reach import forward_ports, reach  # noqa: PLC0415
    from vmpod.machine import PortForward  # noqa: PLC0415

    command = _split_rest(args)
    user, _, pod = args.target.rpartition("@")
    if not pod:
        raise SpecError("[USER@]POD", "names no pod", value=args.target)
    if not 1 <= args.port <= 65535:
        raise SpecError("--port", "not a port number", value=args.port, accepted="1 to 65535")
    binary = shutil.which("ssh")
    if binary is None:
        raise VmpodError("vmpod ssh runs the system ssh client, and there is none (Debian package openssh-client)")
    with reach(args, pod) as target, forward_ports(target, [PortForward(guest_port=args.port, host_port=0)]) as fw:
        argv = ssh_argv(fw[0].host_port, user, identity=args.identity, options=tuple(args.ssh_option),
                        command=command, binary=binary)
        # ssh owns the terminal: Ctrl-C goes to it, not to us; SIGTERM is passed on.
        proc = subprocess.Popen(argv)
        previous_int = signal.signal(signal.SIGINT, signal.SIG_IGN)
        previous_term = signal.signal(signal.SIGTERM, lambda _s, _f: proc.terminate())
        try:
            status = proc.wait()
        finally:
            signal.signal(signal.SIGINT, previous_int)
            signal.signal(signal.SIGTERM, previous_term)
            with contextlib.suppress(ProcessLookupError):
                if proc.poll() is None:
                    proc.kill()
    return status if status >= 0 else 128 - status
