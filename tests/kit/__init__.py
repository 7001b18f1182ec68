"""The test kit: tiny datasets, judges, model configs and batches, built once per test run.

Every test module takes its shared material from here instead of building its own:

- :mod:`kit.shared`: the folder that every pytest process of one run shares (xdist workers
  included) and :func:`~kit.shared.build_once`, which builds a thing there under a file lock so
  that the first process to ask builds it and the others read it.
- :mod:`kit.data`: built-in datasets by their generator settings, made once per run.
- :mod:`kit.judges`: per-modality classifiers trained once per run on data the models never see.
- :mod:`kit.speed`: this machine's speed against the machine the time budgets were written on.
- :mod:`kit.learning`: the learning test's setting and time budget of every registered model.

The fixtures over these live in ``tests/conftest.py``. Material built here is read-only for the
tests: a test that writes into or beside a dataset copies it (or uses ``tmp_path``) first.
"""
