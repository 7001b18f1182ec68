"""Kubeflow Pipelines definitions: wiring of the ``components/`` steps, no model math.

``python -m pipelines compile | submit | run-local`` (see :mod:`pipelines.cli`).
"""
