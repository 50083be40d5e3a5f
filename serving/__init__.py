"""Everything around the handlers and model folders, in four wings; each imports only from the wings
before it (tests/test_layers.py keeps it so):

    serving/run/    processes: TorchServe, Prometheus, the front door, readiness, in-process loading
    serving/build/  a model folder to a checked .mar: export, targets, parity, timing, archive
    serving/perf/   measurement: one core (perf/measure.py) and the experiments on it
    serving/scale/  beyond one machine: capacity per replica, plans, Kubernetes and KServe objects

serving/cli.py (`python -m serving`) dispatches to them."""
