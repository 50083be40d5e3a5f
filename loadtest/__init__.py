"""Load tests: Locust users per model, load shapes, SLO gates, a client-side latency histogram for
Prometheus, and a report built from what Prometheus recorded. `python -m loadtest --help`."""

# The inference key for every Locust process (token authorization is on).
KEY_ENV = "SERVING_INFERENCE_KEY"
