"""The clip-feature cache (the cv stage's input) is verified against its recorded checksums."""

import numpy as np
import pandas as pd

from ser_jax.data.corpora import Clip
from ser_jax.data.schema import FEATURE_NAMES
from ser_jax.features import feature_dir


def test_a_changed_cache_file_is_extracted_again(tmp_path):
    clips = [Clip(path=f"c{i}.wav", corpus="synthetic", speaker="s1", emotion="sad")
             for i in range(3)]
    rng = np.random.default_rng(0)
    kinds = {kind: rng.normal(size=(3, len(FEATURE_NAMES))).astype(np.float32)
             for kind in ("none", "noise")}
    cache = tmp_path / "cache"
    feature_dir.write_clip_cache(cache, feature_dir.ClipFeatures(
        clips, dict(kinds), {}, [], [], "synthetic:x", True, "abc"), 0.0)
    manifest = (cache / "manifest.json").read_text()
    assert '"checksums"' in manifest

    intact = feature_dir.read_clip_cache(cache, "abc", with_sequences=False)
    assert sorted(intact.features) == ["noise", "none"]
    np.testing.assert_array_equal(intact.features["noise"], kinds["noise"])

    frame = pd.read_parquet(cache / "noise.parquet")  # same shape and schema, other values
    frame.loc[1, FEATURE_NAMES[0]] = np.nan
    frame.to_parquet(cache / "noise.parquet", index=False)
    damaged = feature_dir.read_clip_cache(cache, "abc", with_sequences=False)
    assert sorted(damaged.features) == ["none"]  # "noise" is extracted again by the caller
