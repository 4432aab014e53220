"""The one segmentation head (seg_ros.models.head) every backend computes."""

import pytest
import torch

from seg_ros.models.head import segmentation_head


def test_head_equals_softmax_and_argmax_with_ties_to_the_first_class():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7, 9) * 6
    logits[0, 3, 2, 4] = logits[0, 1, 2, 4] = logits[0, :, 2, 4].max() + 1.0  # a planted tie
    label, confidence, probabilities = segmentation_head(logits)
    reference = torch.softmax(logits, dim=1)
    assert label.dtype == torch.int32 and label.shape == (2, 7, 9)
    assert torch.equal(label, logits.argmax(dim=1).to(torch.int32))
    assert label[0, 2, 4] == 1
    torch.testing.assert_close(probabilities, reference, rtol=0, atol=1e-6)
    torch.testing.assert_close(confidence, reference.amax(dim=1), rtol=0, atol=1e-6)


def test_head_skips_probabilities_when_not_asked():
    label, confidence, probabilities = segmentation_head(torch.zeros(1, 3, 2, 2), False)
    assert probabilities is None
    assert torch.equal(label, torch.zeros(1, 2, 2, dtype=torch.int32))
    torch.testing.assert_close(confidence, torch.full((1, 2, 2), 1 / 3))


def test_exported_head_has_no_softmax_over_the_class_axis(tmp_path):
    """ONNX Runtime runs every node whatever is fetched; its Softmax on axis 1 cost 37 ms."""
    onnx = pytest.importorskip("onnx")
    from seg_ros.export import export_onnx
    from seg_ros.models import build_model

    module = build_model("segnet", 4, backbone="basic").eval()
    path = export_onnx(module, tmp_path / "segnet.onnx", height=32, width=32)
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "Softmax" not in ops and {"ArgMax", "Exp", "ReduceSum"} <= ops
