"""ALSA without a sound card: real alsa-lib capturing a known waveform, and audio analysis.

The ALSA ``file`` plugin feeds capture from a raw file (``infile``) through the real
alsa-lib and pyalsaaudio, so the whole open/hw_params/info/read/close path runs as on
a board.  It is NOT paced: reads return at once (the ``null`` slave is always ready)
and after the end of ``infile`` they return stale periods with no end-of-file, hence
``AlsaSource(paced=True)`` and infiles longer than any test reads.

How alsa-lib is made to load the test devices, verified here with alsa-lib 1.2.8:

* ``ALSA_CONFIG_PATH`` names the top-level config file(s) instead of
  ``/usr/share/alsa/alsa.conf``.  Our file first includes the system one
  (``</usr/share/alsa/alsa.conf>``, so ``null``, ``default``, ``hw`` ... keep working)
  and then defines the test PCMs.  Nothing in the system or the user's home changes.
* alsa-lib reads the variable on *every* ``snd_pcm_open`` (``snd_config_update``
  compares the list of top-level files and their mtimes with its cache), so setting it
  in-process with ``monkeypatch.setenv`` works even after other opens, and each test
  can point at its own file: no subprocess is needed.  Setting ``HOME``/``XDG_CONFIG_HOME``
  to a dir with ``.asoundrc`` would only work before the first open of the process,
  because ``~/.asoundrc`` is loaded by a hook of alsa.conf, which is cached.
* A plugin that grants a different *channel count* than asked: ``type multi`` fixes
  its client's channels to its number of bindings, so a ``file`` plugin over a 2-binding
  ``multi`` over ``null`` opens stereo even when asked for mono, and reads ``infile`` as
  interleaved stereo.  No plugin available without hardware grants a different *rate*
  (``null`` accepts any; ``rate``/``plug`` convert back to what was asked; ``dsnoop``/
  ``hw`` need a card), so the rate conversion is tested on ``PcmConverter`` directly.
* alsa-lib prints "ALSA lib ... Unknown PCM" lines on stderr for missing devices;
  pyalsaaudio offers no way to silence them and they are harmless.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

SYSTEM_ALSA_CONF = Path("/usr/share/alsa/alsa.conf")

MONO_DEVICE = "glimpsetest"  # file plugin over null: grants whatever is asked
STEREO_DEVICE = "glimpsestereo"  # file plugin over a 2-channel multi: always stereo


def sine(
    frequency: float, rate: int, seconds: float, *, channels: int = 1, dbfs: float = -12.0
) -> npt.NDArray[np.int16]:
    """An interleaved s16 sine, the same on every channel."""
    n = int(rate * seconds)
    amplitude = 32767 * 10 ** (dbfs / 20)
    mono = np.rint(amplitude * np.sin(2 * np.pi * frequency * np.arange(n) / rate))
    return np.repeat(mono.astype(np.int16), channels)


def write_raw(path: Path, samples: npt.NDArray[np.int16]) -> Path:
    """Write interleaved samples as raw S16_LE, the ``file`` plugin's ``format raw``."""
    samples.astype("<i2").tofile(path)
    return path


def alsa_config_text(mono_infile: Path, stereo_infile: Path) -> str:
    """The test config: the system config, then the two test PCMs."""
    return f"""\
# glimpse-edge tests: see tests/support/alsa.py
<{SYSTEM_ALSA_CONF}>

pcm.{MONO_DEVICE} {{
    type file
    slave.pcm null
    file "/dev/null"
    infile "{mono_infile}"
    format raw
}}

pcm.glimpse_null_stereo {{
    type multi
    slaves.a {{ pcm null; channels 2 }}
    bindings.0 {{ slave a; channel 0 }}
    bindings.1 {{ slave a; channel 1 }}
}}

pcm.{STEREO_DEVICE} {{
    type file
    slave.pcm glimpse_null_stereo
    file "/dev/null"
    infile "{stereo_infile}"
    format raw
}}
"""


@dataclass(frozen=True)
class AlsaTestDevices:
    """The test PCMs alsa-lib now knows, and the waveforms they play."""

    config: Path
    mono: str
    stereo: str
    rate: int
    frequency: float
    mono_samples: npt.NDArray[np.int16]  # what MONO_DEVICE captures, from the start
    stereo_samples: npt.NDArray[np.int16]  # interleaved, what STEREO_DEVICE captures


@pytest.fixture
def alsa_devices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AlsaTestDevices:
    """Point alsa-lib at a config with the test devices (restored after the test)."""
    if not SYSTEM_ALSA_CONF.exists():
        pytest.skip(f"{SYSTEM_ALSA_CONF} not found: alsa-lib is not installed")
    rate, frequency = 48000, 1000.0
    mono = sine(frequency, rate, 5.0)
    stereo = sine(frequency, rate, 5.0, channels=2)
    config = tmp_path / "asound.conf"
    config.write_text(
        alsa_config_text(
            write_raw(tmp_path / "mono.raw", mono), write_raw(tmp_path / "stereo.raw", stereo)
        )
    )
    monkeypatch.setenv("ALSA_CONFIG_PATH", str(config))
    return AlsaTestDevices(config, MONO_DEVICE, STEREO_DEVICE, rate, frequency, mono, stereo)


# ------------------------------------------------------------------ audio analysis


def dominant_frequency(samples: npt.NDArray[np.int16], rate: int) -> float:
    """The strongest frequency in a mono signal, to a fraction of an FFT bin.

    Hann window, then a parabola through the log magnitudes around the peak bin
    (accurate to well under 1 Hz for a clean sine of a few thousand samples).
    """
    x = samples.astype(np.float64)
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    k = int(np.argmax(spectrum[1:-1])) + 1
    a, b, c = np.log(spectrum[k - 1 : k + 2] + 1e-12)
    shift = 0.5 * (a - c) / (a - 2 * b + c)
    return float((k + shift) * rate / x.size)


def level_dbfs(samples: npt.NDArray[np.int16]) -> float:
    """Level relative to a full-scale sine (AES17): a sine peaking at -12 dB reads -12."""
    rms = float(np.sqrt(np.mean(samples.astype(np.float64) ** 2)))
    return 20 * float(np.log10(rms * np.sqrt(2) / 32767))
