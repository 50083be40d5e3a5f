"""A model folder to a checked archive: the pipeline (pipeline.py: export each target and precision,
gate it on parity with eager, time it, archive the fastest), the targets (targets.py), parity
(parity.py), timing (timing.py), the .mar (archive.py), a folder from a user's model file
(scaffold.py, `serving new`), the OpenAPI document (openapi.py) and the bill of materials
(sbom.py). Imports serving.run below it."""
