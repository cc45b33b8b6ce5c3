"""OmegaConf resolvers the configs use, registered when the package is imported.

`${if_gpu:<accelerator>,<value on a GPU>,<value otherwise>}` picks a setting by where the run will
train, so one recipe can ask for bf16 autocast on a GPU and stay in float32 on a CPU (where bf16
is slow on most processors): accelerator gpu/cuda, or auto with a CUDA GPU present, counts as GPU.
The run's config.yaml records the value chosen.
"""

from typing import Any

import torch
from omegaconf import OmegaConf


def if_gpu(accelerator: str, on_gpu: Any, otherwise: Any) -> Any:
    uses_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return on_gpu if uses_gpu else otherwise


OmegaConf.register_new_resolver("if_gpu", if_gpu, replace=True)
