"""DLPack in and out of spattn._core: zero copies, both capsule forms, ownership exactly once.

Import is exercised through the test hooks `_core._inspect(obj)` (import, describe the view
spattn gets, let go) and `_core._import(obj)` (import and hold in a DLPackTensor, which can be
exported again); export through `_core._allocate(shape)` (a ManagedTensor::allocate_cpu buffer)
and `_core._live_allocations()` (such buffers not yet freed: a missed deleter leaves it high, a
second call drives it low). Producers the frameworks cannot make (byte_offset, NULL strides,
a newer DLPack, counted deleters) are built with ctypes.
"""
from __future__ import annotations

import ctypes
import gc
import weakref

import numpy as np
import pytest

from spattn import _core
from spattn._interop import is_array, to_framework

# ------------------------------------------------------------------------------------------
# helpers


@pytest.fixture(autouse=True)
def no_leaks():
    """Every test leaves the number of live spattn buffers where it found it."""
    gc.collect()
    before = _core._live_allocations()
    yield
    gc.collect()
    assert _core._live_allocations() == before


_GetName = ctypes.pythonapi.PyCapsule_GetName
_GetName.restype = ctypes.c_char_p
_GetName.argtypes = [ctypes.py_object]


def capsule_name(cap) -> str:
    return _GetName(cap).decode()


class DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int), ("device_id", ctypes.c_int32)]


class DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", DLDevice),
        ("ndim", ctypes.c_int32),
        ("dtype", DLDataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    ]


class DLPackVersion(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32)]


_DELETER = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


class DLManagedTensorVersioned(ctypes.Structure):
    _fields_ = [
        ("version", DLPackVersion),
        ("manager_ctx", ctypes.c_void_p),
        ("deleter", _DELETER),
        ("flags", ctypes.c_uint64),
        ("dl_tensor", DLTensor),
    ]


class DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", _DELETER)]


_CapsuleNew = ctypes.pythonapi.PyCapsule_New
_CapsuleNew.restype = ctypes.py_object
_CapsuleNew.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
_VERSIONED = b"dltensor_versioned"  # module constants: the capsules keep pointers to them
_LEGACY = b"dltensor"


class Crafted:
    """A hand-made DLPack producer over a numpy buffer, with a counting deleter.

    The capsules it returns have no destructor, so an unconsumed capsule never calls the
    deleter: `deletes` counts exactly the calls made by the consumer.
    """

    def __init__(self, base, shape, strides=None, byte_offset=0, versioned=True, major=1,
                 read_only=False, dtype=(2, 32, 1), null_data=False):
        self.base = base
        self.deletes = 0
        self.capsule = None
        nd = len(shape)
        self._shape = (ctypes.c_int64 * max(nd, 1))(*shape)
        self._strides = None if strides is None else (ctypes.c_int64 * max(nd, 1))(*strides)
        self._deleter = _DELETER(self._delete)
        t = DLTensor()
        t.data = None if null_data else base.ctypes.data
        t.device = DLDevice(1, 0)
        t.ndim = nd
        t.dtype = DLDataType(*dtype)
        t.shape = self._shape
        t.strides = self._strides
        t.byte_offset = byte_offset
        if versioned:
            self.managed = DLManagedTensorVersioned()
            self.managed.version = DLPackVersion(major, 0)
            self.managed.flags = 1 if read_only else 0
        else:
            self.managed = DLManagedTensor()
        self.managed.dl_tensor = t
        self.managed.deleter = self._deleter
        self.versioned = versioned
        if not versioned:
            # A producer from before DLPack 1.0: __dlpack__ takes no max_version.
            self.__dlpack__ = self._legacy_dlpack

    def _delete(self, _ptr):
        self.deletes += 1

    def _capsule(self, name):
        self.capsule = _CapsuleNew(ctypes.addressof(self.managed), name, None)
        return self.capsule

    def __dlpack__(self, *, stream=None, max_version=None, dl_device=None, copy=None):
        return self._capsule(_VERSIONED)

    def _legacy_dlpack(self, stream=None):
        return self._capsule(_LEGACY)

    def __dlpack_device__(self):
        return (1, 0)


class LegacyOnly:
    """Wraps any array; its __dlpack__ knows nothing of max_version (pre-1.0 producers)."""

    def __init__(self, x):
        self.x = x

    def __dlpack__(self, stream=None):
        return self.x.__dlpack__()

    def __dlpack_device__(self):
        return self.x.__dlpack_device__()


