"""Pieces shared by the op folders, so that no op reaches into another op's private names: `triton_utils` (host-side
launch helpers: interpreter detection, autotune lists, shared-memory pruning) and `bilinear` (the Triton bilinear
corner computation of flow_warp and warp_consistency_loss, the Triton twin of csrc/bilinear.h). Both need Triton and
are imported only by the ops' triton.py modules."""
