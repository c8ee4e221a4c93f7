"""Test settings shared by every test file: hypothesis profiles and the golden fixture."""
import json
import os

import pytest
from hypothesis import HealthCheck, settings

# deadline=None: a Numba kernel's first call compiles, which no per-example deadline survives.
settings.register_profile("default", deadline=None, max_examples=25,
                          suppress_health_check=[HealthCheck.too_slow])
# Without the JIT every kernel runs as plain Python: fewer examples keep the second pass short.
settings.register_profile("nojit", deadline=None, max_examples=6,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", deadline=None, max_examples=300,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE",
                                     "nojit" if os.environ.get("NUMBA_DISABLE_JIT") == "1" else "default"))


class Golden:
    """The released reference code's outputs on case A (see tests/fixtures/README.md)."""

    def __init__(self, z):
        self.z = z
        self.config = json.loads(str(self.z["config_json"]))
        self.meta = json.loads(str(self.z["meta_json"]))
        self.state_dict = {k[len("param/"):]: self.z[k] for k in self.z.files if k.startswith("param/")}

    def __getitem__(self, key):
        return self.z[key]

    def keys(self):
        return self.z.files


@pytest.fixture(scope="session")
def golden() -> Golden:
    from minimmf import golden as golden_data
    return Golden(golden_data.load())


@pytest.fixture(scope="session")
def golden_model(golden):
    import minimmf
    return minimmf.from_reference(golden.config, golden.state_dict)


# Every golden model test runs on both paths of the seam (minimmf/seam.py): the readable layers and the fast twins.
# Without the JIT the twins would be plain-Python loops, so that pass checks the readable layers only.
PATHS = ["reference"] if os.environ.get("NUMBA_DISABLE_JIT") == "1" else ["reference", "fast"]


@pytest.fixture(params=PATHS)
def path(request):
    """Run the test with every layer on one path: 'reference' (the layer files) or 'fast' (their twins)."""
    from minimmf import seam
    with seam.using(request.param):
        yield request.param
