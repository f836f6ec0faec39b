"""vmpod: run virtual machines as Kubernetes pods.

Writing a plugin: implement hooks from :mod:`vmpod.hookspecs` with
``@vmpod.hookimpl`` and register the module under the ``vmpod`` entry-point
group of your distribution::

    [project.entry-points.vmpod]
    mybackend = "mypackage.plugin"
"""

from vmpod._markers import hookimpl

__all__ = ["__version__", "hookimpl"]

__version__ = "0.1.0"