# ------------------------------------------------------------------------------------------
# export: DLPackTensor -> numpy / torch


def test_numpy_round_trip_is_zero_copy_and_outlives_holder():
    h = _core._allocate([3, 5])
    ptr = h.data_ptr
    assert ptr % 64 == 0
    assert h.__dlpack_device__() == (1, 0)
    assert h.shape == (3, 5) and h.dtype == "float32"
    before = _core._live_allocations()
    a = np.from_dlpack(h)
    assert a.ctypes.data == ptr
    assert a.shape == (3, 5) and a.dtype == np.float32 and a.flags.writeable
    assert h.exported
    del h
    gc.collect()
    assert _core._live_allocations() == before  # the array owns the buffer now
    a[...] = np.arange(15, dtype=np.float32).reshape(3, 5)
    assert a.sum() == 105
    del a
    gc.collect()
    assert _core._live_allocations() == before - 1


def test_torch_round_trip_is_zero_copy_and_outlives_holder():
    torch = pytest.importorskip("torch")
    h = _core._allocate([2, 3, 4], "float32")
    ptr = h.data_ptr
    before = _core._live_allocations()
    t = torch.from_dlpack(h)
    assert t.data_ptr() == ptr
    assert t.shape == (2, 3, 4) and t.dtype == torch.float32 and t.stride() == (12, 4, 1)
    del h
    gc.collect()
    t.fill_(2.0)
    assert float(t.sum()) == 48.0
    assert _core._live_allocations() == before
    del t
    gc.collect()
    assert _core._live_allocations() == before - 1


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_torch_half_dtypes(dtype):
    torch = pytest.importorskip("torch")
    t = torch.from_dlpack(_core._allocate([4], dtype))
    assert t.dtype == getattr(torch, dtype)
    assert t.data_ptr() % 64 == 0


def test_export_twice_raises_buffer_error():
    h = _core._allocate([2])
    a = np.from_dlpack(h)
    with pytest.raises(BufferError, match="already exported"):
        np.from_dlpack(h)
    with pytest.raises(BufferError):
        h.__dlpack__()
    assert h.__dlpack_device__() == (1, 0)  # still answers
    assert "exported" in repr(h)
    del a


@pytest.mark.parametrize("max_version, name", [(None, "dltensor"), ((0, 8), "dltensor"),
                                               ((1, 0), "dltensor_versioned"),
                                               ((1, 1), "dltensor_versioned"),
                                               ((2, 0), "dltensor_versioned")])
def test_capsule_form_follows_max_version(max_version, name):
    h = _core._allocate([2, 2])
    cap = h.__dlpack__() if max_version is None else h.__dlpack__(max_version=max_version)
    assert capsule_name(cap) == name


@pytest.mark.parametrize("versioned", [False, True])
def test_unconsumed_capsule_frees_once(versioned):
    before = _core._live_allocations()
    h = _core._allocate([8])
    cap = h.__dlpack__(max_version=(1, 1) if versioned else None)
    del h
    gc.collect()
    assert _core._live_allocations() == before + 1
    del cap  # never consumed: the capsule's destructor calls the deleter
    gc.collect()
    assert _core._live_allocations() == before


def test_legacy_capsule_consumed_by_torch():
    torch = pytest.importorskip("torch")
    h = _core._allocate([5])
    ptr = h.data_ptr
    cap = h.__dlpack__()
    t = torch.utils.dlpack.from_dlpack(cap)
    assert t.data_ptr() == ptr
    assert capsule_name(cap) == "used_dltensor"
    del cap, h
    gc.collect()
    t.fill_(1.0)
    del t  # no double free: the renamed capsule does nothing, torch calls the deleter


def test_dl_device_and_copy():
    h = _core._allocate([3])
    with pytest.raises(BufferError, match="cuda"):
        h.__dlpack__(max_version=(1, 1), dl_device=(2, 0))
    a = np.from_dlpack(h, device="cpu")
    assert a.shape == (3,)
    h3 = _core._import(np.arange(6, dtype=np.float32).reshape(2, 3)[:, ::2])
    ptr = h3.data_ptr
    c = np.from_dlpack(h3, copy=True)
    assert c.ctypes.data != ptr
    np.testing.assert_array_equal(c, [[0, 2], [3, 5]])


def test_zero_size_export():
    torch = pytest.importorskip("torch")
    a = np.from_dlpack(_core._allocate([0, 3]))
    assert a.shape == (0, 3)
    t = torch.from_dlpack(_core._allocate([4, 0]))
    assert tuple(t.shape) == (4, 0)


