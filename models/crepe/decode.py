"""CREPE decoding in NumPy, as torchcrepe 0.0.24 does it (argmax, weighted argmax, Viterbi), without dither.

The network returns 360 sigmoid activations per frame, bin b = 20*b + 1997.38 cents above 10 Hz. Bins outside
[fmin, fmax] are masked (-inf) first. Periodicity is the activation at the decoded bin. torchcrepe adds
triangular noise of +-20 cents to the decoded pitch (convert.dither); we do not, unless asked with a seed.
"""
from __future__ import annotations

import numpy as np

PITCH_BINS = 360
CENTS_PER_BIN = 20
CENTS_OFFSET = 1997.3794084376191
DECODERS = ("argmax", "weighted_argmax", "viterbi")


def bins_to_cents(bins) -> np.ndarray:
    return CENTS_PER_BIN * np.asarray(bins, np.float64) + CENTS_OFFSET


def cents_to_hz(cents) -> np.ndarray:
    return 10.0 * 2.0 ** (np.asarray(cents, np.float64) / 1200.0)


def hz_to_cents(hz) -> np.ndarray:
    return 1200.0 * np.log2(np.asarray(hz, np.float64) / 10.0)


def bin_range(fmin: float, fmax: float) -> tuple[int, int]:
    """First allowed bin and one past the last, computed in float32 like torchcrepe (floor / ceil)."""
    def to_bins(f):
        c = np.float32(1200.0) * np.log2(np.float32(f) / np.float32(10.0))
        return (c - np.float32(CENTS_OFFSET)) / np.float32(CENTS_PER_BIN)
    return int(np.floor(to_bins(fmin))), int(np.ceil(to_bins(fmax)))


def masked(act: np.ndarray, lo: int, hi: int) -> np.ndarray:
    out = np.array(act, np.float32)
    out[:, :lo] = -np.inf
    out[:, hi:] = -np.inf
    return out


