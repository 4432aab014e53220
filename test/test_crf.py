"""Post-hoc dense CRF: distributions, pydensecrf2 agreement, edges, bad input, torch paths."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from crf_scenes import two_regions

from seg_ros.crf import area_mean, build_operators, dense_crf, dense_crf_tensor
from seg_ros.crf.lattice import build_lattice_filter, sort_codes
from seg_ros.crf.posthoc import _MessagePassing
from seg_ros.pipeline import CrfSettings, SegmentationPipeline

pydensecrf = pytest.importorskip(
    "pydensecrf.densecrf", reason="pydensecrf2 (the reference) is not installed"
)
from pydensecrf.utils import unary_from_softmax  # noqa: E402

# The model parameters pydensecrf shares with us (the grid factor is ours alone).
DEFAULTS = {k: v for k, v in CrfSettings().kwargs().items() if k != "downsample"}


def reference(
    image,
    probabilities,
    iterations=5,
    gaussian_sxy=3.0,
    gaussian_weight=3.0,
    bilateral_sxy=80.0,
    bilateral_srgb=13.0,
    bilateral_weight=10.0,
):
    """Krähenbühl's permutohedral dense CRF with the same model."""
    classes, height, width = probabilities.shape
    model = pydensecrf.DenseCRF2D(width, height, classes)
    model.setUnaryEnergy(np.ascontiguousarray(unary_from_softmax(probabilities)))
    if gaussian_weight:
        model.addPairwiseGaussian(sxy=gaussian_sxy, compat=gaussian_weight)
    if bilateral_weight:
        model.addPairwiseBilateral(
            sxy=bilateral_sxy,
            srgb=bilateral_srgb,
            rgbim=np.ascontiguousarray(image),
            compat=bilateral_weight,
        )
    return np.asarray(model.inference(iterations), np.float32).reshape(classes, height, width)


def textured_image(rng, height=48, width=64):
    """Smooth random colours over the full 0..255 range: many distinct lattice cells."""
    noise = rng.integers(0, 256, (height, width, 3)).astype(np.uint8)
    return cv2.normalize(cv2.GaussianBlur(noise, (0, 0), 2.0), None, 0, 255, cv2.NORM_MINMAX)


def random_probabilities(rng, classes, height, width):
    return np.ascontiguousarray(
        rng.dirichlet(np.ones(classes), size=(height, width)).transpose(2, 0, 1), dtype=np.float32
    )


# --- distributions -------------------------------------------------------------------------------


@pytest.mark.parametrize("downsample", [1, 2, 0])
def test_output_is_a_distribution_per_pixel(downsample):
    rng = np.random.default_rng(1)
    image = textured_image(rng)
    probabilities = random_probabilities(rng, 4, 48, 64)
    refined = dense_crf(image, probabilities, downsample=downsample)
    assert refined.shape == probabilities.shape and refined.dtype == np.float32
    assert refined.flags.c_contiguous
    assert np.isfinite(refined).all() and refined.min() >= 0.0
    np.testing.assert_allclose(refined.sum(axis=0), 1.0, atol=1e-5)
    assert not np.allclose(refined, probabilities, atol=1e-3)  # it did something


def test_zero_iterations_or_weights_return_the_clipped_normalised_input():
    rng = np.random.default_rng(2)
    image = textured_image(rng)
    probabilities = random_probabilities(rng, 3, 48, 64)
    probabilities[0, 0, 0], probabilities[1, 0, 0], probabilities[2, 0, 0] = 1.0, 0.0, 0.0
    clipped = np.clip(probabilities, 1e-5, 1.0)
    expected = clipped / clipped.sum(0)
    np.testing.assert_allclose(dense_crf(image, probabilities, iterations=0), expected, atol=1e-6)
    np.testing.assert_allclose(
        dense_crf(image, probabilities, gaussian_weight=0.0, bilateral_weight=0.0),
        expected,
        atol=1e-6,
    )


def test_uniform_image_and_distribution_stays_uniform():
    image = np.full((32, 48, 3), 90, np.uint8)
    probabilities = np.full((5, 32, 48), 0.2, np.float32)
    np.testing.assert_allclose(dense_crf(image, probabilities, downsample=1), 0.2, atol=1e-5)
    np.testing.assert_allclose(dense_crf(image, probabilities), 0.2, atol=1e-5)


