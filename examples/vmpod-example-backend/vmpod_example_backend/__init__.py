"""An example vmpod backend: every machine is a ``sleep`` process (see :mod:`.backend`)."""

from vmpod_example_backend.backend import SleepBackend

__all__ = ["SleepBackend"]
