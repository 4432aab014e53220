"""Ask any loaded model for the CRF-as-RNN layer: add it, change its iterations, or take it off.

A network trained without the layer gets one that starts as the post-hoc CRF
(the model's fitted ``spec.crf`` parameters where tune-crf stored some, else
the defaults): the windowed dense CRF, now inside the exported graph, and the
starting point of ``seg_ros train --crf-rnn``. The iteration count is not a
weight, so a trained layer runs with any count (CRF-as-RNN trains at 5).
"""

from __future__ import annotations

import logging
from dataclasses import replace

from seg_ros.models.zoo import CRF_CHOICES, resolve_options

LOG = logging.getLogger(__name__)


def split_crf_options(options: dict) -> tuple[dict, dict]:
    """Return (network options, CRF-as-RNN options) of a build_model/load_model option dict."""
    network = {k: v for k, v in options.items() if k not in CRF_CHOICES}
    return network, {k: v for k, v in options.items() if k in CRF_CHOICES}


def apply_crf_options(loaded, crf_options: dict):
    """Return ``loaded`` (a LoadedModel) with the CRF-as-RNN options asked for applied."""
    spec = loaded.spec
    if not crf_options:
        return loaded
    wanted = resolve_options(spec.family, **{**spec.options, **crf_options})
    if wanted == spec.options:
        return loaded
    module, name = loaded.module, spec.name
    if spec.options["crf_rnn"] and wanted["crf_rnn"]:
        module.crf.iterations = wanted["crf_iterations"]
    elif spec.options["crf_rnn"]:
        module = module.network
    else:
        name = f"{spec.name}_crf_rnn"
        from seg_ros.crf.layer import CrfRnnNetwork

        module = CrfRnnNetwork(
            module, spec.num_classes, wanted["crf_iterations"], spec.mean, spec.std
        )
        module.crf.start_from(spec.crf)
        LOG.info(
            "%s: CRF-as-RNN layer added, starting as the post-hoc CRF (%s)",
            spec.name,
            "fitted parameters" if spec.crf else "default parameters",
        )
    return replace(loaded, module=module.eval(), spec=replace(spec, options=wanted, name=name))
