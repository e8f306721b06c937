"""Seeded waveform augmentations in JAX: (B, T) -> (B, T), jit-friendly, on device.

noise: the seed's recipe, x + sigma * U(0, 1) * max|x| * N(0, 1) per clip.
pitch: librosa.effects.pitch_shift's method. A phase-vocoder time stretch by 2 ** (-n / 12)
    (librosa.phase_vocoder on the 2048/512 Hann STFT, then istft; same frames, same rate), then
    a resampling back to the original duration. The resampling is done by FFT (the spectrum of
    the whole stretched clip cut or zero-padded, with a roll-off like soxr 'HQ', librosa's
    default), and the stretched length is rounded to a fast FFT size, which moves pitch and
    duration by under 4 cents (0.5 cent for 3 semitones on 55,125 samples). Features of
    RAVDESS clips shifted +3 semitones, vs librosa's pitch_shift (max |a - b| / max |b| per
    group, 64 clips): rms and mfcc under 0.1%, mel under 1.5%; zcr 0.3% typically but up to 16%
    where near-silent stretches make zero crossings count rounding noise; chroma 3% typically,
    up to 16% (its tuning estimate follows the small differences).
stretch: the same phase-vocoder time stretch by a rate, cropped or zero-padded to T samples.
shift: a random shift per clip by up to shift_seconds either way, zero-filled.
pitch_noise: pitch, then noise.
"""

from functools import lru_cache, partial

import jax
import jax.numpy as jnp
import numpy as np

from ser_jax.features.extractor import (
    HOP,
    N_FFT,
    frame_order,
    hann_window,
    map_chunks,
    num_frames,
    stft,
)

AUGMENTATIONS = ("none", "noise", "pitch", "pitch_noise", "stretch", "shift")
_TAPER = (0.93, 0.985)  # resampling roll-off, fractions of the Nyquist frequency
_SILENCE = 1e-6  # pitch-shifted samples this far below the clip's peak are set to 0


def _phase_vocoder(spec: jax.Array, rate: float, frames_out: int) -> jax.Array:
    """librosa.phase_vocoder(stft, rate) for the first frames_out output columns.

    spec (B, frames, F) and the result have their rows in features.frame_order. Output column t
    interpolates the magnitudes of input columns i_t = floor(t * rate) and i_t + 1 and carries
    the phase of column 0 advanced by the phase differences between columns i_s + 1 and i_s for
    every step s < t (librosa adds the expected advance plus the wrapped deviation from it:
    the same angle modulo 2 pi). As unit phasors u, that product telescopes to
    u[i_t] * prod_{s < t} u[i_s + 1] / u[i_{s+1}], whose factors are 1 except where a step
    repeats or skips an input column, so only those few need a running product (no angle,
    cos or sin, which are slow on CPU, and no long sequential scan).
    """
    frames_in = spec.shape[1]
    steps = np.arange(0, frames_in, rate, dtype=np.float64)
    first = steps.astype(np.int64)
    row = np.concatenate([np.argsort(frame_order(frames_in)), [frames_in, frames_in + 1]])
    out_time = frame_order(frames_out)
    alpha = (steps - first).astype(np.float32)[out_time, None]

    spec = jnp.pad(spec, ((0, 0), (0, 2), (0, 0)))  # librosa's two zero columns at the end

    def unit(rows: np.ndarray) -> jax.Array:  # u = spec / |spec|, angle(0) = 0 as in librosa
        s = spec[:, rows]
        m = jnp.abs(s)
        return jnp.where(m > 0, s / jnp.where(m > 0, m, 1.0).astype(s.dtype), 1.0)

    odd = np.nonzero(first[1:frames_out] != first[: frames_out - 1] + 1)[0]
    factors = unit(row[first[odd] + 1]) * jnp.conj(unit(row[first[odd + 1]]))

    def accumulate(product, factor):
        return product * factor, product

    ones = jnp.ones_like(factors[:, 0])
    last, products = jax.lax.scan(accumulate, ones, jnp.swapaxes(factors, 0, 1))
    products = jnp.concatenate([jnp.swapaxes(products, 0, 1), last[:, None]], axis=1)
    done = np.searchsorted(odd, out_time, side="left")  # odd steps s < t
    s0, s1 = spec[:, row[first[out_time]]], spec[:, row[first[out_time] + 1]]
    m0, m1 = jnp.abs(s0), jnp.abs(s1)
    # ((1 - alpha) m0 + alpha m1) u0, with u0 = s0 / m0 (1 where m0 = 0)
    gain = (1.0 - alpha) + alpha * m1 / jnp.where(m0 > 0, m0, 1.0)
    interpolated = jnp.where(m0 > 0, gain.astype(s0.dtype) * s0, (alpha * m1).astype(s0.dtype))
    return interpolated * products[:, done]


