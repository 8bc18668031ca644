"""Hypothesis profiles: examples are slow (each builds and runs ONNX models), so no deadline; in CI
(the CI environment variable set, as .ci/run does) the examples are derandomised, so a run there
is reproducible and a failure is the same failure on a rerun. Select one with
``pytest --hypothesis-profile=ci`` or ``HYPOTHESIS_PROFILE=dev``."""

import os

from hypothesis import HealthCheck, Phase, settings

settings.register_profile("default", deadline=None)
settings.register_profile("ci", deadline=None, derandomize=True, database=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", deadline=None, max_examples=10)
# tools/mutation.py: as in CI, but a failing example is not shrunk (only whether a mutant fails counts)
settings.register_profile("mutation", parent=settings.get_profile("ci"),
                          phases=[Phase.explicit, Phase.reuse, Phase.generate])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "default"))
