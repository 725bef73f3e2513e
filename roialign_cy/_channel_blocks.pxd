# Channel blocks: the layout the forward kernel gathers from when many RoIs share an image.
#
# Walking every channel plane per RoI (torchvision's order) misses the cache on every plane.
# Instead, `block` channels of one image are packed pixel-major into a per-thread buffer
# (H*W, block) that stays in cache, and every RoI of that image is pooled from it: each tap
# reads `block` contiguous values and the channel loop vectorizes. The wrapper sizes `block`
# (a multiple of BLOCK_QUANTUM) so that the buffer fits in cache: small maps get all their
# channels in one block, so each RoI's sample table is built once.

from libc.stdint cimport int32_t

from roialign_cy._kernel_call cimport Geometry
from roialign_cy._sample_table cimport floating
from roialign_cy._shims cimport transpose4

ctypedef fused pooled_value:
    # What a pooled block holds: values of the features' type, or roi_pool's arg-max indices.
    float
    double
    int32_t

cdef enum:
    PACK_TILE = 256   # pixels per tile while transposing planes (the tile stays in L1)


cdef struct BlockItem:
    # One work item of a kernel split by (image, channel block): channels
    # [first_channel, first_channel + n_channels) of image `image`, whose RoIs are
    # roi_order[image_first[image]:image_first[image + 1]].
    Py_ssize_t image
    Py_ssize_t first_channel
    Py_ssize_t n_channels


cdef inline BlockItem block_item(Py_ssize_t item, Py_ssize_t channels,
                                 Py_ssize_t block) noexcept nogil:
    """Decode work item `item` of a loop over (image, channel block) pairs."""
    cdef BlockItem it
    cdef Py_ssize_t n_blocks = (channels + block - 1) // block
    it.image = item // n_blocks
    it.first_channel = (item % n_blocks) * block
    it.n_channels = channels - it.first_channel
    if it.n_channels > block:
        it.n_channels = block
    return it


cdef inline void transpose(const pooled_value* src, Py_ssize_t src_stride, pooled_value* dst,
                           Py_ssize_t dst_stride, Py_ssize_t rows,
                           Py_ssize_t cols) noexcept nogil:
    """dst[j * dst_stride + i] = src[i * src_stride + j] for i < rows, j < cols.

    Four-byte values (float32, int32 indices) go 4 x 4 tiles at a time through SSE
    registers: one value at a time costs ~1.5 ns a value on these strided patterns, which
    made the transposes most of the channels-first time. The edges, and float64, go one
    value at a time, with contiguous writes.
    """
    cdef Py_ssize_t i, j
    cdef Py_ssize_t tiled_rows = 0
    cdef Py_ssize_t tiled_cols = 0
    if pooled_value is not double:
        tiled_rows = rows - rows % 4
        tiled_cols = cols - cols % 4
        for j in range(0, tiled_cols, 4):
            for i in range(0, tiled_rows, 4):
                transpose4(<const float*>&src[i * src_stride + j], src_stride,
                           <float*>&dst[j * dst_stride + i], dst_stride)
    if tiled_rows < rows:  # the rows below the tiles (a loop over every j costs 15%)
        for j in range(tiled_cols):
            for i in range(tiled_rows, rows):
                dst[j * dst_stride + i] = src[i * src_stride + j]
    for j in range(tiled_cols, cols):  # the columns right of them
        for i in range(rows):
            dst[j * dst_stride + i] = src[i * src_stride + j]


cdef inline void zero_padding(floating* packed, Py_ssize_t n_rows, Py_ssize_t n_channels,
                              Py_ssize_t block) noexcept nogil:
    """Zero channels [n_channels, block) of every row of packed (n_rows, block)."""
    cdef Py_ssize_t r, c
    if n_channels < block:
        for r in range(n_rows):
            for c in range(n_channels, block):
                packed[r * block + c] = 0


cdef inline void copy_rows(const floating* src, Py_ssize_t src_stride, floating* dst,
                           Py_ssize_t dst_stride, Py_ssize_t n_rows,
                           Py_ssize_t n_cols) noexcept nogil:
    """dst[r * dst_stride + c] = src[r * src_stride + c]: channels-last pixels, contiguous."""
    cdef Py_ssize_t r, c
    for r in range(n_rows):
        for c in range(n_cols):
            dst[r * dst_stride + c] = src[r * src_stride + c]


