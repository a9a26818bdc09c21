"""PURE: which cn_clip image and text towers a checkpoint's tensor shapes describe.

The input is the checkpoint's state_dict as {tensor name: shape}, as training saves it
(`module.` prefixes allowed). Upstream loads checkpoints with a strict load_state_dict, so a
checkpoint evaluates only with the exact towers it was trained with; the shapes tell which.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Mapping, Sequence

Shapes = Mapping[str, Sequence[int]]


@dataclass(frozen=True)
class VisionShape:
    """What the image tower's tensor shapes reveal (ResNets have no patch; layers per stage)."""

    kind: str                      # "vit" or "resnet"
    width: int
    layers: tuple[int, ...]
    resolution: int
    embed_dim: int
    patch: int | None = None

    def describe(self) -> str:
        if self.kind == "vit":
            return (f"a ViT with patch {self.patch}, width {self.width}, {self.layers[0]} layers, "
                    f"{self.resolution} px")
        return (f"a ResNet with {'-'.join(map(str, self.layers))} blocks, width {self.width}, "
                f"{self.resolution} px")


@dataclass(frozen=True)
class TextShape:
    hidden: int
    layers: int
    intermediate: int

    def describe(self) -> str:
        return f"a BERT with hidden size {self.hidden}, {self.layers} layers"


# cn_clip/clip/model_configs/*.json, as shapes (tests/unit checks them against those files).
VISION_SHAPES: dict[str, VisionShape] = {
    "ViT-B-32": VisionShape("vit", 768, (12,), 224, 512, patch=32),
    "ViT-B-16": VisionShape("vit", 768, (12,), 224, 512, patch=16),
    "ViT-L-14": VisionShape("vit", 1024, (24,), 224, 768, patch=14),
    "ViT-L-14-336": VisionShape("vit", 1024, (24,), 336, 768, patch=14),
    "ViT-H-14": VisionShape("vit", 1280, (32,), 224, 1024, patch=14),
    "RN50": VisionShape("resnet", 64, (3, 4, 6, 3), 224, 1024),
}
TEXT_SHAPES: dict[str, TextShape] = {
    "RoBERTa-wwm-ext-base-chinese": TextShape(768, 12, 3072),
    "RoBERTa-wwm-ext-large-chinese": TextShape(1024, 24, 4096),
    "RBT3-chinese": TextShape(768, 3, 3072),
}
RESNET_STRIDE = 32  # ModifiedResNet downsamples the image 32 times before its attention pool


@dataclass(frozen=True)
class Architecture:
    """The towers a checkpoint holds: a name when cn_clip knows the shape, else None."""

    vision: str | None
    text: str | None
    vision_shape: VisionShape | None
    text_shape: TextShape | None
    embed_dim: int | None

    def describe(self) -> str:
        vision = self.vision or (self.vision_shape.describe() if self.vision_shape
                                 else "no image tower")
        text = self.text or (self.text_shape.describe() if self.text_shape else "no text tower")
        return f"{vision} + {text}"


def infer_architecture(shapes: Shapes) -> Architecture:
    """Name the towers of a state_dict given as {tensor name: shape}."""
    plain = {_strip_module(name): tuple(shape) for name, shape in shapes.items()}
    vision, text = vision_shape(plain), text_shape(plain)
    projection = plain.get("text_projection")
    return Architecture(_name_of(vision, VISION_SHAPES), _name_of(text, TEXT_SHAPES), vision, text,
                        projection[1] if projection and len(projection) == 2 else None)


def vision_shape(shapes: Shapes) -> VisionShape | None:
    try:
        if "visual.transformer.resblocks.0.ln_1.weight" in shapes:
            width, _, patch, _ = shapes["visual.conv1.weight"]
            grid = _grid(shapes["visual.positional_embedding"][0])
            return VisionShape("vit", width, (_count(shapes, r"visual\.transformer\.resblocks\.(\d+)\."),),
                               grid * patch, shapes["visual.proj"][1], patch=patch)
        if "visual.layer1.0.conv1.weight" in shapes:
            layers = tuple(_count(shapes, rf"visual\.layer{stage}\.(\d+)\.") for stage in (1, 2, 3, 4))
            grid = _grid(shapes["visual.attnpool.positional_embedding"][0])
            return VisionShape("resnet", shapes["visual.conv3.weight"][0], layers,
                               grid * RESNET_STRIDE, shapes["visual.attnpool.c_proj.weight"][0])
    except (KeyError, ValueError, IndexError, TypeError):
        return None  # a tower we cannot read: reported as "no image tower"
    return None


def text_shape(shapes: Shapes) -> TextShape | None:
    try:
        return TextShape(shapes["bert.embeddings.word_embeddings.weight"][1],
                         _count(shapes, r"bert\.encoder\.layer\.(\d+)\."),
                         shapes["bert.encoder.layer.0.intermediate.dense.weight"][0])
    except (KeyError, IndexError, TypeError):
        return None


def mismatch(architecture: Architecture, vision_model: str, text_model: str) -> str | None:
    """One sentence when the checkpoint's towers are not the ones given, else None."""
    wrong = [f"--{kind}-model {given}" for kind, given, found in
             (("vision", vision_model, architecture.vision), ("text", text_model, architecture.text))
             if given != found]
    if not wrong:
        return None
    verb = "was" if len(wrong) == 1 else "were"
    return f"checkpoint looks like {architecture.describe()}, but {' and '.join(wrong)} {verb} given"


def flags_for(architecture: Architecture) -> str | None:
    """The options that match the checkpoint, when cn_clip knows both its towers."""
    if architecture.vision and architecture.text:
        return f"--vision-model {architecture.vision} --text-model {architecture.text}"
    return None


def _strip_module(name: str) -> str:
    return name[len("module."):] if name.startswith("module.") else name


def _count(shapes: Shapes, pattern: str) -> int:
    found = {match.group(1) for name in shapes if (match := re.match(pattern, name))}
    return len(found)


def _grid(positions: int) -> int:
    """Side of the square grid whose cells, plus the class token, make POSITIONS."""
    side = math.isqrt(positions - 1)
    if side * side != positions - 1:
        raise ValueError(f"{positions} positions are not a square grid plus one")
    return side


def _name_of(found, table: Mapping):
    return next((name for name, shape in table.items() if shape == found), None)
