"""The container image every component runs in, from the deployment settings."""

from pipelines.settings import SETTINGS

IMAGE = SETTINGS.image
"""``MULTIVAE_IMAGE`` of ``infra/base/settings.env`` (or of the environment)."""
