"""Test helpers for vmpod and its plugins.

* :mod:`vmpod.testing.strategies`: Hypothesis strategies for every model class
  (``vm_pods()``, ``vm_settings()``... all valid by construction, listed in
  ``MODEL_STRATEGIES``) and for raw manifests: ``raw_manifests(valid=True)``
  loads cleanly, ``raw_manifests(valid=False)`` is certainly refused,
  ``hostile_manifests()`` is anything at all (the loader must answer with pods
  or a :class:`~vmpod.errors.SpecError`), ``manifest_cases()`` pairs a manifest
  with the pods it must give; annotation maps likewise;
* :mod:`vmpod.testing.conformance`: the backend contract as a Hypothesis state
  machine that any backend runs (``make_conformance_test``);
* :mod:`vmpod.testing.pytest_plugin`: fixtures (``plugin_manager``,
  ``state_dir``, ``fake_backend``), loaded by pytest automatically once vmpod
  is installed.

Hypothesis and pytest are test dependencies (``vmpod[test]``): importing the
submodules needs them, importing this package does not.
"""