def test_accepts_the_pipelines_crf_settings_and_read_only_arrays():
    rng = np.random.default_rng(3)
    image = textured_image(rng)
    probabilities = random_probabilities(rng, 3, 48, 64)
    probabilities.setflags(write=False)  # backends may hand out read-only outputs
    refined = dense_crf(image, probabilities, **CrfSettings(iterations=2).kwargs())
    np.testing.assert_allclose(refined.sum(0), 1.0, atol=1e-5)


# --- agreement with the reference ----------------------------------------------------------------


@pytest.mark.parametrize(
    "kernels",
    [
        {},  # the defaults: both kernels
        {"gaussian_weight": 0.0, "bilateral_sxy": 10.0, "bilateral_srgb": 20.0},  # bilateral alone
        {"bilateral_weight": 0.0, "gaussian_sxy": 2.0},  # Gaussian alone
    ],
)
def test_full_resolution_matches_pydensecrf2(kernels):
    rng = np.random.default_rng(4)
    image = textured_image(rng)
    probabilities = random_probabilities(rng, 4, 48, 64)
    params = {**DEFAULTS, **kernels}
    ours = dense_crf(image, probabilities, **params, downsample=1)
    theirs = reference(image, probabilities, **params)
    assert (ours.argmax(0) == theirs.argmax(0)).mean() >= 0.99
    assert np.abs(ours - theirs).mean() < 5e-3
    assert np.quantile(np.abs(ours - theirs), 0.99) < 0.05  # near-ties may differ more


def test_bilateral_lattice_is_the_reference_lattice():
    """Same permutohedral lattice, blur and normalisation as densecrf: equal to float precision."""
    rng = np.random.default_rng(5)
    image = textured_image(rng)
    probabilities = random_probabilities(rng, 3, 48, 64)
    params = {**DEFAULTS, "gaussian_weight": 0.0, "iterations": 1, "bilateral_weight": 0.5}
    ours = dense_crf(image, probabilities, **params, downsample=1)
    np.testing.assert_allclose(ours, reference(image, probabilities, **params), atol=1e-5)


def test_coarse_grid_agrees_with_the_reference_on_a_structured_image():
    image, probabilities, _ = two_regions(height=96, width=128, edge=64)
    theirs = reference(image, probabilities, **DEFAULTS).argmax(0)
    for downsample in (2, 4):
        ours = dense_crf(image, probabilities, **DEFAULTS, downsample=downsample).argmax(0)
        assert (ours == theirs).mean() >= 0.98, downsample


def test_repairs_real_camvid_frame_at_least_as_well_as_the_reference(camvid):
    from seg_ros.datasets import read_label, read_rgb

    name = sorted((camvid / "val").iterdir())[10].name
    image = cv2.resize(read_rgb(camvid / "val" / name), (240, 180), interpolation=cv2.INTER_AREA)
    label = cv2.resize(
        read_label(camvid / "valannot" / name, 11, 11), (240, 180), interpolation=cv2.INTER_NEAREST
    )
    rng = np.random.default_rng(6)  # a network-like output: soft boundaries, smooth confusions
    onehot = np.eye(12, dtype=np.float32)[np.minimum(label, 11)][..., :11]
    onehot[label == 255] = 1.0 / 11
    logits = np.log(cv2.GaussianBlur(onehot, (0, 0), 4.0) + 1e-3)
    smooth = cv2.GaussianBlur(rng.normal(size=logits.shape).astype(np.float32), (0, 0), 6.0)
    logits += smooth * (1.5 / smooth.std())
    probabilities = np.exp(3 * (logits - logits.max(-1, keepdims=True)))
    probabilities = np.ascontiguousarray(
        (probabilities / probabilities.sum(-1, keepdims=True)).transpose(2, 0, 1)
    )
    valid = label != 255

    def accuracy(p):
        return float((p.argmax(0) == label)[valid].mean())

    before, theirs = accuracy(probabilities), accuracy(reference(image, probabilities, **DEFAULTS))
    ours = accuracy(dense_crf(image, probabilities, **DEFAULTS))
    assert theirs > before  # the corruption is one a CRF can repair
    assert ours - before >= 0.9 * (theirs - before), (before, theirs, ours)


# --- edges ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("downsample", [1, 2, 4])
def test_labels_snap_to_the_image_edge(downsample):
    image, probabilities, truth = two_regions()
    band = np.abs(np.arange(96) - 48) <= 8  # columns near the true edge
    before = (probabilities.argmax(0) == truth)[:, band].mean()
    after = (dense_crf(image, probabilities, downsample=downsample).argmax(0) == truth)[
        :, band
    ].mean()
    assert before < 0.75
    assert after > 0.97


