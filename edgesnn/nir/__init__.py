"""NIR interchange (nir 1.0.8): edgesnn LIF models to and from the Neuromorphic Intermediate Representation.

* :func:`to_nir` / :func:`write`: an edgesnn model (``SpikingClassifier`` or a multi-step
  ``nn.Sequential`` body) -> ``nir.NIRGraph`` (a chain ``input -> ... -> output``); ``edgesnn
  export --format nir`` writes it to a ``.nir`` file (HDF5).
* :func:`load`: a ``nir.NIRGraph`` (or a ``.nir`` file) -> an edgesnn :class:`SpikingClassifier`
  with the same outputs (a :class:`NIRClassifier`, logits flattened to ``[B, prod(out_shape)]``, for
  graphs from other tools).

Layers: ``Linear`` -> ``nir.Affine`` (``nir.Linear`` without bias), ``Conv2d`` -> ``nir.Conv2d``,
``BatchNorm1d/2d`` (eval statistics) folded into the preceding Linear/Conv2d, ``AvgPool2d`` ->
``nir.AvgPool2d``, ``Flatten`` -> ``nir.Flatten``, ``Dropout``/``Identity`` dropped, ``LIF`` and
``ParametricLIF`` -> ``nir.LIF``. ``RevLIF`` is refused: no NIR primitive expresses its coupled
channel groups. A ``ParametricLIF`` is exported at its current ``tau = 1 / sigmoid(w)`` and loads back
as a fixed ``LIF``, which divides by ``tau`` where the ``ParametricLIF`` (as SpikingJelly's node)
multiplies by ``sigmoid(w)``: the same outputs up to that float32 rounding (a potential that lands
exactly on the threshold can fall one float below it: a spike lost, rarely). ``MaxPool2d`` and
anything else are refused by name.

LIF mapping (edgesnn's LIF is SpikingJelly's ``LIFNode``, discrete time, ``tau`` in steps)::

    edgesnn, decay_input=True :  h[t] = v[t-1] + (x[t] - (v[t-1] - v_reset)) / tau
    edgesnn, decay_input=False:  h[t] = v[t-1] - (v[t-1] - v_reset) / tau + x[t]
    spike s[t] = (h[t] >= v_threshold);  v[t] = v_reset if s[t] else h[t]      (hard reset)

    NIR LIF:  tau_N dv/dt = (v_leak - v) + R I;  spike when v > v_threshold; v -> v_reset

    One forward-Euler step of length dt gives  v += (dt / tau_N) ((v_leak - v) + R I), so with

        tau_N = tau * dt,   v_leak = v_reset,   R = 1 (decay_input=True) or R = tau (decay_input=False)

    NIR's LIF reproduces edgesnn's update exactly, with I = the output of the preceding layer.

``dt`` (seconds per time step) is free in edgesnn; the default 1e-4 s is SpikingJelly's and most
NIR tools' default, and the graph records it (``metadata["dt"]``) so :func:`load` inverts the
mapping exactly. The same convention is SpikingJelly's ``nir_exchange``, so its importer reads
these graphs with the same ``dt``. Not representable in NIR and therefore refused: a soft reset
(``v_reset=None``: subtract the threshold), RevLIF. Training-only settings (surrogate gradient,
``detach_reset``, backend) are not part of NIR; :func:`load` uses edgesnn's defaults.
Two fine points: NIR fires at ``v > v_threshold``, edgesnn (like SpikingJelly) at ``>=``; export
writes ``np.nextafter(float32(thr), -inf)`` and :func:`load` uses the smallest float32 above the
graph's threshold, so both fire on exactly the same float32 potentials.
And NIR graphs carry no readout: the graph's output is the last layer's value at every time
step; edgesnn's classifier averages it over the T steps (``metadata["readout"] = "mean over
time"``) and repeats a static input over T steps (direct encoding).
"""

from .common import DEFAULT_DT, NIRError
from .from_nir import NIRClassifier, load
from .to_nir import to_nir, write

__all__ = ["NIRError", "NIRClassifier", "to_nir", "write", "load", "DEFAULT_DT"]
