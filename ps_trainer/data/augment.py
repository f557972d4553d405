"""Decoding, the papers' training augmentations and their evaluation crops, on Pillow and numpy.

- Training crops (`TrainTransform.kind`): GoogLeNet's scale and aspect-ratio crop (Szegedy et al.
  2014, sec. 6), ResNet's and VGG's scale augmentation (He et al. 2015, sec. 3.4; Simonyan &
  Zisserman 2014, sec. 3.1), CIFAR's pad-and-crop (He et al. 2015, sec. 4.2); horizontal flips and
  AlexNet's PCA lighting noise (Krizhevsky et al. 2012, sec. 4.1).
- Evaluation views (`EvalTransform.crops`): the central crop (Inception v3's 87.5%), AlexNet's and
  ResNet's 10 crops, GoogLeNet's 144 crops (Szegedy et al. 2014, sec. 7); `average_views` averages
  their softmaxes.

Invariants: every output is float32 CHW, normalized as (pixels / 255 - IMAGENET_MEAN) /
IMAGENET_STD; the only randomness is the numpy Generator passed in, drawn in a fixed order (crop,
flip, lighting), so the same seed gives the same array in any process (Pillow resamples in fixed
point). Resampling is Pillow's BILINEAR: on a reduction Pillow widens the filter to the scale (it
antialiases, unlike TF's bilinear), and it is what TF's inception_preprocessing and torchvision's
ImageNet recipes use; BICUBIC takes about 1.5x the time (measured, 500x375 image) for no gain
these papers report.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB, for pixels in [0, 1]
IMAGENET_STD = (0.229, 0.224, 0.225)
# AlexNet's PCA of the ImageNet RGB pixels, for pixels in [0, 1] (the values fb.resnet.torch uses):
# the columns of _EIGVEC are the eigenvectors, _EIGVAL their eigenvalues.
_EIGVAL = np.array([0.2175, 0.0188, 0.0045])
_EIGVEC = np.array([[-0.5675, 0.7192, 0.4009],
                    [-0.5808, -0.0045, -0.8140],
                    [-0.5836, -0.6948, 0.4203]])
_RESAMPLE = Image.Resampling.BILINEAR
_MEAN_RGB = tuple(round(255 * m) for m in IMAGENET_MEAN)  # padding: 0 after normalization
KINDS = ("inception", "resnet", "pad_crop", "none")
EVAL_CROPS = (1, 10, 144)
_GOOGLENET_SCALES = (256, 288, 320, 352)  # shorter sides of the 144-crop views, for size 224


def decode(data: bytes, min_side: int | None = None) -> Image.Image:
    """An RGB image from JPEG or PNG bytes. With `min_side`, a JPEG is decoded at 1/2, 1/4 or 1/8
    scale (libjpeg's DCT scaling, `Image.draft`) as long as its shorter side stays >= min_side:
    a 12-megapixel photo decodes in a fraction of the time. Grayscale, CMYK, palette and RGBA
    become RGB (alpha dropped; 16-bit grayscale keeps its high byte). EXIF orientation is not
    applied, as in torchvision's loader. Raises ValueError if Pillow cannot decode the bytes."""
    try:
        img = Image.open(io.BytesIO(data))
        if min_side and img.format == "JPEG":
            # the largest reduction 1/k, k in 2, 4, 8, with both sides >= k * min_side
            img.draft("RGB", (min_side, min_side))
        img.load()
    except UnidentifiedImageError as e:
        raise ValueError(f"cannot decode image ({len(data)} bytes): not an image Pillow can "
                         f"identify") from e
    except Exception as e:  # noqa: BLE001 - whatever Pillow raises, the bytes are no image
        raise ValueError(f"cannot decode image ({len(data)} bytes): {e or type(e).__name__}") from e
    return _rgb(img)


def _rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I;16") or img.mode == "I":  # 16-bit PNG: convert() would clip at 255
        img = Image.fromarray((np.clip(np.asarray(img, np.int64), 0, 65535) >> 8).astype(np.uint8))
    elif img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # the documented route; P -> RGB directly warns
    return img.convert("RGB")


def _normalize(pixels: np.ndarray, offset=None) -> np.ndarray:
    """(..., H, W, 3) uint8 -> (..., 3, H, W) float32: (p / 255 + offset - mean) / std."""
    mean, std = np.array(IMAGENET_MEAN), np.array(IMAGENET_STD)
    if offset is not None:
        mean = mean - offset  # lighting: a per-image RGB shift, in [0, 1] pixel units
    x = np.moveaxis(pixels, -1, -3).astype(np.float32, order="C")  # (..., 3, H, W)
    x *= (1.0 / (255.0 * std)).astype(np.float32)[:, None, None]
    x -= (mean / std).astype(np.float32)[:, None, None]
    return x


def _shorter_side_to(size: tuple[int, int], side: int) -> tuple[int, int]:
    """(W, H) scaled so that the shorter side is `side`, the other rounded."""
    w, h = size
    if w <= h:
        return side, max(side, round(h * side / w))
    return max(side, round(w * side / h)), side


def _resized_crop(img: Image.Image, side: int, x: int, y: int, size: int) -> Image.Image:
    """The size x size crop at (x, y) of `img` resized to shorter side `side`, made by resizing
    only that box (Pillow's `box`: same sampling grid, a third less work than resize-then-crop)."""
    w, h = _shorter_side_to(img.size, side)
    sx, sy = img.width / w, img.height / h
    box = (x * sx, y * sy, (x + size) * sx, (y + size) * sy)
    return img.resize((size, size), _RESAMPLE, box=box)


def inception_box(width: int, height: int, rng: np.random.Generator, scale=(0.08, 1.0),
                  ratio=(3 / 4, 4 / 3), attempts: int = 10) -> tuple[float, float, float, float]:
    """GoogLeNet's crop (Szegedy et al. 2014, sec. 6): (x, y, w, h) in pixels, its area uniform in
    `scale` of the image's, its aspect w / h log-uniform in `ratio` (symmetric in w/h and h/w), at
    a uniform position. Boxes are fractional (Pillow resamples any box), so both ranges hold
    exactly. After `attempts` draws that do not fit, the largest central box within `ratio`."""
    area = width * height
    for _ in range(attempts):
        a = area * rng.uniform(*scale)
        r = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w, h = math.sqrt(a * r), math.sqrt(a / r)
        if w <= width and h <= height:
            return rng.uniform(0, width - w), rng.uniform(0, height - h), w, h
    r = min(max(width / height, ratio[0]), ratio[1])
    w, h = min(width, height * r), min(height, width / r)
    return (width - w) / 2, (height - h) / 2, w, h


def _lighting_offset(rng: np.random.Generator, std: float) -> np.ndarray:
    """AlexNet's PCA noise (Krizhevsky et al. 2012, sec. 4.1): add [p1 p2 p3][a1 l1, a2 l2,
    a3 l3]^T, a_i ~ N(0, std), to every pixel of one image. (3,) RGB, in [0, 1] pixel units."""
    return _EIGVEC @ (rng.normal(0.0, std, 3) * _EIGVAL)


@dataclass(frozen=True)
class TrainTransform:
    """A training example: (PIL image, Generator) -> (3, size, size) float32, normalized."""

    size: int  # pixels, the side of the network's input (224, 299, 32, ...)
    kind: str = "inception"  # inception | resnet | pad_crop | none (see the module docstring)
    scale: tuple = (0.08, 1.0)  # inception: crop area / image area (GoogLeNet sec. 6)
    ratio: tuple = (3 / 4, 4 / 3)  # inception: crop aspect w / h
    sides: tuple = (256, 480)  # resnet: shorter side S drawn from [smin, smax] (ResNet sec. 3.4)
    pad: int = 4  # pad_crop: pixels added on each side, in the mean colour (ResNet sec. 4.2)
    flip: bool = True  # horizontal mirror with p = 0.5: every paper's cheapest factor of 2
    lighting: float = 0.0  # std of AlexNet's PCA noise (the paper: 0.1; 0 = off)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown augmentation {self.kind!r}; choose one of: "
                             f"{', '.join(KINDS)}")
        if self.size < 1 or self.pad < 0 or self.lighting < 0:
            raise ValueError(f"need size >= 1, pad >= 0, lighting >= 0; got {self}")
        if not (0 < self.scale[0] <= self.scale[1] <= 1 and 0 < self.ratio[0] <= self.ratio[1]):
            raise ValueError(f"need 0 < scale[0] <= scale[1] <= 1 and 0 < ratio[0] <= ratio[1]; "
                             f"got scale={self.scale}, ratio={self.ratio}")
        if self.kind == "resnet" and not self.size <= self.sides[0] <= self.sides[1]:
            raise ValueError(f"resnet crops need size <= sides[0] <= sides[1]; got "
                             f"size={self.size}, sides={self.sides}")

    @property
    def decode_side(self) -> int:
        """The shorter side `decode` should keep so that no crop is upsampled from a draft that the
        full image would have given sharper: smax for resnet (inception: size, the whole image)."""
        return self.sides[1] if self.kind == "resnet" else self.size

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> np.ndarray:
        img, s = _rgb(img), self.size
        if self.kind == "inception":
            x, y, w, h = inception_box(img.width, img.height, rng, self.scale, self.ratio)
            out = img.resize((s, s), _RESAMPLE, box=(x, y, x + w, y + h))
        elif self.kind == "resnet":
            side = int(rng.integers(self.sides[0], self.sides[1] + 1))
            w, h = _shorter_side_to(img.size, side)
            out = _resized_crop(img, side, int(rng.integers(0, w - s + 1)),
                                int(rng.integers(0, h - s + 1)), s)
        elif self.kind == "pad_crop":
            if img.size != (s, s):
                img = _center_crop(img, s, s)
            x, y = rng.integers(0, 2 * self.pad + 1, 2)
            out = ImageOps.expand(img, self.pad, _MEAN_RGB).crop((x, y, x + s, y + s))
        else:
            out = _center_crop(img, s, s)
        pixels = np.asarray(out)  # (size, size, 3) uint8
        if self.flip and rng.random() < 0.5:
            pixels = pixels[:, ::-1]
        offset = _lighting_offset(rng, self.lighting) if self.lighting else None
        return _normalize(pixels, offset)  # (3, size, size)


