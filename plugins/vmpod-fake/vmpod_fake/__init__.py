"""vmpod's fake backend: a simulated hypervisor for tests.

Registered under the ``vmpod`` entry-point group as ``fake`` (see
:mod:`vmpod_fake.plugin`); open it with
``get_plugin_manager().create_backend("fake", BackendConfig(state_dir))`` or
directly with ``FakeBackend(BackendConfig(state_dir))`` to reach the
simulation controls (:class:`Faults`, ``crash``, ``power_off``, ``add_foreign``).
"""

from vmpod_fake.backend import OPERATIONS, STATE_FORMAT, FakeBackend, Faults, cri_line

__all__ = ["OPERATIONS", "STATE_FORMAT", "FakeBackend", "Faults", "__version__", "cri_line"]

__version__ = "0.1.0"
