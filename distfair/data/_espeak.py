"""The eSpeak NG engine behind ``spoken_words``: locating it, and synthesising one clip with a
freshly loaded copy of the library.

**Engine**: the ``espeakng-loader`` wheel (a project dependency) ships libespeak-ng 1.52 and
its voice data; the library is driven through ``ctypes`` (``espeak_Synth`` in synchronous
mode). ``espeak_library`` (or ``$DISTFAIR_ESPEAK_LIBRARY``) points at another
libespeak-ng >= 1.52 shared library, with ``espeak_data`` (or ``$DISTFAIR_ESPEAK_DATA``,
default: ``espeak-ng-data`` beside the library) its data folder.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import threading
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from distfair.data._voices import _VARIANT, DEFAULT_ACCENTS, Voice

LIBRARY_ENV = "DISTFAIR_ESPEAK_LIBRARY"
DATA_ENV = "DISTFAIR_ESPEAK_DATA"

INSTALL_HINT = ("install the project's pinned engine with `pip install -e .` (the espeakng-loader==0.2.4 wheel, "
                "for Linux x86_64, macOS arm64 and Windows x64, bundles libespeak-ng 1.52 and its voice data), "
                "or set the dataset option "
                f"`espeak_library` (or ${LIBRARY_ENV}) to a libespeak-ng >= 1.52 shared library and "
                f"`espeak_data` (or ${DATA_ENV}) to its espeak-ng-data folder")


class EngineMissing(FileNotFoundError):
    """eSpeak NG (library or voice data) is not where the options say; the text says what to
    install or set. A FileNotFoundError, so configuration checks report it as a config problem."""


@dataclass(frozen=True)
class Engine:
    """Where libespeak-ng and its data are; synthesis loads a fresh copy of the library per clip."""

    library: str
    data: str

    _lock = threading.Lock()   # eSpeak NG is one global state per loaded copy: one clip at a time

    @classmethod
    def locate(cls, library: str | None, data: str | None) -> "Engine":
        library = library or os.environ.get(LIBRARY_ENV) or None
        data = data or os.environ.get(DATA_ENV) or None
        if library is None:
            try:
                import espeakng_loader
            except ImportError:
                raise EngineMissing(f"spoken_words: eSpeak NG is not installed (no espeakng-loader package); "
                                    f"{INSTALL_HINT}") from None
            library = espeakng_loader.get_library_path()
            data = data or os.path.join(os.path.dirname(library), "espeak-ng-data")
            option = "the espeakng-loader package"
        else:
            data = data or os.path.join(os.path.dirname(os.path.abspath(library)), "espeak-ng-data")
            option = f"espeak_library / ${LIBRARY_ENV}"
        if not os.path.isfile(library):
            raise EngineMissing(f"spoken_words: no eSpeak NG library at {library!r} (from {option}); {INSTALL_HINT}")
        if not os.path.isfile(os.path.join(data, "phondata")):
            raise EngineMissing(f"spoken_words: no eSpeak NG voice data at {data!r} (no phondata; option "
                                f"espeak_data / ${DATA_ENV}); {INSTALL_HINT}")
        return cls(os.path.abspath(library), os.path.abspath(data))

    def variants(self) -> list[str]:
        folder = os.path.join(self.data, "voices", "!v")
        return sorted(n for n in os.listdir(folder) if _VARIANT.match(n)) if os.path.isdir(folder) else []

    @contextlib.contextmanager
    def _fresh(self) -> Iterator[ctypes.CDLL]:
        """A freshly loaded, initialised copy of the library (unloaded afterwards)."""
        with self._lock:
            try:
                lib = ctypes.CDLL(self.library)
            except OSError as err:
                raise EngineMissing(f"spoken_words: cannot load the eSpeak NG library {self.library!r}: {err}; "
                                    f"{INSTALL_HINT}") from None
            try:
                if not hasattr(lib, "espeak_ng_SetRandSeed"):
                    raise EngineMissing(f"spoken_words: the eSpeak NG library {self.library!r} has no "
                                        f"espeak_ng_SetRandSeed (added in 1.52): its noise would be seeded from "
                                        f"the clock and the clips not reproducible; {INSTALL_HINT}")
                lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
                lib.espeak_Info.restype = ctypes.c_char_p
                lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
                lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
                lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                             ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
                # AUDIO_OUTPUT_SYNCHRONOUS = 2; espeakINITIALIZE_DONT_EXIT = 0x8000 (else a bad
                # data path makes the library call exit())
                rate = lib.espeak_Initialize(2, 0, self.data.encode(), 0x8000)
                if rate <= 0:
                    raise EngineMissing(f"spoken_words: eSpeak NG could not initialise with the voice data "
                                        f"{self.data!r}; {INSTALL_HINT}")
                try:
                    lib.espeak_ng_SetRandSeed(0)
                    lib.sample_rate = rate
                    yield lib
                finally:
                    lib.espeak_Terminate()
            finally:
                _unload(lib)

    def version(self) -> str:
        with self._fresh() as lib:
            return lib.espeak_Info(None).decode()

    def synthesize(self, voice: Voice, text: str) -> tuple[np.ndarray, int]:
        """(int16 samples, sample rate) of ``text`` spoken by ``voice``."""
        chunks: list[bytes] = []

        @ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
        def collect(wav, n, events):
            if n > 0:
                chunks.append(ctypes.string_at(wav, 2 * n))
            return 0

        with self._fresh() as lib:
            lib.espeak_SetSynthCallback(collect)
            if lib.espeak_SetVoiceByName(voice.espeak_name.encode()) != 0:
                raise ValueError(f"spoken_words: eSpeak NG has no voice {voice.espeak_name!r} (accent "
                                 f"{voice.accent!r}: use a voice file name such as {', '.join(DEFAULT_ACCENTS)}; "
                                 f"'en-gb' is not one, 'en' is British English)")
            lib.espeak_SetParameter(1, voice.speed, 0)    # espeakRATE, words per minute
            lib.espeak_SetParameter(3, voice.pitch, 0)    # espeakPITCH, 0-99
            buf = text.encode("utf-8") + b"\0"
            # position 0, POS_CHARACTER = 1, no end position, espeakCHARS_UTF8 = 1
            if lib.espeak_Synth(buf, len(buf), 0, 1, 0, 1, None, None) != 0:
                raise RuntimeError(f"spoken_words: eSpeak NG failed to synthesise {text!r} with {voice.espeak_name!r}")
            lib.espeak_Synchronize()
            rate = lib.sample_rate
        samples = np.frombuffer(b"".join(chunks), dtype=np.int16)
        if samples.size == 0:
            raise RuntimeError(f"spoken_words: eSpeak NG produced no audio for {text!r} with {voice.espeak_name!r}")
        return samples, rate


def _unload(lib: ctypes.CDLL) -> None:
    """Unload the library (dlclose / FreeLibrary) so the next load starts from its pristine
    static state; where that is impossible, generation's reproducibility self-check says so."""
    import _ctypes

    close = getattr(_ctypes, "dlclose", None) or getattr(_ctypes, "FreeLibrary", None)
    if close is not None:
        with contextlib.suppress(OSError):
            close(lib._handle)
