"""The vmpod backend contract, checked against SleepBackend by vmpod's own state machine."""

from vmpod_example_backend import SleepBackend

from vmpod.testing.conformance import make_conformance_test

test_conformance = make_conformance_test(SleepBackend, max_examples=25, stateful_step_count=15, stop_timeout=2.0)
