"""Borrowed row views for the Numba CPU kernels: ``row(a, (t, b, i), m0, m1)`` is ``a[t, b, i, m0:m1]``
without reference counting.

Why: a Numba slice is a view that shares its parent's reference count, so making one is an atomic
increment of that count and dropping it an atomic decrement. The RevLIF kernels make ~10 such row
views per group and time step inside every parallel unit, all on the same few parent arrays, so the
two threads' atomics hit the same cache lines: on the ``[64, 16, 4096]`` layer (units of 256
neurons) that was 12% of the forward's cycles in the reference-count helpers alone, plus the view
bookkeeping around them. A borrowed view holds no reference (its ``meminfo`` is null, as for
``numba.carray``): valid only while the parent array is, which inside a kernel is the whole call.
Never return one or store it past the kernel.

The data pointer is passed through an empty inline-asm statement, which LLVM cannot see through.
With the offset arithmetic visible, two rows of one array (a group's state and its source group's
state, both rows of ``v [B, n, M]``) are the same object at a symbolic distance, and LLVM's
vectorizer gave up on such loops altogether (the forward ran 5x slower); as two unknown pointers
they get the same runtime overlap check as Numba's own slices, whose start index goes through
selects. Everything else is Numba's own indexing code (``cgutils.get_item_pointer2``), so the
values read and written are the same as with slices: the kernels' outputs are bit-identical.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional, Tuple

from llvmlite import ir

from .config import configure

configure()  # before Numba is imported: NUMBA_NUM_THREADS check, cache folder, CPU features

from numba import types  # noqa: E402
from numba.core import cgutils  # noqa: E402
from numba.core.extending import intrinsic  # noqa: E402

if TYPE_CHECKING:  # pragma: no cover
    from numba.core.typing.templates import Signature

__all__ = ["row"]


@intrinsic
def row(typingctx: Any, arr: types.Type, index: types.Type, start: types.Type,
        stop: types.Type) -> Optional[Tuple[Signature, Callable]]:
    """``arr[index + (slice(start, stop),)]`` of a C-contiguous ``arr`` as a borrowed 1-D view.

    ``index`` is a tuple of ``arr.ndim - 1`` integers (the leading axes), ``0 <= start <= stop <=
    arr.shape[-1]``; nothing is checked or wrapped (negative indices are not supported), as in a
    kernel's inner loops. Returns a C-contiguous 1-D array of ``stop - start`` elements that holds
    no reference to ``arr`` (see the module docstring)."""
    if not (isinstance(arr, types.Array) and arr.layout == "C" and arr.ndim >= 1
            and isinstance(index, types.BaseTuple) and len(index) == arr.ndim - 1
            and all(isinstance(t, types.Integer) for t in index)
            and isinstance(start, types.Integer) and isinstance(stop, types.Integer)):
        return None
    retty = types.Array(arr.dtype, 1, "C")

    def codegen(context, builder, signature, args):
        aryty, idxty, startty, stopty = signature.args
        ary = context.make_array(aryty)(context, builder, args[0])
        shapes = cgutils.unpack_tuple(builder, ary.shape, aryty.ndim)
        strides = cgutils.unpack_tuple(builder, ary.strides, aryty.ndim)
        leading = cgutils.unpack_tuple(builder, args[1], len(idxty))
        inds = [context.cast(builder, v, t, types.intp) for v, t in zip(leading, idxty)]
        s = context.cast(builder, args[2], startty, types.intp)
        e = context.cast(builder, args[3], stopty, types.intp)
        data = cgutils.get_item_pointer2(context, builder, data=ary.data, shape=shapes, strides=strides,
                                         layout=aryty.layout, inds=inds + [s], wraparound=False, boundscheck=False)
        data = builder.asm(ir.FunctionType(data.type, [data.type]), "", "=r,0", [data], side_effect=False)
        itemsize = context.get_constant(types.intp, context.get_abi_sizeof(context.get_data_type(aryty.dtype)))
        out = context.make_array(retty)(context, builder)
        context.populate_array(out, data=data, shape=cgutils.pack_array(builder, [builder.sub(e, s)]),
                               strides=cgutils.pack_array(builder, [itemsize]), itemsize=itemsize, meminfo=None)
        return out._getvalue()

    return retty(arr, index, start, stop), codegen
