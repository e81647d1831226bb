"""Test harness: offline environment, network guard, shared fixtures (pathasst.testing)."""

import os

import pytest

# Set before any library reads them: nothing in the test suite may reach a hub.
for _var, _value in {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "GRADIO_ANALYTICS_ENABLED": "False",
    "WANDB_MODE": "disabled",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ[_var] = _value

from pathasst.testing import network_guard  # noqa: E402

pytest_plugins = ["pathasst.testing.pytest_plugin"]

network_guard.install()


@pytest.fixture(autouse=True)
def _no_network(request):
    """Fail the test if it tried a non-loopback connection, even if the code caught the error."""
    network_guard.take_violations()
    yield
    violations = network_guard.take_violations()
    if violations and not request.node.get_closest_marker("network"):
        pytest.fail("test tried to reach the network: " + "; ".join(violations), pytrace=False)
