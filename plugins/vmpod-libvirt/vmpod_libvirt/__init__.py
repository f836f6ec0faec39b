"""vmpod's libvirt backend: VM pods as libvirt domains, as Mirantis Virtlet ran them.

Registered under the ``vmpod`` entry-point group as ``libvirt`` (see :mod:`vmpod_libvirt.plugin`).
Modules: :mod:`~vmpod_libvirt.domain` (the pure Machine -> domain XML function),
:mod:`~vmpod_libvirt.backend` (:class:`~vmpod_libvirt.backend.LibvirtBackend`),
:mod:`~vmpod_libvirt.connection` (a typed, reconnecting view of libvirt-python),
:mod:`~vmpod_libvirt.records` (per-run records: start, stop, exit) and
:mod:`~vmpod_libvirt.follower` (the per-domain process that turns the serial output into the pod log).
"""

__version__ = "0.1.0"
