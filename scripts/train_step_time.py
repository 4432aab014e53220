#!/usr/bin/env python3
"""Time training steps in fp32 and bf16 autocast, contiguous and channels-last, side by side.

    .venv/bin/python scripts/train_step_time.py --model deeplab --backbone espnet_c

One AdamW step (forward, cross-entropy, backward, update) on a random batch at the
training crop, as `seg_ros train` runs it, for each of the four layouts in one
process; median and p95 of --steps steps after one warm-up (seg_ros.timing).
Reports whether the parameters stayed finite: on torch 2.15, bf16 with
channels-last makes oneDNN's backward of dilated convolutions return NaN, which
is why training uses contiguous tensors for bf16 on a CPU
(seg_ros.training.device.memory_format).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="deeplab")
    parser.add_argument("--backbone", default="espnet_c")
    parser.add_argument("--crop", default="288x384", help="HxW")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="0: torch's default")
    args = parser.parse_args()

    import torch
    import torch.nn.functional as F

    from seg_ros.models import build_model
    from seg_ros.sizes import parse_size
    from seg_ros.timing import p50_p95, time_calls
    from seg_ros.training.device import cpu_has_native_bf16, cpu_name

    if args.threads:
        torch.set_num_threads(args.threads)
    height, width = parse_size(args.crop)
    print(f"{cpu_name()}, native bf16: {cpu_has_native_bf16()}, {torch.get_num_threads()} threads")
    print(f"{args.model} {args.backbone}, batch {args.batch_size} at {args.crop}")
    for layout in (torch.contiguous_format, torch.channels_last):
        for dtype in (None, torch.bfloat16):
            torch.manual_seed(0)
            net = build_model(args.model, 11, backbone=args.backbone).train()
            net = net.to(memory_format=layout)
            optimizer = torch.optim.AdamW(net.parameters(), 1e-3)
            images = torch.randn(args.batch_size, 3, height, width).to(memory_format=layout)
            labels = torch.randint(0, 11, (args.batch_size, height, width))

            def step():
                with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=bool(dtype)):
                    logits = net(images)
                loss = F.cross_entropy(logits.float(), labels)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()

            p50, p95 = p50_p95(time_calls(step, args.steps, 1, "steps"))
            finite = all(torch.isfinite(p).all() for p in net.parameters())
            print(
                f"{'channels-last' if layout == torch.channels_last else 'contiguous':>13} "
                f"{'bf16' if dtype else 'fp32'}: step p50 {p50 / 1e3:.2f} s, p95 "
                f"{p95 / 1e3:.2f} s, parameters {'finite' if finite else 'NOT FINITE (NaN)'}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
