"""The scaling policy in one place: what deploy renders, capacity measures and plans, and the tests
check, all read these."""

from __future__ import annotations

from serving.run.paths import ROOT

CAPACITY_FILE = ROOT / "deploy" / "capacity.json"  # one replica's measured capacity per model
SCALE_UP_LOAD = 0.85  # of a replica's capacity: the queue wait there is the autoscaler's second signal
TARGET_LOAD = 0.7       # of a replica's measured capacity: the autoscaler's request-rate target
MIN_REPLICAS = 2        # one can be disrupted (PodDisruptionBudget) while one serves
# The front door's bound on requests in flight per pod, and the body limit it enforces (nginx's
# client_max_body_size, TorchServe's max_request_size): bodies over 1 MB wait in the front door's
# /tmp while they arrive, so that volume holds this many of the largest at once.
FRONTDOOR_MAX_REQUESTS = 64
MAX_BODY_MIB = 10
FRONTDOOR_TMP_MIB = FRONTDOOR_MAX_REQUESTS * MAX_BODY_MIB + 64
# Stopping a pod: both containers wait PRESTOP_S first (the endpoints controller and kube-proxy, or
# the ingress, stop sending new requests meanwhile), then nginx finishes what it took and TorchServe
# drains its queues (`serving serve --drain-grace`); the grace period covers all of it.
PRESTOP_S = 10
DRAIN_GRACE_S = 25
GRACE_S = PRESTOP_S + DRAIN_GRACE_S + 10