# ------------------------------------------------------------------------------------------
# import: numpy / torch / hand-made producers -> spattn


def test_numpy_import_is_versioned_and_zero_copy():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    d = _core._inspect(a)
    assert d["versioned"] and not d["read_only"]
    assert d["data"] == a.ctypes.data
    assert d["shape"] == (3, 4) and d["strides"] == (4, 1)
    assert d["dtype"] == "float32" and d["device"] == "cpu"


def test_read_only_numpy_input_is_accepted():
    a = np.ones((2, 3), np.float32)
    a.setflags(write=False)
    d = _core._inspect(a)
    assert d["read_only"] and d["versioned"] and d["data"] == a.ctypes.data


def test_import_keeps_producer_alive_until_released():
    a = np.arange(6, dtype=np.float32)
    ref = weakref.ref(a)
    h = _core._import(a)
    del a
    gc.collect()
    assert ref() is not None  # numpy's manager context holds the array
    del h
    gc.collect()
    assert ref() is None  # deleter called


def test_reexport_numpy_import_to_torch_as_legacy():
    torch = pytest.importorskip("torch")
    a = np.arange(6, dtype=np.float32)
    ref = weakref.ref(a)
    h = _core._import(a)
    t = torch.utils.dlpack.from_dlpack(h.__dlpack__())  # versioned owner, wrapped as legacy
    assert t.data_ptr() == a.ctypes.data
    del a, h
    gc.collect()
    assert ref() is not None
    assert t.tolist() == [0, 1, 2, 3, 4, 5]
    del t
    gc.collect()
    assert ref() is None


def test_torch_import_versioned_and_legacy():
    torch = pytest.importorskip("torch")
    t = torch.arange(10, dtype=torch.float32).reshape(2, 5)
    d = _core._inspect(t)
    assert d["versioned"] and d["data"] == t.data_ptr() and d["strides"] == (5, 1)
    d = _core._inspect(LegacyOnly(t))
    assert not d["versioned"] and d["data"] == t.data_ptr()


def test_legacy_import_reexported_as_versioned():
    torch = pytest.importorskip("torch")
    t = torch.arange(4, dtype=torch.float32)
    h = _core._import(LegacyOnly(t))  # legacy owner, wrapped as versioned for numpy
    a = np.from_dlpack(h)
    assert a.ctypes.data == t.data_ptr()
    t.add_(1)
    assert a.tolist() == [1, 2, 3, 4]


def test_legacy_numpy_producer():
    a = np.arange(3, dtype=np.float32)
    d = _core._inspect(LegacyOnly(a))
    assert not d["versioned"] and d["data"] == a.ctypes.data


def test_slices_and_strides():
    torch = pytest.importorskip("torch")
    a = np.arange(20, dtype=np.float32).reshape(4, 5)
    v = a[1:, 2:]
    d = _core._inspect(v)
    assert d["data"] == v.ctypes.data and d["shape"] == (3, 3) and d["strides"] == (5, 1)
    d = _core._inspect(a[::-1, ::2])  # negative and non-unit strides
    assert d["strides"] == (-5, 2) and d["data"] == a[::-1, ::2].ctypes.data
    d = _core._inspect(a.T)
    assert d["strides"] == (1, 5)
    t = torch.arange(20, dtype=torch.float32).reshape(4, 5)[1:, 1:]
    d = _core._inspect(t)
    assert d["data"] == t.data_ptr() and d["strides"] == (5, 1)
    x = torch.randn(2, 8, 3, 4).transpose(1, 2)  # [B, H, N, D] passed as BSHD
    d = _core._inspect(x)
    assert d["strides"] == tuple(x.stride()) and d["data"] == x.data_ptr()
    # Through a holder and back: numpy sees the same strided view.
    back = np.from_dlpack(_core._import(a[::-1, 1::2]))
    np.testing.assert_array_equal(back, a[::-1, 1::2])
    assert back.ctypes.data == a[::-1, 1::2].ctypes.data


