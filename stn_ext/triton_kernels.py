"""Triton backend of stn_ext.affine_grid_sample and of stn_ext.grid_sample (4-D input, bilinear
or nearest, no fill value): the kernels, their launchers, and their registration as torch ops.

The kernels replicate csrc/sampling_math.h operation for operation (same formulas in the same
order, correctly rounded division, flip parity of reflections in floating point), so they match
the C++ kernels to rounding, and the tests of that math carry over.

Work split: one program per (image, block of BLOCK_PIXELS output pixels). A program computes its
pixels' source points once, from theta (SOURCE "affine": no grid tensor is ever written) or from
a dense grid (SOURCE "grid"), then loops over the channels in blocks of BLOCK_CHANNELS, on
[BLOCK_CHANNELS, BLOCK_PIXELS] tiles whose pixels run fastest, like the rows of a contiguous
image. The backward of a small image (_IMAGE_PROGRAM_MAX_POINTS) is one program per image
instead: it zeroes its image's grad_input, adds into it with atomic adds, sums theta's gradient
itself and writes every gradient in its final dtype, one launch in all. Larger images under an
affine map with zeros padding (float32/float64, up to 4 channels) gather instead: a program per
tile of input pixels finds, through the inverse map, the output points with a tap on each
pixel and writes its grad_input once (_gather_backward_kernel), deterministic, no atomics, no
zero-fill. The rest take programs per block of pixels, adding grad_input into a zero-filled
float32 (float64) buffer, with six theta partial sums per program that the host sums in a fixed
order. The coordinate gradient is deterministic on every path (grad_grid is written per point).
Under torch.use_deterministic_algorithms(True) the input gradient comes from the gather where it
serves, else from a slower path without atomics (_deterministic_input_grad).

Registration: ``torch.library.custom_op`` with explicit fake kernels and autograd (from
stn_ext/ops.py, like the C++ op's fake kernels), rather than ``torch.library.triton_op``.
torch.compile and opcheck trace *into* a triton_op and call its Triton kernels with fake tensors:
fine for compiled kernels, but the interpreter reads the fake tensors' data, so CPU tensors under
TRITON_INTERPRET=1 could be neither compiled nor op-checked. An opaque custom_op behaves the same
on CUDA and in the interpreter, so the tests that run without a GPU exercise the registration GPUs
use. The cost: inductor cannot fuse with or inline the kernels.
"""
import contextlib
from typing import List, Optional, Sequence, Tuple

import torch
import triton
import triton.language as tl

from .ops import output_memory_format, register_general_op, register_sampling_op

# Offsets below this fit the kernels' 32-bit index arithmetic.
_INT32_LIMIT = 2 ** 31
# Block-size heuristic (see _block_sizes): elements per program tile, and its channel width.
_TILE_ELEMENTS = 1024
_MAX_BLOCK_CHANNELS = 16
_MIN_BLOCK_PIXELS = 16
_NUM_WARPS = 4
# Sizes are never specialised: an axis of 1 pixel must not compile a kernel of its own.
_SIZE_ARGS = ["channels", "in_h", "in_w", "out_h", "out_w"]
# The backward takes one program per image (_image_backward_kernel: one launch, nothing else)
# up to these sizes: output points per image, and input elements per image (its accumulator is
# zeroed and, for float16/bfloat16, copied out by the one program). A batch of such images is
# launch-bound (the STN regime: 64x3x32x32); larger images spread over the GPU by blocks of
# pixels instead (_backward_kernel).
_IMAGE_PROGRAM_MAX_POINTS = 2048
_IMAGE_PROGRAM_MAX_ELEMENTS = 8192
# The backward of larger images under an affine map with zeros padding gathers grad_input (see
# _gather_backward_kernel) up to this many channels (a lane keeps its pixel's channels), in
# programs of this tile of input pixels, for images whose input pixels have at most this many
# candidate output points each.
_GATHER_MAX_CHANNELS = 4
_GATHER_TILE_W = 32
_GATHER_TILE_H = 4
_GATHER_MAX_CANDIDATES = tl.constexpr(1024.0)


# ----------------------------------------------------------------------------------------------
# Coordinate math (csrc/sampling_math.h)
# ----------------------------------------------------------------------------------------------

# The kernels use Triton builtins only, not the helpers of triton.language.standard (tl.cdiv,
# tl.zeros, tl.sum): those are @triton.jit functions themselves, compiled ones when triton was
# imported before TRITON_INTERPRET=1 was set, and then cannot run in the interpreter.

@triton.jit
def _add(a, b):
    return a + b


@triton.jit
def _sum(values, axis: tl.constexpr):
    """tl.sum (which is tl.reduce with this combine function)."""
    return tl.reduce(values, axis, _add)


@triton.jit
def _div(numerator, denominator):
    """Correctly rounded division: Triton's float32 `/` is approximate on NVIDIA GPUs."""
    if denominator.dtype == tl.float64:
        return numerator / denominator
    else:
        return tl.div_rn(numerator, denominator)