def _center_crop(img: Image.Image, side: int, size: int) -> Image.Image:
    """The central size x size crop of `img` resized to shorter side `side`."""
    w, h = _shorter_side_to(img.size, side)
    return _resized_crop(img, side, (w - size) // 2, (h - size) // 2, size)


def _five_crops(pixels: np.ndarray, size: int) -> list[np.ndarray]:
    """The 4 corner and the central size x size crops of (H, W, 3) `pixels`: TL, TR, BL, BR, C."""
    h, w = pixels.shape[:2]
    corners = [(0, 0), (w - size, 0), (0, h - size), (w - size, h - size),
               ((w - size) // 2, (h - size) // 2)]
    return [pixels[y:y + size, x:x + size] for x, y in corners]


@dataclass(frozen=True)
class EvalTransform:
    """Evaluation views of one image: PIL image -> (crops, 3, size, size) float32, normalized.

    - 1: the central crop, `crop_fraction` of the shorter side after resizing it to
      round(size / crop_fraction) (Inception v3: 87.5%, ResNet: 224 of 256).
    - 10: the 4 corner and the central crops of that resized image, then their mirrors: view 5 + k
      is view k flipped (AlexNet sec. 4.1, ResNet sec. 3.4).
    - 144: GoogLeNet's (Szegedy et al. 2014, sec. 7): the shorter side resized to 256, 288, 320 and
      352 (for size 224; scaled by size / 224 otherwise), the left, center and right squares (top,
      center and bottom for a portrait image), from each the 4 corner and the central crops and
      the square resized to size; views 0-71 in that order (scale, square, crop), view 72 + k is
      view k flipped. That is 86 MB of float32 per image at 224: evaluate image by image.
    """

    size: int  # pixels, the side of the network's input
    crops: int = 1  # views per image: 1, 10 or 144
    crop_fraction: float = 0.875  # the crop's share of the resized shorter side (1 and 10 crops)

    def __post_init__(self):
        if self.crops not in EVAL_CROPS:
            raise ValueError(f"eval crops must be one of {EVAL_CROPS}; got {self.crops}")
        if not 0 < self.crop_fraction <= 1:
            raise ValueError(f"crop_fraction must be in (0, 1]; got {self.crop_fraction}")

    @property
    def side(self) -> int:
        """Pixels: the shorter side the image is resized to for 1 and 10 crops."""
        return max(self.size, round(self.size / self.crop_fraction))

    @property
    def decode_side(self) -> int:
        """The shorter side `decode` should keep: the largest the views are taken from."""
        return round(_GOOGLENET_SCALES[-1] * self.size / 224) if self.crops == 144 else self.side

    def __call__(self, img: Image.Image) -> np.ndarray:
        img, s = _rgb(img), self.size
        if self.crops == 1:
            return _normalize(np.asarray(_center_crop(img, self.side, s))[None])  # (1, 3, s, s)
        if self.crops == 10:
            resized = np.asarray(img.resize(_shorter_side_to(img.size, self.side), _RESAMPLE))
            views = _five_crops(resized, s)
        else:
            views = []
            for scale in _GOOGLENET_SCALES:
                resized = img.resize(_shorter_side_to(img.size, round(scale * s / 224)), _RESAMPLE)
                views += self._squares(resized, s)
        views += [v[:, ::-1] for v in views]  # the mirrors
        return _normalize(np.stack(views))  # (crops, 3, s, s)

    @staticmethod
    def _squares(resized: Image.Image, size: int) -> list[np.ndarray]:
        """GoogLeNet's 3 squares along the longer side, 6 views of each: 5 crops and the whole."""
        w, h = resized.size
        q, long = min(w, h), max(w, h)
        views = []
        for o in (0, (long - q) // 2, long - q):
            square = resized.crop((o, 0, o + q, q) if w >= h else (0, o, q, o + q))
            views += _five_crops(np.asarray(square), size)
            views.append(np.asarray(square.resize((size, size), _RESAMPLE)))
        return views


# Each family's paper recipe: (crop kind, shorter sides for 224, lighting, eval crop fraction).
_RECIPES = {
    "inception": ("inception", (256, 480), 0.0, 0.875),  # GoogLeNet sec. 6, Inception v3 eval
    "resnet": ("resnet", (256, 480), 0.0, 224 / 256),  # ResNet sec. 3.4
    "vgg": ("resnet", (256, 512), 0.0, 224 / 256),  # VGG sec. 3.1: S in [256, 512]
    "alexnet": ("resnet", (256, 256), 0.1, 224 / 256),  # AlexNet sec. 4.1: 224 crops of 256
    "small": ("pad_crop", (256, 480), 0.0, 1.0),  # ResNet sec. 4.2: CIFAR, pad 4
}
_FAMILIES = (("googlenet", "inception"), ("bn_inception", "inception"), ("inception", "inception"),
             ("xception", "inception"), ("resnet", "resnet"), ("vgg", "vgg"),
             ("alexnet", "alexnet"))


def _family(model: str, size: int) -> str:
    from ..models import get_spec  # lazy: the loader processes that only decode need no models

    spec = get_spec(model)  # an unknown name fails here, listing the models
    if size <= 64 or spec.input_size <= 64:
        return "small"
    for prefix, family in _FAMILIES:
        if spec.name.startswith(prefix):
            return family
    raise ValueError(f"no augmentation recipe for model {spec.name!r}; add its family to "
                     f"_FAMILIES in ps_trainer/data/augment.py")


def transforms_for(model: str, size: int, *, augment: str = "auto", lighting: float = -1.0,
                   flip: bool = True, eval_crops: int = 1,
                   crop_fraction: float = 0.0) -> tuple[TrainTransform, EvalTransform]:
    """The paper's training and evaluation transforms for `model` at input side `size`: Inception
    crops for GoogLeNet, BN-Inception, Inception v3/v4, Inception-ResNet and Xception; ResNet's,
    VGG's and AlexNet's scale augmentation (their sides scaled by size / 224); CIFAR's pad-and-crop
    for the small models and any size <= 64. `augment`, `lighting` and `crop_fraction` override
    the recipe unless left at "auto", -1 and 0."""
    if augment != "auto" and augment not in KINDS:
        raise ValueError(f"unknown augment {augment!r}; choose one of: auto, {', '.join(KINDS)}")
    kind, sides, light, fraction = _RECIPES[_family(model, size)]
    sides = tuple(max(size, round(v * size / 224)) for v in sides)
    train = TrainTransform(size, kind if augment == "auto" else augment, sides=sides, flip=flip,
                           lighting=light if lighting < 0 else lighting)
    return train, EvalTransform(size, eval_crops, crop_fraction or fraction)


def average_views(logits: torch.Tensor, views: int) -> torch.Tensor:
    """(N * views, C) logits, each image's views consecutive -> (N, C): the mean of the views'
    softmaxes, what GoogLeNet (sec. 7) and AlexNet average over their crops."""
    if views < 1 or logits.shape[0] % views:
        raise ValueError(f"{logits.shape[0]} rows of logits are not whole images of {views} views")
    probs = logits.float().softmax(-1)  # (N * views, C)
    return probs.view(-1, views, logits.shape[-1]).mean(1)  # (N, C)
