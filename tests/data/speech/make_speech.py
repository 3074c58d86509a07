"""Rebuild the speech clips of this folder (see README.md): eSpeak NG phrases, sox resampling, NumPy mixing.

Needs espeak-ng and sox on PATH (Debian: apt-get install espeak-ng sox) and NumPy + soundfile; run from the
repository root: python tests/data/speech/make_speech.py. Deterministic for a given espeak-ng/sox build.
"""
from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

HERE = Path(__file__).resolve().parent
SEED = 2020
NOISE_DBFS = -60.0        # room tone under everything (a recording has one)
PEAK = 0.8

# file: (rate, [(voice, words per minute, pitch, text, pause after in s)], lead-in s)
CLIPS = {
    "two_sentences_16k.wav": (16000, [
        ("en-us", 150, 45, "The quick brown fox jumps over the lazy dog.", 1.2),
        ("en-gb", 160, 35, "Please pack my box with five dozen jugs.", 0.6),
    ], 0.5),
    "three_phrases_16k.wav": (16000, [
        ("en-us", 170, 60, "Good morning.", 0.8),
        ("en-gb-x-rp", 150, 40, "The meeting starts at nine.", 1.0),
        ("en-us", 160, 50, "See you there.", 0.5),
    ], 0.4),
    "dialogue_22k.wav": (22050, [
        ("en-gb", 155, 30, "Is the train to the airport on time today?", 0.9),
        ("en-us", 165, 55, "Yes, it leaves at seven.", 0.5),
    ], 0.3),
}


def espeak(voice: str, wpm: int, pitch: int, text: str, rate: int, tmp: Path) -> np.ndarray:
    raw, out = tmp / "raw.wav", tmp / "out.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(wpm), "-p", str(pitch), "-w", str(raw), text], check=True)
    subprocess.run(["sox", "-R", "-D", str(raw), "-r", str(rate), str(out), "rate", "-v"], check=True)
    x, sr = sf.read(str(out), dtype="float64")
    assert sr == rate, (sr, rate)
    return x


def main() -> None:
    rng = np.random.default_rng(SEED)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for name, (rate, phrases, lead) in CLIPS.items():
            parts = [np.zeros(int(lead * rate))]
            for voice, wpm, pitch, text, pause in phrases:
                speech = espeak(voice, wpm, pitch, text, rate, tmp)
                parts += [speech / np.abs(speech).max(), np.zeros(int(pause * rate))]
            x = np.concatenate(parts)
            x = PEAK * x / np.abs(x).max()
            x += 10 ** (NOISE_DBFS / 20) * rng.standard_normal(x.shape[0])
            sf.write(str(HERE / name), x, rate, subtype="PCM_16")
            print(f"{name}: {x.shape[0] / rate:.2f} s at {rate} Hz")


if __name__ == "__main__":
    main()
