"""The pipeline's KFP v2 components: thin typed wrappers of :mod:`multivae.workflow`.

Each is a lightweight Python component whose body imports ``multivae`` and calls one step,
mapping KFP artifacts to folders. They all run in the project's one image
(``MULTIVAE_IMAGE`` of ``infra/base/settings.env``), which already holds ``multivae`` and
``kfp``, so nothing is installed when a step starts.
"""

from components.evaluate import evaluate
from components.preprocess import preprocess
from components.register import register
from components.sample_augmentation import sample_augmentation
from components.train import train

__all__ = ["evaluate", "preprocess", "register", "sample_augmentation", "train"]