def argmax(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    bins = m.argmax(axis=1)
    return bins, bins_to_cents(bins)


def weighted_argmax(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean of the bin cents over the argmax +-4 bins, weighted by sigmoid(activation): torchcrepe's rule (it
    applies a sigmoid to the network's sigmoid output)."""
    bins = m.argmax(axis=1)
    idx = np.arange(PITCH_BINS)[None, :]
    inside = (idx >= np.maximum(bins - 4, 0)[:, None]) & (idx < np.minimum(bins + 5, PITCH_BINS)[:, None])
    with np.errstate(over="ignore"):
        w = np.where(inside, 1.0 / (1.0 + np.exp(-m.astype(np.float64))), 0.0)
    cents = (w * bins_to_cents(np.arange(PITCH_BINS))[None, :]).sum(axis=1) / w.sum(axis=1)
    return bins, cents


_LOG_TRANS = None


def log_transition() -> np.ndarray:
    """log P(next bin j | bin i): a triangle of width 12 bins around i, rows normalised (torchcrepe's matrix)."""
    global _LOG_TRANS
    if _LOG_TRANS is None:
        d = np.abs(np.arange(PITCH_BINS)[:, None] - np.arange(PITCH_BINS)[None, :])
        t = np.maximum(12 - d, 0).astype(np.float64)
        t /= t.sum(axis=1, keepdims=True)
        _LOG_TRANS = np.log(t + np.finfo(np.float64).tiny)
    return _LOG_TRANS


BAND = 11                              # log_transition is log(tiny) (the same constant) beyond +-11 bins


def _band_tables():
    """For offsets -11..11: the source bin k = j + offset of each target bin j and log P(j | k) (-inf off the grid)."""
    lt = log_transition()
    j = np.arange(PITCH_BINS)
    k = j[None, :] + np.arange(-BAND, BAND + 1)[:, None]
    ok = (k >= 0) & (k < PITCH_BINS)
    kc = np.clip(k, 0, PITCH_BINS - 1)
    return kc, np.where(ok, lt[kc, j[None, :]], -np.inf), lt[0, -1]


def _best_sources(value: np.ndarray, kc, lt_band, far: float) -> tuple[np.ndarray, np.ndarray]:
    """For each bin j: max_k value[k] + log P(j | k) and its first argmax k, exactly as the dense 360 x 360 scan,
    but scanning only the 23 in-band sources plus the best far source (all far sources share one log P)."""
    scores = value[kc] + lt_band
    pick = scores.argmax(axis=0)
    cols = np.arange(PITCH_BINS)
    best, src = scores[pick, cols], kc[pick, cols]
    g = int(np.argmax(value))
    far_score = value[g] + far
    near = np.abs(cols - g) <= BAND                      # columns whose far sources exclude g: dense scan there
    jump = ~near & ((far_score > best) | ((far_score == best) & (g < src)))
    best, src = np.where(jump, far_score, best), np.where(jump, g, src)
    if near.any():
        lt = log_transition()
        dense = value[:, None] + lt[:, near]
        k = dense.argmax(axis=0)
        best[near], src[near] = dense[k, np.arange(k.size)], k
    return best, src


class _Step:
    """One Viterbi step with _best_sources' numbers in fewer, gather-free operations: the 23 in-band sources
    of every bin are a sliding window over the values padded with -inf (a strided view, refilled in place each
    frame), far columns take the global best source when _best_sources' rule says so, and the near columns'
    dense scan is skipped when no far source can reach their band's best (always, for finite values: a near
    column's band holds the global best g itself, at most 11 bins away, so its best is >= value[g] - 5 while
    every far source scores <= value[g] + log(tiny) = value[g] - 708); otherwise _best_sources runs."""

    def __init__(self):
        self.kc, self.lt_band, self.far = _band_tables()
        n = PITCH_BINS
        self.pad = np.full(n + 2 * BAND, -np.inf)
        self.window = np.lib.stride_tricks.sliding_window_view(self.pad, 2 * BAND + 1)     # (360, 23) view
        self.lt = np.ascontiguousarray(self.lt_band.T)            # [j, o]: log P(j | j + o - BAND)
        self.scores = np.empty((n, 2 * BAND + 1))
        self.cols = np.arange(n)
        self.offset = self.cols - BAND

    def __call__(self, value: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.pad[BAND:BAND + PITCH_BINS] = value
        np.add(self.window, self.lt, out=self.scores)
        pick = self.scores.argmax(axis=1)
        best = self.scores[self.cols, pick]
        src = pick + self.offset
        g = int(value.argmax())
        far_score = value[g] + self.far
        lo, hi = max(g - BAND, 0), g + BAND + 1                  # the near columns |j - g| <= BAND
        if not far_score < best[lo:hi].min():                    # a far source might win a near column
            return _best_sources(value, self.kc, self.lt_band, self.far)
        jump = (far_score > best) | ((far_score == best) & (g < src))
        jump[lo:hi] = False
        if jump.any():
            best[jump] = far_score
            src[jump] = g
        return best, src


def viterbi(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Most likely bin path under log_transition, with the softmax over bins of each frame as observation
    likelihood and a uniform start (librosa.sequence.viterbi's arithmetic: float32 log-likelihoods + tiny)."""
    return _viterbi(m, _Step())


def viterbi_banded(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The previous banded scan (_best_sources per frame with gathers and a dense scan of the near columns):
    the reference the faster viterbi() is checked against."""
    kc, lt_band, far = _band_tables()
    return _viterbi(m, lambda value: _best_sources(value, kc, lt_band, far))


def _viterbi(m: np.ndarray, step) -> tuple[np.ndarray, np.ndarray]:
    """The forward pass with `step(value) -> (best score, source bin)` per frame, then the backtrace."""
    x = m - m.max(axis=1, keepdims=True)
    e = np.exp(x)
    prob = (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
    logp = np.log(prob + np.finfo(np.float32).tiny)
    n = logp.shape[0]
    ptr = np.zeros((n, PITCH_BINS), np.int64)
    value = logp[0] + np.log(1.0 / PITCH_BINS + np.finfo(np.float64).tiny)
    for t in range(1, n):
        best, ptr[t] = step(value)
        value = logp[t] + best
    bins = np.empty(n, np.int64)
    bins[-1] = int(np.argmax(value))
    for t in range(n - 1, 0, -1):
        bins[t - 1] = ptr[t, bins[t]]
    return bins, bins_to_cents(bins)


def viterbi_dense(m: np.ndarray) -> np.ndarray:
    """The plain 360 x 360 scan per frame (reference for tests): the bins only."""
    x = m - m.max(axis=1, keepdims=True)
    e = np.exp(x)
    logp = np.log((e / e.sum(axis=1, keepdims=True)).astype(np.float32) + np.finfo(np.float32).tiny)
    lt = log_transition()
    ptr = np.zeros(logp.shape, np.int64)
    value = logp[0] + np.log(1.0 / PITCH_BINS + np.finfo(np.float64).tiny)
    for t in range(1, logp.shape[0]):
        scores = value[:, None] + lt
        ptr[t] = scores.argmax(axis=0)
        value = logp[t] + scores[ptr[t], np.arange(PITCH_BINS)]
    bins = np.empty(logp.shape[0], np.int64)
    bins[-1] = int(np.argmax(value))
    for t in range(logp.shape[0] - 1, 0, -1):
        bins[t - 1] = ptr[t, bins[t]]
    return bins


def decode_activations(act: np.ndarray, decoder: str, fmin: float, fmax: float, dither_seed: int | None = None):
    """(f0 Hz, periodicity, bins) per frame from activations (frames, 360)."""
    if act.shape[0] == 0:
        return np.zeros(0), np.zeros(0, np.float32), np.zeros(0, np.int64)
    m = masked(act, *bin_range(fmin, fmax))
    bins, cents = {"argmax": argmax, "weighted_argmax": weighted_argmax, "viterbi": viterbi}[decoder](m)
    if dither_seed is not None:
        cents = cents + np.random.default_rng(dither_seed).triangular(-CENTS_PER_BIN, 0, CENTS_PER_BIN, cents.shape)
    periodicity = np.take_along_axis(m, bins[:, None], axis=1)[:, 0]
    return cents_to_hz(cents), periodicity.astype(np.float32), bins
