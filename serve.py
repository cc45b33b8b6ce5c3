"""Serve a train.py checkpoint over HTTP (LitServe), with a web page to try it.

    python serve.py ckpt=logs/train/runs/<date>_<time>/checkpoints/best.ckpt
    python serve.py run_dir=logs/train/runs/<date>_<time> port=8080 max_batch_size=32 batch_timeout=0.01
    python serve.py run_dir=... ood.fit=true ood.fit_images=5000 data.data_dir=../shared/data

Then open http://127.0.0.1:8000/ in a browser, or
    curl -F file=@cat.png 'http://127.0.0.1:8000/predict?gradcam=1'
    curl --data-binary @cat.png http://127.0.0.1:8000/predict

cifar_lightning/serving/ describes the endpoints and how a request travels; every setting is declared in
cifar_lightning/config/inference.py.
"""

import sys

import hydra
from omegaconf import DictConfig

from cifar_lightning.errors import CifarLightningError
from cifar_lightning.serving.app import serve


@hydra.main(version_base="1.3", config_path="conf", config_name="serve")
def main(cfg: DictConfig) -> None:
    try:
        serve(cfg)
    except CifarLightningError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
