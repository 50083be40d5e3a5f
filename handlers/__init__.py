"""TorchServe handlers: one per kind of input, on the shared base in `handlers.base`."""
