"""Registers lmlab's typed configs and constructors with gin.

Model code stays free of gin: its config dataclasses are registered here, from
the outside, under short names that gin files use (``EncoderConfig.d_model``).
Importing this module is enough to make every lmlab configurable known, which
is what lets gin reject a misspelt name at parse time.
"""

import gin

from lmlab import inference, runs  # noqa: F401  (registers)
from lmlab.glue import config as finetune_config  # noqa: F401  (registers)
from lmlab.training import config, optimizers, partitioning  # noqa: F401  (registers)
from lmlab.wrappers import encoder_decoder, masked_lm  # noqa: F401  (registers)
from lmlab.data import corpus, preprocessors, tasks  # noqa: F401  (registers CorpusTask, preprocessors, tasks)
from lmlab.glue import file_tasks
from lmlab.models import config as model_config

gin.external_configurable(model_config.EncoderConfig, name="EncoderConfig")
gin.external_configurable(model_config.T5Config, name="T5Config")
gin.external_configurable(file_tasks.FileTask, name="FileTask")
