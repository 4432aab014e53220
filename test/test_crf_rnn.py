"""CRF-as-RNN: windowed mean-field layers, equal to the post-hoc CRF, trainable, exportable."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from crf_scenes import two_regions

from seg_ros.crf import dense_crf
from seg_ros.crf.layer import CrfRnn
from seg_ros.models import build_model, load_model, resolve_options, save_checkpoint
from seg_ros.models.checkpoint import ModelSpec


def small_two_regions(seed=0):
    """Return the CRF tests' two-region scene at a size the unrolled layer runs quickly."""
    return two_regions(height=40, width=56, edge=28, offset=4, seed=seed)


def as_batch(image, probabilities):
    """Return the layer's inputs: N×C×H×W logits and N×3×H×W colours (0..255)."""
    colours = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))).float()[None]
    return torch.from_numpy(np.log(probabilities))[None], colours


@pytest.mark.parametrize("window, downsample", [(11, 4), (5, 2), (3, 1)])
@pytest.mark.parametrize("size", [(40, 56), (37, 51)])
def test_layer_with_fixed_parameters_is_the_post_hoc_windowed_crf(window, downsample, size):
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (*size, 3)).astype(np.uint8)
    probabilities = rng.dirichlet(np.ones(4), size=size).transpose(2, 0, 1)
    probabilities = np.ascontiguousarray(probabilities, dtype=np.float32)
    expected = dense_crf(
        image, probabilities, kernel="window", window=window, downsample=downsample
    )
    layer = CrfRnn(4, 5, window=window, downsample=downsample)
    with torch.no_grad():
        refined = torch.softmax(layer(*as_batch(image, probabilities)), 1)[0].numpy()
    # float32: μ = 1 - I adds and removes Σ messages (up to ~13), the post-hoc Potts path does not
    np.testing.assert_allclose(refined, expected, atol=2e-4)
    assert not np.allclose(expected, probabilities, atol=1e-2)  # the CRF did change them


def test_windowed_crf_snaps_labels_to_the_image_edge():
    image, probabilities, truth = small_two_regions()
    before = (probabilities.argmax(0) == truth).mean()
    after = (dense_crf(image, probabilities, kernel="window").argmax(0) == truth).mean()
    lattice = (dense_crf(image, probabilities).argmax(0) == truth).mean()
    assert after > before + 0.03 and after >= lattice - 0.02


def test_gradients_reach_every_crf_parameter_and_the_network():
    torch.manual_seed(0)
    model = build_model("segnet", 3, backbone="basic", crf_rnn=True, crf_iterations=3)
    out = model(torch.randn(2, 3, 32, 40))
    assert out.shape == (2, 3, 32, 40)
    torch.nn.functional.cross_entropy(out, torch.randint(0, 3, (2, 32, 40))).backward()
    for name in ("kernel_weights", "compatibility"):
        grad = getattr(model.crf, name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    first_conv = next(p for p in model.network.parameters() if p.ndim == 4)
    assert first_conv.grad is not None and first_conv.grad.abs().sum() > 0


def test_training_the_layer_lowers_the_loss():
    """A few steps on the CRF's own parameters fit a frame better than the post-hoc start."""
    image, probabilities, truth = small_two_regions(seed=2)
    logits, colours = as_batch(image, probabilities)
    target = torch.from_numpy(truth)[None]
    layer = CrfRnn(3, 3)
    optimiser = torch.optim.Adam(layer.parameters(), lr=0.05)
    losses = []
    for _ in range(15):
        optimiser.zero_grad()
        loss = torch.nn.functional.cross_entropy(layer(logits, colours), target)
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0]
    assert not torch.equal(layer.compatibility, 1 - torch.eye(3))  # μ was learned, not kept Potts


def test_starts_from_fitted_post_hoc_parameters_and_checkpoints_keep_them(tmp_path):
    model = build_model("segnet", 3, backbone="basic", crf_rnn=True).eval()
    model.crf.start_from({"bilateral_sxy": 40.0, "bilateral_weight": 4.0, "iterations": 5})
    assert model.crf.kernel_widths.tolist() == [3.0, 40.0, 13.0]
    assert model.crf.kernel_weights[1].tolist() == [4.0] * 3
    spec = ModelSpec(
        name="crf", family="segnet", options={"backbone": "basic", "crf_rnn": True}, num_classes=3
    )
    path = save_checkpoint(tmp_path / "crf.safetensors", model, spec)
    loaded = load_model(weights=str(path))
    assert loaded.spec.options["crf_rnn"] is True
    x = torch.randn(1, 3, 24, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), model(x))


