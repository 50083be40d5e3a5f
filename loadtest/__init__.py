"""Load tests: Locust users per model (in any protocol the front door speaks: protocols.py), load
shapes, SLO gates, a client-side latency histogram for Prometheus, and a report built from what
Prometheus recorded. `python -m loadtest --help`."""

# The inference key for every Locust process (token authorization is on).
KEY_ENV = "SERVING_INFERENCE_KEY"


def user_class_name(model: str) -> str:
    """The Locust user class generated for a model folder: efficientnet_lite0 -> EfficientnetLite0User."""
    return "".join(part[:1].upper() + part[1:] for part in
                   "".join(c if c.isalnum() else " " for c in model).split()) + "User"


def host_env(model: str) -> str:
    """The variable that sends a model's users to a host of its own (LOADTEST_HOST_DIGITS=http://..):
    on Kubernetes each model has its own Service; unset, every user goes to --host."""
    return "LOADTEST_HOST_" + "".join(c if c.isalnum() else "_" for c in model).upper()
