"""Cost analysis: per-layer parameters, MACs, memory traffic, roofline and measured latency.

- :func:`profile` runs a model on an example input and returns a :class:`Report`;
- :func:`explain` describes a conv's weight layout and its standard / depthwise / separable costs;
- :func:`machine_peaks` measures (once, cached) this machine's GEMM FLOP/s and copy bandwidth.

See docs/analysis.md.
"""

from sepconv.analysis.explain import Explanation, explain
from sepconv.analysis.peaks import Peaks, machine_peaks
from sepconv.analysis.profiler import ProfileError, profile
from sepconv.analysis.report import Comparison, Report, Row

__all__ = [
    "Comparison",
    "Explanation",
    "Peaks",
    "ProfileError",
    "Report",
    "Row",
    "explain",
    "machine_peaks",
    "profile",
]