def test_smoothness_kernel_alone_does_not_find_the_edge():
    """The bilateral (appearance) kernel is what moves the boundary, not the Gaussian one."""
    image, probabilities, truth = two_regions()
    band = np.abs(np.arange(96) - 48) <= 8
    refined = dense_crf(image, probabilities, bilateral_weight=0.0, downsample=1)
    assert (refined.argmax(0) == truth)[:, band].mean() < 0.8


# --- bad input -----------------------------------------------------------------------------------


def _good():
    rng = np.random.default_rng(7)
    return textured_image(rng, 16, 24), random_probabilities(rng, 3, 16, 24)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda i, p: (i, p[:, :8]), "must match"),
        (lambda i, p: (i[:8], p), "must match"),
        (lambda i, p: (i, p.astype(np.float64)), "float32"),
        (lambda i, p: (i.astype(np.float32), p), "uint8"),
        (lambda i, p: (i[..., :1], p), "H×W×3"),
        (lambda i, p: (i, p[0]), "C×H×W"),
        (lambda i, p: (i, np.where(np.arange(24) == 3, np.nan, p).astype(np.float32)), "NaN"),
        (
            lambda i, p: (i, np.where(np.arange(24) == 3, np.inf, p).astype(np.float32)),
            "NaN or infinite",
        ),
        (lambda i, p: (i, p * 3.0), "sum to 1"),
        (lambda i, p: (i, p - 0.2), "negative"),
        (lambda i, p: (i.tolist(), p), "numpy array"),
        (lambda i, p: (i, p.tolist()), "numpy array"),
        (lambda i, p: (i[:0], p[:, :0]), "empty"),
    ],
)
def test_bad_inputs_are_named(change, message):
    image, probabilities = change(*_good())
    with pytest.raises(ValueError, match=message):
        dense_crf(image, probabilities)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"iterations": -1}, "iterations"),
        ({"iterations": 2.5}, "iterations"),
        ({"iterations": True}, "iterations"),
        ({"gaussian_sxy": 0.0}, "gaussian_sxy"),
        ({"bilateral_srgb": -13.0}, "bilateral_srgb"),
        ({"bilateral_sxy": float("nan")}, "bilateral_sxy"),
        ({"bilateral_weight": -1.0}, "bilateral_weight"),
        ({"gaussian_weight": float("inf")}, "gaussian_weight"),
        ({"downsample": -1}, "downsample"),
        ({"downsample": 9}, "too coarse"),
        ({"downsample": 2.0}, "downsample"),
    ],
)
def test_bad_parameters_are_named(kwargs, message):
    image, probabilities = _good()
    with pytest.raises(ValueError, match=message):
        dense_crf(image, probabilities, **kwargs)


def test_kernels_too_narrow_for_the_lattice_are_refused_clearly():
    image, probabilities = _good()
    image = np.random.default_rng(8).integers(0, 256, image.shape, dtype=np.uint8)
    with pytest.raises(ValueError, match="too large for the lattice"):
        dense_crf(image, probabilities, bilateral_sxy=1e-9, bilateral_srgb=1e-9, downsample=1)


# --- torch paths (the GPU runs these; no GPU here, so on the CPU) --------------------------------


def test_tensor_api_matches_numpy_api():
    rng = np.random.default_rng(9)
    image = textured_image(rng)
    probabilities = random_probabilities(rng, 4, 48, 64)
    tensor = dense_crf_tensor(image, torch.from_numpy(probabilities.copy()))
    assert isinstance(tensor, torch.Tensor) and tensor.dtype == torch.float32
    np.testing.assert_allclose(tensor.numpy(), dense_crf(image, probabilities), atol=1e-6)
    with pytest.raises(ValueError, match="torch tensor"):
        dense_crf_tensor(image, probabilities)


