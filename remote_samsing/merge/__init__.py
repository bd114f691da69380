"""Seam merge: put objects cut by the tiling back together, out of core.

Input is the *staged* label array of the pipeline: one ``plan.slot_shape``
chunk per block holding that block's local labels (0 = none, 1..n) for its
whole padded window. Every pixel's final label comes from the block whose
core contains it; neighbouring blocks both segmented their shared halo, and
that double view is the evidence the default strategy merges on.

Strategies (``MergeConfig.strategy``)
-------------------------------------
``"overlap"`` (default)
    For each pair of neighbouring blocks (4 edge and 4 corner neighbours) take
    the region both padded windows cover (the ``2·padding`` strip around the
    seam, or the ``2P × 2P`` square at a corner) and cut each block's labels
    there into *pieces*: the 4-connected runs of one label inside the region,
    as that window sees them. The evidence is piece against piece:

    * **links**: a piece of A and a piece of B whose IoU is **strictly above**
      ``min_iou`` (default 0.5) link their labels (candidates: labels with
      pixels in their own block's core part of the region). Where both windows
      segmented the same object the pieces coincide, whatever the object's
      shape outside the region, so every segmentation whose windows agree is
      rebuilt exactly, objects of any size included: two pieces of one label
      of A that match two labels of B mean that A saw a connection beyond B's
      window, and both link. IoU > 0.5 gives a piece at most one partner.
    * **exclusions**: a single piece of one side that overlaps two or more
      labels of the other is a split both windows saw (the piece lies in
      both windows); the splitting side's labels form an *exclusion group*,
      and separate evidence wins: no chain of links, through any face, may
      put two labels of one group into one object.
    * **disagreements**: a link is refused when either of its pieces holds a
      region that the other window gives to another of its labels and that is
      more than boundary jitter: thicker than ``2 * jitter`` px (it holds a
      ``(2 jitter + 1)``-px square; the region's sides where a window's view
      ends do not count as boundaries, since beyond them lies what one window
      did not see), or the whole of a piece of at least ``(2 jitter + 1)**2``
      px that reaches the side where its own window's view ends (that window
      saw no more of it). The two windows then group objects
      differently where both saw them; joining their labels would add one
      window's fusion to the other's, so neither is taken across the seam.

    What the evidence can and cannot tell: where the windows agree the result
    is exact. Where they disagree inside the region both saw, by more than
    ``jitter``, a label holds no more objects than one window put together
    (the tests fuse different pairs of stripes in neighbouring windows). Two
    things no rule that sees only the windows can tell apart: a disagreement
    thinner than the jitter tolerance from boundary jitter, and a fusion a
    window makes beyond its neighbour's view from an object that continues
    there (both windows' pieces coincide, as for an object larger than the
    padding, which must link to be rebuilt exactly); such fusions are kept,
    as "the window that saw the connection decides". A window that splits an
    object its neighbours see whole keeps its parts apart from the whole.

    One union-find over all links, strongest (highest IoU) first, refuses
    every link that would join two clusters holding labels of one exclusion
    group (the repulsive edges of the mutex watershed, Wolf et al. 2018,
    https://arxiv.org/abs/1805.12279, kept as groups). Statistics per face:
    ``candidates`` (= links + refused + disagreed), ``links``, ``refused``
    (candidates at or below ``min_iou``),
    ``excluded`` (links refused by an exclusion), ``disagreed`` (links
    refused for a disagreement), ``split_by_a`` /
    ``split_by_b`` (exclusion groups each side's split made). Needs
    ``padding > 0``.

    **The seam recut** (``seam_recut``, on by default here): where windows
    disagree and their pieces do not link, the rule above leaves the
    boundary on the straight seam line. The merge therefore runs twice: the
    first merge's faces flag every edge face whose strip holds a pixel pair
    they do not account for; each block by such a face has that face's strip
    cut along the views' own boundaries (``merge._recut``: A's labels on one
    side of a minimum-cost cut, B's on the other, both blocks writing the
    same mix in their own ids, each label tagged with the first merge's
    object it stands for); the second merge links, on faces by a recut
    block, pieces that overlap and stand for one first-merge object. The
    tile grid then does not show where windows disagree, no link joins what
    the first merge kept apart (the split still gives a small part the cut
    left to the neighbour it borders most), and where windows agree nothing
    is recut.
    Statistics are the second merge's, with ``recut_blocks`` in the totals.
``"iou"``
    The first-generation overlap rule, kept for comparison: whole fragments
    instead of pieces (A's view of ``a`` against B's view of ``b`` in the
    shared region, linked when their IoU is above ``min_iou``), no
    exclusions. An object whose parts connect outside one window looks like
    two fragments to that window, and the smaller is refused, so large
    objects can stay split at seams.
``"best_match"``, ``"mutual_best"``, ``"min_contact"``
    The reference's rules (osmarluiz/sam-mosaic,
    ``merge/discontinuity.py``; ``shared/design/reference.md`` §1.8),
    reproduced exactly on the two one-pixel lines on either side of each
    seam of the core mosaic: contact counts of label pairs along the line;
    ``best_match`` links each label on either side to its partner of largest
    contact (ties to the lower label, union of both directions),
    ``mutual_best`` keeps pairs that are each other's best, ``min_contact``
    keeps pairs with at least ``min_contact_pixels`` of contact. Island
    removal runs *before* the merge, as in the reference, and
    ``absorb_enclosed`` is not applied (the reference's version of that step
    never fires, §1.7), so on the same pre-merge labels the result equals the
    reference's up to a label permutation. ``best_match`` chains: an object
    that ends at a seam is merged with whatever it touches across it.
``"none"``
    No merge and no post-processing: block-unique labels cropped to cores.

Post-processing (switchable; not applied with ``"none"``)
----------------------------------------------------------
absorb_enclosed (``"overlap"`` and ``"iou"``)
    A merged object of at most ``merge_enclosed_max_area`` pixels whose
    4-neighbours outside itself all belong to one other object (no
    background, no nodata, not on the mosaic border) is relabelled to that
    object. Decided on the merged mosaic, all objects at once; an object
    absorbed into an object that is itself absorbed ends in the outer one.
remove_small
    Islands are 4-connected components of the foreground (``labels > 0``,
    whatever their labels), measured whole across seams. An island of fewer
    than ``min_mask_area`` pixels is set to 0. So two touching small labels
    with no other neighbour are removed together, while a small label
    touching a large one survives (unless enclosed and absorbed). This is the
    reference's island rule (§1.7); merging and absorbing change labels, not
    the foreground, so the islands are the same before and after them.

One 4-connected segment per label (``split_parts``; ``"overlap"`` and ``"iou"``)
---------------------------------------------------------------------------------
After the rules above, a label can still hold several 4-connected parts:
pixels that touch only at corners, or fragments linked across a seam whose
core crops do not touch. Each such label is resolved by one rule, on parts
measured whole across seams: the largest part keeps the label (equal areas:
the one whose first pixel comes first in raster order); every other part of
at least ``min_mask_area`` pixels becomes a label of its own; a smaller part
joins the label it shares the most border with (pairs of 4-neighbouring
pixels; ties: the one whose part's first pixel comes first) among those
that keep their pixels, or becomes 0 when it touches none. Statistics:
``labels_split``, ``parts_relabelled``, ``parts_joined``, ``parts_cleared``. With ``remove_small`` off
every part becomes a label of its own. So every segment is one polygon. The
reference's strategies and ``"none"`` are left exactly as they are, so their
labels can hold several parts.

The phases
----------
The merge is one list of phases (:func:`merge_phases` in ``_phases.py``),
executed either as one lazy dask graph (:func:`merge_labels`, what
``segment()`` returns) or phase by phase with every per-block result spilled
to disk (:func:`merge_stored`, what ``pipeline.run`` uses, on executors the
caller passes in):

1. ``summarize``, per block (reads one staged chunk): core crop, foreground
   components, label areas, small-label contacts, the core edge lines and
   (``"overlap"``, ``"iou"``) the shared-region crops for the neighbours. Its output is
   split in two: what the faces read and what the relabel reads.
2. (reference strategies with island removal) ``comps`` per block and
   ``islands`` once: the island rule, solved before the merge as the
   reference does.
3. ``faces``, per block: every face the block owns (right, down and the two
   lower corners): candidate pairs and links, seam contacts. **The seam
   decision is made here** (``_blocks._face_overlap`` and
   ``_blocks._face_reference``).
4. ``solve``, once: the island rule and union-find (numba) over the links
   (``"overlap"``: with the exclusion groups), then the enclosed-object rule;
   the table mapping pre-merge ids to merged ids is split per block, so each block only ever receives its part.
5. ``final``, per block: surviving merged ids (with ``split_parts``, also the
   merged ids of the parts the summary described: those of labels with
   several parts in the block, near a seam or in the enclosed-object rule,
   and the neighbours of small parts).
6. (``split_parts``) ``split``, once: each merged label's 4-connected parts,
   from those records and the faces' contacts across seams; each block gets
   the parts it moves.
7. ``ids``, once: the ranks 1..N of the merged ids (the sorted union, in steps
   of owner blocks), split per block.
8. ``relabel``, per block: read the staged chunk again and relabel it with its
   lookup table (its own ranks only: no task receives a global table).

Pre-merge ids are ``block_label_offset(block_id) | local`` (uint64), so no
sequential offset chain exists between blocks (the bit split is dask-image
PR #409's idea, https://github.com/dask/dask-image/pull/409). The faces →
graph → lookup table → ``map_blocks`` relabel shape follows dask-image's
``ndmeasure.label`` (``dask_image/ndmeasure/_utils/_label.py``), with the one
global ``connected_components`` task replaced by union-find over fragment
links only and the table shipped per block.
"""

from __future__ import annotations

from ._config import (
    DIAGNOSTIC_CODES,
    OVERLAP_STRATEGIES,
    REFERENCE_STRATEGIES,
    STRATEGIES,
    MergeConfig,
    MergeResult,
)
from ._lazy import merge_labels
from ._phases import Phase, merge_phases
from ._stored import face_schedule, merge_stored, prepare_workdir, stage_faces, stage_summary, thread_map

__all__ = [
    "DIAGNOSTIC_CODES",
    "MergeConfig",
    "MergeResult",
    "OVERLAP_STRATEGIES",
    "Phase",
    "REFERENCE_STRATEGIES",
    "STRATEGIES",
    "face_schedule",
    "merge_labels",
    "merge_phases",
    "merge_stored",
    "prepare_workdir",
    "stage_faces",
    "stage_summary",
    "thread_map",
]
