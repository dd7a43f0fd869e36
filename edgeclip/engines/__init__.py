"""TensorRT engines built from a bundle's verified graphs: optimization profiles, cache keys, the engine cache and
the build itself. TensorRT is imported inside the functions that need it, never at import time.
"""

from __future__ import annotations

from edgeclip.engines.cache import CacheDecision, default_engines_root
from edgeclip.engines.keys import EngineKey
from edgeclip.engines.profiles import Profile, Range, default_profiles, parse_profiles

__all__ = [
    "CacheDecision",
    "EngineKey",
    "Profile",
    "Range",
    "default_engines_root",
    "default_profiles",
    "parse_profiles",
]
