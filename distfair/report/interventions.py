"""The training interventions of the speech paper's meta-analysis (speech paper 003 §5.1: "We
encode all defenses as a binary value (defense used or not) ... and noise as its σ"), computed
from a configuration's flat params and its defense's declared traits
(``Defense.adversarial_training``, ``adversarial_weight_option``, ``noise_sigma_option``), never
from a list of defense names. Used by :mod:`distfair.report.meta_analysis`."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, NamedTuple


#: the model with the paper's robustness "tricks": no BatchNorm, SiLU (§4.2, "M5-Tricks")
TRICKS_MODELS = frozenset({"m5_tricks"})


def _number(params: Mapping[str, object], key: str, default: float = 0.0) -> float:
    """``params[key]`` as a float; ``default`` when absent or None (MLflow holds None as
    "None"). Raises ValueError naming the key for anything else that is not a finite number."""
    value = params.get(key)
    if value is None or value == "None":
        return default
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"param {key}: expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"param {key}: expected a finite number, got {value!r}")
    return number


@dataclass(frozen=True)
class DefenseTraits:
    """What a configuration's defense declares about its training, as data: the caller reads
    it from the defense class (``Defense.adversarial_training``, ``.adversarial_weight_option``,
    ``.noise_sigma_option``); the default is a defense that declares neither."""
    #: trains on adversarial examples of the configuration's ``attack``
    adversarial_training: bool = False
    #: the defense option holding the adversarial loss's weight (waveform_at's ``adv_weight``)
    adversarial_weight_option: str | None = None
    #: the defense option holding the std of the Gaussian noise it trains on (``sigma``)
    noise_sigma_option: str | None = None

    @classmethod
    def of(cls, defense: type) -> DefenseTraits:
        """What a defense class declares (the ``distfair.defenses.Defense`` class attributes)."""
        return cls(adversarial_training=bool(defense.adversarial_training),
                   adversarial_weight_option=defense.adversarial_weight_option,
                   noise_sigma_option=defense.noise_sigma_option)


def declared_traits(params: Mapping[str, object], defenses: Mapping[str, type]) -> DefenseTraits:
    """The traits of a configuration's defense (param ``defense.name``) looked up in
    ``defenses``, the defense registry the caller passes (``distfair.defenses.DEFENSES``); a
    name it does not know (or none) declares nothing."""
    name = str(params.get("defense.name"))
    return DefenseTraits.of(defenses[name]) if name in defenses else DefenseTraits()


def adversarial_training(params: Mapping[str, object], defense: DefenseTraits) -> bool:
    """Whether a configuration does adversarial training: its defense declares it, with
    ``attack.eps`` > 0 (``waveform_at`` with ε = 0 is plain training: the tables' budget-0 rows)
    and an adversarial loss that has weight (the declared weight option > 0 where the param
    exists: ``waveform_at``'s λ = ``defense.adv_weight``)."""
    weight = defense.adversarial_weight_option
    return (defense.adversarial_training and _number(params, "attack.eps") > 0
            and (weight is None or _number(params, f"defense.{weight}", default=1.0) > 0))


def noise_sigma(params: Mapping[str, object], defense: DefenseTraits) -> float:
    """The std of the Gaussian noise the configuration trains on: its defense's declared noise
    option (``defense.sigma``), 0 when it declares none or the param is absent."""
    option = defense.noise_sigma_option
    return 0.0 if option is None else _number(params, f"defense.{option}")


class Intervention(NamedTuple):
    kind: str                                         # "binary" (Figs. 2, 4) or "level" (Figs. 3, 5)
    description: str
    #: (flat params, the defense's declared traits) -> the configuration's value
    value: Callable[[Mapping[str, object], DefenseTraits], float]


#: name -> intervention (speech paper 003 §5.1); adding one is one line here
INTERVENTIONS: dict[str, Intervention] = {
    "at": Intervention("binary", "1 if adversarial training: an AT defense with attack.eps > 0 (and λ > 0)",
                       lambda p, d: float(adversarial_training(p, d))),
    "tricks": Intervention("binary", "1 if the model has the robustness tricks (model.name m5_tricks)",
                           lambda p, d: float(str(p.get("model.name")) in TRICKS_MODELS)),
    "noise": Intervention("binary", "1 if noise augmentation: the defense's noise σ (defense.sigma) > 0",
                          lambda p, d: float(noise_sigma(p, d) > 0)),
    "budget": Intervention("level", "the AT budget: attack.eps with adversarial training, else 0",
                           lambda p, d: _number(p, "attack.eps") if adversarial_training(p, d) else 0.0),
    "sigma": Intervention("level", "the noise augmentation std: the defense's noise σ (defense.sigma; 0 if absent)",
                          lambda p, d: noise_sigma(p, d)),
}


def intervention_values(params: Mapping[str, object], defense: DefenseTraits = DefenseTraits(),
                        interventions: Mapping[str, Intervention] = INTERVENTIONS) -> dict[str, float]:
    """``{intervention: value}`` of one configuration's flat params and its defense's declared
    traits. Raises ValueError."""
    return {name: float(i.value(params, defense)) for name, i in interventions.items()}
