"""Write a randomly initialised Chinese-CLIP checkpoint in the training format.

Runs with the *server* venv's python (needs torch and cn_clip)::

    python make_checkpoint.py --output /path/epoch_latest.pt [--seed 0]

The file looks like what cn_clip training saves: fp16 weights under
``state_dict`` with DistributedDataParallel's ``module.`` prefix, plus
``epoch``/``step``/``name``, so upstream ``extract_features.py`` loads it
with its strict ``load_state_dict``.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

import cn_clip.clip.model as clip_model


def model_info(vision_model: str, text_model: str) -> dict:
    """Merged vision+text config, built exactly as extract_features.py does."""
    configs = Path(clip_model.__file__).parent / "model_configs"
    info = json.loads((configs / f"{vision_model.replace('/', '-')}.json").read_text())
    if isinstance(info["vision_layers"], str):
        # Upstream eval()s this too; it is a list literal such as "[3,4,6,3]".
        info["vision_layers"] = eval(info["vision_layers"])
    info.update(json.loads((configs / f"{text_model.replace('/', '-')}.json").read_text()))
    return info


def build_checkpoint(output: Path, *, seed: int = 0, vision_model: str = "RN50",
                     text_model: str = "RBT3-chinese") -> Path:
    """Save the checkpoint atomically (temp file + rename); return ``output``."""
    torch.manual_seed(seed)
    model = clip_model.CLIP(**model_info(vision_model, text_model))
    clip_model.convert_weights(model)  # training saves fp16 weights
    checkpoint = {
        "epoch": 1,
        "step": 100,
        "name": "evalkit-testbed",
        "state_dict": {"module." + k: v for k, v in model.state_dict().items()},
    }
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    try:
        torch.save(checkpoint, tmp)
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    return output


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vision-model", default="RN50")
    p.add_argument("--text-model", default="RBT3-chinese")
    a = p.parse_args(argv)
    print(build_checkpoint(a.output, seed=a.seed, vision_model=a.vision_model,
                           text_model=a.text_model))


if __name__ == "__main__":
    main()
