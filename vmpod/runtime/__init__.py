"""The vmpod runtime: VM pods as CRI pod sandboxes, each with one VM container, on one node.

::

    with Runtime.open("/var/lib/vmpod", backend="libvirt") as runtime:
        record = runtime.run_pod(pod)                 # sandbox + container + start
        runtime.list({"app": "web"})                  # label selector (CRI map or "app=web")
        runtime.delete_pod(record)                    # stop, remove everything it created

Lifecycle (CRI states, :mod:`vmpod.runtime.states`): ``create_sandbox`` (READY)
-> ``create_container`` (CREATED) -> ``start_container`` (RUNNING) ->
``stop_container`` (EXITED) -> ``remove_container`` -> ``stop_sandbox``
(NOTREADY) -> ``remove_sandbox``.  Every call is idempotent, as CRI clients
retry.  Timestamps are nanoseconds.

State lives in a SQLite store (:mod:`vmpod.runtime.store`) under the state
directory (:mod:`vmpod.runtime.layout`); intents are recorded before side
effects, outcomes after, and :mod:`vmpod.runtime.reconcile` finishes or undoes
whatever a crash interrupted when the runtime opens.  Running VMs are adopted,
never restarted.
"""

from vmpod.runtime.layout import STATE_DIR_ENV, Layout, default_state_dir
from vmpod.runtime.reconcile import ReconcileReport
from vmpod.runtime.records import ContainerRecord, EventRecord, ImageRecord, PodRecord
from vmpod.runtime.runtime import BACKEND_ENV, Runtime, choose_backend
from vmpod.runtime.states import ContainerState, SandboxState

__all__ = [
    "BACKEND_ENV",
    "STATE_DIR_ENV",
    "ContainerRecord",
    "ContainerState",
    "EventRecord",
    "ImageRecord",
    "Layout",
    "PodRecord",
    "ReconcileReport",
    "Runtime",
    "SandboxState",
    "choose_backend",
    "default_state_dir",
]