def test_export_has_only_tensorrt_operators_and_matches_torch(tmp_path):
    from seg_ros.export import compare_with_torch, export_onnx, unsupported_tensorrt_ops

    torch.manual_seed(3)
    model = build_model("segnet", 4, backbone="basic", crf_rnn=True, crf_iterations=2).eval()
    path = export_onnx(model, tmp_path / "crf_rnn.onnx", 36, 52)
    assert unsupported_tensorrt_ops(path) == []
    images = np.random.default_rng(0).standard_normal((2, 3, 36, 52)).astype(np.float32)
    result = compare_with_torch(model, path, [images[:1], images])  # the batch is dynamic
    assert result["label_agreement"] > 0.999 and result["max_abs_diff"] < 1e-4


@pytest.mark.parametrize(
    "options, message",
    [
        ({"crf_iterations": 3}, "crf_iterations=3 needs crf_rnn=True"),
        ({"crf_rnn": True, "crf_iterations": 0}, r"not an integer in \[1, 20\]"),
        ({"crf_rnn": True, "crf_iterations": 21}, r"not an integer in \[1, 20\]"),
        ({"crf_rnn": "yes"}, "crf_rnn='yes' is not one of"),
    ],
)
def test_bad_model_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        resolve_options("deeplab", **options)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"iterations": 0}, "iterations must be an integer >= 1"),
        ({"iterations": 2, "window": 4}, "window must be an odd integer"),
        ({"iterations": 2, "window": 33}, "window must be at most 31"),
        ({"iterations": 2, "downsample": 0}, "downsample must be an integer >= 1"),
        ({"iterations": 2, "bilateral_srgb": 0.0}, "bilateral_srgb must be a finite number > 0"),
    ],
)
def test_bad_layer_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CrfRnn(3, **kwargs)


def test_bad_post_hoc_kernel_is_refused():
    image, probabilities, _ = small_two_regions()
    with pytest.raises(ValueError, match="kernel must be one of lattice, window"):
        dense_crf(image, probabilities, kernel="permutohedral")
    with pytest.raises(ValueError, match="window must be an odd integer"):
        dense_crf(image, probabilities, kernel="window", window=6)
    with pytest.raises(ValueError, match="must be > 0"):
        CrfRnn(3, 2).start_from({"bilateral_sxy": -1})


def test_weights_trained_without_the_layer_gain_one_that_starts_as_their_fitted_crf(tmp_path):
    from seg_ros.models.checkpoint import IMAGENET_MEAN, IMAGENET_STD

    torch.manual_seed(5)
    fitted = {
        "iterations": 5,
        "bilateral_sxy": 40.0,
        "bilateral_weight": 5.0,
        "gaussian_weight": 2,
    }
    spec = ModelSpec(
        name="plain", family="segnet", options={"backbone": "basic"}, num_classes=3, crf=fitted
    )
    path = save_checkpoint(
        tmp_path / "plain.safetensors", build_model("segnet", 3, **spec.options), spec
    )
    plain = load_model(weights=str(path))
    layered = load_model(weights=str(path), crf_rnn=True, crf_iterations=3)
    assert layered.spec.options["crf_rnn"] and layered.spec.options["crf_iterations"] == 3
    assert layered.spec.weights_sha256 == plain.spec.weights_sha256
    image, _, _ = small_two_regions()
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    x = ((torch.from_numpy(image.transpose(2, 0, 1)).float() / 255 - mean) / std)[None]
    with torch.no_grad():
        probabilities = torch.softmax(plain.module(x), 1)[0].numpy()
        refined = torch.softmax(layered.module(x), 1)[0].numpy()
    kernels = {k: v for k, v in fitted.items() if k != "iterations"}
    expected = dense_crf(image, probabilities, 3, **kernels, kernel="window", downsample=4)
    np.testing.assert_allclose(refined, expected, atol=2e-4)
    assert load_model(weights=str(path), crf_rnn=False).spec.options == plain.spec.options
