"""The model zoo, one file per model.

Each file holds a model's config dataclass, its module and its objective. Arrives with the model
core (issue 3).
"""
