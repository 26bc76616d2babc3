"""Speech data: ``spoken_words`` (eSpeak NG, synthetic voices: determinism, the cache, the
voice-disjoint split, attributes aligned with the audio, the engine checks), ``audiomnist``
and ``common_voice_clips`` on tiny trees of their real layouts written here (stdlib WAVs,
one MP3 via soundfile), and the shared audio helpers. Nothing is downloaded."""
import csv
import hashlib
import importlib
import json
import os
import re
import shutil
import sys
import wave

import numpy as np
import pytest
import soundfile
import torch

from distfair.data import DATASETS, build_dataset
from distfair.data._audio import SAMPLE_RATE, fix_length, load_clip, read_audio, to_16k

sw = importlib.import_module("distfair.data.spoken_words")
am = importlib.import_module("distfair.data.audiomnist")
cv = importlib.import_module("distfair.data.common_voice")

#: a tiny grid: 2 accents x 2 variants x 3 speeds = 12 voices in 4 (gender, accent) strata of
#: 3 voices; 1/3 of each stratum goes to test and 1/3 to validation -> 4 / 4 / 4 voices
GRID = {"words": ("one", "two", "three"), "accents": ("en", "en-us"), "variants": ("m3", "f3"),
        "speeds": (140, 180, 220), "pitches": (50,), "test_fraction": 0.34, "val_fraction": 0.33}
LENGTH = 12_000


@pytest.fixture(scope="session")
def sw_root(tmp_path_factory):
    return tmp_path_factory.mktemp("spoken_words")


@pytest.fixture(scope="session")
def words_bundle(sw_root):
    return build_dataset("spoken_words", root=str(sw_root), length=LENGTH, **GRID)


def cache_files(root) -> list[str]:
    return sorted(os.path.join(d, f) for d, _, files in os.walk(root) for f in files if not f.startswith("."))


# ------------------------------------------------------------------------------ helpers
def test_fix_length_pads_and_crops_at_the_end():
    x = torch.arange(1.0, 6.0)
    assert fix_length(x, 7).tolist() == [1, 2, 3, 4, 5, 0, 0]
    assert fix_length(x, 3).tolist() == [1, 2, 3]
    assert fix_length(x.view(1, 5), 5).shape == (1, 5)


def test_to_16k_resamples_and_clamps():
    t = np.arange(4800) / 48000
    out = to_16k(np.sin(2 * np.pi * 440 * t).astype(np.float32), 48000)
    assert out.shape == (1600,) and out.dtype == torch.float32
    expected = torch.sin(2 * torch.pi * 440 * torch.arange(1600) / 16000)
    torch.testing.assert_close(out[100:-100], expected[100:-100], atol=1e-2, rtol=0)
    assert to_16k(np.full(3200, 1.0, dtype=np.float32), 32000).abs().max() <= 1.0


# --------------------------------------------------------------------------- spoken_words
def test_registry():
    assert DATASETS["spoken_words"] is sw.spoken_words
    assert DATASETS["audiomnist"] is am.audiomnist
    assert DATASETS["common_voice_clips"] is cv.common_voice_clips


def test_spoken_words_shapes_range_length(words_bundle):
    b = words_bundle
    assert b.num_classes == 3 and b.class_names == ["one", "two", "three"]
    assert b.in_shape == (1, LENGTH) and b.bounds == (-1.0, 1.0)
    assert len(b.train) + len(b.val) + len(b.test) == 12 * 3
    for ds in (b.train, b.val, b.test):
        for i in range(len(ds)):
            x, y = ds[i]
            assert x.shape == (1, LENGTH) and x.dtype == torch.float32
            assert -1.0 <= x.min() and x.max() <= 1.0 and x.abs().max() > 0.05   # speech, not silence
            assert isinstance(y, int) and 0 <= y < 3
            assert x[0, -1000:].abs().max() == 0                                  # zero-padded at the end


def test_spoken_words_split_by_held_out_voice(words_bundle):
    b = words_bundle
    voices = {p: set(getattr(b, p).attributes["voice"]) for p in ("train", "val", "test")}
    assert not voices["train"] & voices["test"] and not voices["train"] & voices["val"]
    assert not voices["val"] & voices["test"]
    assert len(set.union(*voices.values())) == 12 and all(len(v) == 4 for v in voices.values())
    for part in ("train", "val", "test"):
        ds = getattr(b, part)
        strata = set(zip(ds.attributes["gender"], ds.attributes["accent"]))
        assert strata == {(g, a) for g in ("male", "female") for a in ("en", "en-us")}, part
        # each voice speaks each word exactly once
        pairs = list(zip(ds.attributes["voice"], ds.targets))
        assert len(pairs) == len(set(pairs)) == 3 * len(voices[part])


def test_spoken_words_split_seed_changes_the_voices(words_bundle, sw_root):
    other = build_dataset("spoken_words", root=str(sw_root), length=LENGTH, split_seed=1, **GRID)
    assert set(other.test_attributes["voice"]) != set(words_bundle.test_attributes["voice"])
    assert not set(other.test_attributes["voice"]) & set(other.train.attributes["voice"])