@triton.jit
def _base_coord(index, size, ALIGN_CORNERS: tl.constexpr, dtype):
    """Element `index` of torch.linspace(-1, 1, size), evaluated from the nearer end, scaled by
    (size - 1) / size unless ALIGN_CORNERS; 0 on a 1-pixel axis."""
    size_f = size.to(dtype)
    step = _div(2.0, tl.maximum(size_f - 1.0, 1.0))
    from_start = -1.0 + step * index.to(dtype)
    from_end = 1.0 - step * (size - 1 - index).to(dtype)
    coord = tl.where(index < size // 2, from_start, from_end)
    if not ALIGN_CORNERS:
        coord = _div(coord * (size_f - 1.0), size_f)
    return tl.where(size > 1, coord, 0.0)


@triton.jit
def _reflect(coord, low, span):
    """Reflect into [low, low + span]; returns the coordinate and its derivative. The flip
    parity is taken in floating point so that huge coordinates cannot overflow an integer."""
    offset = coord - low
    sign = tl.where(offset < 0.0, -1.0, 1.0)
    offset = tl.abs(offset)
    flips = tl.floor(_div(offset, tl.maximum(span, 1.0)))
    # fmod(offset, span), exact while flips * span is (|coord| < 2**24 pixels in float32);
    # the quotient may have rounded up to the next integer, leaving extra just below zero.
    extra = offset - flips * span
    extra = tl.where(extra < 0.0, extra + span, extra)
    even = flips == 2.0 * tl.floor(flips * 0.5)
    reflected = tl.where(even, extra + low, span - extra + low)
    derivative = tl.where(even, sign, -sign)
    # A 1-pixel axis with aligned corners has span 0: everything maps to pixel 0.
    return tl.where(span > 0.0, reflected, 0.0), tl.where(span > 0.0, derivative, 0.0)


@triton.jit
def _source_index(coord, size, PADDING: tl.constexpr, ALIGN_CORNERS: tl.constexpr):
    """Normalised coordinate -> padded pixel coordinate along one axis, with its derivative."""
    size_f = size.to(coord.dtype)
    if ALIGN_CORNERS:
        pixel = (coord + 1.0) * 0.5 * (size_f - 1.0)
        derivative = (size_f - 1.0) * 0.5
    else:
        pixel = ((coord + 1.0) * size_f - 1.0) * 0.5
        derivative = size_f * 0.5
    if PADDING != "zeros":
        if PADDING == "reflection":
            if ALIGN_CORNERS:
                pixel, d_reflect = _reflect(pixel, 0.0, size_f - 1.0)
            else:
                pixel, d_reflect = _reflect(pixel, -0.5, size_f)
            derivative = derivative * d_reflect
        high = size_f - 1.0
        clamped = (pixel <= 0.0) | (pixel >= high)
        pixel = tl.where(pixel <= 0.0, 0.0, tl.where(pixel >= high, high, pixel))
        derivative = tl.where(clamped, 0.0, derivative)
    return pixel, derivative


@triton.jit
def _source_points(theta_ptr, image, pixels, in_h, in_w, out_h, out_w,
                   PADDING: tl.constexpr, ALIGN_CORNERS: tl.constexpr):
    """Where output pixels `pixels` of `image` sample the input: the base coordinates, the
    padded pixel coordinates (ix, iy) and their derivatives d(ix)/d(grid_x), d(iy)/d(grid_y)."""
    dtype = theta_ptr.dtype.element_ty
    theta = theta_ptr + image * 6
    t00 = tl.load(theta + 0)
    t01 = tl.load(theta + 1)
    t02 = tl.load(theta + 2)
    t10 = tl.load(theta + 3)
    t11 = tl.load(theta + 4)
    t12 = tl.load(theta + 5)
    base_x = _base_coord(pixels % out_w, out_w, ALIGN_CORNERS, dtype)
    base_y = _base_coord(pixels // out_w, out_h, ALIGN_CORNERS, dtype)
    grid_x = t00 * base_x + t01 * base_y + t02
    grid_y = t10 * base_x + t11 * base_y + t12
    ix, dix = _source_index(grid_x, in_w, PADDING, ALIGN_CORNERS)
    iy, diy = _source_index(grid_y, in_h, PADDING, ALIGN_CORNERS)
    return base_x, base_y, ix, iy, dix, diy


@triton.jit
def _sample_points(coords_ptr, image, pixels, pixel_ok, in_h, in_w, out_h, out_w,
                   co_sn, co_sh, co_sw, co_sc, SOURCE: tl.constexpr, PADDING: tl.constexpr,
                   ALIGN_CORNERS: tl.constexpr):
    """_source_points for either coordinate source: "affine", coords_ptr the (N, 6) thetas;
    "grid", a dense (N, Ho, Wo, 2) grid of strides co_* (the first two values returned are then
    the grid's x and y instead of the base coordinates)."""
    if SOURCE == "affine":
        first_x, first_y, ix, iy, dix, diy = _source_points(
            coords_ptr, image, pixels, in_h, in_w, out_h, out_w, PADDING, ALIGN_CORNERS)
    else:
        point = (coords_ptr + image.to(tl.int64) * co_sn + (pixels // out_w) * co_sh
                 + (pixels % out_w) * co_sw)
        first_x = tl.load(point, mask=pixel_ok, other=0.0)
        first_y = tl.load(point + co_sc, mask=pixel_ok, other=0.0)
        ix, dix = _source_index(first_x, in_w, PADDING, ALIGN_CORNERS)
        iy, diy = _source_index(first_y, in_h, PADDING, ALIGN_CORNERS)
    return first_x, first_y, ix, iy, dix, diy


@triton.jit
def _program_pixels(out_h, out_w, BLOCK_PIXELS: tl.constexpr, INDEX_DTYPE: tl.constexpr):
    """This program's image, its block's index in the image, the block's output pixels
    (row-major indices), and which of them exist (the last block of an image has a tail)."""
    pixel_count = out_h.to(INDEX_DTYPE) * out_w
    blocks_per_image = (pixel_count + BLOCK_PIXELS - 1) // BLOCK_PIXELS
    image = tl.program_id(0) // blocks_per_image
    block = tl.program_id(0) % blocks_per_image
    pixels = block * BLOCK_PIXELS + tl.arange(0, BLOCK_PIXELS)
    return image, block, pixels, pixels < pixel_count


@triton.jit
def _undefined_points(ix, iy, pixel_ok):
    """Which points are undefined (csrc/sampling_math.h, is_undefined): a padded coordinate that
    is not finite (x - x is 0 for finite x, NaN otherwise). Their output is NaN in every
    channel, they add nothing to grad_input, and NaN to their image's theta gradient."""
    return pixel_ok & ((ix - ix != 0.0) | (iy - iy != 0.0))


@triton.jit
def _near_points(ix, iy, pixel_ok, in_h, in_w):
    """Which points are not far outside the input (nor NaN): the others read only zero
    padding. Checked in floating point; the others' coordinates become 0, so that the casts to
    integers that follow never see huge or NaN values."""
    near = pixel_ok & (ix > -2.0) & (ix < in_w + 1.0) & (iy > -2.0) & (iy < in_h + 1.0)
    return near, tl.where(near, ix, 0.0), tl.where(near, iy, 0.0)


@triton.jit
def _nearest_index(coord, INDEX_DTYPE: tl.constexpr):
    """Nearest pixel, rounding half to even like std::nearbyint (coord - floor(coord) is exact)."""
    below = tl.floor(coord)
    frac = coord - below
    odd = below - 2.0 * tl.floor(below * 0.5)
    nearest = tl.where(frac > 0.5, below + 1.0, tl.where(frac < 0.5, below, below + odd))
    return nearest.to(INDEX_DTYPE)


@triton.jit
def _nearest_tap(ix, iy, near, in_h, in_w, INDEX_DTYPE: tl.constexpr):
    """The pixel (x, y) a nearest sample reads, and whether it is in the image."""
    x = _nearest_index(ix, INDEX_DTYPE)
    y = _nearest_index(iy, INDEX_DTYPE)
    return x, y, near & (x >= 0) & (x < in_w) & (y >= 0) & (y < in_h)


@triton.jit
def _bilinear_stencil(ix, iy, near, in_h, in_w, INDEX_DTYPE: tl.constexpr):
    """The 2x2 neighbourhood of a bilinear sample: its top-left pixel (x0, y0), the weights of
    its west/east columns and north/south rows (corner weights are their products, as in ATen),
    and which of its taps 00, 01, 10, 11 (row, column) are in the image."""
    x0f = tl.floor(ix)
    y0f = tl.floor(iy)
    west = x0f + 1.0 - ix
    east = ix - x0f
    north = y0f + 1.0 - iy
    south = iy - y0f
    x0 = x0f.to(INDEX_DTYPE)
    y0 = y0f.to(INDEX_DTYPE)
    x0_ok = (x0 >= 0) & (x0 < in_w)
    x1_ok = (x0 + 1 >= 0) & (x0 + 1 < in_w)
    y0_ok = near & (y0 >= 0) & (y0 < in_h)
    y1_ok = near & (y0 + 1 >= 0) & (y0 + 1 < in_h)
    return (x0, y0, west, east, north, south,
            y0_ok & x0_ok, y0_ok & x1_ok, y1_ok & x0_ok, y1_ok & x1_ok)


@triton.jit
def _load_stencil(src, tap00, sh, sw, ok00, ok01, ok10, ok11, c_ok, dtype):
    """The four taps of a bilinear stencil for a block of channels (c_ok: [BLOCK_CHANNELS, 1]),
    taps outside the image read as 0, in the compute precision."""
    v00 = tl.load(src + tap00[None, :], mask=ok00[None, :] & c_ok, other=0.0)
    v01 = tl.load(src + (tap00 + sw)[None, :], mask=ok01[None, :] & c_ok, other=0.0)
    v10 = tl.load(src + (tap00 + sh)[None, :], mask=ok10[None, :] & c_ok, other=0.0)
    v11 = tl.load(src + (tap00 + sh + sw)[None, :], mask=ok11[None, :] & c_ok, other=0.0)
    return v00.to(dtype), v01.to(dtype), v10.to(dtype), v11.to(dtype)


@triton.jit
def _channels_in(c, channels, BLOCK_CHANNELS: tl.constexpr, EVEN_CHANNELS: tl.constexpr):
    """Which channels of the block c exist, as a [BLOCK_CHANNELS, 1] mask. EVEN_CHANNELS (the
    block size divides the channel count): all, as a constant, which lets Triton move a
    channels_last pixel's channels in 16-byte vectors (a run-time mask along the channels splits
    them into scalar accesses)."""
    if EVEN_CHANNELS:
        return tl.full([BLOCK_CHANNELS, 1], 1, tl.int1)
    else:
        return (c < channels)[:, None]


@triton.jit
def _channel_fill(fill_ptr, c, channels, dtype):
    """The fill values of a block of channels, as a [BLOCK_CHANNELS, 1] column."""
    return tl.load(fill_ptr + c, mask=c < channels, other=0.0).to(dtype)[:, None]


@triton.jit
def _filled_stencil(v00, v01, v10, v11, ok00, ok01, ok10, ok11, fill):
    """A bilinear stencil's taps with those outside the image reading the fill value."""
    return (tl.where(ok00[None, :], v00, fill), tl.where(ok01[None, :], v01, fill),
            tl.where(ok10[None, :], v10, fill), tl.where(ok11[None, :], v11, fill))


# ----------------------------------------------------------------------------------------------
# Forward kernel
# ----------------------------------------------------------------------------------------------

@triton.jit(do_not_specialize=_SIZE_ARGS)
def _forward_kernel(
    input_ptr, coords_ptr, output_ptr,    # coords: thetas or grid (SOURCE), compute precision
    fill_ptr,                             # HAS_FILL: one value per channel, compute precision
    channels, in_h, in_w, out_h, out_w,
    in_sn, in_sc, in_sh, in_sw,
    out_sn, out_sc, out_s_pixel,
    co_sn, co_sh, co_sw, co_sc,           # the grid's strides (SOURCE "grid")
    SOURCE: tl.constexpr, MODE: tl.constexpr, PADDING: tl.constexpr,
    ALIGN_CORNERS: tl.constexpr, HAS_FILL: tl.constexpr,
    INDEX_64: tl.constexpr, BLOCK_PIXELS: tl.constexpr, BLOCK_CHANNELS: tl.constexpr,
    EVEN_CHANNELS: tl.constexpr,  # BLOCK_CHANNELS divides channels (_channels_in)
):
    # The output is contiguous or channels_last: pixel p of a channel is at p * out_s_pixel,
    # which lets Triton see contiguous pixels and vectorise the stores of a contiguous output.
    index_dtype = tl.int64 if INDEX_64 else tl.int32
    dtype = coords_ptr.dtype.element_ty
    image, _, pixels, pixel_ok = _program_pixels(out_h, out_w, BLOCK_PIXELS, index_dtype)
    _, _, ix, iy, _, _ = _sample_points(coords_ptr, image, pixels, pixel_ok, in_h, in_w, out_h,
                                        out_w, co_sn, co_sh, co_sw, co_sc, SOURCE, PADDING,
                                        ALIGN_CORNERS)
    undefined = _undefined_points(ix, iy, pixel_ok)
    near, ix, iy = _near_points(ix, iy, pixel_ok, in_h, in_w)
    if MODE == "nearest":
        x, y, tap_ok = _nearest_tap(ix, iy, near, in_h, in_w, index_dtype)
        tap = y * in_sh + x * in_sw
    else:
        x0, y0, west, east, north, south, ok00, ok01, ok10, ok11 = _bilinear_stencil(
            ix, iy, near, in_h, in_w, index_dtype)
        tap00 = y0 * in_sh + x0 * in_sw

    input_image = input_ptr + image.to(tl.int64) * in_sn
    output_image = output_ptr + image.to(tl.int64) * out_sn
    for c_start in range(0, channels, BLOCK_CHANNELS):
        c = (c_start + tl.arange(0, BLOCK_CHANNELS)).to(index_dtype)
        c_ok = _channels_in(c, channels, BLOCK_CHANNELS, EVEN_CHANNELS)
        src = input_image + c[:, None] * in_sc
        if MODE == "nearest":
            value = tl.load(src + tap[None, :], mask=tap_ok[None, :] & c_ok, other=0.0).to(dtype)
            if HAS_FILL:
                value = tl.where(tap_ok[None, :], value, _channel_fill(fill_ptr, c, channels,
                                                                       dtype))
        else:
            v00, v01, v10, v11 = _load_stencil(src, tap00, in_sh, in_sw, ok00, ok01, ok10, ok11,
                                               c_ok, dtype)
            if HAS_FILL:
                fill = _channel_fill(fill_ptr, c, channels, dtype)
                v00, v01, v10, v11 = _filled_stencil(v00, v01, v10, v11, ok00, ok01, ok10, ok11,
                                                     fill)
            # The C++ kernels' order of additions (a skipped tap there adds an exact zero here).
            value = ((west * north)[None, :] * v00 + (east * north)[None, :] * v01
                     + (west * south)[None, :] * v10 + (east * south)[None, :] * v11)
            if HAS_FILL:  # a point without a tap in the image reads the fill exactly
                value = tl.where((ok00 | ok01 | ok10 | ok11)[None, :], value, fill)
        value = tl.where(undefined[None, :], float("nan"), value)
        dst = output_image + c[:, None] * out_sc + (pixels * out_s_pixel)[None, :]
        tl.store(dst, value.to(output_ptr.dtype.element_ty), mask=pixel_ok[None, :] & c_ok)


# ----------------------------------------------------------------------------------------------
# Backward kernel
# ----------------------------------------------------------------------------------------------

@triton.jit
def _backward_points(
    grad_output_image, input_image, acc_image,  # pointers at this image's first element
    coords_ptr, grad_grid_ptr, fill_ptr,
    image, pixels, pixel_ok, channels, in_h, in_w, out_h, out_w,
    go_sc, go_sh, go_sw, in_sc, in_sh, in_sw,
    ac_sc, ac_sh, ac_sw,                        # the strides of grad_input's accumulator
    co_sn, co_sh, co_sw, co_sc,
    SOURCE: tl.constexpr, MODE: tl.constexpr, PADDING: tl.constexpr,
    ALIGN_CORNERS: tl.constexpr, HAS_FILL: tl.constexpr,
    NEED_INPUT_GRAD: tl.constexpr, NEED_COORD_GRAD: tl.constexpr,
    INDEX_DTYPE: tl.constexpr, BLOCK_PIXELS: tl.constexpr, BLOCK_CHANNELS: tl.constexpr,
    EVEN_CHANNELS: tl.constexpr,  # BLOCK_CHANNELS divides channels (_channels_in)
):
    """The backward pass of output pixels `pixels` of `image`, every channel: adds each tap's
    weight times grad_output into grad_input's accumulator (atomic adds) if NEED_INPUT_GRAD.
    Returns the points' coordinate gradients d(loss)/d(grid x, y) (zero without
    NEED_COORD_GRAD) and base coordinates, from which the caller sums theta's gradient (SOURCE
    "affine"); SOURCE "grid" stores the former into grad_grid (N, Ho, Wo, 2), in its dtype."""
    # NEED_COORD_GRAD only in bilinear mode: nearest sampling has a zero coordinate gradient.
    dtype = coords_ptr.dtype.element_ty
    base_x, base_y, ix, iy, dix, diy = _sample_points(
        coords_ptr, image, pixels, pixel_ok, in_h, in_w, out_h, out_w, co_sn, co_sh, co_sw,
        co_sc, SOURCE, PADDING, ALIGN_CORNERS)
    undefined = _undefined_points(ix, iy, pixel_ok)
    near, ix, iy = _near_points(ix, iy, pixel_ok, in_h, in_w)
    if MODE == "nearest":
        x, y, tap_ok = _nearest_tap(ix, iy, near, in_h, in_w, INDEX_DTYPE)
        grad_tap = y * ac_sh + x * ac_sw
    else:
        x0, y0, west, east, north, south, ok00, ok01, ok10, ok11 = _bilinear_stencil(
            ix, iy, near, in_h, in_w, INDEX_DTYPE)
        grad_tap00 = y0 * ac_sh + x0 * ac_sw
        tap00 = y0 * in_sh + x0 * in_sw

    go_offset = (pixels // out_w) * go_sh + (pixels % out_w) * go_sw
    # d(loss)/d(ix), d(loss)/d(iy) of each pixel, summed over channels.
    grad_ix = tl.full([BLOCK_PIXELS], 0.0, dtype)
    grad_iy = tl.full([BLOCK_PIXELS], 0.0, dtype)
    for c_start in range(0, channels, BLOCK_CHANNELS):
        c = (c_start + tl.arange(0, BLOCK_CHANNELS)).to(INDEX_DTYPE)
        c_ok = _channels_in(c, channels, BLOCK_CHANNELS, EVEN_CHANNELS)
        g = tl.load(grad_output_image + c[:, None] * go_sc + go_offset[None, :],
                    mask=pixel_ok[None, :] & c_ok, other=0.0).to(dtype)
        if NEED_INPUT_GRAD:
            dst = acc_image + c[:, None] * ac_sc
            if MODE == "nearest":
                tl.atomic_add(dst + grad_tap[None, :], g, mask=tap_ok[None, :] & c_ok,
                              sem="relaxed")
            else:
                tl.atomic_add(dst + grad_tap00[None, :], (west * north)[None, :] * g,
                              mask=ok00[None, :] & c_ok, sem="relaxed")
                tl.atomic_add(dst + (grad_tap00 + ac_sw)[None, :], (east * north)[None, :] * g,
                              mask=ok01[None, :] & c_ok, sem="relaxed")
                tl.atomic_add(dst + (grad_tap00 + ac_sh)[None, :], (west * south)[None, :] * g,
                              mask=ok10[None, :] & c_ok, sem="relaxed")
                tl.atomic_add(dst + (grad_tap00 + ac_sh + ac_sw)[None, :],
                              (east * south)[None, :] * g, mask=ok11[None, :] & c_ok,
                              sem="relaxed")
        if NEED_COORD_GRAD:
            v00, v01, v10, v11 = _load_stencil(input_image + c[:, None] * in_sc, tap00, in_sh,
                                               in_sw, ok00, ok01, ok10, ok11, c_ok, dtype)
            if HAS_FILL:
                v00, v01, v10, v11 = _filled_stencil(v00, v01, v10, v11, ok00, ok01, ok10, ok11,
                                                     _channel_fill(fill_ptr, c, channels, dtype))
            d_ix = (v01 - v00) * north[None, :] + (v11 - v10) * south[None, :]
            d_iy = (v10 - v00) * west[None, :] + (v11 - v01) * east[None, :]
            grad_ix += _sum(g * d_ix, axis=0)
            grad_iy += _sum(g * d_iy, axis=0)

    grad_gx = tl.full([BLOCK_PIXELS], 0.0, dtype)
    grad_gy = tl.full([BLOCK_PIXELS], 0.0, dtype)
    if NEED_COORD_GRAD:
        # d(loss)/d(grid x, y) of each point. A point with no tap in the image has no gradient,
        # even where grad_output is NaN or inf (its grad_ix is then 0 * NaN: selected away, as
        # ATen skips such taps); an undefined point's is NaN.
        any_tap = ok00 | ok01 | ok10 | ok11
        grad_gx = tl.where(undefined, float("nan"), tl.where(any_tap, grad_ix * dix, 0.0))
        grad_gy = tl.where(undefined, float("nan"), tl.where(any_tap, grad_iy * diy, 0.0))
        if SOURCE == "grid":
            point_grad = grad_grid_ptr + (image.to(tl.int64) * out_h * out_w + pixels) * 2
            element = grad_grid_ptr.dtype.element_ty
            tl.store(point_grad, grad_gx.to(element), mask=pixel_ok)
            tl.store(point_grad + 1, grad_gy.to(element), mask=pixel_ok)
    return grad_gx, grad_gy, base_x, base_y


@triton.jit
def _store_theta_sums(out, gx_bx, gx_by, gx, gy_bx, gy_by, gy):
    """Theta's gradient (six numbers at `out`, in its dtype) from per-point terms: grid_x =
    theta[0] . (bx, by, 1), likewise grid_y (the chain rule through the affine map); an
    undefined point makes every sum of its image NaN."""
    element = out.dtype.element_ty
    tl.store(out + 0, _sum(gx_bx, axis=0).to(element))
    tl.store(out + 1, _sum(gx_by, axis=0).to(element))
    tl.store(out + 2, _sum(gx, axis=0).to(element))
    tl.store(out + 3, _sum(gy_bx, axis=0).to(element))
    tl.store(out + 4, _sum(gy_by, axis=0).to(element))
    tl.store(out + 5, _sum(gy, axis=0).to(element))


@triton.jit
def _no_theta_terms(BLOCK: tl.constexpr, dtype):
    """Zeroed per-lane sums of theta's six gradient terms (see _add_theta_terms)."""
    zero = tl.full([BLOCK], 0.0, dtype)
    return zero, zero, zero, zero, zero, zero


@triton.jit
def _add_theta_terms(gx_bx, gx_by, gx, gy_bx, gy_by, gy, grad_gx, grad_gy, base_x, base_y):
    """Per-lane sums of theta's gradient terms (summed by _store_theta_sums) with those of a
    block of points: coordinate gradients grad_gx, grad_gy at base coordinates base_x, base_y."""
    return (gx_bx + grad_gx * base_x, gx_by + grad_gx * base_y, gx + grad_gx,
            gy_bx + grad_gy * base_x, gy_by + grad_gy * base_y, gy + grad_gy)


@triton.jit(do_not_specialize=_SIZE_ARGS)
def _backward_kernel(
    grad_output_ptr, input_ptr, coords_ptr,
    grad_input_ptr,  # NEED_INPUT_GRAD: zero-filled, in the compute precision
    coord_grad_ptr,  # "affine": theta partials (N, partials_per_image, 6); "grid": grad_grid
                     # (N, Ho, Wo, 2)
    fill_ptr,        # HAS_FILL: one value per channel (taps outside read it)
    gathered_ptr,    # SKIP_GATHERED: per image, whether _gather_backward_kernel took it
    channels, in_h, in_w, out_h, out_w,
    go_sn, go_sc, go_sh, go_sw,
    in_sn, in_sc, in_sh, in_sw,
    gi_sn, gi_sc, gi_sh, gi_sw,
    co_sn, co_sh, co_sw, co_sc,
    partials_per_image, first_partial,  # "affine": this kernel's theta partials of an image
                                        # are [first_partial, first_partial + its programs)
    SOURCE: tl.constexpr, MODE: tl.constexpr, PADDING: tl.constexpr,
    ALIGN_CORNERS: tl.constexpr, HAS_FILL: tl.constexpr,
    NEED_INPUT_GRAD: tl.constexpr, NEED_COORD_GRAD: tl.constexpr, SKIP_GATHERED: tl.constexpr,
    INDEX_64: tl.constexpr, BLOCK_PIXELS: tl.constexpr, BLOCK_CHANNELS: tl.constexpr,
    EVEN_CHANNELS: tl.constexpr,  # BLOCK_CHANNELS divides channels (_channels_in)
):
    """One program per (image, block of BLOCK_PIXELS output pixels): an image spread over the
    GPU. Theta's gradient as six partial sums per program, which the host sums. SKIP_GATHERED:
    the fallback of _gather_backward_kernel, whose images it leaves alone (their points count
    as absent; their partials are zero)."""
    index_dtype = tl.int64 if INDEX_64 else tl.int32
    image, block, pixels, pixel_ok = _program_pixels(out_h, out_w, BLOCK_PIXELS, index_dtype)
    if SKIP_GATHERED:
        pixel_ok = pixel_ok & (tl.load(gathered_ptr + image) == 0)
    grad_gx, grad_gy, base_x, base_y = _backward_points(
        grad_output_ptr + image.to(tl.int64) * go_sn, input_ptr + image.to(tl.int64) * in_sn,
        grad_input_ptr + image.to(tl.int64) * gi_sn, coords_ptr, coord_grad_ptr, fill_ptr,
        image, pixels, pixel_ok, channels, in_h, in_w, out_h, out_w,
        go_sc, go_sh, go_sw, in_sc, in_sh, in_sw, gi_sc, gi_sh, gi_sw, co_sn, co_sh, co_sw, co_sc,
        SOURCE, MODE, PADDING, ALIGN_CORNERS, HAS_FILL, NEED_INPUT_GRAD, NEED_COORD_GRAD,
        index_dtype, BLOCK_PIXELS, BLOCK_CHANNELS, EVEN_CHANNELS)
    if NEED_COORD_GRAD:
        if SOURCE == "affine":
            partial = image.to(tl.int64) * partials_per_image + first_partial + block
            _store_theta_sums(coord_grad_ptr + partial * 6,
                              grad_gx * base_x, grad_gx * base_y, grad_gx,
                              grad_gy * base_x, grad_gy * base_y, grad_gy)


@triton.jit
def _plane_offsets(elements, plane, in_w, sc, sh, sw):
    """Offsets of an image's elements (c, y, x), numbered in (C, H, W) order, at strides s*."""
    within = elements % plane
    return (elements // plane) * sc + (within // in_w) * sh + (within % in_w) * sw


@triton.jit(do_not_specialize=_SIZE_ARGS)
def _image_backward_kernel(
    grad_output_ptr, input_ptr, coords_ptr,
    acc_ptr,         # NEED_INPUT_GRAD: grad_input's accumulator, in the compute precision:
                     # grad_input itself, or (STAGED) an (N, C, H, W) buffer
    grad_input_ptr,  # STAGED: grad_input, written from the accumulator at the end
    coord_grad_ptr,  # "affine": grad_theta (N, 6); "grid": grad_grid (N, Ho, Wo, 2); their dtype
    fill_ptr,        # HAS_FILL: one value per channel (taps outside read it)
    channels, in_h, in_w, out_h, out_w,
    go_sn, go_sc, go_sh, go_sw,
    in_sn, in_sc, in_sh, in_sw,
    ac_sn, ac_sc, ac_sh, ac_sw,
    gi_sn, gi_sc, gi_sh, gi_sw,
    co_sn, co_sh, co_sw, co_sc,
    SOURCE: tl.constexpr, MODE: tl.constexpr, PADDING: tl.constexpr,
    ALIGN_CORNERS: tl.constexpr, HAS_FILL: tl.constexpr,
    NEED_INPUT_GRAD: tl.constexpr, NEED_COORD_GRAD: tl.constexpr, STAGED: tl.constexpr,
    INDEX_64: tl.constexpr, BLOCK_PIXELS: tl.constexpr, BLOCK_CHANNELS: tl.constexpr,
    EVEN_CHANNELS: tl.constexpr,  # BLOCK_CHANNELS divides channels (_channels_in)
    BLOCK_ELEMENTS: tl.constexpr,
):
    """One program per image, for small images (_image_programs_fit): the program zeroes its
    image's accumulator, takes all its points block by block, then writes the final
    gradients, theta's summed in the program. One launch in all: no zero-fill, no reduction of
    partials, no cast."""
    index_dtype = tl.int64 if INDEX_64 else tl.int32
    dtype = coords_ptr.dtype.element_ty
    image = tl.program_id(0)
    plane = in_h.to(index_dtype) * in_w
    elements = channels * plane
    acc_image = acc_ptr + image.to(tl.int64) * ac_sn
    if NEED_INPUT_GRAD:
        for start in range(0, elements, BLOCK_ELEMENTS):
            e = start + tl.arange(0, BLOCK_ELEMENTS).to(index_dtype)
            tl.store(acc_image + _plane_offsets(e, plane, in_w, ac_sc, ac_sh, ac_sw),
                     tl.full([BLOCK_ELEMENTS], 0.0, acc_ptr.dtype.element_ty), mask=e < elements)
        tl.debug_barrier()  # the zeros are in place before any thread adds to them
    # Per-lane sums of theta's gradient terms, reduced once at the end.
    gx_bx, gx_by, gx, gy_bx, gy_by, gy = _no_theta_terms(BLOCK_PIXELS, dtype)
    pixel_count = out_h.to(index_dtype) * out_w
    for start in range(0, pixel_count, BLOCK_PIXELS):
        pixels = start + tl.arange(0, BLOCK_PIXELS).to(index_dtype)
        grad_gx, grad_gy, base_x, base_y = _backward_points(
            grad_output_ptr + image.to(tl.int64) * go_sn, input_ptr + image.to(tl.int64) * in_sn,
            acc_image, coords_ptr, coord_grad_ptr, fill_ptr,
            image, pixels, pixels < pixel_count, channels, in_h, in_w, out_h, out_w,
            go_sc, go_sh, go_sw, in_sc, in_sh, in_sw, ac_sc, ac_sh, ac_sw,
            co_sn, co_sh, co_sw, co_sc,
            SOURCE, MODE, PADDING, ALIGN_CORNERS, HAS_FILL, NEED_INPUT_GRAD, NEED_COORD_GRAD,
            index_dtype, BLOCK_PIXELS, BLOCK_CHANNELS, EVEN_CHANNELS)
        gx_bx, gx_by, gx, gy_bx, gy_by, gy = _add_theta_terms(
            gx_bx, gx_by, gx, gy_bx, gy_by, gy, grad_gx, grad_gy, base_x, base_y)
    if NEED_COORD_GRAD:
        if SOURCE == "affine":
            _store_theta_sums(coord_grad_ptr + image.to(tl.int64) * 6,
                              gx_bx, gx_by, gx, gy_bx, gy_by, gy)
    if NEED_INPUT_GRAD:
        if STAGED:
            tl.debug_barrier()  # every thread's adds are in before any thread reads them
            grad_input_image = grad_input_ptr + image.to(tl.int64) * gi_sn
            for start in range(0, elements, BLOCK_ELEMENTS):
                e = start + tl.arange(0, BLOCK_ELEMENTS).to(index_dtype)
                # .cg: from L2, where the atomic adds went, not from a stale L1 line.
                value = tl.load(acc_image + _plane_offsets(e, plane, in_w, ac_sc, ac_sh, ac_sw),
                                mask=e < elements, cache_modifier=".cg")
                tl.store(grad_input_image + _plane_offsets(e, plane, in_w, gi_sc, gi_sh, gi_sw),
                         value.to(grad_input_ptr.dtype.element_ty), mask=e < elements)


# ----------------------------------------------------------------------------------------------
# Gather backward kernel (large images, affine maps, zeros padding)
# ----------------------------------------------------------------------------------------------
# _backward_kernel scatters: grad_input is zero-filled, then every output point adds into its
# taps with atomics, a read-modify-write per tap and channel. Under an affine map with zeros
# padding, the output points with a tap at input pixel (x, y) lie in a small parallelogram of
# the output, found through the inverse map (_gather_plan). _gather_backward_kernel gives each
# lane one input pixel and sums, in a fixed order, over the points of that parallelogram's
# bounding box whose taps include the pixel (each point's taps come from the helpers every other
# kernel uses, so weights match bit for bit), then writes the pixel's channels once: no fill, no
# atomics, deterministic. Each output point's theta gradient is taken by one of its taps'
# pixels (the owner: of its taps inside the image, the one nearest its top-left tap), in the
# same pass. A program is a tile of input pixels, so that under any rotation its candidates are
# a compact patch of the output. An image whose map is singular, not finite, or so anisotropic
# that a pixel has over _GATHER_MAX_CANDIDATES candidates is left to _backward_kernel
# (SKIP_GATHERED; the gather writes zeros there for its atomics); the per-image flag `gathered`
# says which, on the device, without a host sync (deterministic mode: see _gather_backward).
# The design of csrc/cuda/affine_grid_sample_cuda.cu's backward_gather_kernel, whose comment
# gives the arithmetic (an estimate, no GPU run): 8x3x1024x1024 fp32 moves ~302 MB instead of
# ~503 MB, and the candidates' math (~9-16 a pixel at rotation and scale ~1), not memory,
# bounds it. Launches: the gather, the fallback and the partials' sum, where the scatter takes
# a zero-fill, itself and the sum. A tile of 32 x 4 pixels gives each of 4 warps' threads one
# pixel: sm_90 registers (Triton 3.8's compile) 96 bilinear float32, 64 nearest, 157 float64, no
# stack; 32 x 8 (two pixels a thread) took 161 in float32.

@triton.jit
def _maximum(a, b):
    return tl.maximum(a, b)


@triton.jit
def _max(values, axis: tl.constexpr):
    """tl.max (see _sum)."""
    return tl.reduce(values, axis, _maximum)


@triton.jit
def _base_slope(size, ALIGN_CORNERS: tl.constexpr):
    """d(base coordinate) / d(output pixel index) along an axis of `size` pixels, in float64
    (_base_coord is linear in the index, up to rounding)."""
    size_f = size.to(tl.float64)
    if ALIGN_CORNERS:
        slope = 2.0 / tl.maximum(size_f - 1.0, 1.0)
    else:
        slope = 2.0 / size_f
    return tl.where(size > 1, slope, 0.0)


@triton.jit
def _gather_plan(theta, in_h, in_w, out_h, out_w, MODE: tl.constexpr,
                 ALIGN_CORNERS: tl.constexpr):
    """How one image's gather finds, for an input pixel, the output points that may have a tap
    on it, all in float64: the inverse (inv00..inv11, origin_x, origin_y) of the affine map
    output (w, h) -> input (ix, iy), the half-extents (reach_w, reach_h) of a pixel's candidate
    box in output pixels, and whether the image is gatherable."""
    compute = theta.dtype.element_ty
    t00 = tl.load(theta + 0).to(tl.float64)
    t01 = tl.load(theta + 1).to(tl.float64)
    t02 = tl.load(theta + 2).to(tl.float64)
    t10 = tl.load(theta + 3).to(tl.float64)
    t11 = tl.load(theta + 4).to(tl.float64)
    t12 = tl.load(theta + 5).to(tl.float64)
    ax = _base_slope(out_w, ALIGN_CORNERS)
    ay = _base_slope(out_h, ALIGN_CORNERS)
    cx = _base_coord(out_w * 0, out_w, ALIGN_CORNERS, tl.float64)
    cy = _base_coord(out_h * 0, out_h, ALIGN_CORNERS, tl.float64)
    # ix = m00 w + m01 h + origin_x, iy = m10 w + m11 h + origin_y: the first output point's
    # pixel coordinates, and the unnormalisation's slopes sx, sy.
    origin_x, sx = _source_index(t00 * cx + t01 * cy + t02, in_w, "zeros", ALIGN_CORNERS)
    origin_y, sy = _source_index(t10 * cx + t11 * cy + t12, in_h, "zeros", ALIGN_CORNERS)
    m00 = sx * t00 * ax
    m01 = sx * t01 * ay
    m10 = sy * t10 * ax
    m11 = sy * t11 * ay
    det = m00 * m11 - m01 * m10
    inv_det = 1.0 / tl.where(det != 0.0, det, float("nan"))  # singular: not gatherable
    inv00 = m11 * inv_det
    inv01 = -m01 * inv_det
    inv10 = -m10 * inv_det
    inv11 = m00 * inv_det
    # A point has a tap at pixel x when its ix is within `reach` of x (bilinear: ix in
    # [x - 1, x + 1); nearest: [x - 0.5, x + 0.5]). The kernels compute ix in the compute
    # precision from intermediates of magnitude up to (|t0| + |t1| + |t2| + 1) * size: 64 ulps of
    # that cover their rounding many times over; 1e-6 output pixels cover the float64 math's.
    if MODE == "nearest":
        reach = 0.5
    else:
        reach = 1.0
    if compute == tl.float64:
        epsilon = 2.220446049250313e-16
        coordinate_limit = 1.7976931348623157e300  # 1e-8 of the largest float64
    else:
        epsilon = 1.1920928955078125e-07
        coordinate_limit = 3.4028234663852886e30  # 1e-8 of the largest float32
    magnitude_x = (tl.abs(t00) + tl.abs(t01) + tl.abs(t02) + 1.0) * in_w.to(tl.float64) + 1.0
    magnitude_y = (tl.abs(t10) + tl.abs(t11) + tl.abs(t12) + 1.0) * in_h.to(tl.float64) + 1.0
    reach_x = reach + 64.0 * epsilon * magnitude_x
    reach_y = reach + 64.0 * epsilon * magnitude_y
    reach_w = tl.abs(inv00) * reach_x + tl.abs(inv01) * reach_y + 1e-6
    reach_h = tl.abs(inv10) * reach_x + tl.abs(inv11) * reach_y + 1e-6
    # Coordinates far from overflowing (so none is undefined) and a bounded box; false for any
    # NaN or infinity on the way (a singular map gives both).
    gatherable = ((magnitude_x < coordinate_limit) & (magnitude_y < coordinate_limit)
                  & ((2.0 * reach_w + 1.0) * (2.0 * reach_h + 1.0) <= _GATHER_MAX_CANDIDATES))
    return gatherable, inv00, inv01, inv10, inv11, origin_x, origin_y, reach_w, reach_h


@triton.jit
def _candidate_range(center, reach, size, gatherable):
    """The output indices [first, last] within `reach` of `center` (float64) along an output
    axis of `size` points; an empty range (first > last) where none is, or not gatherable.
    Clamped in float64 before the conversion: the box may lie far outside the output."""
    # Not gatherable: the plan may hold infinities and NaN, which must not reach the casts.
    center = tl.where(gatherable, center, -1.0)
    reach = tl.where(gatherable, reach, 0.0)
    size_f = size.to(tl.float64)
    first = tl.ceil(tl.minimum(tl.maximum(center - reach, 0.0), size_f))
    last = tl.floor(tl.maximum(tl.minimum(center + reach, size_f - 1.0), -1.0))
    return first.to(tl.int32), last.to(tl.int32)


@triton.jit(do_not_specialize=_SIZE_ARGS)
def _gather_backward_kernel(
    grad_output_ptr, input_ptr,
    theta_ptr,       # (N, 6) thetas, compute precision
    grad_input_ptr,  # written in full (zeros for an image left to the fallback), input's dtype
    partials_ptr,    # NEED_COORD_GRAD: theta partials (N, partials_per_image, 6), the first
                     # tiles_per_image of an image this kernel's
    gathered_ptr,    # per image: whether it was gathered (written by its first tile)
    channels, in_h, in_w, out_h, out_w,
    go_sn, go_sc, go_sh, go_sw,
    in_sn, in_sc, in_sh, in_sw,
    gi_sn, gi_sc, gi_sh, gi_sw,
    partials_per_image,
    MODE: tl.constexpr, ALIGN_CORNERS: tl.constexpr, NEED_COORD_GRAD: tl.constexpr,
    TILE_W: tl.constexpr, TILE_H: tl.constexpr,  # a program's tile of input pixels
    BLOCK_CHANNELS: tl.constexpr,                # >= channels (at most _GATHER_MAX_CHANNELS)
    EVEN_CHANNELS: tl.constexpr,                 # BLOCK_CHANNELS divides channels
):
    """One program per (image, tile of TILE_H x TILE_W input pixels), a lane per pixel: its
    grad_input in every channel, and the theta gradient of the output points it owns."""
    dtype = theta_ptr.dtype.element_ty
    tiles_w = (in_w + TILE_W - 1) // TILE_W
    tiles_per_image = ((in_h + TILE_H - 1) // TILE_H) * tiles_w
    image = tl.program_id(0) // tiles_per_image
    tile = tl.program_id(0) % tiles_per_image
    lane = tl.arange(0, TILE_W * TILE_H)
    x = (tile % tiles_w) * TILE_W + lane % TILE_W
    y = (tile // tiles_w) * TILE_H + lane // TILE_W
    active = (x < in_w) & (y < in_h)
    gatherable, inv00, inv01, inv10, inv11, origin_x, origin_y, reach_w, reach_h = _gather_plan(
        theta_ptr + image * 6, in_h, in_w, out_h, out_w, MODE, ALIGN_CORNERS)
    if tile == 0:
        tl.store(gathered_ptr + image, gatherable)
    # (!= 0: Triton's interpreter mistypes `&` of a block and a float64 comparison's scalar.)
    take = active & (gatherable != 0)
    dx = x.to(tl.float64) - origin_x
    dy = y.to(tl.float64) - origin_y
    w0, w1 = _candidate_range(inv00 * dx + inv01 * dy, reach_w, out_w, take)
    h0, h1 = _candidate_range(inv10 * dx + inv11 * dy, reach_h, out_h, take)
    # Every lane walks the program's widest box, masked to its own.
    span_w = _max(w1 - w0 + 1, axis=0)
    span_h = _max(h1 - h0 + 1, axis=0)

    c = tl.arange(0, BLOCK_CHANNELS)
    c_ok = _channels_in(c, channels, BLOCK_CHANNELS, EVEN_CHANNELS)
    grad_output_image = grad_output_ptr + image.to(tl.int64) * go_sn
    input_image = input_ptr + image.to(tl.int64) * in_sn
    acc = tl.full([BLOCK_CHANNELS, TILE_W * TILE_H], 0.0, dtype)
    # Per-lane sums of theta's gradient terms of the points each lane owns.
    gx_bx, gx_by, gx, gy_bx, gy_by, gy = _no_theta_terms(TILE_W * TILE_H, dtype)
    for i in range(0, span_h):
        for j in range(0, span_w):
            h = h0 + i
            w = w0 + j
            candidate = take & (h <= h1) & (w <= w1)
            pixels = tl.where(candidate, h * out_w + w, 0)
            base_x, base_y, ix, iy, dix, diy = _source_points(
                theta_ptr, image, pixels, in_h, in_w, out_h, out_w, "zeros", ALIGN_CORNERS)
            near, ix, iy = _near_points(ix, iy, candidate, in_h, in_w)
            if MODE == "nearest":
                tap_x, tap_y, _ = _nearest_tap(ix, iy, near, in_h, in_w, tl.int32)
                hit = near & (tap_x == x) & (tap_y == y)
                weight = tl.full([TILE_W * TILE_H], 1.0, dtype)
            else:
                x0, y0, west, east, north, south, ok00, ok01, ok10, ok11 = _bilinear_stencil(
                    ix, iy, near, in_h, in_w, tl.int32)
                # (x, y) is in the image: a tap that lands on it is one of the point's valid ones.
                column = x - x0
                row = y - y0
                hit = near & (column >= 0) & (column <= 1) & (row >= 0) & (row <= 1)
                # The corner weight as every other kernel forms it, (west|east) * (north|south).
                weight = tl.where(row == 0, tl.where(column == 0, west * north, east * north),
                                  tl.where(column == 0, west * south, east * south))
            g = tl.load(grad_output_image + c[:, None] * go_sc + (h * go_sh + w * go_sw)[None, :],
                        mask=hit[None, :] & c_ok, other=0.0).to(dtype)
            acc += weight[None, :] * g
            if NEED_COORD_GRAD:
                owner = hit & (tl.maximum(x0, 0) == x) & (tl.maximum(y0, 0) == y)
                v00, v01, v10, v11 = _load_stencil(
                    input_image + c[:, None] * in_sc, y0 * in_sh + x0 * in_sw, in_sh, in_sw,
                    ok00 & owner, ok01 & owner, ok10 & owner, ok11 & owner, c_ok, dtype)
                d_ix = (v01 - v00) * north[None, :] + (v11 - v10) * south[None, :]
                d_iy = (v10 - v00) * west[None, :] + (v11 - v01) * east[None, :]
                grad_gx = tl.where(owner, _sum(g * d_ix, axis=0) * dix, 0.0)
                grad_gy = tl.where(owner, _sum(g * d_iy, axis=0) * diy, 0.0)
                gx_bx, gx_by, gx, gy_bx, gy_by, gy = _add_theta_terms(
                    gx_bx, gx_by, gx, gy_bx, gy_by, gy, grad_gx, grad_gy, base_x, base_y)
    dst = (grad_input_ptr + image.to(tl.int64) * gi_sn + c[:, None] * gi_sc
           + (y * gi_sh + x * gi_sw)[None, :])
    tl.store(dst, acc.to(grad_input_ptr.dtype.element_ty), mask=active[None, :] & c_ok)
    if NEED_COORD_GRAD:
        _store_theta_sums(partials_ptr + (image.to(tl.int64) * partials_per_image + tile) * 6,
                          gx_bx, gx_by, gx, gy_bx, gy_by, gy)


# ----------------------------------------------------------------------------------------------
# Stencil kernel (the deterministic input gradient)
# ----------------------------------------------------------------------------------------------

@triton.jit
def _store_tap(tap_index_ptr, tap_weight_ptr, offset, row, weight, inside, pixel_ok):
    tl.store(tap_index_ptr + offset, tl.where(inside, row, 0), mask=pixel_ok)
    tl.store(tap_weight_ptr + offset, weight, mask=pixel_ok)


@triton.jit(do_not_specialize=_SIZE_ARGS)
def _stencil_kernel(
    coords_ptr, tap_index_ptr, tap_weight_ptr,
    in_h, in_w, out_h, out_w,
    co_sn, co_sh, co_sw, co_sc,
    SOURCE: tl.constexpr, MODE: tl.constexpr, PADDING: tl.constexpr,
    ALIGN_CORNERS: tl.constexpr, INDEX_64: tl.constexpr, BLOCK_PIXELS: tl.constexpr,
):
    """The taps of every output pixel as rows of an (1 + N * H * W, C) matrix of input pixels:
    row 1 + (n * H + y) * W + x, or the spare row 0 for a tap outside the image; with their
    weights. Tap k of pixel p of image n goes to [n, k, p] of tap_index and tap_weight."""
    index_dtype = tl.int64 if INDEX_64 else tl.int32
    image, _, pixels, pixel_ok = _program_pixels(out_h, out_w, BLOCK_PIXELS, index_dtype)
    _, _, ix, iy, _, _ = _sample_points(coords_ptr, image, pixels, pixel_ok, in_h, in_w, out_h,
                                        out_w, co_sn, co_sh, co_sw, co_sc, SOURCE, PADDING,
                                        ALIGN_CORNERS)
    near, ix, iy = _near_points(ix, iy, pixel_ok, in_h, in_w)
    first_row = 1 + image.to(tl.int64) * in_h * in_w
    pixel_count = out_h.to(tl.int64) * out_w
    if MODE == "nearest":
        x, y, inside = _nearest_tap(ix, iy, near, in_h, in_w, index_dtype)
        out = image.to(tl.int64) * pixel_count + pixels
        _store_tap(tap_index_ptr, tap_weight_ptr, out, first_row + y * in_w + x, 1.0, inside,
                   pixel_ok)
    else:
        x0, y0, west, east, north, south, ok00, ok01, ok10, ok11 = _bilinear_stencil(
            ix, iy, near, in_h, in_w, index_dtype)
        row00 = first_row + y0 * in_w + x0
        out = image.to(tl.int64) * 4 * pixel_count + pixels
        _store_tap(tap_index_ptr, tap_weight_ptr, out, row00, west * north, ok00, pixel_ok)
        _store_tap(tap_index_ptr, tap_weight_ptr, out + pixel_count, row00 + 1, east * north,
                   ok01, pixel_ok)
        _store_tap(tap_index_ptr, tap_weight_ptr, out + 2 * pixel_count, row00 + in_w,
                   west * south, ok10, pixel_ok)
        _store_tap(tap_index_ptr, tap_weight_ptr, out + 3 * pixel_count, row00 + in_w + 1,
                   east * south, ok11, pixel_ok)


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------

# Triton compiles only JITFunctions; under TRITON_INTERPRET=1 the decorators above returned
# interpreted functions, which run on CPU tensors.
INTERPRETED = not isinstance(_forward_kernel, triton.runtime.JITFunction)


def _check_device(device: torch.device) -> None:
    if device.type != "cuda" and not (device.type == "cpu" and INTERPRETED):
        raise ValueError(f"the Triton backend needs CUDA tensors (or CPU tensors with "
                         f"TRITON_INTERPRET=1 set before stn_ext.triton_kernels is imported), "
                         f"got tensors on {device}")


def _device_of(tensor: torch.Tensor):
    """Make the tensor's GPU current: Triton launches on the current CUDA device."""
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Precision of the coordinate math and accumulations (as at::opmath_type)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _needs_int64(*tensors: torch.Tensor) -> bool:
    """Whether an element offset within one image (or a pixel count) may overflow int32;
    the image offset itself is always computed in 64 bits. (Theta rows, 2-D, always fit.)"""
    for t in tensors:
        if t.dim() < 4:
            continue
        extent = sum((size - 1) * stride for size, stride in zip(t.shape[1:], t.stride()[1:]))
        if extent >= _INT32_LIMIT or t.shape[2] * t.shape[3] >= _INT32_LIMIT:
            return True
    return False


def _block_sizes(channels: int, pixels: int) -> Tuple[int, int]:
    """(BLOCK_PIXELS, BLOCK_CHANNELS) of a _TILE_ELEMENTS tile: all channels at once up to
    _MAX_BLOCK_CHANNELS, the rest of the tile in pixels. Depends on C and Ho*Wo only, so a new
    batch size never compiles a new kernel."""
    block_channels = min(triton.next_power_of_2(max(channels, 1)), _MAX_BLOCK_CHANNELS)
    block_pixels = max(_MIN_BLOCK_PIXELS, min(_TILE_ELEMENTS // block_channels,
                                              triton.next_power_of_2(max(pixels, 1))))
    return block_pixels, block_channels


def _coordinates(coords: torch.Tensor, source: str,
                 dtype: torch.dtype) -> Tuple[torch.Tensor, Tuple[int, int, int, int]]:
    """A coordinate source as the kernels read it, in the compute precision, with the strides
    of their co_* arguments: thetas as (N, 6) contiguous rows (strides unused), a grid
    (N, Ho, Wo, 2) as it is."""
    if source == "affine":
        return coords.to(dtype).contiguous().view(-1, 6), (0, 0, 0, 0)
    grid = coords.to(dtype)
    return grid, tuple(grid.stride())


def _fill_in(fill: Optional[torch.Tensor], dtype: torch.dtype,
             stand_in: torch.Tensor) -> torch.Tensor:
    """The fill values as the kernels read them, or a pointer they never touch (HAS_FILL off)."""
    return stand_in if fill is None else fill.to(dtype).contiguous()


def _sample_forward(input: torch.Tensor, coords: torch.Tensor, source: str, out_h: int,
                    out_w: int, mode: str, padding_mode: str, align_corners: bool,
                    fill: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Launch the forward kernel; returns (N, C, out_h, out_w) in the input's dtype and layout.
    fill: one value per channel that taps outside the image read, or None (zero)."""
    _check_device(input.device)
    batch, channels, in_h, in_w = input.shape
    output = torch.empty((batch, channels, out_h, out_w), dtype=input.dtype, device=input.device,
                         memory_format=output_memory_format(input))
    if output.numel() == 0:
        return output
    coords_arg, coord_strides = _coordinates(coords, source, _compute_dtype(input.dtype))
    block_pixels, block_channels = _block_sizes(channels, out_h * out_w)
    grid = (batch * triton.cdiv(out_h * out_w, block_pixels),)
    with _device_of(input):
        _forward_kernel[grid](
            input, coords_arg, output, _fill_in(fill, coords_arg.dtype, coords_arg),
            channels, in_h, in_w, out_h, out_w,
            *input.stride(), output.stride(0), output.stride(1), output.stride(3),
            *coord_strides,
            SOURCE=source, MODE=mode, PADDING=padding_mode, ALIGN_CORNERS=align_corners,
            HAS_FILL=fill is not None, INDEX_64=_needs_int64(input, output, coords_arg),
            BLOCK_PIXELS=block_pixels, BLOCK_CHANNELS=block_channels,
            EVEN_CHANNELS=channels % block_channels == 0, num_warps=_NUM_WARPS)
    return output


def _deterministic_input_grad(grad_output: torch.Tensor, input: torch.Tensor,
                              coords_arg: torch.Tensor, coord_strides, source: str, mode: str,
                              padding_mode: str, align_corners: bool) -> torch.Tensor:
    """grad_input without atomics, for torch.use_deterministic_algorithms(True): the stencil
    kernel lists every (input pixel, weight) tap, and index_add_ (deterministic on CUDA in that
    mode: it sorts the indices) accumulates weight * grad_output rows in a fixed order. Costs
    taps x the size of grad_output in memory; returned in the compute precision."""
    batch, channels, in_h, in_w = input.shape
    out_h, out_w = grad_output.shape[2:]
    taps = 1 if mode == "nearest" else 4
    shape = (batch, taps, out_h * out_w)
    tap_index = torch.empty(shape, dtype=torch.int64, device=input.device)
    tap_weight = torch.empty(shape, dtype=coords_arg.dtype, device=input.device)
    block_pixels, _ = _block_sizes(1, out_h * out_w)
    with _device_of(input):
        _stencil_kernel[(batch * triton.cdiv(out_h * out_w, block_pixels),)](
            coords_arg, tap_index, tap_weight, in_h, in_w, out_h, out_w, *coord_strides,
            SOURCE=source, MODE=mode, PADDING=padding_mode, ALIGN_CORNERS=align_corners,
            INDEX_64=_needs_int64(input, grad_output, coords_arg), BLOCK_PIXELS=block_pixels,
            num_warps=_NUM_WARPS)
    # (N, taps, pixels, C) contributions, one row per tap.
    pixel_grads = grad_output.to(coords_arg.dtype).flatten(2).transpose(1, 2).unsqueeze(1)
    contributions = (tap_weight.unsqueeze(-1) * pixel_grads).reshape(-1, channels)
    rows = torch.zeros((1 + batch * in_h * in_w, channels), dtype=coords_arg.dtype,
                       device=input.device)
    rows.index_add_(0, tap_index.view(-1), contributions)
    return (rows[1:].view(batch, in_h, in_w, channels).permute(0, 3, 1, 2)
            .contiguous(memory_format=output_memory_format(input)))


def _image_programs_fit(input: torch.Tensor, out_h: int, out_w: int, need_input_grad: bool,
                        need_coord_grad: bool) -> bool:
    """Whether _image_backward takes a backward call (see _IMAGE_PROGRAM_MAX_POINTS): small
    images, something to compute, and no atomics under torch.use_deterministic_algorithms."""
    batch, channels, in_h, in_w = input.shape
    return (0 < out_h * out_w <= _IMAGE_PROGRAM_MAX_POINTS and batch * channels > 0
            and channels * in_h * in_w <= _IMAGE_PROGRAM_MAX_ELEMENTS
            and (need_input_grad or need_coord_grad)
            and not (need_input_grad and torch.are_deterministic_algorithms_enabled()))


def _image_backward(grad_output: torch.Tensor, input: torch.Tensor, coords: torch.Tensor,
                    coords_arg: torch.Tensor, coord_strides, block_sizes: Tuple[int, int],
                    source: str, mode: str, padding_mode: str, align_corners: bool,
                    need_input_grad: bool, need_coord_grad: bool, coord_grad_in_kernel: bool,
                    fill: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    """The backward pass by _image_backward_kernel, one program per image, from
    _sample_backward's set-up; gradients as _sample_backward returns them."""
    batch, channels, in_h, in_w = input.shape
    out_h, out_w = grad_output.shape[2:]
    compute_dtype = coords_arg.dtype
    block_pixels, block_channels = block_sizes
    layout = output_memory_format(input)
    grad_input = (torch.empty_like(input, memory_format=layout) if need_input_grad
                  else input.new_empty(0))
    staged = need_input_grad and input.dtype != compute_dtype  # accumulated in float32
    acc = (torch.empty(input.shape, dtype=compute_dtype, device=input.device) if staged
           else grad_input)
    coord_shape = (batch, 2, 3) if source == "affine" else (batch, out_h, out_w, 2)
    if coord_grad_in_kernel:
        grad_coords = torch.empty(coord_shape, dtype=coords.dtype, device=input.device)
    elif need_coord_grad:
        grad_coords = torch.zeros(coord_shape, dtype=coords.dtype, device=input.device)
    else:
        grad_coords = coords.new_empty(0)
    if not (need_input_grad or coord_grad_in_kernel):
        return grad_input, grad_coords
    # Outputs not asked for get a stand-in pointer that the kernel never touches.
    acc_arg = acc if need_input_grad else input
    grad_input_arg = grad_input if need_input_grad else input
    coord_grad_arg = grad_coords if coord_grad_in_kernel else coords_arg
    with _device_of(input):
        _image_backward_kernel[(batch,)](
            grad_output, input, coords_arg, acc_arg, grad_input_arg, coord_grad_arg,
            _fill_in(fill, compute_dtype, coords_arg),
            channels, in_h, in_w, out_h, out_w,
            *grad_output.stride(), *input.stride(), *acc_arg.stride(), *grad_input_arg.stride(),
            *coord_strides,
            SOURCE=source, MODE=mode, PADDING=padding_mode, ALIGN_CORNERS=align_corners,
            HAS_FILL=fill is not None, NEED_INPUT_GRAD=need_input_grad,
            NEED_COORD_GRAD=coord_grad_in_kernel, STAGED=staged,
            INDEX_64=_needs_int64(grad_output, input, acc_arg, grad_input_arg, coords_arg),
            BLOCK_PIXELS=block_pixels, BLOCK_CHANNELS=block_channels,
            EVEN_CHANNELS=channels % block_channels == 0, BLOCK_ELEMENTS=_TILE_ELEMENTS,
            num_warps=_NUM_WARPS)
    return grad_input, grad_coords


def _launch_backward_blocks(grad_output: torch.Tensor, input: torch.Tensor,
                            coords_arg: torch.Tensor, coord_strides, grad_input_arg: torch.Tensor,
                            coord_grad_arg: torch.Tensor, block_sizes: Tuple[int, int],
                            source: str, mode: str, padding_mode: str, align_corners: bool,
                            need_input_grad: bool, need_coord_grad: bool,
                            fill: Optional[torch.Tensor], gathered: Optional[torch.Tensor] = None,
                            partials_per_image: Optional[int] = None,
                            first_partial: int = 0) -> None:
    """Launch _backward_kernel, one program per (image, block of pixels). gathered: the flags
    of _gather_backward_kernel, whose images the launch leaves (their partials zero);
    partials_per_image, first_partial: where in theta's partials (N, partials_per_image, 6)
    this launch writes (default: all of them, one per block)."""
    batch, channels, in_h, in_w = input.shape
    out_h, out_w = grad_output.shape[2:]
    block_pixels, block_channels = block_sizes
    blocks_per_image = triton.cdiv(out_h * out_w, block_pixels)
    with _device_of(input):
        _backward_kernel[(batch * blocks_per_image,)](
            grad_output, input, coords_arg, grad_input_arg, coord_grad_arg,
            _fill_in(fill, coords_arg.dtype, coords_arg),
            gathered if gathered is not None else coords_arg,
            channels, in_h, in_w, out_h, out_w,
            *grad_output.stride(), *input.stride(), *grad_input_arg.stride(), *coord_strides,
            partials_per_image if partials_per_image is not None else blocks_per_image,
            first_partial,
            SOURCE=source, MODE=mode, PADDING=padding_mode, ALIGN_CORNERS=align_corners,
            HAS_FILL=fill is not None, NEED_INPUT_GRAD=need_input_grad,
            NEED_COORD_GRAD=need_coord_grad, SKIP_GATHERED=gathered is not None,
            INDEX_64=_needs_int64(grad_output, input, grad_input_arg, coords_arg),
            BLOCK_PIXELS=block_pixels, BLOCK_CHANNELS=block_channels,
            EVEN_CHANNELS=channels % block_channels == 0, num_warps=_NUM_WARPS)


def _gather_fits(grad_output: torch.Tensor, input: torch.Tensor, source: str, padding_mode: str,
                 need_input_grad: bool, fill: Optional[torch.Tensor]) -> bool:
    """Whether _gather_backward takes a backward call (by shape and settings only; the small
    images of _image_programs_fit go there first): grad_input wanted from an affine map with
    zeros padding and no fill value, float32 or float64 (the fallback's atomics go into
    grad_input itself), at most _GATHER_MAX_CHANNELS channels, 32-bit offsets; deterministic
    only outside CUDA-graph capture (the host then checks that every image was gathered)."""
    return (need_input_grad and source == "affine" and padding_mode == "zeros" and fill is None
            and input.dtype in (torch.float32, torch.float64)
            and 0 < input.shape[1] <= _GATHER_MAX_CHANNELS and grad_output.numel() > 0
            and not _needs_int64(grad_output, input)
            and not (torch.are_deterministic_algorithms_enabled() and input.is_cuda
                     and torch.cuda.is_current_stream_capturing()))


def _gather_backward(grad_output: torch.Tensor, input: torch.Tensor, theta_arg: torch.Tensor,
                     coord_strides, block_sizes: Tuple[int, int], mode: str, align_corners: bool,
                     coord_grad_in_kernel: bool) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """The backward pass by _gather_backward_kernel (_gather_fits), with _backward_kernel as
    the fallback for the images it leaves: grad_input and theta's partials from both kernels
    (N, programs, 6; none for nearest), for _backward_gradients. Under
    torch.use_deterministic_algorithms the fallback's atomics would not do: the host reads the
    flags instead (one sync) and returns None unless every image was gathered, for
    _sample_backward's deterministic path to redo the call."""
    batch, channels, in_h, in_w = input.shape
    out_h, out_w = grad_output.shape[2:]
    deterministic = torch.are_deterministic_algorithms_enabled()
    tiles_per_image = triton.cdiv(in_h, _GATHER_TILE_H) * triton.cdiv(in_w, _GATHER_TILE_W)
    fallback_blocks = 0 if deterministic else triton.cdiv(out_h * out_w, block_sizes[0])
    partials_per_image = tiles_per_image + fallback_blocks
    gather_channels = triton.next_power_of_2(channels)
    grad_input = torch.empty_like(input, memory_format=output_memory_format(input))
    gathered = torch.empty(batch, dtype=torch.bool, device=input.device)
    partials = torch.empty((batch, partials_per_image if coord_grad_in_kernel else 0, 6),
                           dtype=theta_arg.dtype, device=input.device)
    # Outputs not asked for get a stand-in pointer that the kernels never touch.
    partials_arg = partials if coord_grad_in_kernel else theta_arg
    with _device_of(input):
        _gather_backward_kernel[(batch * tiles_per_image,)](
            grad_output, input, theta_arg, grad_input, partials_arg, gathered,
            channels, in_h, in_w, out_h, out_w,
            *grad_output.stride(), *input.stride(), *grad_input.stride(), partials_per_image,
            MODE=mode, ALIGN_CORNERS=align_corners, NEED_COORD_GRAD=coord_grad_in_kernel,
            TILE_W=_GATHER_TILE_W, TILE_H=_GATHER_TILE_H,
            BLOCK_CHANNELS=gather_channels, EVEN_CHANNELS=channels == gather_channels,
            num_warps=_NUM_WARPS)
    if deterministic:
        if not bool(gathered.all()):
            return None
    else:
        _launch_backward_blocks(grad_output, input, theta_arg, coord_strides, grad_input,
                                partials_arg, block_sizes, "affine", mode, "zeros",
                                align_corners, True, coord_grad_in_kernel, None, gathered,
                                partials_per_image, tiles_per_image)
    return grad_input, partials


def _backward_gradients(grad_input: torch.Tensor, coord_grad: torch.Tensor, input: torch.Tensor,
                        coords: torch.Tensor, source: str,
                        need_coord_grad: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """The gradients as _sample_backward returns them, from what the kernels wrote: grad_input
    in the input's dtype (and layout); theta's gradient summed from its partials (N, programs,
    6) in a fixed order, or grad_grid, in the coordinates' dtype; an empty tensor for a
    gradient not asked for."""
    grad_input = grad_input.to(input.dtype)  # keeps the layout
    if not need_coord_grad:
        grad_coords = coords.new_empty(0)
    elif source == "affine":
        grad_coords = coord_grad.sum(1).view(input.shape[0], 2, 3).to(coords.dtype)
    else:
        grad_coords = coord_grad.to(coords.dtype)
    return grad_input, grad_coords


def _sample_backward(grad_output: torch.Tensor, input: torch.Tensor, coords: torch.Tensor,
                     source: str, mode: str, padding_mode: str, align_corners: bool,
                     output_mask: Sequence[bool],
                     fill: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Launch the backward kernel for the gradients output_mask asks for (input, coordinate
    source); one not asked for comes back as an empty tensor. Under
    torch.use_deterministic_algorithms(True) grad_input comes from _deterministic_input_grad
    instead of atomic adds (the coordinate gradient is deterministic either way: per point for
    a grid, reduced over programs in a fixed order for theta)."""
    _check_device(input.device)
    need_input_grad, need_coord_grad = output_mask
    batch, channels, in_h, in_w = input.shape
    out_h, out_w = grad_output.shape[2:]
    compute_dtype = _compute_dtype(input.dtype)
    coords_arg, coord_strides = _coordinates(coords, source, compute_dtype)
    block_pixels, block_channels = _block_sizes(channels, out_h * out_w)
    empty = grad_output.numel() == 0
    # Nearest sampling is piecewise constant in its coordinates: their gradient is zero.
    coord_grad_in_kernel = need_coord_grad and mode == "bilinear" and not empty
    if _image_programs_fit(input, out_h, out_w, need_input_grad, need_coord_grad):
        return _image_backward(grad_output, input, coords, coords_arg, coord_strides,
                               (block_pixels, block_channels), source, mode, padding_mode,
                               align_corners, need_input_grad, need_coord_grad,
                               coord_grad_in_kernel, fill)
    if _gather_fits(grad_output, input, source, padding_mode, need_input_grad, fill):
        gathered = _gather_backward(grad_output, input, coords_arg, coord_strides,
                                    (block_pixels, block_channels), mode, align_corners,
                                    coord_grad_in_kernel)
        if gathered is not None:
            return _backward_gradients(*gathered, input, coords, source, need_coord_grad)
    blocks_per_image = triton.cdiv(out_h * out_w, block_pixels)
    deterministic_input_grad = (need_input_grad and not empty
                                and torch.are_deterministic_algorithms_enabled())
    input_grad_in_kernel = need_input_grad and not deterministic_input_grad

    grad_input = (torch.zeros_like(input, dtype=compute_dtype,
                                   memory_format=output_memory_format(input))
                  if input_grad_in_kernel else input.new_empty(0))
    if source == "affine":  # per-program partial sums of theta's gradient
        coord_grad = torch.zeros((batch, blocks_per_image if coord_grad_in_kernel else 0, 6),
                                 dtype=compute_dtype, device=input.device)
    else:  # grad_grid, written for every point by the kernel (zero without one)
        coord_grad = torch.zeros((batch, out_h, out_w, 2) if need_coord_grad else (0,),
                                 dtype=compute_dtype, device=input.device)
    if (input_grad_in_kernel and not empty) or coord_grad_in_kernel:
        # Outputs not asked for get a stand-in pointer that the kernel never touches.
        grad_input_arg = grad_input if input_grad_in_kernel else input
        coord_grad_arg = coord_grad if coord_grad_in_kernel else coords_arg
        _launch_backward_blocks(grad_output, input, coords_arg, coord_strides, grad_input_arg,
                                coord_grad_arg, (block_pixels, block_channels), source, mode,
                                padding_mode, align_corners, input_grad_in_kernel,
                                coord_grad_in_kernel, fill)
    if deterministic_input_grad:
        grad_input = _deterministic_input_grad(grad_output, input, coords_arg, coord_strides,
                                               source, mode, padding_mode, align_corners)

    return _backward_gradients(grad_input, coord_grad, input, coords, source, need_coord_grad)


def affine_grid_sample_forward(input: torch.Tensor, theta: torch.Tensor, out_h: int, out_w: int,
                               mode: str, padding_mode: str, align_corners: bool) -> torch.Tensor:
    """The fused op's forward: input sampled where thetas map the output grid."""
    return _sample_forward(input, theta, "affine", out_h, out_w, mode, padding_mode,
                           align_corners)


def affine_grid_sample_backward(grad_output: torch.Tensor, input: torch.Tensor,
                                theta: torch.Tensor, mode: str, padding_mode: str,
                                align_corners: bool,
                                output_mask: Sequence[bool]) -> Tuple[torch.Tensor, torch.Tensor]:
    """The fused op's backward: (grad_input, grad_theta) as output_mask asks."""
    return _sample_backward(grad_output, input, theta, "affine", mode, padding_mode,
                            align_corners, output_mask)


# ----------------------------------------------------------------------------------------------
# Registration: the ops; their fake kernels, autograd and autocast come from stn_ext/ops.py
# ----------------------------------------------------------------------------------------------

@torch.library.custom_op("stn_ext::triton_affine_grid_sample", mutates_args=())
def _affine_grid_sample_op(input: torch.Tensor, theta: torch.Tensor, out_h: int, out_w: int,
                           mode: str, padding_mode: str, align_corners: bool) -> torch.Tensor:
    return affine_grid_sample_forward(input, theta, out_h, out_w, mode, padding_mode,
                                      align_corners)


@torch.library.custom_op("stn_ext::triton_affine_grid_sample_backward", mutates_args=())
def _affine_grid_sample_backward_op(grad_output: torch.Tensor, input: torch.Tensor,
                                    theta: torch.Tensor, mode: str, padding_mode: str,
                                    align_corners: bool,
                                    output_mask: List[bool]) -> Tuple[torch.Tensor, torch.Tensor]:
    return affine_grid_sample_backward(grad_output, input, theta, mode, padding_mode,
                                       align_corners, output_mask)


register_sampling_op("triton_affine_grid_sample", python_autograd=True)


def affine_grid_sample(input: torch.Tensor, theta: torch.Tensor, out_h: int, out_w: int,
                       mode: str, padding_mode: str, align_corners: bool) -> torch.Tensor:
    """The Triton backend of stn_ext.affine_grid_sample, for arguments it has validated."""
    _check_device(input.device)
    return torch.ops.stn_ext.triton_affine_grid_sample(input, theta, out_h, out_w, mode,
                                                       padding_mode, align_corners)


# The general ops (schemas of stn_ext::grid_sample and stn_ext::affine_sample) for what this
# backend runs: 4-D input, bilinear or nearest, with or without a fill value (stn_ext.functional
# refuses the rest before calling).

@torch.library.custom_op("stn_ext::triton_grid_sample", mutates_args=())
def _grid_sample_op(input: torch.Tensor, grid: torch.Tensor, mode: str, padding_mode: str,
                    align_corners: bool, fill_value: Optional[torch.Tensor]) -> torch.Tensor:
    return _sample_forward(input, grid, "grid", grid.shape[1], grid.shape[2], mode,
                           padding_mode, align_corners, fill_value)


@torch.library.custom_op("stn_ext::triton_grid_sample_backward", mutates_args=())
def _grid_sample_backward_op(grad_output: torch.Tensor, input: torch.Tensor, grid: torch.Tensor,
                             mode: str, padding_mode: str, align_corners: bool,
                             fill_value: Optional[torch.Tensor],
                             output_mask: List[bool]) -> Tuple[torch.Tensor, torch.Tensor]:
    return _sample_backward(grad_output, input, grid, "grid", mode, padding_mode, align_corners,
                            output_mask, fill_value)


@torch.library.custom_op("stn_ext::triton_affine_sample", mutates_args=())
def _affine_sample_op(input: torch.Tensor, theta: torch.Tensor, out_size: List[int], mode: str,
                      padding_mode: str, align_corners: bool,
                      fill_value: Optional[torch.Tensor]) -> torch.Tensor:
    return _sample_forward(input, theta, "affine", *out_size, mode, padding_mode, align_corners,
                           fill_value)


@torch.library.custom_op("stn_ext::triton_affine_sample_backward", mutates_args=())
def _affine_sample_backward_op(grad_output: torch.Tensor, input: torch.Tensor,
                               theta: torch.Tensor, mode: str, padding_mode: str,
                               align_corners: bool, fill_value: Optional[torch.Tensor],
                               output_mask: List[bool]) -> Tuple[torch.Tensor, torch.Tensor]:
    return _sample_backward(grad_output, input, theta, "affine", mode, padding_mode,
                            align_corners, output_mask, fill_value)


register_general_op("grid_sample", "stn_ext::triton_grid_sample")
register_general_op("affine_sample", "stn_ext::triton_affine_sample")


def grid_sample(input: torch.Tensor, grid: torch.Tensor, mode: str, padding_mode: str,
                align_corners: bool, fill: Optional[torch.Tensor]) -> torch.Tensor:
    """The Triton backend of stn_ext.grid_sample, for arguments it has validated."""
    _check_device(input.device)
    return torch.ops.stn_ext.triton_grid_sample(input, grid, mode, padding_mode, align_corners,
                                                fill)


def affine_sample(input: torch.Tensor, theta: torch.Tensor, out_size: Sequence[int], mode: str,
                  padding_mode: str, align_corners: bool,
                  fill: Optional[torch.Tensor]) -> torch.Tensor:
    """The Triton backend of stn_ext.affine_grid_sample with a fill value (the general op's
    schema), for arguments it has validated."""
    _check_device(input.device)
    return torch.ops.stn_ext.triton_affine_sample(input, theta, list(out_size), mode,
                                                  padding_mode, align_corners, fill)
