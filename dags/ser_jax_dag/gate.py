"""The quality gate: publish the candidate only if it is good enough and beats the champion.

The candidate fails when its test balanced accuracy is below the threshold, or below the
published model's (the champion's) on the same test speakers. A champion scored on other
speakers cannot be compared; ``on_incomparable='fail'`` then keeps the champion (the safe
default), ``'threshold_only'`` lets the threshold decide alone.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Decision:
    passed: bool
    reason: str
    candidate: float
    champion: float | None = None

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def decide(candidate: dict, candidate_speakers: list[str], champion: dict | None,
           threshold: float, on_incomparable: str = "fail") -> Decision:
    """``candidate``: the run's evaluation/metrics.json; ``champion``: the published model's
    metadata (see :mod:`ser_jax_dag.publish`) or None when nothing is published yet."""
    score = float(candidate["balanced_accuracy"])
    speakers = sorted(set(candidate_speakers))
    if score < threshold:
        return Decision(False, f"candidate balanced accuracy {score:.4f} is below the threshold "
                               f"{threshold:.4f}", score)
    if champion is None:
        return Decision(True, f"candidate {score:.4f} >= threshold {threshold:.4f}; no published "
                              "model yet", score)
    best = float(champion["metrics"]["balanced_accuracy"])
    champion_run = champion["run"]
    if sorted(champion["test_speakers"]) != speakers or (
            champion["metrics"].get("split") != candidate.get("split")):
        if on_incomparable == "threshold_only":
            return Decision(True, f"candidate {score:.4f} >= threshold {threshold:.4f}; champion "
                                  f"{champion_run} was tested on other speakers, not compared",
                            score, best)
        return Decision(False, f"champion {champion_run} was tested on other speakers than the "
                               "candidate, so they cannot be compared; keeping the champion "
                               "(pass on_incomparable_champion=threshold_only to let the "
                               "threshold decide)", score, best)
    if score < best:
        return Decision(False, f"candidate {score:.4f} is below champion {champion_run} "
                               f"{best:.4f} on the same test speakers", score, best)
    return Decision(True, f"candidate {score:.4f} >= threshold {threshold:.4f} and >= champion "
                          f"{champion_run} {best:.4f}", score, best)
