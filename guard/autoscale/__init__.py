"""Autoscaling: how many instances a container-backed service should have.

``kpa`` is the pure decision function (Knative-KPA style) and its sample window; the
control plane feeds it observed concurrency and CPU on a timer and acts on the result.
"""

from guard.autoscale.kpa import Decision, KpaParams, KpaState, SampleWindow, decide

__all__ = ["Decision", "KpaParams", "KpaState", "SampleWindow", "decide"]
