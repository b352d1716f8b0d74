"""Fast kernels of the spiking neurons: the same spikes as :mod:`models.neurons`, less time."""
from .backend import KERNEL_BACKENDS, check_backend
from .lif import lif_multi_step
from .nilif import interpolate2x, ni_lif, upsample_spikes, vlif_spikes

__all__ = ["KERNEL_BACKENDS", "check_backend", "interpolate2x", "lif_multi_step", "ni_lif", "upsample_spikes",
           "vlif_spikes"]
