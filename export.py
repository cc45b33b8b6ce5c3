"""Export a train.py checkpoint as ONNX or a torch.export program, normalization included, and check it.

    python export.py ckpt=logs/train/runs/<date>_<time>/checkpoints/best.ckpt            # model.onnx
    python export.py run_dir=logs/train/runs/<date>_<time> format=pt2                   # model.pt2
    python export.py run_dir=... check.images=10000

The exported model takes uint8 images (N, 3, 32, 32), RGB 0..255, any N, and returns logits (N, 10). It is
written with export.json (the parity figures, checkpoint, format, input spec, opset, versions) into its own
directory under logs/export/runs/ (cifar_lightning/config/inference.py declares every setting;
cifar_lightning/exporting.py says how).
Exit status: 0 exported and verified; 1 the exported model does not match PyTorch within the tolerances
(or an unknown config key, refused by Hydra); 2 bad input (checkpoint, setting, data), one `error:` line.
"""

import sys

import hydra
from omegaconf import DictConfig

from cifar_lightning.errors import CifarLightningError
from cifar_lightning.exporting import export


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
def main(cfg: DictConfig) -> None:
    try:
        export(cfg)
    except CifarLightningError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