def _istft(spec: jax.Array, length: int) -> jax.Array:
    """librosa.istft (centred, Hann) of spec (B, frames, F) with rows in frame_order -> (B, length).

    Frames of one hop phase do not overlap, so the overlap-add is one reshape per phase.
    """
    batch, frames, _ = spec.shape
    window = hann_window(N_FFT)
    pieces = jnp.fft.irfft(spec, n=N_FFT, axis=-1) * window.astype(np.float32)
    total = (frames - 1) * HOP + N_FFT
    signal = jnp.zeros((batch, total), pieces.dtype)
    norm = np.zeros(total)
    start = 0
    for r in range(N_FFT // HOP):
        count = len(range(r, frames, N_FFT // HOP))
        block = pieces[:, start : start + count].reshape(batch, count * N_FFT)
        signal = signal + jnp.pad(block, ((0, 0), (r * HOP, total - r * HOP - count * N_FFT)))
        norm[r * HOP : r * HOP + count * N_FFT] += np.tile(window**2, count)
        start += count
    scale = np.where(norm > np.finfo(np.float32).tiny, 1.0 / np.maximum(norm, 1e-30), 1.0)
    begin = N_FFT // 2
    signal = signal[:, begin : begin + length] * scale[begin : begin + length].astype(np.float32)
    return jnp.pad(signal, ((0, 0), (0, length - signal.shape[1])))


def _time_stretch(waves: jax.Array, rate: float, length: int) -> jax.Array:
    """Phase-vocoder time stretch by rate (> 1 faster): the first `length` output samples."""
    frames_in = num_frames(waves.shape[1])
    needed = (length + N_FFT // 2 + HOP - 1) // HOP  # frames touching [0, length)
    frames_out = min(len(np.arange(0, frames_in, rate)), needed)
    return _istft(_phase_vocoder(stft(waves), rate, frames_out), length)


@lru_cache
def _smooth_numbers(limit: int) -> np.ndarray:
    """Sorted integers in [1, limit] with no prime factor above 7 (fast FFT sizes)."""
    values = {1}
    for prime in (2, 3, 5, 7):
        grown = set()
        for v in values:
            while v <= limit:
                grown.add(v)
                v *= prime
        values = grown
    return np.array(sorted(values))


@lru_cache
def _resample_sizes(length: int, factor: float) -> tuple[int, int]:
    """FFT-friendly sizes (out_len >= length, in_len) with in_len / out_len closest to factor.

    Resampling in_len -> out_len samples scales frequencies by in_len / out_len; searching
    out_len over the fast sizes up to 10% above length keeps that ratio within 4 cents (0.25%)
    of factor, typically within 2 (0.5 cent for 3 semitones on 55,125 samples).
    """
    smooth = _smooth_numbers(int(2 * length * max(factor, 1.0)) + 64)
    best = (np.inf, 0, 0)
    for out_len in smooth[(smooth >= length) & (smooth <= 1.1 * length + 8)]:
        j = int(np.clip(np.searchsorted(smooth, factor * out_len), 1, len(smooth) - 1))
        for in_len in smooth[j - 1 : j + 1]:
            error = abs(np.log(in_len / (factor * out_len)))
            best = min(best, (error, int(out_len), int(in_len)))
    return best[1], best[2]


def _resample(waves: jax.Array, length: int) -> jax.Array:
    """Band-limited resampling of (B, n) to (B, length) by cutting or zero-padding the spectrum.

    The spectrum is tapered (raised cosine from 93% to 98.5% of the lower Nyquist frequency)
    like soxr's 'HQ' filter, librosa's default, instead of cut like a brick wall.
    """
    n = waves.shape[1]
    if n == length:
        return waves
    cutoff = min(n, length) // 2
    bins = np.arange(cutoff + 1) / cutoff
    ramp = np.clip((bins - _TAPER[0]) / (_TAPER[1] - _TAPER[0]), 0.0, 1.0)
    gain = (0.5 + 0.5 * np.cos(np.pi * ramp)) * (length / n)
    spectrum = jnp.fft.rfft(waves, axis=1)[:, : cutoff + 1] * gain.astype(np.float32)
    spectrum = jnp.pad(spectrum, ((0, 0), (0, length // 2 + 1 - (cutoff + 1))))
    return jnp.fft.irfft(spectrum, n=length, axis=1)


@partial(jax.jit, static_argnames="semitones")
def _pitch_shift(waves: jax.Array, semitones: float) -> jax.Array:
    length = waves.shape[1]
    out_len, in_len = _resample_sizes(length, 2.0 ** (semitones / 12))
    stretched = _time_stretch(waves, 2.0 ** (-semitones / 12), in_len)
    shifted = _resample(stretched, out_len)[:, :length]
    # The FFT spreads float32 round-off (~1e-7 of the peak) over the whole clip, digital
    # silence included, where it would count as zero crossings; a time-domain resampler such
    # as soxr leaves zeros there. Zero what lies 120 dB below the clip's peak (16-bit audio's
    # floor is 96 dB down).
    floor = _SILENCE * jnp.max(jnp.abs(shifted), axis=1, keepdims=True)
    return jnp.where(jnp.abs(shifted) > floor, shifted, 0.0).astype(waves.dtype)


def pitch_shift(waves: jax.Array, sample_rate: int, semitones: float) -> jax.Array:
    """Shifts pitch by `semitones` keeping the duration (see the module docstring).

    sample_rate is part of the common augmentation signature; the method itself is rate-free.
    Jitted, run in chunks on CPU (features.map_chunks).
    """
    del sample_rate
    return map_chunks(partial(_pitch_shift, semitones=semitones), waves)


@partial(jax.jit, static_argnames="rate")
def _stretch_to_length(waves: jax.Array, rate: float) -> jax.Array:
    return _time_stretch(waves, rate, waves.shape[1]).astype(waves.dtype)


def time_stretch(waves: jax.Array, rate: float) -> jax.Array:
    """Phase-vocoder time stretch by rate (< 1 slower), cropped or zero-padded to T samples."""
    return map_chunks(partial(_stretch_to_length, rate=rate), waves)


def _mix32(x: jax.Array) -> jax.Array:
    """A bijective 32-bit avalanche mix (Chris Wellons' lowbias32)."""
    x = x ^ (x >> 16)
    x = x * np.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * np.uint32(0x846CA68B)
    return x ^ (x >> 16)


def _normal(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Standard normal float32 samples, deterministic for key.

    Counter-based: each element's index hashed with 64 bits drawn from key, mapped through the
    inverse normal CDF. On CPU this is about 3x cheaper than jax.random.normal, whose threefry
    (20 rounds per pair of words) costs more than the rest of the noise augmentation.
    """
    seed = jax.random.bits(key, (2,), jnp.uint32)
    counter = jax.lax.iota(jnp.uint32, int(np.prod(shape))).reshape(shape)
    bits = _mix32(_mix32(counter ^ seed[0]) + seed[1])
    uniform = ((bits >> 9).astype(jnp.float32) + 0.5) * np.float32(2.0**-23)  # exact, in (0, 1)
    return np.float32(np.sqrt(2.0)) * jax.scipy.special.erfinv(2.0 * uniform - 1.0)


@jax.jit
def add_noise(waves: jax.Array, key: jax.Array, sigma: float) -> jax.Array:
    """The seed's noise: amp = sigma * U(0, 1) * max|x| per clip; x + amp * N(0, 1)."""
    waves = jnp.asarray(waves)
    k_amp, k_noise = jax.random.split(key)
    peak = jnp.max(jnp.abs(waves), axis=1, keepdims=True)
    amp = sigma * jax.random.uniform(k_amp, peak.shape, waves.dtype) * peak
    return waves + amp * _normal(k_noise, waves.shape).astype(waves.dtype)


@partial(jax.jit, static_argnames="max_shift")
def random_shift(waves: jax.Array, key: jax.Array, max_shift: int) -> jax.Array:
    """Shifts each clip by a random whole number of samples in [-max_shift, max_shift],
    filling with zeros (positive: later)."""
    waves = jnp.asarray(waves)
    batch, length = waves.shape
    shift = jax.random.randint(key, (batch, 1), -max_shift, max_shift + 1)
    source = jnp.arange(length)[None, :] - shift
    inside = (source >= 0) & (source < length)
    moved = jnp.take_along_axis(waves, jnp.clip(source, 0, length - 1), axis=1)
    return jnp.where(inside, moved, 0.0).astype(waves.dtype)


def augment(
    waves: jax.Array,
    kind: str,
    key: jax.Array,
    *,
    sample_rate: int,
    noise_sigma: float = 0.035,
    pitch_semitones: float = 3.0,
    stretch_rate: float = 0.8,
    shift_seconds: float = 0.2,
) -> jax.Array:
    """Applies one augmentation (one of AUGMENTATIONS) to a batch (B, T) -> (B, T).

    Deterministic for ``key``: one key for the batch, or one per clip (shape (B,)), so that a
    clip's result depends on its own key only (not on its batch or the other clips). "pitch" and
    "stretch" use no randomness; pitch_noise is pitch, then noise.
    """
    waves = jnp.asarray(waves)
    per_clip = jnp.ndim(key) == 1
    noise, shift = (noise_rows, shift_rows) if per_clip else (add_noise, random_shift)
    if kind == "none":
        return waves
    if kind == "noise":
        return noise(waves, key, noise_sigma)
    if kind == "pitch":
        return pitch_shift(waves, sample_rate, pitch_semitones)
    if kind == "pitch_noise":
        return noise(pitch_shift(waves, sample_rate, pitch_semitones), key, noise_sigma)
    if kind == "stretch":
        return time_stretch(waves, stretch_rate)
    if kind == "shift":
        return shift(waves, key, int(round(shift_seconds * sample_rate)))
    raise ValueError(f"unknown augmentation {kind!r}; valid kinds: {', '.join(AUGMENTATIONS)}")


@jax.jit
def noise_rows(waves: jax.Array, keys: jax.Array, sigma: float) -> jax.Array:
    """add_noise with one key per clip (keys (B,)): a clip's noise depends on its key only."""
    return jax.vmap(lambda w, k: add_noise(w[None], k, sigma)[0])(jnp.asarray(waves), keys)


@partial(jax.jit, static_argnames="max_shift")
def shift_rows(waves: jax.Array, keys: jax.Array, max_shift: int) -> jax.Array:
    """random_shift with one key per clip (keys (B,))."""
    return jax.vmap(lambda w, k: random_shift(w[None], k, max_shift)[0])(jnp.asarray(waves), keys)
