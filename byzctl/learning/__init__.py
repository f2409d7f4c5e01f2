"""Honest learning: flat parameters, momentum gradients, evaluation, the server step."""

from byzctl.learning.trainer import (
    HonestLearner,
    apply_update,
    evaluate,
    flat_params,
    load_flat,
    make_model,
)

__all__ = ["HonestLearner", "apply_update", "evaluate", "flat_params", "load_flat", "make_model"]
