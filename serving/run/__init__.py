"""Running things: TorchServe (torchserve.py), Prometheus (prometheus.py), the nginx front door
(frontdoor.py), the gRPC door in front of it (oip_grpc.py), per-model readiness (readiness.py),
an archive's handler in this process (inprocess.py), the CPU settings workers get (cpu.py),
process ownership (process.py) and the project's paths (paths.py). Imports handlers/ and models/
only."""
