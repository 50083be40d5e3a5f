"""Beyond one machine: the policy constants (policy.py), capacity per replica measured and modelled
as a queue, plan and verify (capacity.py), and the Kubernetes, KServe and distributed-Locust
objects rendered from the model folders (deploy.py). Imports every wing below it."""
