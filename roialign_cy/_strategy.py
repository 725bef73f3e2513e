"""Which kernel variant a call runs, and how it splits its work."""

from roialign_cy import _boxes
from roialign_cy._validate import channels_of, map_size

# Channel blocks (_blocks.pxd) hold a multiple of BLOCK_QUANTUM channels (one 64-byte line
# of float32) and, when the map allows, about BLOCK_BYTES: a core's share of the caches.
BLOCK_QUANTUM = 16
BLOCK_BYTES = 2 << 20
# Beyond this a block of BLOCK_QUANTUM channels is no longer cache-resident (nor small: a
# 46341 x 46341 map would need 137 GB per thread), so huge maps walk each RoI instead.
MAX_PACKED_BYTES = 32 << 20


def rois_by_image(batch_index, n_images):
    """(roi_order, image_first): RoIs grouped by image (stable), and where each image starts.

    A compiled counting sort, O(K + N): a small call spent more on NumPy's argsort and
    searchsorted than on its kernel.
    """
    return _boxes.group_by_image(batch_index, n_images)


def channel_blocks(n_threads, n_images, channels):
    """Channel blocks per image for the per-RoI backward: one work item per thread at least.

    No more: every block walks all its image's RoIs again (tables rebuilt, the image's
    gradient swept once more), so extra blocks cost more than the balance they buy.
    """
    if n_threads == 1 or channels == 0:
        return 1
    return max(1, min(channels, -(-n_threads // n_images)))


def packed_block_size(features_shape, layout, itemsize, n_threads, n_buffers=1):
    """Channels per packed block: as many as fit BLOCK_BYTES (at least BLOCK_QUANTUM), but
    few enough that every thread gets several (image, block) work items.

    n_buffers: packed blocks a thread holds at once (they share the budget).
    """
    n_images, channels = features_shape[0], channels_of(features_shape, layout)
    height, width = map_size(features_shape, layout)
    quantum = BLOCK_QUANTUM
    all_channels = -(-channels // quantum) * quantum
    fitting = BLOCK_BYTES // n_buffers // (height * width * itemsize) // quantum * quantum
    block = min(all_channels, max(quantum, fitting))
    while block > quantum and n_images * -(-channels // block) < 4 * n_threads:
        block -= quantum
    return block


def use_channel_blocks(features_shape, n_rois, pooled, layout, itemsize):
    """Whether a channels-first call should pack channel blocks or walk each RoI's planes.

    Channels-last features are read in place: their channels are already contiguous, and
    packing them measured slower. Channels-first features pay one packing pass over every
    image; walking a RoI's channel planes misses the cache on every plane instead. Packing
    measured faster from about one RoI per 32 map pixels per bin (box_head: K >= ~80).
    """
    if layout == "NHWC" or n_rois < 4 * features_shape[0]:
        return False
    n_images, height, width = features_shape[0], *map_size(features_shape, layout)
    if height * width * BLOCK_QUANTUM * itemsize > MAX_PACKED_BYTES:
        return False
    return n_rois * pooled[0] * pooled[1] * 32 >= n_images * height * width
