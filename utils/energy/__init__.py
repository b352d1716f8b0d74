"""Energy and spike accounting (SPEC 9): ``meter`` (the hooks, :class:`EnergyMeter`), ``counts``
(what one layer call costs), ``summary`` (per-image totals and the two conventions), ``report``
(tables and figures) and ``op_counter`` (the cross-check with spikingjelly's counters)."""
