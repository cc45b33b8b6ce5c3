"""Setting types that several schemas share, declared once."""

from typing import Annotated, Literal

from pydantic import Field

TTALevel = Annotated[
    int,
    Field(
        ge=0,
        le=2,
        description="test-time augmentation: logits averaged over views of each image",
        json_schema_extra={"must": "one of 0, 1, 2 (0: none, 1: with mirror images, 2: also shifted by one pixel)"},
    ),
]
Device = Annotated[
    Literal["auto", "cpu", "gpu"],
    Field(description="where the model runs: auto picks a CUDA GPU when there is one, else the CPU"),
]
KeepHeap = Annotated[
    bool,
    Field(
        description="glibc only: keep large CPU tensors in the heap and reuse them instead of a fresh mmap per "
        "allocation (faster CPU steps; cifar_lightning/allocator.py); false: glibc's default"
    ),
]
