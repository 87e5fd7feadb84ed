"""The service side of squeeze: settings, logging and the example models the demo,
tests and benchmarks build. Not part of the light client distribution."""
