"""50 threads running, listing, stopping and deleting pods at once leave a consistent store."""

from __future__ import annotations

import random
import threading
from collections import Counter
from pathlib import Path

from tests.support.runtime_pods import make_pod
from vmpod.errors import ConflictError, InvalidTransition, NotFoundError
from vmpod.plugins import get_plugin_manager
from vmpod.runtime import ContainerState, ReconcileReport, Runtime
from vmpod.runtime.check import check_consistency

THREADS = 50
STEPS = 12
SHARED = 20


def test_fifty_threads(tmp_path: Path, image: Path) -> None:
    pods = [make_pod(image, i, volumes=(i % 4 == 0)) for i in range(SHARED)]
    own = [make_pod(image, 100 + t) for t in range(THREADS)]
    done: Counter[str] = Counter()
    failures: list[BaseException] = []
    barrier = threading.Barrier(THREADS)
    runtime = Runtime.open(tmp_path / "state", backend="fake", backend_options={"latency": "0.001"},
                           plugin_manager=get_plugin_manager())

    def work(number: int) -> None:
        rng = random.Random(number)
        try:
            barrier.wait()
            mine = own[number]
            runtime.run_pod(mine)
            for _ in range(STEPS):
                pod = rng.choice(pods)
                action = rng.choice(["run", "run", "delete", "list", "get", "stop"])
                try:
                    if action == "run":
                        runtime.run_pod(pod)
                    elif action == "delete":
                        record = runtime.find(pod.uid)
                        if record is not None:
                            runtime.delete_pod(record, timeout=0)
                    elif action == "list":
                        listed = runtime.list({"app": "web"})
                        assert all(p.labels["app"] == "web" for p in listed)
                    elif action == "get":
                        runtime.find(pod.uid)
                    else:
                        runtime.stop_container(pod.uid, timeout=0)
                    done[action] += 1
                except (NotFoundError, ConflictError, InvalidTransition):
                    done[f"{action}-raced"] += 1  # another thread deleted or is deleting the pod
            record = runtime.find(mine.uid)
            assert record is not None
            assert record.container is not None
            assert record.container.state is ContainerState.RUNNING
            runtime.delete_pod(record, timeout=0)
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not failures, failures[:3]
    assert done["run"] > 0
    assert done["delete"] > 0
    assert done["list"] > 0
    assert all(runtime.find(p.uid) is None for p in own)
    assert check_consistency(runtime) == []
    assert len(runtime._pod_locks) == 0  # no lock left behind
    runtime.close()
    with Runtime.open(tmp_path / "state", backend="fake", plugin_manager=get_plugin_manager()) as again:
        report = again.last_reconcile
        assert isinstance(report, ReconcileReport)
        assert report.undone == ()
        assert report.finished == ()
        assert report.orphans_removed == ()
        assert report.files_removed == ()
        assert report.changed == ()
        assert check_consistency(again) == []
