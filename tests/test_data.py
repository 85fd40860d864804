"""Dataset readers on tiny fixtures in their real on-disk layouts, augmentation alignment, the
synthetic scenes, and the errors bad data gives."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import CAMVID, needs_camvid
from pspnet_deploy.data import IGNORE_INDEX, Preprocess, open_dataset
from pspnet_deploy.data.synthetic import BOAT, CAR, ROAD, SYNTHETIC_CLASSES, WATER, synthetic
from pspnet_deploy.data.transforms import EvalTransform, TrainTransform
from pspnet_deploy.errors import UserError

H, W = 24, 32


def write_image(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), rgb[..., ::-1] if rgb.ndim == 3 else rgb)
    return path


def rand_image(rng, h=H, w=W) -> np.ndarray:
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def id_mask(ids, h=H, w=W) -> np.ndarray:
    """Vertical stripes of the given ids, so every id appears in a known place."""
    cols = np.array_split(np.arange(w), len(ids))
    m = np.zeros((h, w), np.uint8)
    for c, i in zip(cols, ids):
        m[:, c] = i
    return m


def one_line_error(excinfo, *needles) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    for n in needles:
        assert str(n) in msg, f"{n!r} not in {msg!r}"
    return msg


# ---------------------------------------------------------------- CamVid


def make_camvid(root: Path, rng, n=2) -> Path:
    for split in ("train", "val"):
        for i in range(n):
            write_image(root / split / f"{split}_{i}.png", rand_image(rng))
            write_image(root / f"{split}annot" / f"{split}_{i}.png", id_mask([0, 3, 10, 11]))
    return root


def test_camvid_void_is_ignored(tmp_path, rng):
    ds = open_dataset(make_camvid(tmp_path / "camvid", rng), "val")
    assert ds.info.name == "camvid" and ds.info.num_classes == 11 and len(ds) == 2
    img, mask = ds.load(0)
    assert img.shape == (H, W, 3) and img.dtype == np.uint8
    np.testing.assert_array_equal(mask, id_mask([0, 3, 10, IGNORE_INDEX]))


@needs_camvid
def test_real_camvid_files():
    ds = open_dataset(CAMVID, "val")
    assert ds.info.num_classes == 11 and len(ds) > 10
    for i in (0, len(ds) // 2, len(ds) - 1):
        img, mask = ds.load(i)
        assert img.shape[2] == 3 and img.shape[:2] == mask.shape
        ids = set(np.unique(mask).tolist())
        assert ids <= set(range(11)) | {IGNORE_INDEX} and len(ids - {IGNORE_INDEX}) >= 3


# ---------------------------------------------------------------- Cityscapes


def make_cityscapes(root: Path, rng) -> Path:
    for split, cities in (("train", ("aachen", "bremen")), ("val", ("lindau",))):
        for city in cities:
            stem = f"{city}_000000_000019"
            write_image(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", rand_image(rng))
            # 0 unlabeled, 4 static, 7 road, 26 car, 29 caravan (not evaluated), 33 bicycle
            write_image(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", id_mask([0, 4, 7, 26, 29, 33]))
            write_image(root / "gtFine" / split / city / f"{stem}_gtFine_color.png", rand_image(rng))
    return root


def test_cityscapes_label_ids_to_train_ids(tmp_path, rng):
    root = make_cityscapes(tmp_path / "cityscapes", rng)
    ds = open_dataset(root, "train")
    assert ds.info.name == "cityscapes" and ds.info.num_classes == 19 and len(ds.info.palette) == 19
    assert ds.info.classes[0] == "road" and ds.info.classes[13] == "car" and ds.info.classes[18] == "bicycle"
    assert len(ds) == 2 and [p.parent.name for p in ds.image_paths] == ["aachen", "bremen"]
    _, mask = ds.load(1)
    np.testing.assert_array_equal(mask, id_mask([255, 255, 0, 13, 255, 18]))
    assert len(open_dataset(root, "val")) == 1
    with pytest.raises(UserError) as e:
        open_dataset(root, "test")
    one_line_error(e, "test", "train, val")


def test_cityscapes_full_lookup_table():
    from pspnet_deploy.data.cityscapes import label_ids_to_train_ids

    lut = label_ids_to_train_ids()
    assert sorted(lut[lut != 255].tolist()) == list(range(19))
    assert lut[7] == 0 and lut[11] == 2 and lut[23] == 10 and lut[24] == 11 and lut[31] == 16 and lut[33] == 18
    assert all(lut[i] == 255 for i in (0, 1, 6, 9, 10, 14, 15, 16, 18, 29, 30, 34, 255))


def test_cityscapes_missing_mask_names_image(tmp_path, rng):
    root = make_cityscapes(tmp_path / "cs", rng)
    (root / "gtFine" / "train" / "bremen" / "bremen_000000_000019_gtFine_labelIds.png").unlink()
    with pytest.raises(UserError) as e:
        open_dataset(root, "train")
    one_line_error(e, "bremen_000000_000019_leftImg8bit.png", "bremen_000000_000019_gtFine_labelIds.png")


# ---------------------------------------------------------------- ADE20K


def make_ade(root: Path, rng, ids=(0, 1, 13, 150)) -> Path:
    base = root / "ADEChallengeData2016"
    for folder, tag in (("training", "train"), ("validation", "val")):
        for i in (1, 2):
            stem = f"ADE_{tag}_{i:08d}"
            write_image(base / "images" / folder / f"{stem}.jpg", rand_image(rng))
            write_image(base / "annotations" / folder / f"{stem}.png", id_mask(list(ids)))
    return root


def test_ade20k_reduce_zero_label(tmp_path, rng):
    root = make_ade(tmp_path / "ade", rng)
    for spec in (root, root / "ADEChallengeData2016"):  # the parent or the folder itself
        ds = open_dataset(spec, "val")
        assert ds.info.name == "ade20k" and ds.info.num_classes == 150 and len(ds.info.palette) == 150
        assert ds.info.classes[:3] == ["wall", "building", "sky"] and ds.info.classes[-1] == "flag"
        assert len(set(ds.info.classes)) == 150 and len({tuple(c) for c in ds.info.palette}) == 150
        assert len(ds) == 2 and all("validation" in str(p) for p in ds.image_paths)
        _, mask = ds.load(0)
        np.testing.assert_array_equal(mask, id_mask([255, 0, 12, 149]))
    assert all("training" in str(p) for p in open_dataset(root, "train").image_paths)
    with pytest.raises(UserError) as e:
        open_dataset(root, "test")
    one_line_error(e, "test")


def test_ade20k_id_above_150_names_file(tmp_path, rng):
    root = make_ade(tmp_path / "ade", rng, ids=(1, 151))
    ds = open_dataset(root, "train")
    with pytest.raises(UserError) as e:
        ds.load(0)
    one_line_error(e, "ADE_train_00000001.png", "[151]")


# ---------------------------------------------------------------- Pascal VOC


def write_palette_png(path: Path, indices: np.ndarray, palette: list[list[int]]) -> Path:
    Image = pytest.importorskip("PIL.Image")
    im = Image.fromarray(indices.astype(np.uint8))
    flat = [v for c in palette for v in c]
    im.putpalette(flat + [0] * (768 - len(flat)))
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)
    assert Image.open(path).mode == "P"
    return path


def make_voc(devkit: Path, rng) -> Path:
    from pspnet_deploy.data.base import default_palette

    pal = default_palette(256)  # the VOC colour map: 255 -> (224, 224, 192)
    base = devkit / "VOC2012"
    stems = ["2007_000032", "2007_000039", "2007_000063"]
    for k, stem in enumerate(stems):
        write_image(base / "JPEGImages" / f"{stem}.jpg", rand_image(rng))
        idx = np.zeros((H, W), np.uint8)
        idx[4:20, 4 + k:20 + k] = 255  # object border
        idx[6:18, 6 + k:18 + k] = 15 if k != 1 else 7  # person / car
        write_palette_png(base / "SegmentationClass" / f"{stem}.png", idx, pal)
    (base / "ImageSets" / "Segmentation").mkdir(parents=True)
    (base / "ImageSets" / "Segmentation" / "train.txt").write_text("\n".join(stems[:2]) + "\n")
    (base / "ImageSets" / "Segmentation" / "val.txt").write_text(stems[2] + "\n")
    return devkit


def test_voc_palette_indices_and_border(tmp_path, rng):
    devkit = make_voc(tmp_path / "VOCdevkit", rng)
    for spec in (devkit, devkit / "VOC2012"):
        ds = open_dataset(spec, "train")
        assert ds.info.name == "voc" and ds.info.num_classes == 21 and ds.info.classes[15] == "person"
        assert len(ds) == 2
        _, mask = ds.load(1)
        assert mask.shape == (H, W)
        assert mask[10, 10] == 7 and mask[5, 5] == IGNORE_INDEX and mask[0, 0] == 0 and mask[23, 31] == 0
        assert set(np.unique(mask).tolist()) == {0, 7, 255}
    assert ds.info.palette[15] == [192, 128, 128]  # VOC colour of person
    assert len(open_dataset(devkit, "val")) == 1
    with pytest.raises(UserError) as e:
        open_dataset(devkit, "trainaug")
    one_line_error(e, "trainaug.txt", "train, val")


def test_voc_list_names_missing_image(tmp_path, rng):
    devkit = make_voc(tmp_path / "VOCdevkit", rng)
    (devkit / "VOC2012" / "JPEGImages" / "2007_000039.jpg").unlink()
    with pytest.raises(UserError) as e:
        open_dataset(devkit, "train")
    one_line_error(e, "train.txt", "2007_000039")


def test_palette_png_with_repeated_padding_colours(tmp_path):
    """A palette padded with black after its real entries still maps black to index 0."""
    from pspnet_deploy.data.indexed_png import read_label_mask

    idx = id_mask([0, 1, 2, 255])
    pal = [[0, 0, 0], [10, 20, 30], [200, 100, 50]] + [[0, 0, 0]] * 252 + [[255, 255, 255]]
    path = write_palette_png(tmp_path / "m.png", idx, pal)
    np.testing.assert_array_equal(read_label_mask(path), idx)
    assert cv2.imread(str(path), cv2.IMREAD_UNCHANGED).ndim == 3  # OpenCV alone sees colours, not ids


# ---------------------------------------------------------------- plain folder


def make_folder(root: Path, rng, layout: str, classes=("sky", "road", "car"), palette=True) -> Path:
    root.mkdir(parents=True)
    (root / "classes.txt").write_text("\n".join(classes) + "\n\n")
    if palette:
        (root / "palette.txt").write_text("10 20 30\n40,50,60\n70 80 90\n")
    names = {"train": ["a", "b", "c"], "val": ["d"]}
    for split, stems in names.items():
        sub = split if layout == "dirs" else ""
        for stem in stems:
            write_image(root / "images" / sub / f"{stem}.jpg", rand_image(rng))
            write_image(root / "masks" / sub / f"{stem}.png", id_mask([0, 1, 2, 255]))
        if layout == "lists":
            (root / f"{split}.txt").write_text("\n".join(stems) + "\n")
    return root


@pytest.mark.parametrize("layout,n_train,n_val", [("dirs", 3, 1), ("lists", 3, 1), ("flat", 4, 4)])
def test_folder_layouts(tmp_path, rng, layout, n_train, n_val):
    root = make_folder(tmp_path / "mine", rng, layout)
    ds = open_dataset(root, "train")
    assert ds.info.classes == ["sky", "road", "car"] and ds.info.name == "mine"
    assert ds.info.palette == [[10, 20, 30], [40, 50, 60], [70, 80, 90]]
    assert len(ds) == n_train and len(open_dataset(root, "val")) == n_val
    img, mask = ds.load(0)
    assert img.shape == (H, W, 3)
    np.testing.assert_array_equal(mask, id_mask([0, 1, 2, 255]))
    if layout != "flat":
        with pytest.raises(UserError) as e:
            open_dataset(root, "test")
        one_line_error(e, "test")


def test_folder_default_palette_and_bad_palette(tmp_path, rng):
    root = make_folder(tmp_path / "f", rng, "flat", palette=False)
    ds = open_dataset(root, "train")
    assert len(ds.info.palette) == 3 and len({tuple(c) for c in ds.info.palette}) == 3
    (root / "palette.txt").write_text("1 2 3\n4 5 300\n7 8 9\n")
    with pytest.raises(UserError) as e:
        open_dataset(root, "train")
    one_line_error(e, "palette.txt:2", "300")


def test_folder_without_classes_txt(tmp_path, rng):
    root = make_folder(tmp_path / "f", rng, "flat")
    (root / "classes.txt").unlink()
    with pytest.raises(UserError) as e:
        open_dataset(root, "train")
    one_line_error(e, "classes.txt", "one class name per line")


# ---------------------------------------------------------------- bad inputs


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(UserError) as e:
        open_dataset(tmp_path / "nope", "train")
    one_line_error(e, tmp_path / "nope", "not found")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError) as e:
        open_dataset(tmp_path / "empty", "train")
    one_line_error(e, tmp_path / "empty", "empty")
    (tmp_path / "f" / "images").mkdir(parents=True)
    (tmp_path / "f" / "masks").mkdir()
    (tmp_path / "f" / "classes.txt").write_text("a\nb\n")
    with pytest.raises(UserError) as e:
        open_dataset(tmp_path / "f", "train")
    one_line_error(e, tmp_path / "f" / "images", "no images")


def test_image_mask_size_mismatch(tmp_path, rng):
    root = make_folder(tmp_path / "f", rng, "flat")
    write_image(root / "masks" / "b.png", np.zeros((H + 2, W), np.uint8))
    ds = open_dataset(root, "train")
    ds.load(0)
    with pytest.raises(UserError) as e:
        ds.load(1)
    one_line_error(e, root / "masks" / "b.png", f"{W}x{H + 2}", f"{W}x{H}")


def test_label_id_out_of_range(tmp_path, rng):
    root = make_folder(tmp_path / "f", rng, "flat")
    write_image(root / "masks" / "c.png", id_mask([0, 1, 7, 255]))
    ds = open_dataset(root, "train")
    with pytest.raises(UserError) as e:
        ds.load(2)
    one_line_error(e, root / "masks" / "c.png", "[7]", "0..2")


def test_corrupt_image_file(tmp_path, rng):
    root = make_folder(tmp_path / "f", rng, "flat")
    (root / "images" / "a.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg" * 3)
    ds = open_dataset(root, "train")
    with pytest.raises(UserError) as e:
        ds.load(0)
    one_line_error(e, root / "images" / "a.jpg", "cannot decode")
    (root / "masks" / "b.png").write_bytes(b"")
    with pytest.raises(UserError) as e:
        ds.load(1)
    one_line_error(e, root / "masks" / "b.png")


def test_unknown_layout(tmp_path):
    (tmp_path / "x" / "stuff").mkdir(parents=True)
    with pytest.raises(UserError) as e:
        open_dataset(tmp_path / "x", "train")
    one_line_error(e, "unknown dataset layout")


# ---------------------------------------------------------------- augmentation


COLOURS = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]], np.uint8)


@pytest.mark.parametrize("seed", range(12))
def test_train_transform_keeps_image_and_mask_aligned(seed):
    """Image colour is a function of the label; after scale/rotate/flip/blur/crop/pad the label
    read back from the colour matches the mask everywhere except within 3 px of a label edge
    (which may lie just outside the crop)."""
    rng = np.random.default_rng(100 + seed)
    blocks = rng.integers(0, 4, (8, 12))  # asymmetric, so a flip of one but not the other shows
    mask = np.kron(blocks, np.ones((16, 16), np.int64)).astype(np.uint8)  # 128x192
    image = COLOURS[mask]
    t = TrainTransform((96, 160), Preprocess((128, 192)), blur_prob=0.5, seed=seed)
    out_img, out_mask = t.augment(image, mask)
    assert out_img.shape == (96, 160, 3) and out_mask.shape == (96, 160)
    edge = cv2.dilate(out_mask, np.ones((7, 7), np.uint8)) != cv2.erode(out_mask, np.ones((7, 7), np.uint8))
    edge[:3], edge[-3:], edge[:, :3], edge[:, -3:] = True, True, True, True  # label edges beyond the crop
    interior = ~edge & (out_mask != IGNORE_INDEX)
    assert interior.sum() > 200
    dist = ((out_img[:, :, None, :].astype(int) - COLOURS[None, None].astype(int)) ** 2).sum(-1)
    np.testing.assert_array_equal(dist.argmin(-1)[interior], out_mask[interior])
    pad = ~edge & (out_mask == IGNORE_INDEX)  # padding / rotation fill: the mean colour, ignored
    if pad.any():
        assert np.abs(out_img[pad].astype(int) - np.array([124, 116, 104])).max() <= 1
    x, y = t(image, mask)
    assert x.shape == (3, 96, 160) and x.dtype == np.float32 and y.dtype == np.int64


def test_train_transform_is_seeded():
    mask = np.kron(np.arange(12).reshape(3, 4) % 4, np.ones((16, 16), np.int64)).astype(np.uint8)
    image = COLOURS[mask]
    a = TrainTransform((32, 32), Preprocess((48, 64)), seed=5).augment(image, mask)
    b = TrainTransform((32, 32), Preprocess((48, 64)), seed=5).augment(image, mask)
    c = TrainTransform((32, 32), Preprocess((48, 64)), seed=6).augment(image, mask)
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    assert not all(np.array_equal(u, v) for u, v in zip(a, c))


# ---------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_and_splits_differ():
    a, b = synthetic("train", seed=0, num_images=6), synthetic("train", seed=0, num_images=6, cache=False)
    for i in (0, 5, 3):
        ia, ma = a.load(i)
        ib, mb = b.load(i)
        assert np.array_equal(ia, ib) and np.array_equal(ma, mb)
    assert not np.array_equal(a.load(0)[0], synthetic("train", seed=1).load(0)[0])
    assert not np.array_equal(a.load(0)[0], synthetic("val", seed=0).load(0)[0])
    assert not np.array_equal(synthetic("val").load(0)[0], synthetic("test").load(0)[0])
    via_registry = open_dataset("synthetic:1", "train")
    assert np.array_equal(via_registry.load(2)[0], synthetic("train", seed=1).load(2)[0])
    assert (len(synthetic("train")), len(synthetic("val")), len(synthetic("test"))) == (200, 40, 40)
    with pytest.raises(UserError) as e:
        open_dataset("synthetic:abc", "train")
    one_line_error(e, "synthetic:abc", "integer")
    with pytest.raises(UserError):
        synthetic("training")


def test_synthetic_dataset_interface():
    ds = synthetic("val", num_images=5, size=(64, 96))
    assert ds.info.classes == SYNTHETIC_CLASSES and len(ds.info.palette) == 5 and ds.info.ignore_index == 255
    assert ds.default_input_size == (64, 96) and len(ds.image_paths) == 5
    img, mask = ds.load(4)
    assert img.shape == (64, 96, 3) and img.dtype == np.uint8 and mask.shape == (64, 96) and mask.dtype == np.uint8
    assert np.array_equal(ds.load_image(4), img) and np.array_equal(ds.load_mask(4), mask)
    ds.preload()
    ds.transform = EvalTransform(Preprocess((64, 96)))
    x, y = ds[4]
    assert x.shape == (3, 64, 96) and x.dtype == np.float32 and np.array_equal(y, mask)
    with pytest.raises(IndexError):
        ds.load(5)


def test_synthetic_object_class_comes_from_the_scene():
    """Cars only on road scenes, boats only on water scenes; both occur, drawn alike (the same
    colour statistics), so only the surroundings tell them apart; the image is not flat colour."""
    ds = synthetic("train")
    seen = {CAR: [], BOAT: []}
    for i in range(len(ds)):
        img, mask = ds.load(i)
        ids = set(np.unique(mask).tolist())
        assert ids <= set(range(5))
        assert (ROAD in ids) != (WATER in ids)
        assert CAR not in ids or ROAD in ids
        assert BOAT not in ids or WATER in ids
        for c in (CAR, BOAT):
            if c in ids:
                seen[c].append(img[mask == c].reshape(-1, 3).mean(0))
        assert img[mask == 0].std() > 3  # texture and noise, not flat colour
    assert len(seen[CAR]) >= 10 and len(seen[BOAT]) >= 10
    car, boat = np.array(seen[CAR]), np.array(seen[BOAT])
    assert np.abs(car.mean(0) - boat.mean(0)).max() < 0.5 * car.std(0).mean()


# ----------------------------------------------------------------------------------------------
# the one RGB converter: files (BGR(A) from OpenCV) and arrays (RGB(A)) give the same image
# ----------------------------------------------------------------------------------------------


def test_alpha_is_dropped_not_blended_in_files_and_arrays(tmp_path):
    from pspnet_deploy.data.io import ensure_rgb, read_image

    rgba = np.zeros((6, 8, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2] = 200, 100, 30  # R, G, B
    rgba[..., 3] = 255
    rgba[:3, :, 3] = 0  # top half fully transparent: its stored colour is kept, not blended to any background
    path = tmp_path / "rgba.png"
    assert cv2.imwrite(str(path), cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    from_file = read_image(path)
    from_array = ensure_rgb(rgba)
    assert from_file.shape == from_array.shape == (6, 8, 3) and from_file.dtype == np.uint8
    assert np.array_equal(from_file, from_array)
    assert np.array_equal(from_file, rgba[..., :3])  # R stays R: channel order right in both paths
    # 16-bit with alpha: scaled to 8 bits the same way from a file and from memory
    deep = (rgba.astype(np.uint16) * 257)
    path16 = tmp_path / "rgba16.png"
    assert cv2.imwrite(str(path16), cv2.cvtColor(deep, cv2.COLOR_RGBA2BGRA))
    assert np.array_equal(read_image(path16), ensure_rgb(deep)) and np.array_equal(ensure_rgb(deep), rgba[..., :3])
    # BGR order (what OpenCV decoders give) is reordered, gray expanded
    assert np.array_equal(ensure_rgb(rgba[..., [2, 1, 0, 3]], order="bgr"), rgba[..., :3])
    assert ensure_rgb(np.full((4, 5, 1), 9, np.uint8)).shape == (4, 5, 3)
    with pytest.raises(UserError, match="1, 3 or 4 channels"):
        ensure_rgb(np.zeros((4, 5, 2), np.uint8))


def test_one_image_suffix_list_for_every_folder_reader(tmp_path, rng):
    """A .tif image is read by the folder dataset, calibration's image folders and predict alike."""
    from pspnet_deploy.data.io import IMAGE_EXTS
    from pspnet_deploy.precision.calib_data import is_image_folder
    from pspnet_deploy.predict import collect_inputs

    assert ".tif" in IMAGE_EXTS and ".webp" in IMAGE_EXTS and len(set(IMAGE_EXTS)) == len(IMAGE_EXTS)
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    img = rng.integers(0, 256, (8, 10, 3), dtype=np.uint8)
    assert cv2.imwrite(str(root / "images" / "a.tif"), img)
    assert cv2.imwrite(str(root / "masks" / "a.png"), np.zeros((8, 10), np.uint8))
    (root / "classes.txt").write_text("bg\nfg\n")
    ds = open_dataset(root, "train")
    assert len(ds) == 1 and ds.load_image(0).shape == (8, 10, 3)
    assert is_image_folder(root / "images")
    assert [i.path.name for i in collect_inputs([root / "images"])] == ["a.tif"]