def test_byte_offset_and_null_strides():
    base = np.arange(10, dtype=np.float32)
    p = Crafted(base, shape=(2, 4), strides=None, byte_offset=8)
    d = _core._inspect(p)
    assert d["null_strides"] and d["strides"] == (4, 1)
    assert d["byte_offset"] == 8 and d["raw_data"] == base.ctypes.data
    assert d["data"] == base.ctypes.data + 8
    assert capsule_name(p.capsule) == "used_dltensor_versioned"
    assert p.deletes == 1
    # Re-exported, numpy applies the offset and the compact strides too.
    p = Crafted(base, shape=(2, 4), strides=None, byte_offset=8)
    h = _core._import(p)
    assert h.data_ptr == base.ctypes.data + 8
    view = np.from_dlpack(h)
    np.testing.assert_array_equal(view, base[2:].reshape(2, 4))
    del h
    gc.collect()
    assert p.deletes == 0
    del view
    gc.collect()
    assert p.deletes == 1


@pytest.mark.parametrize("versioned", [True, False])
def test_crafted_deleter_called_exactly_once(versioned):
    base = np.zeros(6, np.float32)
    p = Crafted(base, shape=(2, 3), strides=(3, 1), versioned=versioned)
    h = _core._import(p)
    assert capsule_name(p.capsule) == ("used_dltensor_versioned" if versioned else "used_dltensor")
    assert p.deletes == 0
    del h
    gc.collect()
    assert p.deletes == 1
    # Through export: the wrapper forms call the original deleter once.
    for mv in (None, (1, 1)):
        p = Crafted(base, shape=(6,), versioned=versioned)
        cap = _core._import(p).__dlpack__(max_version=mv)
        assert p.deletes == 0
        del cap
        gc.collect()
        assert p.deletes == 1


def test_failed_checks_after_import_still_delete_once():
    base = np.zeros(4, np.float32)
    for kw in (dict(shape=(2, -1)), dict(shape=(4,), null_data=True), dict(shape=(1,) * 9)):
        p = Crafted(base, **kw)
        with pytest.raises(ValueError):
            _core._inspect(p)
        assert p.deletes == 1, kw
    # null data is fine on an empty tensor
    p = Crafted(base, shape=(0, 3), null_data=True)
    assert _core._inspect(p)["shape"] == (0, 3)
    assert p.deletes == 1


def test_newer_major_version_is_refused_and_not_consumed():
    p = Crafted(np.zeros(2, np.float32), shape=(2,), major=2)
    with pytest.raises(TypeError, match="newer"):
        _core._inspect(p, "k")
    assert capsule_name(p.capsule) == "dltensor_versioned"  # still the producer's
    assert p.deletes == 0


def test_read_only_flag_and_legacy_export_refused():
    base = np.zeros(3, np.float32)
    p = Crafted(base, shape=(3,), read_only=True)
    h = _core._import(p)
    with pytest.raises(BufferError, match="read-only"):
        h.__dlpack__()
    a = np.from_dlpack(h)  # versioned: numpy honours the flag
    assert not a.flags.writeable
    del a, h
    gc.collect()
    assert p.deletes == 1


def test_not_arrays_are_type_errors():
    with pytest.raises(TypeError, match=r"^q: expected an array with __dlpack__ .*got list$"):
        _core._inspect([1.0, 2.0], "q")
    with pytest.raises(TypeError, match="got NoneType"):
        _core._inspect(None, "v")
    with pytest.raises(TypeError, match="got int$"):
        _core._import(3, "k")

    class NotACapsule:
        def __dlpack__(self, **kw):
            return 42

    with pytest.raises(TypeError, match="not a DLPack capsule"):
        _core._inspect(NotACapsule(), "q")

    class Used:
        def __init__(self):
            self.cap = np.zeros(2).__dlpack__(max_version=(1, 0))
            _core._inspect(self)  # consumes it

        def __dlpack__(self, **kw):
            return self.cap

    with pytest.raises(TypeError, match="used_dltensor_versioned"):
        _core._inspect(Used(), "q")


def test_zero_size_import():
    d = _core._inspect(np.zeros((0, 4), np.float32))
    assert d["shape"] == (0, 4)
    torch = pytest.importorskip("torch")
    assert _core._inspect(torch.zeros(3, 0))["shape"] == (3, 0)


def test_other_dtypes_are_viewed_but_described():
    assert _core._inspect(np.zeros(2, np.int64))["dtype"] == "int64"
    assert _core._inspect(np.zeros(2, np.bool_))["dtype"] == "bool"
    assert _core._inspect(np.zeros(2, np.complex64))["dtype"] == "complex64"
    assert _core._inspect(np.zeros(2, np.uint8))["dtype"] == "uint8"


# ------------------------------------------------------------------------------------------
# forward / backward arguments (the numerics are tested in test_attention.py)


