"""Test helpers for vmpod and its plugins.

* :mod:`vmpod.testing.strategies`: Hypothesis strategies for vmpod's models;
* :mod:`vmpod.testing.conformance`: the backend contract as a Hypothesis state
  machine that any backend runs (``make_conformance_test``);
* :mod:`vmpod.testing.pytest_plugin`: fixtures (``plugin_manager``,
  ``state_dir``, ``fake_backend``), loaded by pytest automatically once vmpod
  is installed.

Hypothesis and pytest are test dependencies (``vmpod[test]``): importing the
submodules needs them, importing this package does not.
"""
