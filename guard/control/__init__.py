"""The control plane: the one owner of container instances' lifecycle.

``messages`` is all the data plane and the control plane say to each other; ``state`` the
store of instances and key ownership; ``probe`` the readiness probes; ``controller`` the
lifecycle of one service (wake, probe, publish, autoscale, drain, stop); ``plane`` the
drivers, the controllers and the link to the data-plane workers.
"""
