"Generation quality: the digits feature extractor, torch-fidelity metrics, offline rules (memloc.quality)."
import pytest
import torch
import torch.nn.functional as F
import torch_fidelity

from memloc.data import load_digits
from memloc.extraction import LookupModel
from memloc.quality import (DIGITS_EXTRACTOR, FeatureExtractorDigits, _checked_weights, accuracy, digits_holdout,
                            digits_net_metrics, feature_settings, fidelity_metrics, load_digits_net,
                            register_digits_extractor, sample_and_score, sample_images, to_uint8)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def digits():
    return load_digits(16)


def test_committed_classifier_accuracy(digits):
    x, y = digits
    net = load_digits_net()
    m = digits_net_metrics()
    _, te = digits_holdout(len(x), 0.2, m["seed"])
    acc = accuracy(net, x[te], y[te])
    assert acc == pytest.approx(m["test_accuracy"], abs=1e-9) and acc > 0.9
    with pytest.raises(FileNotFoundError, match="05_quality"): load_digits_net("data/mini/nowhere.safetensors")


def test_registered_extractor(digits):
    x, _ = digits
    assert register_digits_extractor() == register_digits_extractor() == DIGITS_EXTRACTOR  # idempotent
    fe = FeatureExtractorDigits(DIGITS_EXTRACTOR, ["logits", "features"])
    logits, feats = fe(to_uint8(x[:8]))
    assert logits.shape == (8, 10) and feats.shape == (8, 64)
    # the uint8 route agrees with the classifier on float input
    assert torch.equal(logits.argmax(1), fe.net((to_uint8(x[:8]).float() / 255)).argmax(1))
    with pytest.raises(TypeError, match="uint8"): fe(x[:2])


def test_metrics_order_real_and_degraded(digits):
    x, _ = digits
    a, b = x[0:600:2], x[1:600:2]
    coarse = F.interpolate(F.avg_pool2d(a, 4), scale_factor=4, mode="nearest")
    w = feature_settings("mini")["weights_path"]
    real = fidelity_metrics(a, b, weights_path=w, kid_subsets=5, seed=3)
    bad = fidelity_metrics(coarse, b, weights_path=w, kid_subsets=5, seed=3)
    assert real["fid"] < bad["fid"] and real["kid_mean"] < bad["kid_mean"]
    assert real["precision"] > bad["precision"] and real["recall"] > bad["recall"]
    assert real["is_mean"] > bad["is_mean"] and 1 <= real["is_mean"] <= 10
    assert real == fidelity_metrics(a, b, weights_path=w, kid_subsets=5, seed=3)
    with pytest.raises(ValueError, match="reference"): fidelity_metrics(a, None, metrics=("kid",))


def test_sample_and_score_deterministic(digits):
    x, y = digits
    keep = torch.cat([torch.nonzero(y == c)[:3, 0] for c in range(10)])
    model = LookupModel(x[keep], y[keep], num_classes=10)
    imgs, labels = sample_images(model, 20, seed=1, batch_size=8, temperature=3.0)
    assert imgs.shape == (20, 3, 16, 16) and torch.equal(labels, torch.arange(20) % 10)
    r1 = sample_and_score(model, 40, x[:200], seed=1, batch_size=16, kid_subsets=3, temperature=3.0)
    r2 = sample_and_score(model, 40, x[:200], seed=1, batch_size=16, kid_subsets=3, temperature=3.0)
    assert r1 == r2 and r1["n_samples"] == 40 and r1["sampler"] == {"temperature": 3.0}
    assert {"fid", "is_mean", "kid_mean", "precision", "recall"} <= set(r1)


def test_full_scale_never_downloads(tmp_path):
    with pytest.raises(FileNotFoundError, match="inception_path"): feature_settings("full")
    with pytest.raises(FileNotFoundError, match="never downloads"): _checked_weights(None, "vgg16_path")
    bad = tmp_path / "pickled.pth"
    torch.save({"w": torch.zeros(1), "obj": torch_fidelity.FeatureExtractorBase}, bad)
    with pytest.raises(Exception): _checked_weights(bad, "inception_path")
    ok = tmp_path / "ok.pth"
    torch.save({"w": torch.zeros(1)}, ok)
    assert _checked_weights(ok, "inception_path") == str(ok)
