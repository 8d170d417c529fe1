"""Numpydoc validation of the public API (STYLE.md: docstrings match signatures).

Walks ``kernelpot.__all__`` and the ``__all__`` of the public submodules users call
into directly (``kernelpot.metrics.mae``, ...): classes and functions, and the public
methods and properties of those classes that are defined in kernelpot (not inherited
from scikit-learn or ASE), ``__call__`` included; validates each with
:func:`numpydoc.validate.validate`.
"""

import importlib
import inspect

import pytest

import kernelpot

validate = pytest.importorskip("numpydoc.validate", reason="numpydoc not installed").validate

# Checked error codes (numpydoc.validate.ERROR_MSGS):
# - layout: GL01-GL03 (blank lines around the text), GL05 (tabs), GL06/GL07 (known
#   sections, in order), GL08 (missing docstring), GL09 (deprecation first), GL10
#   (directives);
# - summary: SS01-SS06 (present, capitalised, one line ending in a period, imperative
#   "Return" rather than "Returns");
# - parameters: PR01-PR03 (documented parameters match the signature, in order),
#   PR04-PR10 (each has a type, no trailing period in it, int/bool/str spelled so, a
#   description that is a sentence, a space before the colon);
# - returns/yields: RT01 (Returns section whenever a value is returned), RT03-RT05 (each
#   value described, as a sentence), YD01 (Yields for generators);
# - see also: SA02-SA04 (entries described, as sentences).
# A description may start with a code literal (``theta``): numpydoc only asks letters
# to be capitals.
# Left out, with the reason:
# - ES01 (extended summary), SA01 (See Also), EX01 (Examples): wanted where they help,
#   not on every method and property;
# - RT02 (a single return value given a name): scikit-learn's docstrings, our model,
#   name them (``self : object``, ``K : ndarray of shape (n_X, n_Y)``).
CHECKED = frozenset({
    "GL01", "GL02", "GL03", "GL05", "GL06", "GL07", "GL08", "GL09", "GL10",
    "SS01", "SS02", "SS03", "SS04", "SS05", "SS06",
    "PR01", "PR02", "PR03", "PR04", "PR05", "PR06", "PR07", "PR08", "PR09", "PR10",
    "RT01", "RT03", "RT04", "RT05", "YD01",
    "SA02", "SA03", "SA04",
})


#: Public submodules whose ``__all__`` is walked besides ``kernelpot.__all__``.
_SUBMODULES = (
    "kernelpot.calculator",
    "kernelpot.conformal",
    "kernelpot.datasets",
    "kernelpot.descriptors",
    "kernelpot.kernels",
    "kernelpot.metrics",
    "kernelpot.plotting",
    "kernelpot.selection",
    "kernelpot.studies",
    "kernelpot.two_body",
)

#: Private-looking names that are public API (a kernel is called).
_PUBLIC_DUNDER = frozenset({"__call__"})


def _function_of(member):
    """The function behind a class attribute, or None for data attributes."""
    if isinstance(member, (staticmethod, classmethod)):
        return member.__func__
    if isinstance(member, property):
        return member.fget
    if inspect.isfunction(member):
        return member
    return None


def _members(cls):
    """``(module, qualname)`` of the public methods and properties defined in kernelpot."""
    for attr in dir(cls):
        if attr.startswith("_") and attr not in _PUBLIC_DUNDER:
            continue
        owner = next((k for k in cls.__mro__ if attr in vars(k)), None)
        if owner is None or not owner.__module__.startswith("kernelpot"):
            continue  # inherited from scikit-learn, ASE or object
        if _function_of(vars(owner)[attr]) is None:
            continue  # data attribute (implemented_properties, ...)
        yield owner.__module__, f"{owner.__qualname__}.{attr}"


def _public_objects():
    """Sorted ``(module, qualname)`` of everything the test validates."""
    exported = [getattr(kernelpot, name) for name in kernelpot.__all__]
    for module_name in _SUBMODULES:
        module = importlib.import_module(module_name)
        exported += [getattr(module, name) for name in module.__all__]
    found = set()
    for obj in exported:
        if inspect.isclass(obj):
            found.add((obj.__module__, obj.__qualname__))
            found.update(_members(obj))
        elif inspect.isfunction(obj):
            found.add((obj.__module__, obj.__qualname__))
    return sorted(found)


def test_public_api_is_walked():
    names = {f"{module}.{qualname}" for module, qualname in _public_objects()}
    assert "kernelpot.calculator.KernelPotCalculator.calculate" in names
    assert "kernelpot.kernels.Kernel.clone_with_theta" in names
    assert "kernelpot.kernels.SquaredExponential.__call__" in names
    assert "kernelpot.metrics.mae" in names
    assert not any(n.endswith(".get_params") for n in names)  # sklearn's, not ours


def test_numpydoc_public_api():
    failures = []
    for module, qualname in _public_objects():
        name = f"{module}.{qualname}"
        for code, message in validate(name)["errors"]:
            if code in CHECKED:
                failures.append(f"{name}: {code} {message}")
    assert not failures, f"{len(failures)} numpydoc errors:\n" + "\n".join(failures)
