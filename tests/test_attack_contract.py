"""The attack contract over every entry of ``ATTACKS``.

The checks ship with the package (``distfair.testing.attacks``, run on any attack class, a
third party's too); this module runs each of them on each registered attack, built with its
declared ``TEST_OPTIONS``. Adding an attack to the registry adds it here; its constructor must
accept ``cls(eps=..., bounds=...)`` with every other parameter defaulting.
"""
import pytest
import torch

from distfair.attacks import ATTACKS, FGSM, Attack
from distfair.testing import attacks as contract

NAMES = sorted(ATTACKS)


@pytest.fixture(params=NAMES)
def name(request):
    return request.param


@pytest.mark.parametrize("check", list(contract.CHECKS))
def test_contract(check, name):
    """``distfair.testing.attacks.<check>`` on the registered attack ``name``."""
    contract.CHECKS[check](ATTACKS[name])


def test_registry_name(name):
    cls = ATTACKS[name]
    assert issubclass(cls, Attack) and cls.name == name


def test_a_third_party_attack_is_checked_by_the_same_contract():
    """An attack outside the registry runs through the same checks; one that breaks the
    contract (it leaves the model in eval mode) fails them."""
    class Noise(Attack):
        """Uniform noise in the ε-ball (black-box, refuses objectives)."""
        name = "noise"
        norm = "linf"
        black_box = True

        def _perturb(self, model, x, y, target, generator):
            step = torch.rand(x.shape, generator=generator) * 2 - 1
            return self._project(x + self.eps * step.to(x), x)

    contract.check_signature_and_declarations(Noise)
    contract.check_budget_bounds_dtype_and_shape(Noise)
    contract.check_caller_input_untouched(Noise)
    contract.check_same_seed_same_output(Noise)

    class LeavesEvalMode(FGSM):
        def __call__(self, model, x, y, **kwargs):
            out = super().__call__(model, x, y, **kwargs)
            model.eval()
            return out

    with pytest.raises(AssertionError, match="mode not restored"):
        contract.check_mode_restored_and_bn_stats_unchanged(LeavesEvalMode)
