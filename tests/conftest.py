"""Suite-wide test settings.

Hypothesis: no per-example deadline (these machines are shared and noisy; speed is measured by
benchmarks/, never by tests). Under CI (`CI=true`) the examples are derandomized so a CI run is
reproducible; locally every run explores new examples.
"""

import os

from hypothesis import HealthCheck, settings

settings.register_profile("local", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "ci", deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True, print_blob=True
)
settings.load_profile("ci" if os.environ.get("CI", "").lower() in {"1", "true", "yes"} else "local")
