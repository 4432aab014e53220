#!/usr/bin/env python3
"""Latency per frame: plain network, network + post-hoc dense CRF, network + CRF-as-RNN layer.

    .venv/bin/python scripts/crf_rnn_latency.py --width 320 --height 240 --iterations 5

The network is the best bundled one (or --model/--weights), at the given size,
on a shipped sample frame (a real image: the lattice's cost depends on it).
Rows: the network alone (torch and ONNX Runtime CPU), plus the post-hoc CRF
(seg_ros.crf.dense_crf on its probabilities, lattice kernel, automatic grid),
plus the CRF-as-RNN layer in the graph (torch, and the exported ONNX file in
ONNX Runtime). Median and p95 wall-clock of --frames calls after --warmup
(seg_ros.timing), and this process's CPU time per call (what a frame costs
whatever else loads the machine).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="")
    parser.add_argument("--weights", default="")
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()

    import cv2
    import numpy as np
    import onnxruntime as ort
    import torch

    from seg_ros.crf import DEFAULT_KERNELS, dense_crf
    from seg_ros.datasets import read_rgb
    from seg_ros.export import export_onnx
    from seg_ros.models import load_model
    from seg_ros.paths import samples_dir
    from seg_ros.timing import p50_p95, time_calls

    torch.set_num_threads(args.threads)
    plain = load_model(args.model, args.weights)
    layered = load_model(args.model, args.weights, crf_rnn=True, crf_iterations=args.iterations)
    frame = read_rgb(sorted(samples_dir().rglob("*.jpg"))[0])
    rgb = cv2.resize(frame, (args.width, args.height), interpolation=cv2.INTER_AREA)
    mean = np.asarray(plain.spec.mean, np.float32)[:, None, None]
    std = np.asarray(plain.spec.std, np.float32)[:, None, None]
    image = ((rgb.transpose(2, 0, 1) / np.float32(255) - mean) / std)[None].astype(np.float32)
    x = torch.from_numpy(image)
    kernels = {k: v for k, v in plain.spec.crf.items() if k in DEFAULT_KERNELS}  # as the layer's

    def torch_call(module):
        def call():
            with torch.no_grad():
                return module(x)

        return call

    def posthoc():
        with torch.no_grad():
            probabilities = torch.softmax(plain.module(x), 1)[0].numpy()
        return dense_crf(rgb, probabilities, args.iterations, **kernels)

    def ort_call(module, folder, name):
        path = export_onnx(module, Path(folder) / f"{name}.onnx", args.height, args.width)
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return lambda: session.run(["label", "confidence"], {"image": image})

    rows = {}
    with tempfile.TemporaryDirectory() as folder:
        calls = {
            "network (torch)": torch_call(plain.module),
            "network + post-hoc CRF (torch, lattice)": posthoc,
            f"network + CRF-as-RNN T={args.iterations} (torch)": torch_call(layered.module),
            "network (ONNX Runtime)": ort_call(plain.module, folder, "plain"),
            f"network + CRF-as-RNN T={args.iterations} (ONNX Runtime)": ort_call(
                layered.module, folder, "layered"
            ),
        }
        for name, call in calls.items():
            cpu = time.process_time()
            wall = p50_p95(time_calls(call, args.frames, args.warmup, name))
            cpu_ms = (time.process_time() - cpu) * 1e3 / (args.frames + args.warmup)
            rows[name] = (*wall, cpu_ms)
    print(
        f"{plain.spec.name} at {args.width}x{args.height}, {args.threads} threads, "
        f"median (p95) of {args.frames} frames"
    )
    print("| pipeline | wall ms per frame, median (p95) | CPU ms per frame |\n|---|---:|---:|")
    for name, (median, p95, cpu_ms) in rows.items():
        print(f"| {name} | {median:.0f} ({p95:.0f}) | {cpu_ms:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
