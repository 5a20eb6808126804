"""cxr-anomaly: abnormal chest X-ray detection learned from normal films only.

Implements Tang et al., "Abnormal chest X-ray identification with generative adversarial
one-class learning", ICASSP 2019, with its ablations, pixel baselines and deployment tooling.
"""

# The registry registers the families' configuration sections with `config` (which, at the bottom
# layer, may not import them), so that any import of the package sees every family.
from .models import registry as _registry  # noqa: E402, F401
from .version import __version__

__all__ = ["__version__"]