def test_spoken_words_attributes_per_sample(words_bundle):
    b = words_bundle
    assert b.test_attributes == b.test.attributes and b.val_attributes == b.val.attributes
    assert set(b.test_attributes) == {"gender", "accent", "age", "voice", "variant", "speed", "pitch", "utterance"}
    assert set(b.test_attributes["utterance"]) == {"0"}                            # one utterance by default
    for ds in (b.train, b.val, b.test):
        for name, values in ds.attributes.items():
            assert len(values) == len(ds), name
        for i, voice in enumerate(ds.attributes["voice"]):
            accent, variant, speed, pitch = voice.split("_")
            a = {k: v[i] for k, v in ds.attributes.items()}
            assert (a["accent"], a["variant"], "s" + a["speed"], "p" + a["pitch"]) == (accent, variant, speed, pitch)
            assert a["gender"] == {"m": "male", "f": "female"}[variant[0]]
            assert a["age"] == {"140": "slow", "180": "medium", "220": "fast"}[a["speed"]]


def test_spoken_words_audio_matches_its_attributes(words_bundle):
    """The i-th waveform is the word ``targets[i]`` spoken by the voice ``attributes[i]`` says."""
    ds = words_bundle.test
    engine = sw.Engine.locate(None, None)
    for i in (0, len(ds) - 1):
        accent, variant, speed, pitch = ds.attributes["voice"][i].split("_")
        pcm, rate = engine.synthesize(sw.Voice(accent, variant, int(speed[1:]), int(pitch[1:])),
                                      words_bundle.class_names[ds.targets[i]])
        span = -(-LENGTH * rate // SAMPLE_RATE) + 64
        padded = np.zeros((1, span), dtype=np.float32)
        padded[0, :min(span, pcm.size)] = pcm[:span] / 32768.0
        expected = fix_length(to_16k(padded, rate), LENGTH)
        torch.testing.assert_close(ds[i][0], expected, atol=1e-5, rtol=0)


def test_spoken_words_same_bytes_twice_and_cache_reused(words_bundle, sw_root, tmp_path, monkeypatch):
    again = build_dataset("spoken_words", root=str(tmp_path), length=LENGTH, **GRID)   # generated anew
    first, second = cache_files(sw_root), cache_files(tmp_path)
    npy = [f for f in first if f.endswith("waveforms.npy")]
    assert len(npy) == 1
    assert [os.path.relpath(f, sw_root) for f in first] == [os.path.relpath(f, tmp_path) for f in second]
    twin = npy[0].replace(str(sw_root), str(tmp_path))
    digest = [hashlib.sha256(open(f, "rb").read()).hexdigest() for f in (npy[0], twin)]
    assert digest[0] == digest[1]                                                  # the same bytes
    for part in ("train", "val", "test"):
        assert torch.equal(getattr(again, part).waveforms, getattr(words_bundle, part).waveforms)
    manifest = json.load(open(npy[0].replace("waveforms.npy", "manifest.json")))
    assert manifest["engine"]["version"].startswith("1.52") and "not people" in manifest["note"]

    def no_engine(*args, **kwargs):
        raise AssertionError("the engine was called although the grid is cached")

    monkeypatch.setattr(sw.Engine, "synthesize", no_engine)
    monkeypatch.setenv(sw.LIBRARY_ENV, str(tmp_path / "nowhere" / "libespeak-ng.so"))   # not even locatable
    cached = build_dataset("spoken_words", root=str(tmp_path), length=LENGTH, **GRID)
    assert torch.equal(cached.test.waveforms, words_bundle.test.waveforms)
    # a different grid is a different folder: it needs the engine
    with pytest.raises(sw.EngineMissing):
        build_dataset("spoken_words", root=str(tmp_path), length=LENGTH, **{**GRID, "words": ("one", "two")})


def test_spoken_words_corrupt_cache_is_regenerated(tmp_path):
    grid = {**GRID, "words": ("yes", "no")}
    first = build_dataset("spoken_words", root=str(tmp_path), length=8000, **grid)
    (npy,) = [f for f in cache_files(tmp_path) if f.endswith("waveforms.npy")]
    np.save(npy, np.zeros((24, 8000), dtype=np.float32))                          # sha256 no longer matches
    again = build_dataset("spoken_words", root=str(tmp_path), length=8000, **grid)
    assert torch.equal(again.test.waveforms, first.test.waveforms)


def test_engine_state_does_not_carry_over():
    engine = sw.Engine.locate(None, None)
    a, b = sw.Voice("en-us", "f3", 180, 50), sw.Voice("en", "m3", 140, 50)
    first = engine.synthesize(a, "seven")[0]
    engine.synthesize(b, "four")
    engine.synthesize(a, "seven")
    assert np.array_equal(engine.synthesize(a, "seven")[0], first)


def test_variants_really_change_the_audio():
    engine = sw.Engine.locate(None, None)
    clips = {v: engine.synthesize(sw.Voice(accent, v, 175, 50), "seven")[0]
             for accent in sw.DEFAULT_ACCENTS for v in ("m1", "m3", "f1", "f3")}
    digests = {hashlib.sha256(c.tobytes()).hexdigest() for c in clips.values()}
    assert len(digests) == len(clips)
    assert sw.Voice("en", "f3", 175, 50).espeak_name == "en+f3"
    with pytest.raises(ValueError, match="no voice 'en-gb\\+f3'"):                  # not silently ignored
        engine.synthesize(sw.Voice("en-gb", "f3", 175, 50), "seven")


def test_identical_voices_are_refused(tmp_path, monkeypatch):
    real = sw.Engine.synthesize

    def ignore_variant(self, voice, text):
        return real(self, sw.Voice(voice.accent, "m3", voice.speed, voice.pitch), text)

    monkeypatch.setattr(sw.Engine, "synthesize", ignore_variant)
    with pytest.raises(ValueError, match="identical audio"):
        build_dataset("spoken_words", root=str(tmp_path), **GRID)


@pytest.mark.parametrize("how", ["option", "env", "data", "package"])
def test_missing_engine_is_a_clear_error(tmp_path, monkeypatch, how):
    options = {"root": str(tmp_path), **GRID}
    if how == "option":
        options["espeak_library"] = str(tmp_path / "libespeak-ng.so")
        match = "no eSpeak NG library at .*espeak_library.*pip install -e"
    elif how == "env":
        monkeypatch.setenv(sw.LIBRARY_ENV, str(tmp_path / "libespeak-ng.so"))
        match = f"no eSpeak NG library at .*{sw.LIBRARY_ENV}"
    elif how == "data":
        options["espeak_data"] = str(tmp_path)
        match = "no eSpeak NG voice data"
    else:
        monkeypatch.setitem(sys.modules, "espeakng_loader", None)                 # not installed
        match = "eSpeak NG is not installed .*espeakng-loader"
    with pytest.raises(sw.EngineMissing, match=match) as err:
        build_dataset("spoken_words", **options)
    assert isinstance(err.value, FileNotFoundError)        # config validation reports it as a config problem
    assert cache_files(tmp_path) == []


def test_library_without_rand_seed_is_refused(tmp_path):
    """A shared library that is not libespeak-ng >= 1.52 (here: a copy of libm) is refused."""
    libm = [p for p in ("/lib/x86_64-linux-gnu/libm.so.6", "/usr/lib/x86_64-linux-gnu/libm.so.6",
                        "/lib/aarch64-linux-gnu/libm.so.6", "/lib64/libm.so.6") if os.path.exists(p)]
    if not libm:
        pytest.skip("no libm.so.6 to stand in for an old engine")
    fake = tmp_path / "libfake.so"
    shutil.copy(libm[0], fake)
    data = sw.Engine.locate(None, None).data
    with pytest.raises(sw.EngineMissing, match="espeak_ng_SetRandSeed"):
        build_dataset("spoken_words", root=str(tmp_path), espeak_library=str(fake), espeak_data=data, **GRID)


# ---------------------------------------------------------------- within-voice jitter (issue 27)
#: a tinier grid for the jitter tests: 1 accent x 2 variants x 3 speeds = 6 voices, 1 / 1 / 1 per gender
JGRID = {**GRID, "words": ("one", "two"), "accents": ("en",)}
JITTER = {"repeats": 2, "pitch_jitter": 6, "rate_jitter": 15, "gain_jitter_db": 3.0}
JLENGTH = 8000


def all_clips(b) -> tuple[torch.Tensor, dict[str, list[str]], list[int]]:
    parts = (b.train, b.val, b.test)
    attributes = {k: sum((p.attributes[k] for p in parts), []) for k in b.test.attributes}
    return torch.cat([p.waveforms for p in parts]), attributes, sum((p.targets for p in parts), [])


def test_default_cache_key_is_unchanged(words_bundle, sw_root):
    """Without jitter the cache key is the one used before jitter existed: cached grids stay valid."""
    voices = sw.voice_grid(GRID["accents"], GRID["variants"], GRID["speeds"], GRID["pitches"])
    old_key = importlib.import_module("distfair.data._spoken_cache")._digest({"format": 1, "words": list(GRID["words"]), "voices": [v.id for v in voices],
                                        "length": LENGTH, "sample_rate": SAMPLE_RATE})
    assert sw.cache_key(list(GRID["words"]), voices, LENGTH) == old_key
    assert (sw_root / old_key[:20] / "waveforms.npy").exists()
    assert sw.cache_key(list(GRID["words"]), voices, LENGTH, sw.Jitter(2, 0, 0, 1.0)) != old_key


def test_jitter_varies_utterances_and_is_reproducible(tmp_path):
    b = build_dataset("spoken_words", root=str(tmp_path / "a"), length=JLENGTH, **JGRID, **JITTER)
    waves, attributes, targets = all_clips(b)
    assert len(targets) == 6 * 2 * 2 and set(attributes["utterance"]) == {"0", "1"}
    clip = {(v, u, t): i for i, (v, u, t) in enumerate(zip(attributes["voice"], attributes["utterance"], targets))}
    assert len(clip) == len(targets)                                   # each (voice, utterance, word) once
    for part in (b.train, b.val, b.test):                              # a voice's repeats stay in its split
        voices = set(part.attributes["voice"])
        assert len(part) == len(voices) * 2 * 2
    for (voice, utterance, word), i in clip.items():
        if utterance == "0":                                           # the same word twice differs
            assert not torch.equal(waves[i], waves[clip[(voice, "1", word)]]), (voice, word)
    # reproducible: generated anew elsewhere, the same bytes; another jitter_seed, other clips
    again = build_dataset("spoken_words", root=str(tmp_path / "b"), length=JLENGTH, **JGRID, **JITTER)
    assert torch.equal(all_clips(again)[0], waves)
    other = build_dataset("spoken_words", root=str(tmp_path / "a"), length=JLENGTH, jitter_seed=1, **JGRID, **JITTER)
    assert not torch.equal(all_clips(other)[0], waves)
    assert len(cache_files(tmp_path / "a")) == 4                       # two grids, two folders
    # the draws stay inside the ranges and the voice's age bucket; the manifest records them
    (manifest,) = [f for f in cache_files(tmp_path / "b") if f.endswith("manifest.json")]
    manifest = json.load(open(manifest))
    assert manifest["jitter"] == {"repeats": 2, "pitch": 6, "rate": 15, "gain_db": 3.0, "seed": 0}
    spoken = manifest["clips_spoken_as"]["values"]
    voices = sw.voice_grid(JGRID["accents"], JGRID["variants"], JGRID["speeds"], JGRID["pitches"])
    nominal = [v for v in voices for _ in range(2 * 2)]
    assert len(spoken) == len(nominal) and len({tuple(s) for s in spoken}) == len(spoken)
    for (pitch, speed, gain_db), voice in zip(spoken, nominal):
        assert abs(pitch - voice.pitch) <= 6 and abs(speed - voice.speed) <= 15 and abs(gain_db) <= 3.0
        assert sw.Voice(voice.accent, voice.variant, speed, pitch).age == voice.age


def test_jitter_draw_is_per_utterance_and_independent_of_the_grid():
    voice = sw.Voice("en", "m3", 180, 50)
    jitter = sw.Jitter(3, 5, 10, 2.0, seed=4)
    draws = [jitter.draw(voice, w, u) for w in ("one", "two") for u in range(3)]
    assert len(set(draws)) == 6 and draws == [jitter.draw(voice, w, u) for w in ("one", "two") for u in range(3)]
    assert sw.Jitter().draw(voice, "one", 0) == (voice, 1.0)           # off: the voice itself, unit gain


def test_per_seed_split_draws_the_held_out_voices_from_the_run_seed(words_bundle, sw_root):
    def voices(b):
        return {p: set(getattr(b, p).attributes["voice"]) for p in ("train", "val", "test")}

    per_seed = {s: voices(build_dataset("spoken_words", root=str(sw_root), length=LENGTH, split_seed="per_seed",
                                        run_seed=s, **GRID)) for s in range(4)}
    for s, v in per_seed.items():
        assert not v["train"] & v["val"] and not v["train"] & v["test"] and not v["val"] & v["test"], s
        assert len(set.union(*v.values())) == 12 and all(len(part) == 4 for part in v.values())
    assert len({frozenset(v["test"]) for v in per_seed.values()}) > 1           # the held-out voices move
    assert len({frozenset(v["val"]) for v in per_seed.values()}) > 1
    assert per_seed[0] == voices(words_bundle)                                  # seed 0 draws split_seed 0's split
    fixed = build_dataset("spoken_words", root=str(sw_root), length=LENGTH, split_seed=0, run_seed=3, **GRID)
    assert voices(fixed) == voices(words_bundle)                                # an integer ignores the run seed
    stand_in = build_dataset("spoken_words", root=str(sw_root), length=LENGTH, split_seed="per_seed", **GRID)
    assert voices(stand_in) == per_seed[0]                                      # configuration checks: seed 0's


def test_per_seed_split_reaches_the_training_seed(sw_root, tmp_path):
    """The engine passes each seed to the data set: `split_seed: per_seed` gives each seed its voices."""
    from conftest import TINY
    from distfair.config import validate
    from distfair.engine.train import build_seed_training

    raw = {**TINY, "defense": {"name": "standard"}, "attack": None, "model": {"name": "m5", "width": 4},
           "eval": {"attacks": []},
           "dataset": {"name": "spoken_words", "root": str(sw_root), "length": LENGTH, "split_seed": "per_seed",
                       **{k: list(v) if isinstance(v, tuple) else v for k, v in GRID.items()}}}
    cfg = validate(raw, "per_seed.yaml")
    assert cfg["dataset"]["split_seed"] == "per_seed"
    test_voices = {}
    for seed in (0, 1, 2, 3):
        run = build_seed_training(cfg, seed, workdir=tmp_path / str(seed), device=torch.device("cpu"), rank=0,
                                  world=1, log=lambda msg: None)
        test_voices[seed] = frozenset(run.data.test_attributes["voice"])
        others = set(run.data.train.attributes["voice"]) | set(run.data.val_attributes["voice"])
        assert not test_voices[seed] & others and len(others) == 8
    assert len(set(test_voices.values())) > 1


def test_stratify_by_age_puts_every_age_in_every_split(tmp_path):
    grid = {**JGRID, "words": ("one",), "pitches": (40, 50, 60)}       # 18 voices: 3 per (gender, age)
    b = build_dataset("spoken_words", root=str(tmp_path), length=JLENGTH, stratify=("gender", "accent", "age"), **grid)
    for part in (b.train, b.val, b.test):
        assert len(part) == 6
        assert set(zip(part.attributes["gender"], part.attributes["age"])) == {
            (g, a) for g in ("male", "female") for a in ("slow", "medium", "fast")}


def test_split_sizes_default_and_wide_grid():
    """What docs/datasets/spoken_words.md says: the default test split holds 1 voice per (gender,
    accent), 2 per accent (20 clips: parity steps of 0.05); 5 variants per gender stratified by
    age as well hold 3 per (gender, accent), one per speed (60 clips per accent)."""
    def test_voices(variants, stratify):
        voices = sw.voice_grid(sw.DEFAULT_ACCENTS, variants, sw.DEFAULT_SPEEDS, sw.DEFAULT_PITCHES)
        split = sw.split_voices(voices, stratify, 0.2, 0.1, 0)
        return [voices[i] for i in split["test"]], {k: len(v) for k, v in split.items()}

    test, sizes = test_voices(sw.DEFAULT_VARIANTS, ["gender", "accent"])
    assert sizes == {"test": 10, "val": 10, "train": 40}
    assert sorted((v.gender, v.accent) for v in test) == sorted((g, a) for g in ("male", "female")
                                                                for a in sw.DEFAULT_ACCENTS)
    wide = [v for v in sw.ESPEAK_VARIANTS if v[1] in "12345"]
    test, sizes = test_voices(wide, ["gender", "accent", "age"])
    assert sizes == {"test": 30, "val": 30, "train": 90}
    assert sorted((v.gender, v.accent, v.age) for v in test) == sorted(
        (g, a, s) for g in ("male", "female") for a in sw.DEFAULT_ACCENTS for s in ("slow", "medium", "fast"))


def test_espeak_ships_the_gender_labelled_variants():
    assert sorted(sw.Engine.locate(None, None).variants()) == sorted(sw.ESPEAK_VARIANTS)


@pytest.mark.parametrize("options,match", [
    ({"accents": ("en-gb",)}, "no voice 'en-gb\\+m3'"),
    ({"variants": ("klatt",)}, "m1..m8 / f1..f5"),
    ({"variants": ("m99",)}, "not eSpeak NG variants"),
    ({"speeds": (40,)}, "speeds"), ({"pitches": (120,)}, "pitches"), ({"words": ()}, "words"),
    ({"words": ("one", "one")}, "duplicates"), ({"length": 0}, "length"),
    ({"test_fraction": 0.0}, "test_fraction"), ({"test_fraction": 0.1}, "test split has no voice"),
    ({"repeats": 0}, "repeats must be"), ({"repeats": 2}, "repeats=2 needs within-voice jitter"),
    ({"pitch_jitter": -1}, "pitch_jitter must be"), ({"pitch_jitter": 40, "pitches": (70,)}, "pitch_jitter=40"),
    ({"rate_jitter": 25}, "rate_jitter=25 .* age bucket"), ({"gain_jitter_db": -1.0}, "gain_jitter_db"),
    ({"gain_jitter_db": float("nan")}, "gain_jitter_db"), ({"jitter_seed": -1}, "jitter_seed"),
    ({"stratify": ("speaker",)}, "stratify must name"), ({"stratify": ()}, "stratify"),
    ({"split_seed": "random"}, "split_seed must be .*per_seed"), ({"split_seed": -1}, "split_seed must be"),
    ({"stratify": ("gender", "accent", "age")}, "test split has no voice .*gender, accent, age"),
])
def test_spoken_words_bad_options(tmp_path, options, match):
    with pytest.raises(ValueError, match=match):
        build_dataset("spoken_words", root=str(tmp_path), **{**GRID, **options})


def test_direct_call_cannot_resolve_per_seed(tmp_path):
    with pytest.raises(ValueError, match="split_seed 'per_seed' takes the training seed.*run_seed"):
        sw.spoken_words(root=str(tmp_path), split_seed="per_seed", **GRID)


@pytest.mark.parametrize("options,key,match", [
    ({"split_seed": "random"}, "dataset", "split_seed must be a non-negative integer or 'per_seed'"),
    ({"split_seed": 1.5}, "dataset.split_seed", "must be int or str"),
    ({"repeats": "two"}, "dataset.repeats", "must be int"),
    ({"repeats": 3}, "dataset", "repeats=3 needs within-voice jitter"),
    ({"rate_jitter": 50}, "dataset", "rate_jitter=50"),
    ({"stratify": ["voice"]}, "dataset", "stratify must name"),
])
def test_configuration_check_names_the_option(sw_root, options, key, match):
    from conftest import TINY
    from distfair.config import ConfigError, validate

    grid = {k: list(v) if isinstance(v, tuple) else v for k, v in GRID.items()}
    raw = {**TINY, "dataset": {"name": "spoken_words", "root": str(sw_root), "length": LENGTH, **grid, **options}}
    with pytest.raises(ConfigError) as err:
        validate(raw, "bad.yaml")
    problems = err.value.problems
    assert any(k == key and re.search(match, reason) for k, reason in problems), problems


# ------------------------------------------------------------------------------- AudioMNIST
def write_wav(path, samples: np.ndarray, rate: int) -> None:
    """16-bit mono PCM with the standard library."""
    pcm = np.clip(np.round(samples * 32767), -32768, 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())


def tone(digit: int, seconds: float, rate: int, phase: float = 0.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return 0.5 * np.sin(2 * np.pi * (200 + 50 * digit) * t + phase)


AM_SPEAKERS = {  # speaker -> (gender, accent, age, native)
    "01": ("male", "German", 30, "no"), "02": ("male", "Spanish", "25", "no"), "03": ("female", "German", "41", "no"),
    "04": ("female", "Tamil", "27", "yes"), "05": ("male", "English", "1234", "yes"),
    "06": ("female", "German", "22", "no"),
}


def make_audiomnist(root, reps: int = 3, rate: int = 48000, seconds: float = 0.05):
    data = root / "data"
    meta = {}
    for speaker, (gender, accent, age, native) in AM_SPEAKERS.items():
        (data / speaker).mkdir(parents=True)
        meta[speaker] = {"accent": accent, "age": age, "gender": gender, "native speaker": native,
                         "origin": "somewhere", "recordingdate": "17-06-22-11-04-28", "recordingroom": "Kino"}
        for digit in range(10):
            for rep in range(reps):
                write_wav(data / speaker / f"{digit}_{speaker}_{rep}.wav", tone(digit, seconds, rate, rep), rate)
    (data / "audioMNIST_meta.txt").write_text(json.dumps(meta, indent=4))
    return root


@pytest.fixture(scope="module")
def am_root(tmp_path_factory):
    return make_audiomnist(tmp_path_factory.mktemp("audiomnist"))


def am_file(path) -> tuple[int, str, int]:
    digit, speaker, rep = os.path.basename(path)[:-4].split("_")
    return int(digit), speaker, int(rep)


def test_audiomnist_random_split_shares_speakers(am_root):
    b = build_dataset("audiomnist", root=str(am_root), length=1000, test_fraction=0.34, val_fraction=0.33)
    assert b.num_classes == 10 and b.class_names == [str(d) for d in range(10)] and b.in_shape == (1, 1000)
    parts = {p: [am_file(q) for q in getattr(b, p).paths] for p in ("train", "val", "test")}
    every = [(d, s, r) for s in AM_SPEAKERS for d in range(10) for r in range(3)]
    assert sorted(sum(parts.values(), [])) == sorted(every)                        # a partition of the clips
    for part, files in parts.items():                                              # 1 of 3 per (speaker, digit)
        assert sorted((s, d) for d, s, _ in files) == sorted((s, d) for s in AM_SPEAKERS for d in range(10)), part
    assert {s for _, s, _ in parts["train"]} == {s for _, s, _ in parts["test"]} == set(AM_SPEAKERS)
    for ds in (b.train, b.test):
        assert [am_file(p)[0] for p in ds.paths] == ds.targets


def test_audiomnist_speaker_split_holds_speakers_out(am_root):
    b = build_dataset("audiomnist", root=str(am_root), split="speaker", length=1000, test_fraction=0.34,
                      val_fraction=0.33)
    speakers = {p: set(getattr(b, p).attributes["speaker"]) for p in ("train", "val", "test")}
    assert not speakers["train"] & speakers["test"] and not speakers["train"] & speakers["val"]
    assert not speakers["val"] & speakers["test"] and set.union(*speakers.values()) == set(AM_SPEAKERS)
    for part in ("train", "val", "test"):                                          # stratified by gender
        assert set(getattr(b, part).attributes["gender"]) == {"female", "male"}, part
        assert len(getattr(b, part)) == 2 * 10 * 3
    other = build_dataset("audiomnist", root=str(am_root), split="speaker", split_seed=3, length=1000,
                          test_fraction=0.34, val_fraction=0.33)
    assert set(other.test_attributes["speaker"]) != speakers["test"]


def test_audiomnist_attributes_aligned(am_root):
    b = build_dataset("audiomnist", root=str(am_root), length=1000, test_fraction=0.34, val_fraction=0.33)
    assert set(b.test_attributes) == {"gender", "accent", "native", "age", "age_years", "speaker"}
    assert b.test_attributes == b.test.attributes and b.val_attributes == b.val.attributes
    decade = {"01": "30s", "02": "20s", "03": "40s", "04": "20s", "05": "unknown", "06": "20s"}
    for ds in (b.train, b.val, b.test):
        for i, path in enumerate(ds.paths):
            _, speaker, _ = am_file(path)
            gender, accent, age, native = AM_SPEAKERS[speaker]
            a = {k: v[i] for k, v in ds.attributes.items()}
            assert a == {"gender": gender, "accent": accent.lower(), "native": native, "age": decade[speaker],
                         "age_years": str(age), "speaker": speaker}


def test_audiomnist_waveforms_resampled_and_padded(am_root):
    b = build_dataset("audiomnist", root=str(am_root), length=1000, test_fraction=0.34, val_fraction=0.33)
    x, y = b.test[0]
    assert x.shape == (1, 1000) and x.dtype == torch.float32 and -1 <= x.min() and x.max() <= 1
    samples, rate = read_audio(b.test.paths[0])
    assert rate == 48000 and samples.size == 2400
    torch.testing.assert_close(x[0, :800], to_16k(samples, rate))                  # 2400 at 48 kHz -> 800
    assert x[0, 800:].abs().max() == 0
    # 16 kHz files are not resampled: the samples are the file's int16 / 32768
    path = am_root / "plain.wav"
    write_wav(path, tone(3, 0.1, 16000), 16000)
    with wave.open(str(path)) as w:
        raw = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    torch.testing.assert_close(load_clip(str(path), 1600)[0], torch.from_numpy(raw / 32768.0).float())


def test_audiomnist_max_per_speaker(am_root):
    b = build_dataset("audiomnist", root=str(am_root), max_per_speaker=2, split="speaker", test_fraction=0.34,
                      val_fraction=0.33)
    reps = {am_file(p)[2] for ds in (b.train, b.val, b.test) for p in ds.paths}
    assert reps == {0, 1} and sum(len(ds) for ds in (b.train, b.val, b.test)) == 6 * 10 * 2


def test_audiomnist_errors(am_root, tmp_path):
    with pytest.raises(ValueError, match="split must be one of random, speaker"):
        build_dataset("audiomnist", root=str(am_root), split="voice")
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        build_dataset("audiomnist", root=str(tmp_path / "nowhere"))
    (tmp_path / "data" / "07").mkdir(parents=True)
    write_wav(tmp_path / "data" / "07" / "1_07_0.wav", tone(1, 0.01, 48000), 48000)
    with pytest.raises(FileNotFoundError, match="audioMNIST_meta.txt"):
        build_dataset("audiomnist", root=str(tmp_path))
    (tmp_path / "data" / "audioMNIST_meta.txt").write_text(json.dumps({"01": {"gender": "male", "accent": "x",
                                                                               "age": "3", "native speaker": "no"}}))
    with pytest.raises(ValueError, match=r"speakers \['07'\] have clips but no entry"):
        build_dataset("audiomnist", root=str(tmp_path))
    with pytest.raises(ValueError, match="max_per_speaker"):
        build_dataset("audiomnist", root=str(am_root), max_per_speaker=0)


# ----------------------------------------------------------------------------- Common Voice
CV_HEADER = ["client_id", "path", "sentence", "up_votes", "down_votes", "age", "gender", "accent", "locale", "segment"]
#: (table, speaker, sentence, age, gender, accent)
CV_ROWS = [
    ("train", "spk_a", "Yes", "twenties", "female", "us"), ("train", "spk_a", "zero.", "twenties", "female", "us"),
    ("train", "spk_b", "no", "", "", ""), ("train", "spk_b", "Hey!", "", "", ""),
    ("train", "spk_c", "Firefox", "thirties", "male", "england"),
    ("train", "spk_c", "one", "thirties", "male", "england"),
    ("dev", "spk_d", "yes", "teens", "male", "indian"), ("dev", "spk_d", "Firefox", "teens", "male", "indian"),
    ("test", "spk_e", "no", "fourties", "other", "scotland"), ("test", "spk_f", "zero", "sixties", "female", "us"),
] + [("train", "spk_c", word, "thirties", "male", "england") for word in cv.PAPER_WORDS[2:10]]   # two .. nine


def make_common_voice(root, rows=CV_ROWS, header=CV_HEADER, mp3: bool = True):
    (root / "clips").mkdir(parents=True)
    tables = {"train": [], "dev": [], "test": []}
    for n, (table, speaker, sentence, age, gender, accent) in enumerate(rows):
        name = f"common_voice_en_{n:08d}." + ("mp3" if mp3 and n == 0 else "wav")
        clip = tone(n % 10, 0.1, 48000)
        if name.endswith(".mp3"):
            soundfile.write(root / "clips" / name, clip.astype(np.float32), 48000, format="MP3")
        else:
            write_wav(root / "clips" / name, clip, 48000)
        fields = {"client_id": speaker, "path": name, "sentence": sentence, "up_votes": "2", "down_votes": "0",
                  "age": age, "gender": gender, "accent": accent, "accents": accent, "locale": "en",
                  "segment": "Benchmark", "variant": ""}
        tables[table].append([fields[c] for c in header])
    for table, body in tables.items():
        with open(root / f"{table}.tsv", "w", newline="") as f:
            csv.writer(f, delimiter="\t", lineterminator="\n").writerows([header, *body])
    return root


@pytest.fixture(scope="module")
def cv_root(tmp_path_factory):
    return make_common_voice(tmp_path_factory.mktemp("cv") / "en")


def test_common_voice_loads_the_tables(cv_root):
    b = build_dataset("common_voice_clips", root=str(cv_root), length=2000)
    assert b.class_names == list(cv.PAPER_WORDS) and b.num_classes == 13 and b.in_shape == (1, 2000)
    words = {p: [b.class_names[t] for t in getattr(b, p).targets] for p in ("train", "val", "test")}
    assert words == {"train": ["yes", "zero", "no", "hey", "one", *cv.PAPER_WORDS[2:10]], "val": ["yes"],
                     "test": ["no", "zero"]}                                       # no Firefox
    assert b.train.attributes == {"gender": ["female", "female", "unknown", "unknown"] + ["male"] * 9,
                                  "age": ["twenties", "twenties", "unknown", "unknown"] + ["thirties"] * 9,
                                  "accent": ["us", "us", "unknown", "unknown"] + ["england"] * 9,
                                  "speaker": ["spk_a", "spk_a", "spk_b", "spk_b"] + ["spk_c"] * 9}
    assert b.test_attributes == {"gender": ["other", "female"], "age": ["fourties", "sixties"],
                                 "accent": ["scotland", "us"], "speaker": ["spk_e", "spk_f"]}
    assert b.val_attributes["speaker"] == ["spk_d"]
    for ds in (b.train, b.val, b.test):
        for i in range(len(ds)):
            x, _ = ds[i]
            assert x.shape == (1, 2000) and -1 <= x.min() and x.max() <= 1 and x.abs().max() > 0.1
            assert x[0, 1700:].abs().max() == 0                                    # 0.1 s = 1600 samples, then zeros
    assert b.train.paths[0].endswith(".mp3")                                       # MP3 as Common Voice ships it


def test_common_voice_accents_column_and_word_subset(tmp_path):
    header = [c if c != "accent" else "accents" for c in CV_HEADER] + ["variant"]
    root = make_common_voice(tmp_path / "en", header=header, mp3=False)
    b = build_dataset("common_voice_clips", root=str(root), words=("Yes", "no"), length=800)
    assert b.class_names == ["yes", "no"] and b.train.targets == [0, 1] and b.test.targets == [1]
    assert b.train.attributes["accent"] == ["us", "unknown"]
    with pytest.raises(ValueError, match=r"no clip of \['ten'\] in train.tsv, dev.tsv or test.tsv"):
        build_dataset("common_voice_clips", root=str(root), words=("yes", "no", "ten"))


def test_common_voice_speakers_must_be_disjoint(tmp_path):
    rows = CV_ROWS + [("test", "spk_a", "one", "twenties", "female", "us")]
    root = make_common_voice(tmp_path / "en", rows=rows, mp3=False)
    with pytest.raises(ValueError, match="train.tsv and test.tsv share 1 speaker.*'spk_a'"):
        build_dataset("common_voice_clips", root=str(root))


def test_common_voice_errors(cv_root, tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        build_dataset("common_voice_clips", root=str(tmp_path / "nowhere"))
    root = make_common_voice(tmp_path / "en", mp3=False)
    os.remove(root / "clips" / "common_voice_en_00000009.wav")
    with pytest.raises(FileNotFoundError, match="test.tsv names clip .*00000009.wav"):
        build_dataset("common_voice_clips", root=str(root))
    os.remove(root / "dev.tsv")
    with pytest.raises(FileNotFoundError, match="dev.tsv"):
        build_dataset("common_voice_clips", root=str(root))
    with pytest.raises(ValueError, match="max_per_split"):
        build_dataset("common_voice_clips", root=str(cv_root), max_per_split=0)
    b = build_dataset("common_voice_clips", root=str(cv_root), words=("yes", "no"), max_per_split=1)
    assert [len(ds) for ds in (b.train, b.val, b.test)] == [1, 1, 1]


def test_common_voice_needs_its_columns(tmp_path):
    root = make_common_voice(tmp_path / "en", header=["path", "sentence"], mp3=False)
    with pytest.raises(ValueError, match="lacks the column.*client_id"):
        build_dataset("common_voice_clips", root=str(root))


def test_wav_reader_is_soundfile_for_every_format(tmp_path):
    x = (0.25 * np.sin(np.arange(4410) / 7)).astype(np.float32)
    soundfile.write(tmp_path / "a.flac", x, 44100)
    samples, rate = read_audio(str(tmp_path / "a.flac"))
    assert rate == 44100 and np.abs(samples - x).max() < 1e-4
    stereo = np.stack([x, -x], axis=1)
    soundfile.write(tmp_path / "s.wav", stereo, 44100, subtype="FLOAT")
    assert np.abs(read_audio(str(tmp_path / "s.wav"))[0]).max() < 1e-6           # channels averaged
    (tmp_path / "bad.wav").write_bytes(b"not audio")
    with pytest.raises(OSError, match="cannot read audio file"):
        read_audio(str(tmp_path / "bad.wav"))
