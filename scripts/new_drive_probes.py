#!/usr/bin/env python3
"""Three cheap probes of what might carry a CamVid model to a new drive, scored on 0006R0.

    .venv/bin/python scripts/new_drive_probes.py --weights W --data ../shared/datasets/camvid

1. Cityscapes prior: the ESPNet authors' Cityscapes ESPNet-C (encoder and its 20-class 1x1
   classifier, ../shared/pretrained) with its classes folded into CamVid's (probabilities
   summed), alone and averaged with the weights' softmax at the weights given by --alphas.
2. Flip: the weights' softmax averaged with that of the mirrored image (twice the network).
3. AdaBN: every BatchNorm's statistics re-estimated on the held-out drive's own images (no
   labels), as a robot could do on its first minutes of a new street.

Scored with seg_ros.evaluation.metrics.ConfusionMatrix at label resolution (logits resized
bilinearly). None of them is in the package: see the README's accuracy section for the figures.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Where each Cityscapes class falls in CamVid's 11 (by the names in config/classes/*.yaml).
CITYSCAPES_TO_CAMVID = {
    "road": "Road", "sidewalk": "Pavement", "building": "Building", "wall": "Building",
    "fence": "Fence", "pole": "Pole", "traffic light": "SignSymbol", "traffic sign": "SignSymbol",
    "vegetation": "Tree", "terrain": "Tree", "sky": "Sky", "person": "Pedestrian",
    "rider": "Bicyclist", "car": "Car", "truck": "Car", "bus": "Car", "train": "Car",
    "motorcycle": "Bicyclist", "bicycle": "Bicyclist",
}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True, help="CamVid seg_ros weights (file or name)")
    parser.add_argument("--data", default="../shared/datasets/camvid")
    parser.add_argument("--encoder", default="../shared/pretrained/espnet_c_p2_q8_cityscapes.pth")
    parser.add_argument("--size", default="360x480", help="the weights' network input, HxW")
    parser.add_argument("--prior-size", default="540x720", help="the Cityscapes prior's, HxW")
    parser.add_argument("--alphas", default="0,0.1,0.2,0.3,0.4,0.5")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if not Path(args.encoder).is_file():
        parser.error(f"no Cityscapes encoder at {args.encoder} (--encoder FILE)")

    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    from seg_ros.classes import load_class_table
    from seg_ros.datasets import IGNORE, read_label, read_rgb, split_pairs
    from seg_ros.evaluation.metrics import ConfusionMatrix
    from seg_ros.models.checkpoint import load_model
    from seg_ros.models.espnet import EspNetC
    from seg_ros.preprocess import Preprocessor
    from seg_ros.sizes import parse_size

    torch.set_num_threads(args.threads)
    network = load_model(weights=args.weights).module
    classes = len(network.state_dict()[f"{network.CLASSIFIER}.weight"])
    state = torch.load(args.encoder, map_location="cpu", weights_only=True)
    encoder = EspNetC({"level3": "out"})
    encoder.load_state_dict({k: v for k, v in state.items() if not k.startswith("classifier.")})
    encoder.eval()
    classifier = torch.nn.Conv2d(256, 20, 1, bias=False)
    classifier.weight.data.copy_(state["classifier.conv.weight"])
    camvid = load_class_table("camvid").names
    fold = torch.zeros(20, classes)  # the authors' 20th output (their void) is left out
    for index, name in enumerate(load_class_table("cityscapes").names):
        fold[index, camvid.index(CITYSCAPES_TO_CAMVID[name])] = 1.0
    _, held = split_pairs("camvid", args.data, "new-drive")
    main_input = Preprocessor(*parse_size(args.size))
    prior_input = Preprocessor(*parse_size(args.prior_size))
    alphas = [float(a) for a in args.alphas.split(",")]

    def softmax_at(logits, shape):
        return F.interpolate(logits, size=shape, mode="bilinear").softmax(1)[0].permute(1, 2, 0)

    def report(name: str, matrix: ConfusionMatrix) -> None:
        scores = matrix.summary()
        per_class = " ".join(f"{100 * v:.1f}" for v in scores["iou"])
        print(f"{name:<34} mIoU {100 * scores['miou']:.1f}  per class {per_class}", flush=True)

    print("per-class IoU in the order", ", ".join(camvid))
    prior_alone = ConfusionMatrix(classes, IGNORE)
    flipped = ConfusionMatrix(classes, IGNORE)
    mixed = {a: ConfusionMatrix(classes, IGNORE) for a in alphas}
    with torch.no_grad():
        for image_path, label_path in tqdm(held, desc="flip and Cityscapes prior"):
            image, label = read_rgb(image_path), read_label(label_path, classes, IGNORE)
            batch = torch.from_numpy(main_input(image)[1])
            main_p = softmax_at(network(batch), label.shape)
            mirrored_p = softmax_at(network(batch.flip(3)).flip(3), label.shape)
            flipped.update(label, (main_p + mirrored_p).argmax(-1).numpy())
            prior_logits = classifier(encoder(torch.from_numpy(prior_input(image)[1]))["out"])
            prior_p = softmax_at(prior_logits, label.shape) @ fold
            prior_alone.update(label, prior_p.argmax(-1).numpy())
            for alpha, matrix in mixed.items():
                matrix.update(label, ((1 - alpha) * main_p + alpha * prior_p).argmax(-1).numpy())
    report("weights + their mirror image", flipped)
    report(f"Cityscapes prior alone, {args.prior_size}", prior_alone)
    for alpha, matrix in mixed.items():
        report(f"weights + prior, alpha {alpha:g}", matrix)

    norms = [m for m in network.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a plain average over the batches below
    network.train()
    batches = [held[i : i + 4] for i in range(0, len(held), 4)]
    if len(batches) > 1 and len(batches[-1]) == 1:  # one frame: ASPP's pooled BN has one value
        batches[-2:] = [batches[-2] + batches[-1]]
    with torch.no_grad():
        for batch in tqdm(batches, desc="AdaBN statistics"):
            frames = [torch.from_numpy(main_input(read_rgb(p))[1]) for p, _ in batch]
            network(torch.cat(frames))
        network.eval()
        adapted = ConfusionMatrix(classes, IGNORE)
        for image_path, label_path in tqdm(held, desc="AdaBN scoring"):
            image, label = read_rgb(image_path), read_label(label_path, classes, IGNORE)
            logits = network(torch.from_numpy(main_input(image)[1]))
            adapted.update(label, softmax_at(logits, label.shape).argmax(-1).numpy())
    report("AdaBN on the drive's 101 frames", adapted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
