"""Seeded waveform augmentations in JAX: (B, T) -> (B, T), jit-friendly, on device.

Pitch shift follows librosa.effects.pitch_shift: a phase-vocoder time stretch by
2 ** (-semitones / 12) (STFT 2048/512, Hann, as librosa.core.phase_vocoder and istft), then a
resampling back to the original length. The resampling is band-limited by FFT (truncate or
zero-pad the spectrum of the whole stretched clip) instead of librosa's soxr, so the output
differs from librosa's sample by sample but keeps the duration and scales every frequency by
2 ** (semitones / 12).
"""

from functools import lru_cache, partial

import jax
import jax.numpy as jnp
import numpy as np

from ser_jax.features import HOP, N_FFT, frame_order_of, hann_window, num_frames, stft

AUGMENTATIONS = ("none", "noise", "pitch", "pitch_noise", "stretch", "shift")


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
    row = np.concatenate([np.argsort(frame_order_of(frames_in)), [frames_in, frames_in + 1]])
    out_time = frame_order_of(frames_out)
    alpha = (steps - first).astype(np.float32)[out_time, None]

    spec = jnp.pad(spec, ((0, 0), (0, 2), (0, 0)))  # librosa's two zero columns at the end
    re, im = jnp.real(spec), jnp.imag(spec)
    mag = jnp.sqrt(re * re + im * im)
    safe = jnp.where(mag > 0, mag, 1.0)
    unit = jax.lax.complex(jnp.where(mag > 0, re / safe, 1.0), im / safe)  # angle(0) = 0

    odd = np.nonzero(first[1:frames_out] != first[: frames_out - 1] + 1)[0]
    factors = unit[:, row[first[odd] + 1]] * jnp.conj(unit[:, row[first[odd + 1]]])

    def accumulate(product, factor):
        return product * factor, product

    ones = jnp.ones_like(unit[:, 0])
    last, products = jax.lax.scan(accumulate, ones, jnp.swapaxes(factors, 0, 1))
    products = jnp.concatenate([jnp.swapaxes(products, 0, 1), last[:, None]], axis=1)
    done = np.searchsorted(odd, out_time, side="left")  # odd steps s < t
    t0, t1 = row[first[out_time]], row[first[out_time] + 1]
    magnitude = (1.0 - alpha) * mag[:, t0] + alpha * mag[:, t1]
    return magnitude * unit[:, t0] * products[:, done]


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
    """Band-limited resampling of (B, n) to (B, length) by truncating or padding the spectrum."""
    n = waves.shape[1]
    spectrum = jnp.fft.rfft(waves, axis=1)
    keep = length // 2 + 1
    spectrum = spectrum[:, :keep]
    spectrum = jnp.pad(spectrum, ((0, 0), (0, keep - spectrum.shape[1])))
    return jnp.fft.irfft(spectrum * np.float32(length / n), n=length, axis=1)


@partial(jax.jit, static_argnames=("sample_rate", "semitones"))
def pitch_shift(waves: jax.Array, sample_rate: int, semitones: float) -> jax.Array:
    """Shifts pitch by `semitones` keeping the duration (see the module docstring).

    sample_rate is part of the common augmentation signature; the method itself is rate-free.
    """
    del sample_rate
    waves = jnp.asarray(waves)
    length = waves.shape[1]
    out_len, in_len = _resample_sizes(length, 2.0 ** (semitones / 12))
    stretched = _time_stretch(waves, out_len / in_len, in_len)
    return _resample(stretched, out_len)[:, :length].astype(waves.dtype)


@partial(jax.jit, static_argnames="rate")
def time_stretch(waves: jax.Array, rate: float) -> jax.Array:
    """Phase-vocoder time stretch by rate (< 1 slower), cropped or zero-padded to T samples."""
    waves = jnp.asarray(waves)
    return _time_stretch(waves, rate, waves.shape[1]).astype(waves.dtype)


@jax.jit
def add_noise(waves: jax.Array, key: jax.Array, sigma: float) -> jax.Array:
    """The seed's noise: amp = sigma * U(0, 1) * max|x| per clip; x + amp * N(0, 1)."""
    waves = jnp.asarray(waves)
    k_amp, k_noise = jax.random.split(key)
    peak = jnp.max(jnp.abs(waves), axis=1, keepdims=True)
    amp = sigma * jax.random.uniform(k_amp, peak.shape, waves.dtype) * peak
    return waves + amp * jax.random.normal(k_noise, waves.shape, waves.dtype)


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

    Deterministic for a key; "pitch" and "stretch" use no randomness. pitch_noise is pitch, then
    noise.
    """
    waves = jnp.asarray(waves)
    if kind == "none":
        return waves
    if kind == "noise":
        return add_noise(waves, key, noise_sigma)
    if kind == "pitch":
        return pitch_shift(waves, sample_rate, pitch_semitones)
    if kind == "pitch_noise":
        return add_noise(pitch_shift(waves, sample_rate, pitch_semitones), key, noise_sigma)
    if kind == "stretch":
        return time_stretch(waves, stretch_rate)
    if kind == "shift":
        return random_shift(waves, key, int(round(shift_seconds * sample_rate)))
    raise ValueError(f"unknown augmentation {kind!r}; valid kinds: {', '.join(AUGMENTATIONS)}")
