"""The pipeline's stages on torch tensors, for backends that run on torch (PyTorch, TensorRT).

On a GPU the camera frame goes up once as uint8; resizing to the network
size, normalisation, the network with its softmax/argmax head and resizing
label and confidence back to the frame's size all run on the device, and only
the outputs come back. On a CPU device the same code runs with CPU tensors
(that is how the tests exercise it). The arithmetic is the numpy path's:
bilinear with half-pixel centres (OpenCV's INTER_LINEAR) for images and
confidence, nearest (INTER_NEAREST) for labels.
"""

from __future__ import annotations

import time
import warnings

import numpy as np


class TorchStages:
    """Pre- and post-processing around ``backend.infer_tensor`` on ``backend.tensor_device``."""

    def __init__(self, backend, *, input_size: tuple[int, int], mean, std, label_dtype):
        import torch

        self._torch = torch
        self._interpolate = torch.nn.functional.interpolate
        self.backend = backend
        self.device = backend.tensor_device
        self.height, self.width = input_size
        std_t = torch.tensor(std, dtype=torch.float32) * 255.0
        mean_t = torch.tensor(mean, dtype=torch.float32) * 255.0
        self._scale = (1.0 / std_t).view(1, 3, 1, 1).to(self.device)
        self._offset = (-mean_t / std_t).view(1, 3, 1, 1).to(self.device)
        self.label_dtype = label_dtype

    def _sync(self) -> None:
        if self.device.type == "cuda":  # honest per-stage times: CUDA work is asynchronous
            self._torch.cuda.synchronize(self.device)

    def _upload(self, image: np.ndarray):
        if (
            image.ndim not in (2, 3)
            or image.dtype != np.uint8
            or (image.ndim == 3 and image.shape[2] != 3)
        ):
            raise ValueError(
                f"expected an RGB uint8 image, got shape {image.shape} dtype {image.dtype}"
            )
        if image.shape[0] == 0 or image.shape[1] == 0:
            raise ValueError("empty image")
        with warnings.catch_warnings():  # frames are views of read-only message buffers: only read
            warnings.simplefilter("ignore", UserWarning)
            pixels = self._torch.from_numpy(image)
        pixels = pixels.to(self.device, non_blocking=True)
        pixels = pixels.permute(2, 0, 1) if pixels.ndim == 3 else pixels.expand(3, -1, -1)
        return pixels.unsqueeze(0).float()

    def process(self, images: list[np.ndarray], names: tuple[str, ...], want_probabilities: bool):
        """SegmentationResults for ``images``, as SegmentationPipeline.process_batch."""
        from seg_ros.pipeline import SegmentationResult

        torch = self._torch
        with torch.inference_mode():
            t0, c0 = time.perf_counter(), time.thread_time()
            batch = torch.empty(
                (len(images), 3, self.height, self.width), dtype=torch.float32, device=self.device
            )
            for i, image in enumerate(images):
                pixels = self._upload(image)
                if pixels.shape[-2:] != batch.shape[-2:]:
                    pixels = self._interpolate(
                        pixels, size=batch.shape[-2:], mode="bilinear", align_corners=False
                    )
                batch[i] = pixels[0]
            batch.mul_(self._scale).add_(self._offset)
            self._sync()
            t1, c1 = time.perf_counter(), time.thread_time()
            out = self.backend.infer_tensor(batch, names)
            self._sync()
            inference_ms = (time.perf_counter() - t1) * 1e3
            preprocess_ms = (t1 - t0) * 1e3 / len(images)
            preprocess_cpu = (c1 - c0) * 1e3 / len(images)
            results = []
            for i, image in enumerate(images):
                t2, c2 = time.perf_counter(), time.thread_time()
                results.append(self._postprocess(image, out, i, want_probabilities))
                timings = {
                    "preprocess": preprocess_ms,
                    "preprocess_cpu": preprocess_cpu,
                    "inference": inference_ms,
                    "postprocess": (time.perf_counter() - t2) * 1e3,
                    "postprocess_cpu": (time.thread_time() - c2) * 1e3,
                }
                results[-1] = SegmentationResult(*results[-1], timings)
            return results

    def _postprocess(self, image: np.ndarray, out: dict, i: int, want_probabilities: bool):
        torch = self._torch
        probabilities = out["probabilities"][i] if "probabilities" in out else None
        label, confidence = out["label"][i], out["confidence"][i]
        size = tuple(image.shape[:2])
        if tuple(label.shape) != size:
            label = self._interpolate(label[None, None].float(), size=size, mode="nearest")[0, 0]
            confidence = self._interpolate(
                confidence[None, None], size=size, mode="bilinear", align_corners=False
            )[0, 0].clamp_(0.0, 1.0)
        small = self.label_dtype == np.uint8
        label = label.to(torch.uint8 if small else torch.int32).cpu().numpy()
        hwc = None
        if want_probabilities:
            if tuple(probabilities.shape[1:]) != size:
                probabilities = self._interpolate(
                    probabilities[None], size=size, mode="bilinear", align_corners=False
                )[0]
            hwc = probabilities.permute(1, 2, 0).contiguous().cpu().numpy()
        return (
            label if small else label.astype(self.label_dtype),
            confidence.float().cpu().numpy(),
            hwc,
        )
