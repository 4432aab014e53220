"""Training the segmentation networks: the project ships weights it trained itself.

One concern per module: `config` (the run's settings), `loop` (epochs,
AdamW, poly schedule, resume), `schedule`, `loss` (class balancing, OHEM),
`ema` (weight averaging), `evaluation` (scoring, precise BN), `checkpoints`
(weights_only files), `bundling` (checkpoint -> safetensors with its spec),
`card` (model cards), `latency`, `device`.
"""

from seg_ros.training.bundling import bundle, export_bundled, load_ablation
from seg_ros.training.card import records_recipe, update_crf_section, write_model_card
from seg_ros.training.checkpoints import CHECKPOINT_FORMAT, load_training_checkpoint
from seg_ros.training.config import TrainConfig
from seg_ros.training.device import autocast_dtype, pick_device
from seg_ros.training.ema import ModelEma
from seg_ros.training.evaluation import evaluate, recalibrate_batchnorm
from seg_ros.training.latency import measure_cpu_latency
from seg_ros.training.loop import TrainResult, build_network, epoch_batches, train
from seg_ros.training.schedule import learning_rate

__all__ = [
    "CHECKPOINT_FORMAT",
    "ModelEma",
    "TrainConfig",
    "TrainResult",
    "autocast_dtype",
    "build_network",
    "bundle",
    "epoch_batches",
    "evaluate",
    "export_bundled",
    "learning_rate",
    "load_ablation",
    "load_training_checkpoint",
    "measure_cpu_latency",
    "pick_device",
    "recalibrate_batchnorm",
    "records_recipe",
    "train",
    "update_crf_section",
    "write_model_card",
]
