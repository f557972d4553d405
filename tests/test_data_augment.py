"""Decoding, the papers' training augmentations and evaluation views (ps_trainer/data/augment.py),
on images drawn with Pillow in memory. Views are compared pixel for pixel with crops made by
hand."""

import io
import warnings

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image, ImageDraw

from ps_trainer.data import augment as A
from ps_trainer.models import list_models

MEAN, STD = np.array(A.IMAGENET_MEAN), np.array(A.IMAGENET_STD)
MIRROR = Image.Transpose.FLIP_LEFT_RIGHT
LO, HI = (0 - MEAN) / STD, (1 - MEAN) / STD  # the normalized range of [0, 1] pixels, per channel


def photo(w, h, seed=0, mode="RGB"):
    """A photo-like image: gradients, a few shapes, noise; left and right differ."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 // w, y * 255 // h, (x + y) * 127 // (w + h)], -1)  # (H, W, 3)
    noisy = np.clip(base + rng.integers(-15, 16, base.shape), 0, 255).astype(np.uint8)
    img = Image.fromarray(noisy)
    draw = ImageDraw.Draw(img)
    draw.ellipse((w // 10, h // 5, w // 2, h // 2), fill=(250, 30, 30))
    draw.rectangle((w // 2, h // 2, w - w // 8, h - h // 6), fill=(20, 40, 240))
    return img.convert(mode)


def encode(img, fmt="JPEG", **options):
    out = io.BytesIO()
    img.save(out, fmt, **options)
    return out.getvalue()


def pixels(x):
    """Normalized (..., 3, H, W) float32 -> (..., H, W, 3) uint8: the pixels they came from."""
    p = (np.moveaxis(x, -3, -1) * STD.astype(np.float32) + MEAN.astype(np.float32)) * 255
    q = np.rint(p)
    assert np.abs(p - q).max() < 0.01  # whole levels: nothing but the normalization was applied
    return q.astype(np.uint8)


# --- decode -------------------------------------------------------------------------------------

@pytest.mark.parametrize("w,h,mode,fmt", [
    (500, 375, "RGB", "JPEG"), (375, 500, "RGB", "JPEG"), (500, 375, "L", "JPEG"),
    (375, 500, "CMYK", "JPEG"), (500, 375, "RGB", "PNG"), (375, 500, "RGBA", "PNG"),
    (64, 48, "P", "PNG"), (64, 48, "LA", "PNG")])
def test_decode_gives_rgb_at_full_size(w, h, mode, fmt):
    img = A.decode(encode(photo(w, h, mode=mode), fmt))
    assert img.mode == "RGB" and img.size == (w, h)
    if mode in ("L", "LA"):  # gray stays gray
        p = np.asarray(img)
        assert (p[..., 0] == p[..., 1]).all() and (p[..., 1] == p[..., 2]).all()


def test_decode_palette_with_transparency_and_16_bit_gray():
    pal = photo(40, 30).convert("P")
    pal.info["transparency"] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # P -> RGB straight would warn
        assert A.decode(encode(pal, "PNG", transparency=0)).mode == "RGB"
    deep = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16)  # 0 .. 65520
    img = A.decode(encode(Image.fromarray(deep), "PNG"))
    assert img.mode == "RGB" and (np.asarray(img)[..., 0] == deep >> 8).all()  # not clipped at 255


@pytest.mark.parametrize("data", [b"", b"not an image", encode(photo(200, 100))[:300]])
def test_decode_refuses_bad_bytes(data):
    with pytest.raises(ValueError, match="cannot decode image"):
        A.decode(data)


def test_draft_decodes_a_big_jpeg_smaller_keeping_the_shorter_side():
    data = encode(photo(1200, 900))
    assert A.decode(data).size == (1200, 900)
    # the largest of 1/1, 1/2, 1/4, 1/8 with both sides >= min_side (Pillow's rule, in whole
    # pixels: 1/k when k <= min(W // min_side, H // min_side), so 900 / 8 = 112.5 serves 112 only)
    for min_side, size in [(100, (150, 113)), (112, (150, 113)), (113, (300, 225)),
                           (114, (300, 225)), (224, (300, 225)), (226, (600, 450)),
                           (450, (600, 450)), (451, (1200, 900)), (2000, (1200, 900))]:
        img = A.decode(data, min_side)
        assert img.size == size and img.mode == "RGB", min_side
        assert min(img.size) >= min(min_side, 900)
    portrait = A.decode(encode(photo(900, 1200)), 224)
    assert portrait.size == (225, 300)
    assert A.decode(encode(photo(1200, 900), "PNG"), 224).size == (1200, 900)  # PNG: no draft
    # a grayscale JPEG is drafted too, and still comes out RGB
    assert A.decode(encode(photo(1200, 900, mode="L")), 224).size == (300, 225)


# --- TrainTransform ------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", A.KINDS)
@pytest.mark.parametrize("w,h,size", [(500, 375, 224), (375, 500, 299), (37, 41, 32)])
def test_train_outputs_are_normalized_deterministic_and_random(kind, w, h, size):
    img = photo(w, h)
    t = A.TrainTransform(size, kind, sides=(max(size, 256 * size // 224), 480 * size // 224))
    outs = [t(img, np.random.default_rng(seed)) for seed in range(6)]
    for x in outs:
        assert x.shape == (3, size, size) and x.dtype == np.float32 and x.flags.c_contiguous
        assert np.isfinite(x).all()
        assert (x >= LO[:, None, None] - 1e-5).all() and (x <= HI[:, None, None] + 1e-5).all()
    assert np.array_equal(outs[0], t(img, np.random.default_rng(0)))  # same seed, same array
    assert len({o.tobytes() for o in outs}) >= (2 if kind == "none" else 6)  # "none": the flip only


def test_inception_box_area_and_aspect_stay_in_range():
    rng = np.random.default_rng(0)
    for w, h in [(500, 375), (375, 500), (224, 224), (37, 41)]:
        boxes = np.array([A.inception_box(w, h, rng) for _ in range(3000)])  # (n, 4): x, y, w, h
        area, aspect = boxes[:, 2] * boxes[:, 3] / (w * h), boxes[:, 2] / boxes[:, 3]
        assert (area >= 0.08 - 1e-9).all() and (area <= 1 + 1e-9).all()
        assert (aspect >= 3 / 4 - 1e-9).all() and (aspect <= 4 / 3 + 1e-9).all()
        assert (boxes[:, :2] >= 0).all()
        assert (boxes[:, 0] + boxes[:, 2] <= w + 1e-9).all()
        assert (boxes[:, 1] + boxes[:, 3] <= h + 1e-9).all()
        assert area.min() < 0.1 and area.max() > 0.9  # the whole range is drawn
        assert aspect.min() < 0.77 and aspect.max() > 1.3
        # crops up to half the area always fit: their area is uniform over [0.08, 0.5] and their
        # aspect log-uniform, wide as often as tall (the larger ones lean to the image's shape)
        small = area < 0.5
        assert abs(area[small].mean() - 0.29) < 0.012
        assert abs(np.log(aspect[small]).mean()) < 0.02
    # no draw fits a panorama: the central box of the nearest allowed aspect
    x, y, bw, bh = A.inception_box(1000, 100, rng, scale=(0.9, 1.0))
    assert (x, y, bw, bh) == pytest.approx((1000 / 2 - 200 / 3, 0, 400 / 3, 100))


def test_flip_is_a_true_mirror():
    img = photo(48, 48)  # size 48, kind "none": no resampling, the crop is the image
    plain = A.TrainTransform(48, "none", flip=False)(img, np.random.default_rng(0))
    assert np.array_equal(pixels(plain), np.asarray(img))
    mirror = np.asarray(img.transpose(MIRROR))
    flipped = 0
    for seed in range(40):
        x = pixels(A.TrainTransform(48, "none")(img, np.random.default_rng(seed)))
        if np.array_equal(x, mirror):
            flipped += 1
        else:
            assert np.array_equal(x, np.asarray(img))
    assert 10 <= flipped <= 30  # p = 0.5


def test_lighting_adds_one_rgb_offset_per_image_with_alexnets_std():
    img = photo(12, 12)
    plain, lit = A.TrainTransform(12, "none", flip=False), A.TrainTransform(12, "none", flip=False,
                                                                            lighting=0.1)
    x0 = plain(img, np.random.default_rng(0))
    offsets = []
    for seed in range(3000):
        d = (lit(img, np.random.default_rng(seed)) - x0) * STD[:, None, None]  # (3, 12, 12), [0, 1]
        assert np.ptp(d, axis=(1, 2)).max() < 1e-5  # the same shift on every pixel of a channel
        offsets.append(d[:, 0, 0])
    offsets = np.array(offsets)  # (3000, 3)
    # offset = V (alpha * lambda), alpha ~ N(0, 0.1): channel i's std is 0.1 * |V[i] * lambda|
    expected = 0.1 * np.sqrt(((A._EIGVEC * A._EIGVAL) ** 2).sum(1))
    assert expected == pytest.approx([0.01242, 0.01264, 0.01276], abs=1e-5)  # fb.resnet.torch's PCA
    assert offsets.std(0) == pytest.approx(expected, rel=0.06)
    assert np.abs(offsets.mean(0)).max() < 0.002
    assert np.corrcoef(offsets.T)[0, 1] > 0.9  # mostly along the first eigenvector: brightness
    # bounded: within the [0, 1] range widened by 6 sigma of the noise
    x = lit(photo(64, 64), np.random.default_rng(1))
    assert (x >= LO[:, None, None] - 0.08 / STD[:, None, None]).all()
    assert (x <= HI[:, None, None] + 0.08 / STD[:, None, None]).all()


def test_pad_crop_is_a_shift_with_mean_coloured_border():
    img = photo(32, 32)
    padded = np.full((40, 40, 3), A._MEAN_RGB, np.uint8)
    padded[4:36, 4:36] = np.asarray(img)
    seen = set()
    for seed in range(200):
        x = pixels(A.TrainTransform(32, "pad_crop", flip=False)(img, np.random.default_rng(seed)))
        shifts = [(dx, dy) for dx in range(9) for dy in range(9)
                  if np.array_equal(x, padded[dy:dy + 32, dx:dx + 32])]
        assert shifts, seed
        seen.update(shifts)
    assert {(0, 0), (8, 8), (0, 8), (8, 0), (4, 4)} <= seen


def test_resnet_crop_at_scale_one_is_an_exact_crop():
    img = photo(80, 64)  # shorter side already 64 = S: the crop is not resampled
    t = A.TrainTransform(56, "resnet", sides=(64, 64), flip=False)
    windows = sliding_window_view(np.asarray(img), (56, 56, 3))  # (9, 25, 1, 56, 56, 3)
    for seed in range(10):
        x = pixels(t(img, np.random.default_rng(seed)))
        assert (windows == x).all(axis=(-1, -2, -3, -4)).any(), seed


def test_resnet_crop_is_a_crop_of_the_image_resized_to_a_drawn_shorter_side():
    img, size = photo(50, 40), 32
    t = A.TrainTransform(size, "resnet", sides=(32, 40), flip=False)
    windows = {}  # S -> every size x size crop of the image resized to shorter side S
    for side in range(32, 41):
        resized = np.asarray(img.resize((round(50 * side / 40), side), Image.Resampling.BILINEAR))
        windows[side] = sliding_window_view(resized, (size, size, 3)).astype(int)
    drawn = set()
    for seed in range(40):
        x = pixels(t(img, np.random.default_rng(seed))).astype(int)
        # box resampling: the same sampling grid as resize-then-crop; the fixed-point filter
        # weights round differently, by a level or two on a few pixels
        match = []
        for side, win in windows.items():
            d = np.abs(win - x)  # (rows, cols, 1, size, size, 3)
            if ((d.max(axis=(-1, -2, -3, -4)) <= 2) & (d.mean(axis=(-1, -2, -3, -4)) < 0.1)).any():
                match.append(side)
        assert len(match) == 1, (seed, match)
        drawn.update(match)
    assert len(drawn) >= 7 and {32, 40} & drawn  # S is drawn over the whole of [32, 40]


# --- EvalTransform -------------------------------------------------------------------------------

@pytest.mark.parametrize("crops", A.EVAL_CROPS)
@pytest.mark.parametrize("w,h", [(500, 375), (375, 500)])
def test_eval_gives_the_number_of_views(crops, w, h):
    x = A.EvalTransform(224, crops)(photo(w, h))
    assert x.shape == (crops, 3, 224, 224) and x.dtype == np.float32 and np.isfinite(x).all()


def test_ten_crops_are_the_corners_center_and_their_mirrors():
    img = photo(500, 375)
    views = pixels(A.EvalTransform(224, 10)(img))  # (10, 224, 224, 3)
    resized = img.resize((341, 256), Image.Resampling.BILINEAR)  # shorter side 224 / 0.875
    boxes = [(0, 0), (117, 0), (0, 32), (117, 32), (58, 16)]  # TL, TR, BL, BR, center
    for k, (x, y) in enumerate(boxes):
        crop = resized.crop((x, y, x + 224, y + 224))
        assert np.array_equal(views[k], np.asarray(crop)), k
        assert np.array_equal(views[5 + k], np.asarray(crop.transpose(MIRROR)))
        assert np.array_equal(views[5 + k], views[k][:, ::-1])
    # the single central crop resizes only its box: the same pixels, to a level or two
    one = pixels(A.EvalTransform(224, 1)(img))[0].astype(int)
    assert np.abs(one - views[4]).max() <= 2 and (one != views[4]).mean() < 0.01


def test_144_crops_are_googlenets():
    img = photo(500, 375)
    views = pixels(A.EvalTransform(224, 144)(img))  # (144, 224, 224, 3)
    assert len({v.tobytes() for v in views}) == 144
    for k in range(72):
        assert np.array_equal(views[72 + k], views[k][:, ::-1])
    r = Image.Resampling.BILINEAR
    s256 = img.resize((341, 256), r)
    left, center, right = (s256.crop((o, 0, o + 256, 256)) for o in (0, 42, 85))
    assert np.array_equal(views[0], np.asarray(left.crop((0, 0, 224, 224))))  # left, top-left
    assert np.array_equal(views[4], np.asarray(left.crop((16, 16, 240, 240))))  # left, center
    assert np.array_equal(views[5], np.asarray(left.resize((224, 224), r)))  # left, whole square
    assert np.array_equal(views[6 + 3], np.asarray(center.crop((32, 32, 256, 256))))  # center, BR
    assert np.array_equal(views[12 + 5], np.asarray(right.resize((224, 224), r)))
    s352 = img.resize((469, 352), r)  # the last scale, its right square, its top-right crop
    right352 = s352.crop((117, 0, 469, 352))
    assert np.array_equal(views[3 * 18 + 12 + 1], np.asarray(right352.crop((128, 0, 352, 224))))
    assert np.array_equal(views[72 + 3 * 18 + 12 + 1],
                          np.asarray(right352.crop((128, 0, 352, 224)).transpose(MIRROR)))
    # portrait: top, center and bottom squares
    tall = pixels(A.EvalTransform(224, 144)(img.transpose(Image.Transpose.ROTATE_90)))
    bottom = img.transpose(Image.Transpose.ROTATE_90).resize((256, 341), r).crop((0, 85, 256, 341))
    assert np.array_equal(tall[12 + 5], np.asarray(bottom.resize((224, 224), r)))


def test_eval_sizes_scale_with_the_input():
    assert A.EvalTransform(224).side == 256 and A.EvalTransform(299).side == 342
    assert A.EvalTransform(224, crop_fraction=224 / 256).side == 256
    assert A.EvalTransform(224, 144).decode_side == 352
    assert A.EvalTransform(112, 144).decode_side == 176
    x = A.EvalTransform(112, 144)(photo(250, 190))  # scales 128, 144, 160, 176
    assert x.shape == (144, 3, 112, 112)


def test_average_views_averages_softmaxes():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 3.0, 0.0],  # image 0, 2 views
                           [1.0, 1.0, 1.0], [-5.0, 0.0, 5.0]])  # image 1
    e = np.exp(logits.numpy())
    soft = e / e.sum(1, keepdims=True)
    expected = np.stack([(soft[0] + soft[1]) / 2, (soft[2] + soft[3]) / 2])
    got = A.average_views(logits, 2)
    assert got.shape == (2, 3) and np.allclose(got.numpy(), expected, atol=1e-6)
    assert not np.allclose(got.numpy(), torch.softmax(logits.view(2, 2, 3).mean(1), -1).numpy())
    assert torch.allclose(A.average_views(logits, 1), torch.softmax(logits, -1))
    with pytest.raises(ValueError, match="not whole images of 3 views"):
        A.average_views(logits, 3)


# --- recipes and settings ------------------------------------------------------------------------

@pytest.mark.parametrize("model", list_models())
def test_every_registered_model_has_a_recipe(model):
    train, ev = A.transforms_for(model, 224)
    assert train.kind in A.KINDS and 0 < ev.crop_fraction <= 1


@pytest.mark.parametrize("model,size,kind,sides,lighting,fraction", [
    ("googlenet", 224, "inception", None, 0.0, 0.875),
    ("inception_v1", 224, "inception", None, 0.0, 0.875),
    ("bn_inception", 224, "inception", None, 0.0, 0.875),
    ("inception_v3", 299, "inception", None, 0.0, 0.875),
    ("inception_v4", 299, "inception", None, 0.0, 0.875),
    ("inception_resnet_v2", 299, "inception", None, 0.0, 0.875),
    ("xception", 299, "inception", None, 0.0, 0.875),
    ("resnet50", 224, "resnet", (256, 480), 0.0, 224 / 256),
    ("resnet18", 112, "resnet", (128, 240), 0.0, 224 / 256),
    ("alexnet", 224, "resnet", (256, 256), 0.1, 224 / 256),
    ("vgg16", 224, "resnet", (256, 512), 0.0, 224 / 256),
    ("resnet20", 32, "pad_crop", None, 0.0, 1.0),
    ("small_inception", 28, "pad_crop", None, 0.0, 1.0),
    ("resnet50", 64, "pad_crop", None, 0.0, 1.0),
])
def test_transforms_for_follows_the_papers(model, size, kind, sides, lighting, fraction):
    train, ev = A.transforms_for(model, size)
    assert (train.size, train.kind, train.lighting, train.flip) == (size, kind, lighting, True)
    assert sides is None or train.sides == sides
    assert ev == A.EvalTransform(size, 1, fraction)


def test_transforms_for_overrides_and_errors():
    train, ev = A.transforms_for("resnet50", 224, augment="inception", lighting=0.0, flip=False,
                                 eval_crops=10, crop_fraction=0.9)
    assert (train.kind, train.lighting, train.flip) == ("inception", 0.0, False)
    assert (ev.crops, ev.crop_fraction) == (10, 0.9)
    assert A.transforms_for("alexnet", 224, lighting=0.0)[0].lighting == 0.0
    assert A.transforms_for("googlenet", 224, lighting=0.2)[0].lighting == 0.2
    with pytest.raises(ValueError, match="choose one of: auto, inception, resnet, pad_crop, none"):
        A.transforms_for("resnet50", 224, augment="random_crop")
    with pytest.raises(ValueError, match="unknown model 'resnet5'"):
        A.transforms_for("resnet5", 224)
    with pytest.raises(ValueError, match="eval crops must be one of"):
        A.transforms_for("resnet50", 224, eval_crops=5)
    with pytest.raises(ValueError, match="size <= sides"):
        A.TrainTransform(224, "resnet", sides=(128, 256))
    with pytest.raises(ValueError, match="crop_fraction"):
        A.EvalTransform(224, crop_fraction=1.5)


def test_decode_side_keeps_what_the_crop_needs():
    assert A.TrainTransform(224, "resnet").decode_side == 480
    assert A.TrainTransform(224).decode_side == 224
    assert A.EvalTransform(224).decode_side == 256
    # drafted at decode_side, a big photo still gives the resnet crop its largest S unscaled
    img = A.decode(encode(photo(2000, 1500)), A.TrainTransform(224, "resnet").decode_side)
    assert min(img.size) >= 480 and img.size == (1000, 750)
