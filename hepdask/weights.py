"""Training weights: one factor per class, so that the weights average 1 whatever their scale.

Event weights are often tiny (HZZ's ``EventWeight`` is about 0.007) or large. XGBoost
compares the sum of the hessians in a leaf, which scales with the weights, with
``min_child_weight`` (1 by default): with tiny weights no split is ever allowed and the model
learns nothing. Networks and linear models see their loss, and so their step size, scale
with the weights. Every engine therefore trains with the event weights times one factor per
class, chosen so that the weights average 1 over the training events.
"""

from __future__ import annotations

from collections.abc import Mapping

from .errors import HepdaskError

__all__ = ["class_factors"]


def class_factors(weight_sums: Mapping[int, float], events: Mapping[int, int], *,
                  balance: bool, key: str, signal_scale: float = 1.0) -> dict[int, float]:
    """Label -> weight factor, for classes with these sums of weights and numbers of events.

    With ``balance`` every class carries the same total weight; otherwise the classes keep
    the ratios of their weights, the signal's (class 1) multiplied by ``signal_scale`` (as
    XGBoost's ``scale_pos_weight`` does). Either way the weights then average 1. ``key`` is
    the config key named when the weights cannot be scaled.
    """
    sums = {label: float(total) for label, total in weight_sums.items()}
    if balance and any(total <= 0 for total in sums.values()):
        bad = sorted(label for label, total in sums.items() if total <= 0)
        raise HepdaskError(
            f"{key} balances the classes, but the training events of the classes {bad} have "
            f"no positive total weight (sums of weights: {sums}): check the labels and the "
            "samples' weight expressions, or turn the balancing off."
        )
    relative = {label: 1.0 / sums[label] if balance else signal_scale if label == 1 else 1.0
                for label in sums}
    weighted = sum(relative[label] * sums[label] for label in sums)
    if weighted <= 0:
        raise HepdaskError(
            f"The training events have a total weight of {weighted:.6g} (sums of weights per "
            f"class: {sums}): it must be positive. Check the samples' weight expressions."
        )
    scale = sum(events.values()) / weighted
    return {label: relative[label] * scale for label in sums}