def _qkv(b=1, n=5, h=2, d=4, dtype=np.float32):
    rng = np.random.default_rng(0)
    return [rng.standard_normal((b, n, h, d)).astype(dtype) for _ in range(3)]


def test_forward_accepts_read_only_inputs_and_returns_holders():
    q, k, v = _qkv()
    for x in (q, k, v):
        x.setflags(write=False)
    before = _core._live_allocations()
    out, lse = _core.forward(q, k, v, _core.Pattern.causal())
    assert isinstance(out, _core.DLPackTensor) and isinstance(lse, _core.DLPackTensor)
    assert out.shape == (1, 5, 2, 4) and out.dtype == "float32"
    assert lse.shape == (1, 2, 5) and lse.dtype == "float32"
    assert _core._live_allocations() == before + 2
    o = np.from_dlpack(out)
    assert np.isfinite(o).all()
    out2, none = _core.forward(q, k, v, _core.Pattern.dense(), want_lse=False)
    assert none is None
    del out, lse, o, out2


def test_forward_out_argument():
    q, k, v = _qkv()
    out = np.zeros((1, 5, 2, 4), np.float32)
    o, lse = _core.forward(q, k, v, _core.Pattern.dense(), out=out, want_lse=False)
    assert o is out and lse is None
    assert np.abs(out).sum() > 0
    ro = np.zeros_like(out)
    ro.setflags(write=False)
    with pytest.raises(ValueError, match=r"^out: the array is read-only$"):
        _core.forward(q, k, v, _core.Pattern.dense(), out=ro)
    assert not ro.any()


def test_forward_argument_errors():
    q, k, v = _qkv()
    with pytest.raises(TypeError, match=r"^q: expected float32, float16, bfloat16 or float64, got int64$"):
        _core.forward(q.astype(np.int64), k, v, _core.Pattern.dense())
    with pytest.raises(TypeError, match=r"^k: expected an array with __dlpack__"):
        _core.forward(q, k.tolist(), v, _core.Pattern.dense())
    for bad in (float("nan"), float("inf"), 0.0):
        with pytest.raises(ValueError, match="scale"):
            _core.forward(q, k, v, _core.Pattern.dense(), scale=bad)
    with pytest.raises(TypeError, match="scale"):
        _core.forward(q, k, v, _core.Pattern.dense(), scale="big")
    with pytest.raises(ValueError, match="q: expected 4 dimensions"):
        _core.forward(q[0], k, v, _core.Pattern.dense())
    _core.forward(q, k, v, _core.Pattern.dense(), scale=-0.5)  # any finite nonzero scale


def test_forward_refuses_other_devices_before_allocating():
    q, k, v = _qkv()
    p = Crafted(q, shape=q.shape, strides=None)
    p.managed.dl_tensor.device = DLDevice(2, 0)  # claims to be CUDA memory
    before = _core._live_allocations()
    with pytest.raises(RuntimeError, match="cuda:0"):
        _core.forward(p, k, v, _core.Pattern.dense())
    assert _core._live_allocations() == before
    assert p.deletes == 1


def test_backward_returns_holders_shaped_like_inputs():
    q, k, v = _qkv(n=6)
    k, v = k[:, :4, :1], v[:, :4, :1, :3]  # Nk != Nq, GQA, Dv != D
    out, lse = _core.forward(q, k, v, _core.Pattern.dense())
    out, lse = np.from_dlpack(out), np.from_dlpack(lse)
    dq, dk, dv = _core.backward(np.ones_like(out), q, k, v, out, lse, _core.Pattern.dense())
    assert (dq.shape, dk.shape, dv.shape) == (q.shape, k.shape, v.shape)
    assert all(h.dtype == "float32" for h in (dq, dk, dv))


# ------------------------------------------------------------------------------------------
# _interop


def test_to_framework_and_is_array():
    a = np.zeros(2, np.float32)
    r = to_framework(_core._allocate([3]), a)
    assert isinstance(r, np.ndarray) and r.shape == (3,)
    r = to_framework(_core._allocate([3]), [1, 2])  # unknown kinds get numpy
    assert isinstance(r, np.ndarray)
    assert is_array(a) and is_array(_core._allocate([1])) and not is_array([1])
    torch = pytest.importorskip("torch")
    t = to_framework(_core._allocate([2, 2]), torch.zeros(1))
    assert isinstance(t, torch.Tensor) and t.shape == (2, 2)
    assert is_array(torch.zeros(1))
