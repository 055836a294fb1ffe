"""Pure analysis functions: DataFrame (or arrays) in, DataFrame out. No torch, no Streamlit."""

from .spikes import SpikeParams, count_spikes, detect_spikes

__all__ = ["SpikeParams", "count_spikes", "detect_spikes"]
