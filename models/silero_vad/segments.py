"""Speech segments from a Silero VAD probability track: silero-vad's own rules, written anew in NumPy/Python.

`speech_timestamps` follows `get_speech_timestamps_from_probs` of silero-vad 6.2.3 (silero_vad/utils_vad.py)
step by step, so that the same probabilities give the same segments, sample for sample:
- chunk i starts at sample 512 * i; a chunk with prob >= threshold starts speech (or ends a tentative silence);
- while in speech, a chunk with prob < neg_threshold (default max(threshold - 0.15, 0.01)) opens a tentative
  end at its start sample; the segment ends there once the silence has lasted min_silence_duration_ms
  (cur - temp_end >= min_silence_samples), and is kept only if longer than min_speech_duration_ms;
- a segment reaching max_speech_duration_s is cut at the longest silence over min_silence_at_max_speech ms
  seen inside it (use_max_poss_sil_at_max_speech, the default), else at the last one, else right there;
- speech still open at the end runs to the end of the audio if longer than min_speech_duration_ms;
- padding: each segment grows by speech_pad_ms on both sides, except where the gap to its neighbour is under
  2 x speech_pad_ms, where the gap is split in half (integer division); clipped to [0, audio length].
Segments are (start, end) in samples at 16 kHz; seconds are samples / 16000 (no rounding).

Also: the per-chunk speech mask of a set of segments, and the figures that compare two tracks' segments.
"""
from __future__ import annotations

import math

import numpy as np

DEFAULTS = {"threshold": 0.5, "neg_threshold": None, "min_speech_duration_ms": 250, "min_silence_duration_ms": 100,
            "speech_pad_ms": 30, "max_speech_duration_s": None, "min_silence_at_max_speech_ms": 98,
            "use_max_poss_sil_at_max_speech": True}


def speech_timestamps(probs, *, sampling_rate: int = 16000, window: int = 512, threshold: float = 0.5,
                      neg_threshold: float | None = None, min_speech_duration_ms: float = 250,
                      min_silence_duration_ms: float = 100, speech_pad_ms: float = 30,
                      max_speech_duration_s: float | None = None, min_silence_at_max_speech_ms: float = 98,
                      use_max_poss_sil_at_max_speech: bool = True,
                      audio_length_samples: int | None = None) -> list[tuple[int, int]]:
    """[(start, end)] in samples of the speech in a track of per-chunk probabilities (see the module doc)."""
    probs = [float(p) for p in np.asarray(probs, dtype=np.float64).reshape(-1)]
    if audio_length_samples is None:
        audio_length_samples = len(probs) * window
    max_s = math.inf if max_speech_duration_s is None else max_speech_duration_s
    min_speech = sampling_rate * min_speech_duration_ms / 1000
    pad = sampling_rate * speech_pad_ms / 1000
    max_speech = sampling_rate * max_s - window - 2 * pad
    min_silence = sampling_rate * min_silence_duration_ms / 1000
    min_silence_at_max = sampling_rate * min_silence_at_max_speech_ms / 1000
    if neg_threshold is None:
        neg_threshold = max(threshold - 0.15, 0.01)

    triggered = False
    speeches: list[dict] = []
    current: dict = {}
    temp_end = 0
    prev_end = next_start = 0
    possible_ends: list[tuple[int, int]] = []
    for i, p in enumerate(probs):
        cur = window * i
        if p >= threshold and temp_end:                       # speech again after a tentative end
            sil = cur - temp_end
            if sil > min_silence_at_max:
                possible_ends.append((temp_end, sil))
            temp_end = 0
            if next_start < prev_end:
                next_start = cur
        if p >= threshold and not triggered:                  # speech starts
            triggered = True
            current["start"] = cur
            continue
        if triggered and cur - current["start"] > max_speech:     # too long: cut
            if use_max_poss_sil_at_max_speech and possible_ends:
                prev_end, dur = max(possible_ends, key=lambda e: e[1])
                current["end"] = prev_end
                speeches.append(current)
                current = {}
                next_start = prev_end + dur
                if next_start < prev_end + cur:
                    current["start"] = next_start
                else:
                    triggered = False
                prev_end = next_start = temp_end = 0
                possible_ends = []
            elif prev_end:
                current["end"] = prev_end
                speeches.append(current)
                current = {}
                if next_start < prev_end:
                    triggered = False
                else:
                    current["start"] = next_start
                prev_end = next_start = temp_end = 0
                possible_ends = []
            else:
                current["end"] = cur
                speeches.append(current)
                current = {}
                prev_end = next_start = temp_end = 0
                triggered = False
                possible_ends = []
                continue
        if p < neg_threshold and triggered:                   # silence inside speech
            if not temp_end:
                temp_end = cur
            sil_now = cur - temp_end
            if not use_max_poss_sil_at_max_speech and sil_now > min_silence_at_max:
                prev_end = temp_end
            if sil_now < min_silence:
                continue
            current["end"] = temp_end
            if current["end"] - current["start"] > min_speech:
                speeches.append(current)
            current = {}
            prev_end = next_start = temp_end = 0
            triggered = False
            possible_ends = []
            continue
    if current and audio_length_samples - current["start"] > min_speech:
        current["end"] = audio_length_samples
        speeches.append(current)

    for i, sp in enumerate(speeches):                         # padding, splitting short gaps in half
        if i == 0:
            sp["start"] = int(max(0, sp["start"] - pad))
        if i != len(speeches) - 1:
            gap = speeches[i + 1]["start"] - sp["end"]
            if gap < 2 * pad:
                sp["end"] += int(gap // 2)
                speeches[i + 1]["start"] = int(max(0, speeches[i + 1]["start"] - gap // 2))
            else:
                sp["end"] = int(min(audio_length_samples, sp["end"] + pad))
                speeches[i + 1]["start"] = int(max(0, speeches[i + 1]["start"] - pad))
        else:
            sp["end"] = int(min(audio_length_samples, sp["end"] + pad))
    return [(int(sp["start"]), int(sp["end"])) for sp in speeches]


def params(post: dict) -> dict:
    """The keyword arguments of speech_timestamps from a config's postprocess section."""
    return {k: post[k] for k in DEFAULTS}


def speech_mask(segments, chunks: int, window: int = 512) -> np.ndarray:
    """Per chunk: 1 when the chunk's centre sample lies inside a segment."""
    centre = np.arange(chunks) * window + window / 2
    mask = np.zeros(chunks, np.uint8)
    for a, b in segments:
        mask[(centre >= a) & (centre < b)] = 1
    return mask


def compare_segments(ref, tgt, chunks: int, window: int = 512) -> dict:
    """Target segments against the reference's: per-chunk agreement of the speech mask, segment counts and
    the worst boundary shift (samples) when the counts agree (None otherwise)."""
    ref, tgt = [tuple(s) for s in ref], [tuple(s) for s in tgt]
    agree = float(np.mean(speech_mask(ref, chunks, window) == speech_mask(tgt, chunks, window))) if chunks else 1.0
    same = len(ref) == len(tgt)
    shift = max((max(abs(a - c), abs(b - d)) for (a, b), (c, d) in zip(ref, tgt)), default=0) if same else None
    return {"chunk_agreement": agree, "segments_ref": len(ref), "segments_target": len(tgt),
            "same_count": same, "max_boundary_shift_samples": shift, "identical": ref == tgt}
