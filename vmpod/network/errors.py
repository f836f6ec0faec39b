"""Errors of pod networking."""

from __future__ import annotations

from vmpod.errors import VmpodError

__all__ = ["CNIPluginError", "NetworkError"]


class NetworkError(VmpodError):
    """Pod networking failed: a missing or bad CNI configuration, a plugin or ``ip`` failure.

    ``released`` is set when the failed attachment was already undone (``DEL`` ran, the namespace
    is gone), so nothing is left to tear down.
    """

    released: bool = False


class CNIPluginError(NetworkError):
    """A CNI plugin reported an error (the spec's error object: ``code``, ``msg``, ``details``)."""

    def __init__(self, plugin: str, command: str, code: int, msg: str, details: str = "") -> None:
        self.plugin = plugin
        self.command = command
        self.code = code
        self.msg = msg
        self.details = details
        text = f"CNI plugin {plugin} {command} failed (code {code}): {msg}"
        super().__init__(f"{text}: {details}" if details else text)