cdef inline void transpose_planes(floating* planes, Py_ssize_t plane_stride, floating* packed,
                                  Py_ssize_t block, Py_ssize_t n_channels, Py_ssize_t n_pixels,
                                  bint to_packed) noexcept nogil:
    """Channel planes to packed (n_pixels, block) rows (to_packed), or back, PACK_TILE pixels
    at a time (the tile stays in L1)."""
    cdef Py_ssize_t tile = 0
    cdef Py_ssize_t tile_end
    while tile < n_pixels:
        tile_end = tile + PACK_TILE if tile + PACK_TILE < n_pixels else n_pixels
        if to_packed:
            transpose(planes + tile, plane_stride, packed + tile * block, block, n_channels,
                      tile_end - tile)
        else:
            transpose(packed + tile * block, block, planes + tile, plane_stride,
                      tile_end - tile, n_channels)
        tile = tile_end


cdef inline void pack_block(const floating* image, const Geometry* g, Py_ssize_t c0,
                            Py_ssize_t n_channels, floating* packed,
                            Py_ssize_t block) noexcept nogil:
    """Copy channels [c0, c0 + n_channels) of one image to packed (H*W, block), zero-padded."""
    cdef Py_ssize_t n_pixels = g.height * g.width
    if g.channels_last:
        copy_rows(image + c0, g.channels, packed, block, n_pixels, n_channels)
    else:
        transpose_planes(<floating*>image + c0 * g.channel_stride, g.channel_stride, packed,
                         block, n_channels, n_pixels, True)
    zero_padding(packed, n_pixels, n_channels, block)


cdef inline void unpack_roi(const pooled_value* pooled, pooled_value* out_roi,
                            const Geometry* g, Py_ssize_t c0, Py_ssize_t n_channels,
                            Py_ssize_t block) noexcept nogil:
    """Write one RoI's pooled block (n_bins, block) to its channels [c0, c0 + n_channels)."""
    cdef Py_ssize_t b, c
    cdef Py_ssize_t n_bins = g.pooled_h * g.pooled_w
    if g.out_bin_stride == 1:  # channels-first: a transpose
        transpose(pooled, block, out_roi + c0 * g.out_channel_stride, g.out_channel_stride,
                  n_bins, n_channels)
        return
    for b in range(n_bins):
        for c in range(n_channels):
            out_roi[(c0 + c) * g.out_channel_stride + b * g.out_bin_stride] = pooled[b * block + c]


cdef inline void unpack_block(const floating* packed, floating* image, const Geometry* g,
                              Py_ssize_t c0, Py_ssize_t n_channels,
                              Py_ssize_t block) noexcept nogil:
    """Write packed (H*W, block) back to channels [c0, c0 + n_channels) of one image."""
    cdef Py_ssize_t n_pixels = g.height * g.width
    if g.channels_last:
        copy_rows(packed, block, image + c0, g.channels, n_pixels, n_channels)
    else:
        transpose_planes(image + c0 * g.channel_stride, g.channel_stride, <floating*>packed,
                         block, n_channels, n_pixels, False)


cdef inline void pack_roi(const floating* values_roi, floating* packed_roi, const Geometry* g,
                          Py_ssize_t c0, Py_ssize_t n_channels,
                          Py_ssize_t block) noexcept nogil:
    """Read one RoI's channels [c0, c0 + n_channels) into (n_bins, block), zero-padded.

    Channels-first with whole 16-byte groups of bins (c4_head's, mask_head's 14 x 14): a
    transpose, 1.5x faster there. Otherwise channel-outer, one value at a time: the
    transpose's loads straddle lines when a channel's n_bins values do not start 16-byte
    aligned, and it measured 15% slower on many_small's 7 x 7 bins.
    """
    cdef Py_ssize_t b, c
    cdef Py_ssize_t n_bins = g.pooled_h * g.pooled_w
    cdef const floating* channel
    if g.out_bin_stride == 1 and g.out_channel_stride % 4 == 0:
        transpose(values_roi + c0 * g.out_channel_stride, g.out_channel_stride, packed_roi,
                  block, n_channels, n_bins)
    else:
        for c in range(n_channels):
            channel = values_roi + (c0 + c) * g.out_channel_stride
            for b in range(n_bins):
                packed_roi[b * block + c] = channel[b * g.out_bin_stride]
    zero_padding(packed_roi, n_bins, n_channels, block)
