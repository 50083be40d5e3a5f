"""Build, serve and check the models: the one code path behind the CLI, the tests and the image."""
