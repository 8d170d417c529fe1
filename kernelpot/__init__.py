"""kernelpot: Gaussian-process interatomic potentials with analytic derivatives.

The public API is re-exported here; submodules hold the implementation.
"""

from kernelpot._version import __version__
from kernelpot.active import OnTheFlyLearner
from kernelpot.baselines import ZBL, BaselineSum, Coulomb, LennardJones, Pair
from kernelpot.calculator import KernelPotCalculator
from kernelpot.contacts import ContactWarning
from kernelpot.datasets import load_ethanol, load_silicon
from kernelpot.descriptors import ACSF, SOAP, Descriptor, DescriptorResult, FeatomicSOAP
from kernelpot.estimator import SparseGPPotential
from kernelpot.frame_files import FrameFiles
from kernelpot.kernels import NormalizedDotProduct, Scaled, SquaredExponential, Sum
from kernelpot.model_files import load
from kernelpot.selection import select_frames
from kernelpot.two_body import TwoBody

__all__ = [
    "ACSF",
    "ContactWarning",
    "BaselineSum",
    "Coulomb",
    "SOAP",
    "Descriptor",
    "DescriptorResult",
    "FeatomicSOAP",
    "FrameFiles",
    "KernelPotCalculator",
    "LennardJones",
    "NormalizedDotProduct",
    "OnTheFlyLearner",
    "Pair",
    "Scaled",
    "SparseGPPotential",
    "SquaredExponential",
    "Sum",
    "TwoBody",
    "ZBL",
    "load",
    "select_frames",
    "load_ethanol",
    "load_silicon",
    "__version__",
]