@pytest.mark.parametrize("downsample", [1, 2])
def test_gpu_code_path_equals_cpu_code_path(downsample):
    """Sorted CSR columns (cuSPARSE) and torch's convolution (no OpenCV) give the same messages."""
    rng = np.random.default_rng(10)
    image = textured_image(rng)
    q = torch.from_numpy(
        random_probabilities(rng, 4, *[s // downsample for s in (48, 64)]).reshape(4, -1)
    )
    args = (image, downsample) + tuple(
        DEFAULTS[k]
        for k in (
            "gaussian_sxy",
            "gaussian_weight",
            "bilateral_sxy",
            "bilateral_srgb",
            "bilateral_weight",
        )
    )
    cpu = _MessagePassing(build_operators(*args), 3.0, 10.0, "cpu", opencv=True)
    gpu_like = _MessagePassing(
        build_operators(*args, sorted_columns=True), 3.0, 10.0, "cpu", opencv=False
    )
    np.testing.assert_allclose(gpu_like.coarse(q).numpy(), cpu.coarse(q).numpy(), atol=1e-5)
    np.testing.assert_allclose(gpu_like.full(q).numpy(), cpu.full(q).numpy(), atol=1e-5)


def test_area_mean_opencv_equals_torch_pooling():
    planes = torch.rand(5, 48, 64)
    np.testing.assert_allclose(
        area_mean(planes, (12, 16)).numpy(),
        torch.nn.functional.adaptive_avg_pool2d(planes[None], (12, 16))[0].numpy(),
        atol=1e-6,
    )


def test_odd_sizes_use_overlapping_cells():
    rng = np.random.default_rng(11)
    image = textured_image(rng, 37, 53)
    probabilities = random_probabilities(rng, 3, 37, 53)
    refined = dense_crf(image, probabilities, downsample=4)
    np.testing.assert_allclose(refined.sum(0), 1.0, atol=1e-5)


# --- lattice internals ---------------------------------------------------------------------------


def test_sort_codes_is_a_stable_sort_on_both_paths():
    rng = np.random.default_rng(12)
    for high in (50, 2**60):  # packed single sort, then the argsort fallback
        codes = rng.integers(0, high, 1000, dtype=np.int64)
        codes[::7] = codes[3]  # ties
        order, ordered = sort_codes(codes)
        np.testing.assert_array_equal(order, np.argsort(codes, kind="stable"))
        np.testing.assert_array_equal(ordered, codes[order])


def test_lattice_matrices_are_consistent():
    rng = np.random.default_rng(13)
    features = rng.uniform(0, 5, (3, 200)).astype(np.float32)
    lattice = build_lattice_filter(features)
    weights = lattice.slice.val.reshape(200, 4)
    np.testing.assert_allclose(weights.sum(1), 1.0, atol=1e-5)  # barycentric weights
    assert weights.min() >= -1e-6
    assert lattice.splat.shape == (lattice.num_vertices, 200) and lattice.slice.shape == (
        200,
        lattice.num_vertices,
    )
    # splat is the transpose of slice
    dense_slice = np.zeros(lattice.slice.shape, np.float32)
    np.add.at(dense_slice, (np.repeat(np.arange(200), 4), lattice.slice.col), lattice.slice.val)
    dense_splat = np.zeros(lattice.splat.shape, np.float32)
    rows = np.repeat(np.arange(lattice.num_vertices), np.diff(lattice.splat.crow))
    np.add.at(dense_splat, (rows, lattice.splat.col), lattice.splat.val)
    np.testing.assert_allclose(dense_splat, dense_slice.T)
    sorted_slice = build_lattice_filter(features, sorted_columns=True).slice
    assert (np.diff(sorted_slice.col.reshape(200, 4), axis=1) > 0).all()


# --- the pipeline calls it -----------------------------------------------------------------------


class FixedProbabilities:
    """Backend stand-in returning the two-region probabilities: the CRF wiring is tested."""

    name = "fixed"
    precision = "fp32"

    def __init__(self, probabilities):
        self.probabilities = probabilities

    def infer(self, batch, outputs):
        full = {
            "probabilities": self.probabilities[None],
            "label": self.probabilities.argmax(0)[None],
            "confidence": self.probabilities.max(0)[None],
        }
        return {k: full[k] for k in outputs}


def test_pipeline_applies_crf_from_the_next_frame():
    image, probabilities, truth = two_regions()
    pipeline = SegmentationPipeline(
        FixedProbabilities(probabilities), num_classes=3, input_size=(64, 96)
    )
    off = pipeline.process(image)
    assert "crf" not in off.timings_ms
    pipeline.set_crf(CrfSettings(enabled=True))
    on = pipeline.process(image)
    assert on.timings_ms["crf"] > 0
    assert (on.label == truth).mean() > (off.label == truth).mean() + 0.03
    np.testing.assert_allclose(on.confidence, dense_crf(image, probabilities).max(0), atol=1e-6)
