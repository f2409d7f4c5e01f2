"""Honest learning: flat parameters, momentum gradients, evaluation, the server step."""

from byzctl.learning.trainer import (
    HonestLearner,
    MomentumInit,
    apply_update,
    evaluate,
    flat_params,
    load_flat,
    make_model,
)

__all__ = ["HonestLearner", "MomentumInit", "apply_update", "evaluate", "flat_params", "load_flat", "make_model"]
