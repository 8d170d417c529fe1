"""Local atomic-environment descriptors with analytic position gradients."""

from kernelpot.descriptors.acsf import ACSF
from kernelpot.descriptors.base import Descriptor, DescriptorResult
from kernelpot.descriptors.featomic_soap import FeatomicSOAP
from kernelpot.descriptors.soap import SOAP

__all__ = ["ACSF", "Descriptor", "DescriptorResult", "FeatomicSOAP", "SOAP"]
