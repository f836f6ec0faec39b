"""The one exception hierarchy of vmpod.

Every error vmpod raises on purpose derives from :class:`VmpodError`::

    VmpodError
     +-- SpecError            a manifest, annotation or field the user wrote is wrong
     |    +-- SpecErrors      several SpecErrors found in one input, all reported at once
     +-- NotVMPodError        a pod that is not a VM pod (no target-runtime annotation)
     +-- NotFoundError        a pod, image, backend or plugin that does not exist
     +-- ConflictError        the thing exists already, or is in use
     +-- InvalidTransition    an operation not allowed in the object's current state
     +-- BackendError         a hypervisor backend failed; carries the hypervisor's message
     |    +-- BackendUnavailable   the backend cannot be reached or is not installed
     +-- PluginConflictError  two plugins register the same name (or a name that is not a DNS label)

The CLI prints a :class:`VmpodError` as a one-line (or one line per problem)
message and exits non-zero; it never prints a traceback for one.  Anything
else escaping is a bug in vmpod.
"""

from __future__ import annotations

import reprlib
from collections.abc import Iterable, Sequence

import attrs

__all__ = [
    "BackendError",
    "BackendUnavailable",
    "ConflictError",
    "InvalidTransition",
    "NotFoundError",
    "NotVMPodError",
    "PluginConflictError",
    "SpecError",
    "SpecErrors",
    "VmpodError",
]


class VmpodError(Exception):
    """Root of every error vmpod raises deliberately; its message is meant for the user."""


_MISSING = object()


class SpecError(VmpodError, ValueError):
    """Something the user wrote is wrong.

    Raised while reading manifests, annotations, cloud-init data and CLI input.

    :param path: dotted path of the bad field, for example
        ``spec.template.metadata.annotations.VirtletRootVolumeSize``.
    :param message: what is wrong, in words.
    :param value: the offending value, when there is one.
    :param accepted: what would have been accepted, in words.
    :param source: the file (or other origin) the input came from, when known.
    """

    def __init__(
        self,
        path: str,
        message: str,
        *,
        value: object = _MISSING,
        accepted: str | None = None,
        source: str | None = None,
    ) -> None:
        self.path = path
        self.message = message
        self.value = value
        self.accepted = accepted
        self.source = source
        super().__init__(self.render())

    @property
    def has_value(self) -> bool:
        """True when the error carries the offending value."""
        return self.value is not _MISSING

    def render(self) -> str:
        """``PATH: message: 'value' (accepted: ...)`` without the source file."""
        text = self.message
        if self.has_value:
            text += f": {_show(self.value)}"
        if self.accepted:
            text += f" (accepted: {self.accepted})"
        return f"{self.path}: {text}" if self.path else text

    def located(self, prefix: str = "", source: str | None = None) -> SpecError:
        """A copy of this error with ``prefix`` put in front of its path and ``source`` set."""
        path = join_path(prefix, self.path)
        return SpecError(
            path,
            self.message,
            value=self.value,
            accepted=self.accepted,
            source=source if source is not None else self.source,
        )

    def __str__(self) -> str:
        return f"{self.source}: {self.render()}" if self.source else self.render()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SpecError) or isinstance(other, SpecErrors):
            return NotImplemented
        return (self.path, self.message, self.source, self.accepted, self.has_value) == (
            other.path,
            other.message,
            other.source,
            other.accepted,
            other.has_value,
        ) and (not self.has_value or self.value == other.value)

    def __hash__(self) -> int:
        return hash((self.path, self.message, self.source))

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_spec_error, (self.path, self.message, self.value, self.accepted, self.source))


def _rebuild_spec_error(
    path: str, message: str, value: object, accepted: str | None, source: str | None
) -> SpecError:
    return SpecError(path, message, value=value, accepted=accepted, source=source)


class SpecErrors(SpecError):
    """Several :class:`SpecError` found in one input; ``errors`` lists every one of them."""

    def __init__(self, errors: Sequence[SpecError]) -> None:
        flat: list[SpecError] = []
        for error in errors:
            flat.extend(error.errors if isinstance(error, SpecErrors) else [error])
        if not flat:
            raise ValueError("SpecErrors needs at least one error")
        self.errors: tuple[SpecError, ...] = tuple(flat)
        first = flat[0]
        super().__init__(first.path, first.message, value=first.value, accepted=first.accepted,
                         source=first.source)

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)

    def located(self, prefix: str = "", source: str | None = None) -> SpecErrors:
        return SpecErrors([e.located(prefix, source) for e in self.errors])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SpecErrors):
            return NotImplemented
        return self.errors == other.errors

    def __hash__(self) -> int:
        return hash(self.errors)

    def __reduce__(self) -> tuple[object, ...]:
        return (SpecErrors, (list(self.errors),))


@attrs.define
class ErrorCollector:
    """Gathers :class:`SpecError` so that one input reports all its problems at once.

    Example::

        errors = ErrorCollector()
        with errors.catch():
            parse_something()
        errors.raise_if_any()
    """

    errors: list[SpecError] = attrs.field(factory=list)

    def add(self, error: SpecError) -> None:
        """Record ``error`` (a :class:`SpecErrors` is flattened)."""
        if isinstance(error, SpecErrors):
            self.errors.extend(error.errors)
        else:
            self.errors.append(error)

    def extend(self, errors: Iterable[SpecError]) -> None:
        """Record several errors."""
        for error in errors:
            self.add(error)

    def catch(self) -> _Catcher:
        """A context manager that records a :class:`SpecError` raised inside it instead of raising."""
        return _Catcher(self)

    def raise_if_any(self) -> None:
        """Raise :class:`SpecErrors` (or the single :class:`SpecError`) when anything was recorded."""
        if len(self.errors) == 1:
            raise self.errors[0]
        if self.errors:
            raise SpecErrors(self.errors)

    def __bool__(self) -> bool:
        return bool(self.errors)


class _Catcher:
    def __init__(self, collector: ErrorCollector) -> None:
        self._collector = collector

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> bool:
        if isinstance(exc, SpecError):
            self._collector.add(exc)
            return True
        return False


class NotVMPodError(VmpodError):
    """A pod without ``kubernetes.io/target-runtime: virtlet.cloud``: vmpod does not run it."""


class NotFoundError(VmpodError, LookupError):
    """A pod, image, backend, plugin or referenced object that does not exist."""


class ConflictError(VmpodError):
    """The object exists already or is in use (a pod with the same name, an image a pod uses)."""


class InvalidTransition(VmpodError):
    """The operation is not allowed in the object's current state (start of a removed VM)."""


class BackendError(VmpodError):
    """A hypervisor backend failed; the message carries the hypervisor's own words."""


class BackendUnavailable(BackendError):
    """A backend cannot be reached (daemon down) or is not installed."""


class PluginConflictError(VmpodError):
    """Two plugins register a backend, volume handler or image source with the same name (or an invalid one)."""


def join_path(prefix: str, path: str) -> str:
    """Join two dotted field paths, handling empty parts and ``[i]`` indexes."""
    if not prefix:
        return path
    if not path:
        return prefix
    if path.startswith("["):
        return prefix + path
    return f"{prefix}.{path}"


_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = 80
_REPR.maxlevel = 3
_REPR.maxdict = _REPR.maxlist = _REPR.maxtuple = _REPR.maxset = 8


def _show(value: object, limit: int = 80) -> str:
    """A short repr of ``value``; its cost does not grow with the size of ``value``."""
    try:
        text = _REPR.repr(value)
    except ValueError:  # an int too large to print
        text = f"<{type(value).__name__}>"
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text
